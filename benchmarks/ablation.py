"""Kernel-switch ablations: one vit_fast row measured under several VITFAST_* settings in one process, each
switched setting's CUDA graph replayed in alternating rounds with the shipped setting's.

Why: the lease's switched steps (lnstats, gelu, stagger and ws16 at B/16 b256; b1engine, b1split, b1desc and b1pdl
at batch 1) each start a process, build the model and its fp32 reference, and time a shipped row beside their
switched one: 62-120 s a step, so a 15-minute lease reaches one or two of them (benchmarks/NOTES.md, "GPU session
plan"). Here the model, its inputs and the reference are built once, and the shipped setting is captured once; each
switched setting compiles and tunes only the kernels it changes and captures its own CUDA graph (a graph holds the
launches made under its setting: the switches are read at every launch, vit_fast/switches.py). Right after that it
is timed against the shipped graph, a round of each in turn, so clock and temperature drift fall on both alike, and
the files are rewritten: a later setting that hangs the GPU (a kernel that never ran before) or the step's time
limit cannot take the comparisons already made with it. A switch that is part of an autotune key (the GEMM engine,
split-K, the descriptors' source, the GELU, the LayerNorm statistics) tunes its own tiles; STAGGER and PDL, which are
not keys, keep the shipped setting's tiles, as the separate steps did.

A setting may also name the model's dtype: `dtype=float8` is the same model quantized (vit_fast.quantize) and
`dtype=float8,VITFAST_FP8_ENGINE=ws` that with a switch, each timed against the shipped setting of --dtype, so one
process gives FP8 against bf16 (issue 13's ratio) and each FP8 engine against both; each dtype's model and inputs are
built once, when a setting first needs them.

`python -m benchmarks.ablation --out DIR --switch VITFAST_GELU=libdevice [--switch NAME=VALUE[,NAME=VALUE]] ...
[--model vit_b_16] [--batch 256] [--dtype bfloat16]`: the shipped setting is the environment as given, at --dtype.
Files in DIR: ablation.json (the environment, the seed, and per setting its dtype, images/s (median of its replays),
each round's median, its ratio to the shipped replays of the same rounds, its logits error against the fp32 model,
its seconds to a first result and its device time per layer part (QKV, attention, out-proj, FC1, FC2, LayerNorm,
other: benchmarks/breakdown.py's groups, from --profile-forwards eager forwards under the profiler once its graph is
timed; a setting's effect on one GEMM is read there, not guessed from images/s), or why it did not run) and
ablation.md. A setting that fails (a switch the GPU cannot take) is recorded with its one-line reason and the others
go on; settings the --time-budget does not reach are recorded as not run.
"""
from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
import time
from pathlib import Path

import torch

from vit_fast.switches import SWITCHES, checked_value, switched

from . import breakdown, builders, cli, runner, timing
from . import env as env_mod

SHIPPED = "shipped"
NOT_RUN = "not run"


DTYPE = "dtype"  # the pseudo-switch that picks a setting's model dtype


