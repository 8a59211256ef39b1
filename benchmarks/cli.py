"""Command line of the benchmark harness: `python -m benchmarks` and `vit-fast bench`.

`add_arguments(parser)` + `run(args)` let the vit_fast CLI mount it as a subcommand; `main(argv)` is standalone.
Unset options get defaults that fit the device: the ViT-B/L/H grid in bf16 and fp16 on a GPU; on a CPU one small
model in fp32 at two batch sizes, so a run finishes in about a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

import torch

from . import env as env_mod
from . import schema

GPU_MODELS = ["vit_b_16", "vit_l_16", "vit_h_14", "vit_b_32", "vit_b_14", "vit_l_14", "vit_l_32", "vit_h_16",
              "vit_h_32"]  # the four anchor models first, so a time budget covers them before the rest
CPU_MODELS = ["vit_ti_16"]
GPU_BATCHES, CPU_BATCHES = [1, 8, 64, 256], [1, 4]
GPU_DTYPES, CPU_DTYPES = ["bfloat16", "float16"], ["float32"]
CPU_BACKENDS = [b for b in schema.BACKENDS if b != "compile"]
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def _csv(kind):
    def parse(text: str) -> list:
        items = [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [kind(t) for t in items]

    return parse


def _overrides(text: str) -> dict:
    """'depth=1,embed_dim=64' -> {'depth': 1, 'embed_dim': 64} (ints, floats, true/false, none, else strings)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        low = value.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        elif low == "none":
            out[key] = None
        else:
            try:
                out[key] = int(value)
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("benchmark grid")
    g.add_argument("--models", type=_csv(str), default=None,
                   help=f"presets, comma-separated (default on GPU: {','.join(GPU_MODELS)}; on CPU: "
                        f"{','.join(CPU_MODELS)})")
    g.add_argument("--batch-sizes", type=_csv(int), default=None,
                   help=f"default {','.join(map(str, GPU_BATCHES))} on GPU, {','.join(map(str, CPU_BATCHES))} on CPU")
    g.add_argument("--dtypes", type=_csv(str), default=None,
                   help="bfloat16,float16,float32,float8 (default bfloat16,float16 on GPU, float32 on CPU; float8: FP8 "
                        "GEMMs on vit_fast, sm_89/sm_90, beside the other dtypes' rows)")
    g.add_argument("--backends", type=_csv(str), default=None,
                   help=f"compared side by side in one run (default {','.join(schema.BACKENDS)}; on CPU "
                        f"{','.join(CPU_BACKENDS)}: compiling takes minutes there)")
    g.add_argument("--resolution", type=int, default=224, help="square input size in pixels (default 224)")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    t = parser.add_argument_group("timing")
    t.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 30 on GPU, 5 on CPU)")
    t.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per row before timing; the first compiles/autotunes (default 3 GPU, 1 CPU; "
                        "at least 1 is always made)")
    t.add_argument("--cuda-graphs", action="store_true",
                   help="capture a CUDA graph per input buffer and time its replays for small batches")
    t.add_argument("--graph-max-batch", type=int, default=8, help="largest batch captured with --cuda-graphs")
    t.add_argument("--compile-mode", default=None,
                   help="torch.compile mode of the compile backend (default max-autotune on GPU, default on CPU)")
    t.add_argument("--time-budget", type=float, default=None,
                   help="seconds; rows not started by then are recorded as not run (compile rows run last)")
    t.add_argument("--cpu-threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)")
    t.add_argument("--seed", type=int, default=None, help="weights and inputs seed (default: a fresh random one)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default=None,
                   help="output directory (default ./bench-results/<date>-<device>, under the current directory)")
    o.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    # tests only: shrink every preset (e.g. depth=1,embed_dim=64,num_heads=2,mlp_dim=128)
    o.add_argument("--config-overrides", type=_overrides, default={}, help=argparse.SUPPRESS)
    return parser


