"""Compile, before the headline asks for them, the Triton kernels its vit_fast rows autotune.

Why: the headline's first vit_fast row of a model spends most of its set-up compiling every config the autotuner
tries, one after another (the third lease: 51.5 s of ViT-B/16 batch 256's 59 s row, 50.8 s for L/16's first FP8
row), and three leases ran out of time before the compile rows of L/16 and H/14, issue 10's targets. The lease
runs this during its test step, on the same GPU, in a few processes at once: each builds the headline's vit_fast
models and runs one forward with VITFAST_AUTOTUNE=compile, so every autotuner launches each config its prune keeps
once (which compiles it into the Triton cache the headline reads) and times nothing. Under that setting no autotuner
writes its choice to disk (vit_fast/kernels/autotune.py): the headline still tunes on an idle GPU. Nothing it does
is measured or kept but the compiled binaries.

`python -m benchmarks.prewarm [--rows MODEL:BATCH[:DTYPE],...] [--part K/N] [--deadline UNIX_S] [--tiny]`:
the rows default to ROWS, the headline's vit_fast rows and then those of the lease's side-by-side steps under their
switches; --part K/N takes every N-th of them from the K-th (the lease starts N processes); rows not started by
--deadline are skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from vit_fast.kernels._common import AUTOTUNE_ENV, is_interpreting
from vit_fast.switches import switched

from . import schema

BF16, FP8 = "bfloat16", "float8"
# (model, batch, dtype, switches): every vit_fast row of the headline (headline.ROWS), then the lease's side-by-side
# steps' switched rows (gpu_steps.sh), each in the order the next lease's calls need them (NOTES.md, "GPU session
# plan"): ablateL (L/16 b256, bf16 and FP8) first after the tests, then the headline's B/16 rows, then H/14; the three
# processes (--part K/3) start on L/16 bf16, L/16 FP8 and B/16 b256, the largest first compiles
ROWS = [
    ("vit_l_16", 256, BF16, {}), ("vit_l_16", 256, FP8, {}), ("vit_b_16", 256, BF16, {}),
    ("vit_b_16", 1, BF16, {}), ("vit_h_14", 256, FP8, {}), ("vit_h_14", 64, BF16, {}),
    ("vit_h_14", 256, BF16, {}), ("vit_l_16", 256, FP8, {"VITFAST_FP8_PRECISE_ACC": "0"}),
    ("vit_b_16", 256, BF16, {"VITFAST_GELU": "libdevice"}), ("vit_b_16", 256, BF16, {"VITFAST_STAGGER": "0"}),
    ("vit_b_16", 256, BF16, {"VITFAST_LN_PARTIALS": "0"}), ("vit_b_16", 1, BF16, {"VITFAST_PDL": "1"}),
    ("vit_b_16", 1, BF16, {"VITFAST_TMA_DESC": "device"}), ("vit_b_16", 1, BF16, {"VITFAST_SPLIT_K": "1"}),
    ("vit_b_16", 1, BF16, {"VITFAST_GEMM_ENGINE": "pointer"}),
]


def _rows(text: str) -> list:
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1:
            raise argparse.ArgumentTypeError(f"expected MODEL:BATCH[:DTYPE] (e.g. vit_l_16:256:float8), got {item!r}")
        dtype = parts[2] if len(parts) == 3 else "bfloat16"
        if dtype not in schema.DTYPES:
            raise argparse.ArgumentTypeError(f"unknown dtype {dtype!r} in {item!r}; expected one of "
                                             f"{', '.join(schema.DTYPES)}")
        out.append((parts[0], int(parts[1]), dtype, {}))
    if not out:
        raise argparse.ArgumentTypeError("expected at least one MODEL:BATCH")
    return out


def _part(text: str) -> tuple:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N (e.g. 2/3), got {text!r}")
    return int(k), int(n)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.prewarm", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=_rows, default=ROWS,
                   help="MODEL:BATCH[:DTYPE] items, comma-separated (default: the headline's vit_fast rows, then "
                        "the side-by-side steps' under their switches)")
    p.add_argument("--part", type=_part, default=(1, 1), help="K/N: every N-th row from the K-th")
    p.add_argument("--deadline", type=float, default=None, help="unix time after which no row starts")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--tiny", action="store_true", help="shrunk models on the CPU (a smoke test of this module)")
    args = p.parse_args(argv)
    k, n = args.part
    args.rows = args.rows[k - 1::n]  # args.part stays, for the log lines
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import vit_fast

    try:
        for model, _, _, _ in args.rows:
            vit_fast.get_config(model)
    except ValueError as e:
        print(f"prewarm: error: {e}", file=sys.stderr)
        return 2
    if args.tiny and not is_interpreting():
        print("prewarm: error: --tiny runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1",
              file=sys.stderr)
        return 2
    if not args.tiny and not torch.cuda.is_available():
        print("prewarm: error: no CUDA device (--tiny is the CPU smoke test)", file=sys.stderr)
        return 2
    # read at each first launch of a kernel key; under it no autotuner writes its (untimed) choice to the disk cache
    os.environ[AUTOTUNE_ENV] = "compile"
    from . import builders, cli, runner
    from .headline import TINY

    device = torch.device("cpu" if args.tiny else "cuda")
    overrides = cli._overrides(TINY) if args.tiny else None  # as the headline's --tiny
    part = "/".join(map(str, args.part))
    for model, batch, dtype, switches in args.rows:
        what = " ".join([f"{model} b{batch} {dtype}", *(f"{k}={v}" for k, v in switches.items())])
        if args.deadline is not None and time.time() >= args.deadline:
            print(f"prewarm {part}: {what}: skipped, past the deadline", flush=True)
            continue
        start = time.time()
        try:
            with switched(switches):  # the kernels read their switches at each launch
                master = builders.build_master(model, args.resolution, 0, overrides)
                built = builders.build("vit_fast", master, runner.DTYPES[dtype], device, "max-autotune", preset=model)
                x = runner.make_inputs(batch, args.resolution, builders.input_dtype(runner.DTYPES[dtype]), device, 0,
                                       1)[0]
                with torch.inference_mode():
                    built.fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            done = f"{time.time() - start:.1f} s"
        except Exception as e:  # noqa: BLE001 - the headline meets it again and records it; the next row goes on
            done = f"failed after {time.time() - start:.1f} s: {' '.join(str(e).split())[:300]}"
        finally:
            master = built = x = None  # noqa: F841 - freed before the next row's model
            runner._cleanup(device)
        print(f"prewarm {part}: {what}: {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