def _switch(text: str) -> tuple:
    """'VITFAST_X=value[,dtype=float8,...]' -> ((name, value), ...), each checked (the switch table, the dtypes)
    before anything is built."""
    pairs, names = [], set()
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or (name not in SWITCHES and name != DTYPE):
            raise argparse.ArgumentTypeError(f"expected VITFAST_NAME=value or dtype=DTYPE (names: "
                                             f"{', '.join(SWITCHES)}), comma-separated, got {text!r}")
        if name in names:
            raise argparse.ArgumentTypeError(f"{name} is given twice in {text!r}")
        names.add(name)
        if name == DTYPE:
            if value not in runner.DTYPES:
                raise argparse.ArgumentTypeError(f"dtype: expected {' | '.join(runner.DTYPES)}, got {value!r}")
            pairs.append((name, value))
            continue
        try:
            pairs.append((name, checked_value(name, value)))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return tuple(pairs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for ablation.json and ablation.md")
    p.add_argument("--model", default="vit_b_16", help="a preset name (default vit_b_16)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=list(runner.DTYPES), help="the shipped setting's dtype")
    p.add_argument("--switch", type=_switch, action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                   help="one setting beside the shipped one (repeat for more): VITFAST_* switches, and dtype=DTYPE "
                        "for the model in another dtype")
    p.add_argument("--rounds", type=int, default=5, help="replay rounds, each timing every setting in turn")
    p.add_argument("--repeats", type=int, default=10, help="timed replays of a setting per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed replays of a setting per round")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--config-overrides", type=cli._overrides, default={}, metavar="K=V,...",
                   help="model config overrides (toy sizes for a CPU run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-forwards", type=int, default=3, metavar="N",
                   help="eager forwards profiled per setting for its time per layer part (0: none)")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="prepare no further setting once S seconds have passed; the rounds then time those ready")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.profile_forwards < 0:
        p.error(f"--profile-forwards must be at least 0, got {args.profile_forwards}")
    for name in ("batch", "rounds", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.switch:
        p.error("expected at least one --switch VITFAST_NAME=VALUE to compare with the shipped setting")
    # dtype=<the shipped dtype> names no change: dropped, so such a setting compares as its switches alone
    args.switch = [tuple(pair for pair in setting if pair != (DTYPE, args.dtype)) for setting in args.switch]
    if () in args.switch:
        p.error(f"a --switch is the shipped setting itself (dtype={args.dtype}, no switch)")
    if len({frozenset(s) for s in args.switch}) != len(args.switch):
        p.error("a --switch is given twice")
    return args


def _label(switches: tuple) -> str:
    return ",".join(f"{n}={v}" for n, v in switches) or SHIPPED


def _prepare(built, switches, inputs, ref, graphs: bool) -> dict:
    """Compile, tune and capture one setting; its callable and its error against the fp32 reference."""
    t0 = time.monotonic()
    with switched(dict(switches)), torch.inference_mode():
        if graphs:  # the graph holds the launches made under the setting
            fn = builders.CudaGraphed(built.fn, inputs, warmup=1)
        else:  # eager (a CPU run): every call under the setting
            def fn(x):
                with switched(dict(switches)):
                    return built.fn(x)
        out = fn(inputs[0]).float().clone()
        timing.sync(inputs[0].device)
    max_rel_err, top1 = runner.compare(out, ref)
    return {"fn": fn, "first_result_s": time.monotonic() - t0, "max_rel_err": max_rel_err, "top1_agree": top1}


def _parts(built, switches, x, dims, forwards: int) -> dict:
    """Device time per layer part (ms a forward) of `forwards` eager forwards under the setting: the kernels grouped
    by the `vitfast::*` op that launched them (breakdown.py), which a graph's replay does not show. On a CPU the ops'
    self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with switched(dict(switches)), torch.inference_mode():
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(forwards):
                built.fn(x)
            timing.sync(x.device)
    grouped = breakdown.group(breakdown.kernels_from_profile(prof), dims)
    return breakdown.summarize(grouped, forwards)["groups"]


def _record_parts(row, built, x, dims, forwards: int) -> None:
    """row["parts_ms"], or row["parts_error"] in one line: the profile never costs a setting its timing."""
    if forwards:
        try:
            row["parts_ms"] = _parts(built, tuple(row["switches"].items()), x, dims, forwards)
        except (runner.Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - a profiler failure is noted beside the timing it cannot change
            row["parts_error"] = runner._error_text(e)


def run(args, write=lambda result: None) -> dict:
    """Measure; `write(result)` after each setting. -> the result before `final` summarizes it."""
    started = time.monotonic()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    graphs = device.type == "cuda"
    env = env_mod.collect(device)
    master = builders.build_master(args.model, args.resolution, args.seed, args.config_overrides or None)
    settings = runner.Settings(models=[args.model], batch_sizes=[args.batch], dtypes=[args.dtype],
                               backends=["vit_fast"], device=device, resolution=args.resolution, seed=args.seed)
    ref = runner.reference_logits(master, [args.batch], settings)[args.batch]
    if isinstance(ref, str):
        raise RuntimeError(ref)
    models, buffers = {}, {}

    def model_for(name: str) -> tuple:
        """(built, inputs) of the model in dtype `name`, built when a setting first needs it: the same images in
        each input dtype (make_inputs' seed), one buffer list per input dtype."""
        if name not in models:
            dtype = runner.DTYPES[name]
            reason = builders.fp8_skip_reason("vit_fast", device) if dtype == builders.FP8 else None
            if reason:
                raise RuntimeError(reason)
            models[name] = builders.build("vit_fast", master, dtype, device, "default")
            in_dtype = builders.input_dtype(dtype)
            if in_dtype not in buffers:
                buffers[in_dtype] = runner.make_inputs(args.batch, args.resolution, in_dtype, device, args.seed)
        return models[name], buffers[builders.input_dtype(runner.DTYPES[name])]

    cfg = master.config
    dims = breakdown.Dims(cfg.embed_dim, cfg.mlp_dim, args.batch * (cfg.num_prefix_tokens + cfg.num_patches))
    plan = [()] + list(args.switch)  # the shipped setting first
    rows = [{"setting": _label(setting), "dtype": dict(setting).get(DTYPE, args.dtype),
             "switches": {n: v for n, v in setting if n != DTYPE}} for setting in plan]
    result = {"env": env, "model": args.model, "batch": args.batch, "dtype": args.dtype, "cuda_graphs": graphs,
              "seed": args.seed, "rounds": args.rounds, "repeats": args.repeats, "rows": rows}
    shipped, shipped_fn = rows[0], None
    try:
        for row in rows:
            if args.time_budget is not None and time.monotonic() - started > args.time_budget:
                row["error"] = f"{NOT_RUN}: the time budget ({args.time_budget:.0f} s) was spent"
                continue
            if row is not shipped and shipped_fn is None:
                row["error"] = f"{NOT_RUN}: the shipped setting did not run"
                continue
            try:
                built, inputs = model_for(row["dtype"])
                prepared = _prepare(built, tuple(row["switches"].items()), inputs, ref, graphs)
            except (runner.Interrupted, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - one setting's failure (an engine this GPU lacks) is its row
                row["error"] = runner._error_text(e)
                write(result)
                continue
            fn = prepared.pop("fn")
            row.update(prepared)
            if row is shipped:
                shipped_fn, shipped_inputs, shipped["times_ms"] = fn, inputs, []
                _record_parts(row, built, inputs[0], dims, args.profile_forwards)
                write(result)
                continue
            # against the shipped setting in alternating rounds, now: a later setting that hangs the GPU (a kernel
            # that never ran before) cannot take this comparison with it
            pair = {"shipped": [], "switched": []}
            row["round_ms"] = []
            with torch.inference_mode():
                for _ in range(args.rounds):
                    for side, f, x in (("shipped", shipped_fn, shipped_inputs), ("switched", fn, inputs)):
                        pair[side] += timing.time_calls(f, x, args.warmup, args.repeats, device)
                    row["round_ms"].append(timing.percentile(pair["switched"][-args.repeats:], 50))
            shipped["times_ms"] += pair["shipped"]
            _summarize(row, pair["switched"], args.batch)
            row["shipped_ms_p50"] = timing.percentile(pair["shipped"], 50)
            row["vs_shipped"] = row["shipped_ms_p50"] / row["latency_ms_p50"]
            del fn
            _record_parts(row, built, inputs[0], dims, args.profile_forwards)
            write(result)
    except (runner.Interrupted, KeyboardInterrupt) as e:  # the step's limit: the comparisons made so far stay
        for row in rows:
            if "latency_ms_p50" not in row and "error" not in row and row is not shipped:
                row["error"] = f"{NOT_RUN}: the run was interrupted ({e or type(e).__name__})"
    return result


def final(result: dict) -> dict:
    """A copy of `result` as it is written: the shipped setting's replays (every pair's) summarized."""
    result = copy.deepcopy(result)
    shipped = result["rows"][0]
    times = shipped.pop("times_ms", None)
    if times:
        _summarize(shipped, times, result["batch"])
        shipped["vs_shipped"] = 1.0
    elif "error" not in shipped:
        shipped["error"] = f"{NOT_RUN}: no switched setting ran beside it"
    for row in result["rows"][1:]:  # in a file written before the end: the settings not reached
        if "error" not in row and "images_per_s" not in row:
            row["error"] = f"{NOT_RUN}: the run had not reached it"
    return result


def _summarize(row: dict, times: list, batch: int) -> None:
    row["latency_ms_p50"] = timing.percentile(times, 50)
    row["images_per_s"] = batch / (row["latency_ms_p50"] * 1e-3)


def markdown(result: dict) -> str:
    env = result["env"]
    other_dtype = ""
    if any(row.get("dtype", result["dtype"]) != result["dtype"] for row in result["rows"]):
        other_dtype = (f" A dtype= setting is the model in that dtype (under its switches, if any), timed against "
                       f"the shipped {result['dtype']} one: its vs shipped is its speedup over that.")
    lines = [f"# Ablation: {result['model']} batch {result['batch']} {result['dtype']} vit_fast"
             f"{' (CUDA graphs)' if result['cuda_graphs'] else ''}", "",
             f"{env.get('gpu')}, torch {env.get('torch')}, triton {env.get('triton')}, commit {env.get('commit')}; "
             f"each switched setting timed in {result['rounds']} rounds of {result['repeats']} replays, alternating "
             "with the shipped one; images/s from the median of the replays, vs shipped against the shipped "
             f"replays of the same rounds, the spread from each round's median.{other_dtype}", "",
             "| setting | images/s | vs shipped | round medians, ms | max rel err | top-1 | first result s |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['setting']} | — | — | {row['error']} | | | |")
            continue
        spread = f"{min(row['round_ms']):.3f}-{max(row['round_ms']):.3f}" if row.get("round_ms") else "—"
        lines.append(f"| {row['setting']} | {row['images_per_s']:,.1f} | {row['vs_shipped']:.3f}× | {spread} "
                     f"| {row['max_rel_err']:.2e} | {row['top1_agree']:.3f} | {row['first_result_s']:.1f} |")
    profiled = [r for r in result["rows"] if "parts_ms" in r or "parts_error" in r]
    if profiled:
        kind = "device time of its kernels" if result["cuda_graphs"] else "CPU self time of its ops"
        lines += ["", f"Per layer part, ms a forward ({kind}, eager forwards under the profiler, grouped as "
                  "benchmarks/breakdown.py groups them):", "",
                  f"| setting | {' | '.join(breakdown.GROUPS)} | total |",
                  "|---|" + "---|" * (len(breakdown.GROUPS) + 1)]
        for row in profiled:
            if "parts_error" in row:
                lines.append(f"| {row['setting']} | {row['parts_error']} |" + " |" * len(breakdown.GROUPS))
                continue
            parts = row["parts_ms"]
            cells = " | ".join(f"{parts[g]:.3f}" for g in breakdown.GROUPS)
            lines.append(f"| {row['setting']} | {cells} | {sum(parts.values()):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    env_mod.kernel_settings()  # a bad VITFAST_* value in the environment: one line before anything is built
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    cli._set_precision()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    def write(result):  # after every setting: a step cut short keeps the comparisons it made
        result = final(result)
        (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "ablation.md").write_text(markdown(result))

    old_handler = signal.signal(signal.SIGTERM, runner._sigterm)  # a step's time limit: write what there is
    try:
        write(run(args, write))
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    print((out / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