def _set_precision() -> None:
    """fp32 means fp32: no TF32 in matmuls or convolutions (reference and float32 rows alike)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for setting in (lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", False),
                        lambda: setattr(torch.backends.cudnn, "allow_tf32", False),
                        lambda: torch.set_float32_matmul_precision("highest")):
            try:
                setting()
            except (RuntimeError, AttributeError) as e:  # e.g. a torch that refuses mixing old and new TF32 APIs
                print(f"note: could not switch TF32 off: {e}")


HARNESS_DTYPE = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "fp8": "float8"}  # runner's


def canonical_dtype(name: str) -> str:
    """A --dtypes entry in the harness's spelling (bf16 -> bfloat16, fp8 -> float8); unknown names pass through to
    the one-line error that lists the known ones."""
    from vit_fast.dtype_names import kind_of

    return HARNESS_DTYPE.get(kind_of(name), name)


def check_out_dir(out) -> None:
    """--out names a directory (made if missing) that can be written: checked before anything runs."""
    from vit_fast.paths import check_output_dir

    if out is not None:
        try:
            check_output_dir(out, "the results (--out)")
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None


def resolve(args) -> "runner.Settings":  # noqa: F821
    from vit_fast.predictor import _default_device

    from . import runner

    try:  # the Predictor's rule: cpu, cuda or cuda:N that exists here
        device = _default_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: --device: {e}") from None
    for flag, value in (("--resolution", args.resolution), ("--cpu-threads", args.cpu_threads),
                        ("--graph-max-batch", args.graph_max_batch)):
        if value is not None and value < 1:
            raise SystemExit(f"error: {flag} must be >= 1, got {value}")
    if args.time_budget is not None and not args.time_budget > 0:
        raise SystemExit(f"error: --time-budget must be > 0 seconds, got {args.time_budget:g}")
    if args.compile_mode is not None and args.compile_mode not in COMPILE_MODES:
        raise SystemExit(f"error: --compile-mode expects one of {', '.join(COMPILE_MODES)}, got {args.compile_mode!r}")
    gpu = device.type == "cuda"
    import vit_fast

    env_mod.kernel_settings()  # a kernel switch set to a value it does not take would fail every vit_fast row

    models = args.models or (GPU_MODELS if gpu else CPU_MODELS)
    unknown = [m for m in models if m not in vit_fast.list_models()]
    if unknown:
        raise SystemExit(f"error: unknown models {unknown}; known: {', '.join(vit_fast.list_models())}")
    bad = []
    for m in models:
        try:
            cfg = vit_fast.get_config(m, **args.config_overrides)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        patch = cfg.patch_size
        if not cfg.accepts_image(args.resolution, args.resolution):
            lo, hi = max(patch, args.resolution // patch * patch), (args.resolution // patch + 1) * patch
            bad.append(f"{m} (patch {patch}: e.g. {lo} or {hi})")
    if bad:
        raise SystemExit(f"error: --resolution {args.resolution} is not a multiple of the patch size of "
                         f"{', '.join(bad)}")
    dtypes = [canonical_dtype(d) for d in args.dtypes or (GPU_DTYPES if gpu else CPU_DTYPES)]
    bad = [d for d in dtypes if d not in runner.DTYPES]
    if bad:
        raise SystemExit(f"error: unknown dtypes {bad}; expected some of {', '.join(runner.DTYPES)} (or their short "
                         "names bf16, fp16, fp32, fp8)")
    backends = args.backends or (list(schema.BACKENDS) if gpu else CPU_BACKENDS)
    bad = [b for b in backends if b not in schema.BACKENDS]
    if bad:
        raise SystemExit(f"error: unknown backends {bad}; expected some of {', '.join(schema.BACKENDS)}")
    batches = args.batch_sizes or (GPU_BATCHES if gpu else CPU_BATCHES)
    if any(b < 1 for b in batches):
        raise SystemExit(f"error: batch sizes must be >= 1, got {batches}")
    repeats = args.repeats if args.repeats is not None else (30 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    if repeats < 1 or warmup < 0:
        raise SystemExit("error: --repeats must be >= 1 and --warmup >= 0")
    check_out_dir(args.out)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    return runner.Settings(
        models=list(dict.fromkeys(models)), batch_sizes=list(dict.fromkeys(batches)),
        dtypes=list(dict.fromkeys(dtypes)), backends=list(dict.fromkeys(backends)), device=device,
        resolution=args.resolution, repeats=repeats, warmup=warmup, cuda_graphs=args.cuda_graphs,
        graph_max_batch=args.graph_max_batch,
        compile_mode=args.compile_mode or ("max-autotune" if gpu else "default"),
        time_budget=args.time_budget, overrides=dict(args.config_overrides), seed=seed,
        progress=not args.no_progress,
    )


def write_json(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)  # a killed run leaves the last complete file, never half of one


def run(args) -> int:
    from . import builders, report, runner, timing

    started = time.monotonic()
    settings = resolve(args)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    _set_precision()
    device = settings.device
    env = env_mod.collect(device, settings.overrides)
    out_dir = Path(args.out) if args.out else env_mod.default_results_dir(env, root=Path.cwd() / "bench-results")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"benchmark on {env['gpu']} (torch {env['torch']}, triton {env['triton']}), seed {settings.seed}, "
          f"output {out_dir}")
    print(f"grid: models {','.join(settings.models)} | batch {','.join(map(str, settings.batch_sizes))} | "
          f"dtypes {','.join(settings.dtypes)} | backends {','.join(settings.backends)} | "
          f"{settings.resolution} px | warmup {settings.warmup}, repeats {settings.repeats}"
          + (f" | CUDA graphs for batch <= {settings.graph_max_batch}" if settings.cuda_graphs else ""))
    if device.type != "cuda" and args.backends is None:
        print("note: backend compile left out of the CPU defaults (compiling takes minutes on a CPU); "
              "name it in --backends to include it")
    if settings.cuda_graphs and device.type != "cuda":
        print("note: --cuda-graphs ignored: CUDA graphs need a CUDA device")
    for backend in settings.backends:
        reason = builders.static_skip_reason(backend, device)
        if reason:
            print(f"note: backend {backend} skipped: {reason}")
    if device.type == "cuda":
        peak, how = timing.matmul_peak_tflops(device)
        print(f"matmul peak: {peak:.2f} TFLOP/s ({how})")
    else:  # a CPU's rate differs by dtype (fp16 can be 1000x slower): each row's MFU uses its own dtype's peak
        peaks = {}
        for name in settings.dtypes:
            # float8 rows: their bf16 peak (FP8 needs a Hopper GPU; CPU torch has no fp8 matmul to measure)
            peaks[name], how = timing.matmul_peak_tflops(device, builders.input_dtype(runner.DTYPES[name]))
            print(f"matmul peak ({name}): {peaks[name] * 1e3:.1f} GFLOP/s ({how})")
        peak = peaks[settings.dtypes[0]]

    results = {"env": env, "matmul_peak_tflops": peak, "rows": []}
    json_path = out_dir / "results.json"

    def on_row(rows):
        results["rows"] = rows
        write_json(results, json_path)

    rows = runner.run_grid(settings, peak if device.type == "cuda" else peaks, on_row=on_row)
    results["rows"] = rows
    problems = schema.validate(results)
    if problems:  # a harness bug: say so loudly, but keep the numbers
        print("warning: results do not match the schema: " + "; ".join(problems[:5]), file=sys.stderr)
    write_json(results, json_path)
    written = report.write_report(results, out_dir, plots=not args.no_plots)
    print_summary(rows)
    for path in [json_path] + written:
        print(f"wrote {path}")
    print(f"done in {time.monotonic() - started:.1f} s")
    if any(r["error"] and "interrupted" in r["error"] for r in rows):
        return 143  # stopped by a signal: the files hold what was finished
    if rows and all(r["error"] for r in rows):  # failures are rows by design (the lease's steps record refusals)
        print("note: no row was measured (the reasons are above)", file=sys.stderr)
    return 0


def print_summary(rows) -> None:
    good = [r for r in rows if r["error"] is None]
    if good:
        print(f"\n{'model':<10} {'dtype':<9} {'batch':>5} {'backend':<9} {'img/s':>11} {'p50 ms':>9} "
              f"{'TFLOP/s':>8} {'max_rel_err':>11}")
        for r in good:
            print(f"{r['model']:<10} {r['dtype']:<9} {r['batch']:>5} {r['backend']:<9} {r['images_per_s']:>11.1f} "
                  f"{r['latency_ms_p50']:>9.3f} {r['tflops']:>8.2f} {r['max_rel_err']:>11.2e}")
    failed = [r for r in rows if r["error"] is not None]
    if failed:
        reasons = {}
        for r in failed:
            reasons.setdefault((r["backend"], r["error"]), 0)
            reasons[(r["backend"], r["error"])] += 1
        print(f"\n{len(failed)} of {len(rows)} rows not measured:")
        for (backend, error), n in reasons.items():
            print(f"  {backend} ({n} rows): {error}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time ViT inference backends side by side (eager, sdpa, torch.compile, vit_fast, timm, HF) "
                    "and write results.json, results.md and plots.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SystemExit as e:  # the harness's one-line refusals: on stderr, exit code 2 as argparse's own
        if not isinstance(e.code, str):
            raise
        print(f"{parser.prog}: {e.code}", file=sys.stderr)
        return 2
