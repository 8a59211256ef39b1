"""The headline comparison, first thing on a GPU: rows measured in priority order, each written as soon as it is
measured, so a run cut short (a 15-minute device lease) still holds the rows that matter most.

Every row but compile replays CUDA graphs, at every batch, as Predictor serves a model and as compile's max-autotune
mode does by itself (the leases before 2026-12-05 captured batch 1 only). The default order (ROWS): ViT-B/16 at
batch 256 (sdpa, vit_fast, compile max-autotune) and batch 1, then ViT-L/16 at batch 256 (bf16 and float8 vit_fast, issue 13's FP8 target; sdpa; compile), ViT-H/14 at batch 64
(vit_fast, sdpa, compile), ViT-H/14 at batch 256 (bf16 and float8 vit_fast), and last B/16's batch-1 compile row.
The matmul peak is measured in the same run. Building, compiling and autotuning stay out of the timed region and
are reported per row as `first_result_s` (seconds from building the backend to its first output at that batch) in
setup.json, beside each row's whole wall time (`row_s`: the fp32 reference of a model's first row included) and, for
vit_fast rows, how many Triton kernels the row compiled before its first result (`triton_kernels_compiled`; the
rest came from Triton's cache: a lease compiles the headline's kernels during its test step, benchmarks/prewarm.py).

A row starts only when the time budget left covers what such a row took before in this run (or a stated guess,
START_GUESS_S, before one has run); `--resume` keeps the rows an earlier call measured into the same --out and runs
the rest with the same seed and peak, so the calls of one lease add up to one run. Files in --out: results.json (the
harness schema, mergeable with `python -m benchmarks.merge`), setup.json, headline.md (issue 10's and issue 13's
targets, met or not, from the JSON).

`python -m benchmarks.headline --out DIR [--only MODEL:BATCH[:BACKEND[:DTYPE]],...] [--time-budget S] [--resume]`;
`--tiny` shrinks every model (CPU smoke test; compile is left out on a CPU unless --backends names it).
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from pathlib import Path

import torch

from . import builders, cli, flops, runner, schema, timing
from . import env as env_mod

BF16, FP8 = "bfloat16", "float8"
# (model, batch, dtype, backend), most important first; compile last within each shape (its build is the slowest)
# The compile builds of L/16 and H/14 (issue 10's targets, about 140 s each) come before H/14's FP8 pair and B/16's
# batch-1 compile row (no target reads it): three leases in the first order never reached them.
ROWS = [
    ("vit_b_16", 256, BF16, "sdpa"), ("vit_b_16", 256, BF16, "vit_fast"), ("vit_b_16", 256, BF16, "compile"),
    ("vit_b_16", 1, BF16, "vit_fast"), ("vit_b_16", 1, BF16, "sdpa"),
    ("vit_l_16", 256, BF16, "vit_fast"), ("vit_l_16", 256, FP8, "vit_fast"), ("vit_l_16", 256, BF16, "sdpa"),
    ("vit_l_16", 256, BF16, "compile"),
    ("vit_h_14", 64, BF16, "vit_fast"), ("vit_h_14", 64, BF16, "sdpa"), ("vit_h_14", 64, BF16, "compile"),
    ("vit_h_14", 256, BF16, "vit_fast"), ("vit_h_14", 256, FP8, "vit_fast"),
    ("vit_b_16", 1, BF16, "compile"),
]
BACKENDS = ["sdpa", "vit_fast", "compile"]  # what MODEL:BATCH in --only expands to (bf16)
TINY = "depth=1,embed_dim=64,num_heads=2,mlp_dim=128"
# Seconds a row needs before it is started, until one of its kind has run in this run: guesses (nothing measured
# yet), meant to err long. compile: a max-autotune build per (model, batch); vit_fast: Triton compiles + autotuning.
START_GUESS_S = {"compile": 150.0, "vit_fast": 60.0}
START_GUESS_OTHER_S = 20.0
# issue 10's targets: (model, batch) -> minimum vit_fast speedup over compile
SPEEDUP_TARGETS = {("vit_b_16", 256): 1.25, ("vit_l_16", 256): 1.2, ("vit_h_14", 64): 1.2}
MFU_TARGET = ("vit_b_16", 256, 0.60)
LATENCY_TARGET = ("vit_b_16", 1, 0.5)  # p50 ms with CUDA graphs
# issue 13's target: (model, batch) -> minimum float8 vit_fast speedup over bf16 vit_fast
FP8_TARGETS = {("vit_l_16", 256): 1.4, ("vit_h_14", 256): 1.4}
NOT_RUN = "not run"  # prefix of a row that was never attempted (budget, interruption): --resume runs it again


def _rows_arg(text: str) -> list:
    """MODEL:BATCH (expanded to the --backends in bf16) or MODEL:BATCH:BACKEND[:DTYPE] items, comma-separated."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3, 4) or not parts[1].isdigit() or int(parts[1]) < 1:
            raise argparse.ArgumentTypeError(f"expected MODEL:BATCH[:BACKEND[:DTYPE]] (e.g. vit_h_14:64 or "
                                             f"vit_l_16:256:vit_fast:float8), got {item!r}")
        backend = parts[2] if len(parts) > 2 else None
        dtype = parts[3] if len(parts) > 3 else BF16
        if backend is not None and backend not in schema.BACKENDS:
            raise argparse.ArgumentTypeError(f"unknown backend {backend!r} in {item!r}; expected one of "
                                             f"{', '.join(schema.BACKENDS)}")
        if dtype not in schema.DTYPES:
            raise argparse.ArgumentTypeError(f"unknown dtype {dtype!r} in {item!r}; expected one of "
                                             f"{', '.join(schema.DTYPES)}")
        out.append((parts[0], int(parts[1]), dtype, backend))
    if not out:
        raise argparse.ArgumentTypeError("expected at least one MODEL:BATCH")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.headline", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for results.json, setup.json and headline.md")
    p.add_argument("--only", type=_rows_arg, default=None,
                   help="rows to run instead of the headline's, in this order: MODEL:BATCH (the --backends, bf16) "
                        "or MODEL:BATCH:BACKEND[:DTYPE], e.g. vit_h_14:64,vit_l_16:256:vit_fast:float8")
    p.add_argument("--backends", type=cli._csv(str), default=None,
                   help=f"keep only these backends (MODEL:BATCH items expand to them; default {','.join(BACKENDS)}; "
                        "on a CPU compile only when named here)")
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 50 GPU, 2 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after the first (default 5 GPU, 1 CPU)")
    p.add_argument("--compile-mode", default="max-autotune")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; a row whose kind needs more than what is left is written as not run")
    p.add_argument("--deadline", type=float, default=None,
                   help="wall-clock end (epoch seconds) the rows must finish by: the time budget is what is left of "
                        "it when the run starts (a device step's limit counts from before python starts)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already measured in --out by this commit with the same settings (same seed "
                        "and peak) and run only the others")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="shrink every model (smoke test of the harness)")
    args = p.parse_args(argv)
    import vit_fast

    models = {r[0] for r in (args.only or ROWS)}
    unknown = sorted(models - set(vit_fast.list_models()))
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(vit_fast.list_models())}")
    bad = [b for b in (args.backends or []) if b not in schema.BACKENDS]
    if bad:
        p.error(f"unknown backends {bad}; expected some of {', '.join(schema.BACKENDS)}")
    return args


def plan(args, gpu: bool) -> list:
    """The (model, batch, dtype, backend) rows of this run, in order: MODEL:BATCH items expand to the --backends
    (default BACKENDS), and only --backends are kept; on a CPU compile only when --backends names it."""
    allowed = args.backends or [b for b in schema.BACKENDS if gpu or b != "compile"]
    rows = []
    for model, batch, dtype, backend in (args.only or ROWS):
        for b in ([backend] if backend else (args.backends or BACKENDS)):
            if b in allowed:
                rows.append((model, min(batch, 2) if args.tiny else batch, dtype, b))
    return list(dict.fromkeys(rows))


def _settings(args, device: torch.device, rows: list, seed: int) -> runner.Settings:
    gpu = device.type == "cuda"
    return runner.Settings(
        models=list(dict.fromkeys(r[0] for r in rows)), batch_sizes=sorted({r[1] for r in rows}),
        dtypes=list(dict.fromkeys(r[2] for r in rows)), backends=list(dict.fromkeys(r[3] for r in rows)),
        device=device, resolution=112 if args.tiny else 224, repeats=args.repeats or (50 if gpu else 2),
        # every row but compile replays CUDA graphs, at every batch: how Predictor serves a model, and what compile's
        # max-autotune mode does by itself (the second lease's profile: 1.2 ms of launch gaps in a B/16 b256 forward)
        warmup=args.warmup if args.warmup is not None else (5 if gpu else 1), cuda_graphs=gpu,
        graph_max_batch=max(r[1] for r in rows),
        compile_mode=args.compile_mode if gpu else "default", time_budget=args.time_budget,
        overrides=cli._overrides(TINY) if args.tiny else {}, seed=seed, progress=False)


def _key(row: dict) -> tuple:
    return row["model"], row["batch"], row["dtype"], row["backend"]


class Run:
    """Rows in the order measured, written after each one (an earlier call's rows first when resuming)."""

    def __init__(self, out: Path, env: dict, peak: float, peak_how: str, seed: int, previous=None, started=None):
        self.out, self.results = out, {"env": env, "matmul_peak_tflops": peak, "rows": []}
        self.setup = {"matmul_peak": peak_how, "seed": seed, "rows": []}
        if previous:  # the measured rows (and real failures) of earlier calls; their "not run" rows are redone
            results, setup = previous
            first = {_key(s): s for s in setup["rows"]}
            for row in results["rows"]:
                if not (row["error"] or "").startswith(NOT_RUN):
                    self.results["rows"].append(row)
                    self.setup["rows"].append(first.get(_key(row), dict(zip(("model", "batch", "dtype", "backend"),
                                                                             _key(row)))))
        self.started = time.monotonic() if started is None else started  # the time budget counts from here

    def done(self) -> set:
        return {_key(r) for r in self.results["rows"]}

    def add(self, row: dict, first_result_s=None, measure_s=None, row_s=None, compiled=None):
        self.results["rows"] = [r for r in self.results["rows"] if _key(r) != _key(row)] + [row]
        self.setup["rows"] = [s for s in self.setup["rows"] if _key(s) != _key(row)]
        self.setup["rows"].append({k: row[k] for k in ("model", "batch", "dtype", "backend")}
                                  | {"first_result_s": first_result_s, "measure_s": measure_s, "row_s": row_s,
                                     "triton_kernels_compiled": compiled})
        self.write()
        what = row["error"] or (f"{row['images_per_s']:,.1f} img/s, p50 {row['latency_ms_p50']:.3f} ms, "
                                f"MFU {_fmt(row['mfu'], '.1%')}, max_rel_err {row['max_rel_err']:.2e}")
        first = f", first result after {first_result_s:.1f} s" if first_result_s is not None else ""
        print(f"[{time.monotonic() - self.started:7.1f} s] {row['model']} b{row['batch']} {row['dtype']} "
              f"{row['backend']}{' (CUDA graphs)' if row['cuda_graphs'] else ''}: {what}{first}", flush=True)

    def need_s(self, model: str, dtype: str, backend: str) -> float:
        """Seconds a (model, dtype, backend) row is expected to take, from the rows measured so far: every compile
        row is a new max-autotune build (the longest seen of its kind); other rows reuse what the model's earlier rows
        of that kind built (the shortest of those), but a model's first one builds, autotunes its GEMM shapes and
        computes the model's fp32 reference (the guess, or the shortest first row of its kind if longer)."""
        def seen(same_model):
            return [s["row_s"] for s in self.setup["rows"] if s.get("row_s") is not None
                    and (s["dtype"], s["backend"]) == (dtype, backend) and (s["model"] == model) == same_model]

        guess = START_GUESS_S.get(backend, START_GUESS_OTHER_S)
        if backend == "compile":
            return max(seen(True) + seen(False), default=guess)
        return min(seen(True), default=max(guess, min(seen(False), default=guess)))

    def write(self):
        cli.write_json(self.results, self.out / "results.json")
        tmp = self.out / "setup.json.tmp"
        tmp.write_text(json.dumps(self.setup, indent=1))
        tmp.replace(self.out / "setup.json")
        (self.out / "headline.md").write_text(summary(self.results, self.setup))


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def _row(key, rows):
    """The successful row (model, batch, dtype, backend), or None."""
    return next((r for r in rows if _key(r) == key and r["error"] is None), None)


def summary(results: dict, setup: dict) -> str:
    """The headline table and issue 10's and 13's targets, every number read from `results`/`setup`."""
    rows = results["rows"]
    first = {_key(s): s["first_result_s"] for s in setup["rows"]}
    lines = [f"# Headline ({results['env']['gpu']}, {results['env']['date']}, commit {results['env']['commit']})",
             "", f"matmul peak {results['matmul_peak_tflops']:.1f} TFLOP/s ({setup['matmul_peak']})", "",
             "| model | batch | dtype | backend | graphs | img/s | p50 ms | p90 ms | TFLOP/s | MFU | max rel err | "
             "top-1 | first result s | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['backend']} | "
                     f"{'yes' if r['cuda_graphs'] else 'no'} | {_fmt(r['images_per_s'], ',.1f')} | "
                     f"{_fmt(r['latency_ms_p50'], '.3f')} | {_fmt(r['latency_ms_p90'], '.3f')} | "
                     f"{_fmt(r['tflops'], '.1f')} | {_fmt(r['mfu'], '.1%')} | {_fmt(r['max_rel_err'], '.2e')} | "
                     f"{_fmt(r['top1_agree'], '.3f')} | {_fmt(first.get(_key(r)), '.1f')} | {r['error'] or ''} |")
    compiled = [f"{' '.join(map(str, _key(s)[:3]))} {s['triton_kernels_compiled']}" for s in setup["rows"]
                if s.get("triton_kernels_compiled") is not None]
    if compiled:
        lines += ["", "First result s: from building a backend to its first output, compiling and autotuning "
                      "included. Triton kernels the vit_fast rows compiled before their first result (the rest came "
                      "from its cache; a lease compiles the headline's kernels beside its tests, "
                      f"benchmarks/prewarm.py): {', '.join(compiled)}."]
    lines += ["", "## Targets (issue 10)", ""]

    def verdict(ok, text):
        lines.append(f"- {'MET' if ok else 'NOT MET'}: {text}")

    for (model, batch), target in SPEEDUP_TARGETS.items():
        fast, comp = _row((model, batch, BF16, "vit_fast"), rows), _row((model, batch, BF16, "compile"), rows)
        if fast and comp:
            s = fast["images_per_s"] / comp["images_per_s"]
            verdict(s >= target, f"{model} b{batch}: vit_fast {s:.2f}x compile (target >= {target}x)")
        else:
            lines.append(f"- not measured: {model} b{batch} vit_fast vs compile")
    model, batch, target = MFU_TARGET
    fast = _row((model, batch, BF16, "vit_fast"), rows)
    if fast and fast["mfu"] is not None:
        verdict(fast["mfu"] >= target, f"{model} b{batch}: vit_fast MFU {fast['mfu']:.1%} of the measured peak "
                                       f"(target >= {target:.0%})")
    model, batch, target = LATENCY_TARGET
    fast = _row((model, batch, BF16, "vit_fast"), rows)
    if fast:
        verdict(fast["latency_ms_p50"] <= target and fast["cuda_graphs"],
                f"{model} b{batch}: vit_fast p50 {fast['latency_ms_p50']:.3f} ms "
                f"{'with' if fast['cuda_graphs'] else 'WITHOUT'} CUDA graphs (target <= {target} ms)")
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        fast, sdpa = _row((model, batch, BF16, "vit_fast"), rows), _row((model, batch, BF16, "sdpa"), rows)
        if fast and sdpa:
            verdict(fast["images_per_s"] >= sdpa["images_per_s"],
                    f"{model} b{batch}: vit_fast {fast['images_per_s'] / sdpa['images_per_s']:.2f}x sdpa eager")
            verdict(fast["max_rel_err"] <= 2 * sdpa["max_rel_err"],
                    f"{model} b{batch}: bf16 error vs fp32 {fast['max_rel_err']:.2e}, sdpa's {sdpa['max_rel_err']:.2e}"
                    f" (target <= 2x); top-1 agreement {fast['top1_agree']:.3f}")
    lines += ["", "## Targets (issue 13: FP8)", ""]
    for (model, batch), target in FP8_TARGETS.items():
        fp8, bf16 = _row((model, batch, FP8, "vit_fast"), rows), _row((model, batch, BF16, "vit_fast"), rows)
        if fp8 and bf16:
            s = fp8["images_per_s"] / bf16["images_per_s"]
            verdict(s >= target, f"{model} b{batch}: float8 vit_fast {s:.2f}x bf16 vit_fast (target >= {target}x); "
                                 f"error vs fp32 {fp8['max_rel_err']:.2e} (bf16 {bf16['max_rel_err']:.2e}), top-1 "
                                 f"agreement {fp8['top1_agree']:.3f} (bf16 {bf16['top1_agree']:.3f})")
        else:
            lines.append(f"- not measured: {model} b{batch} float8 vs bf16 vit_fast")
    return "\n".join(lines) + "\n"


def _previous(out: Path, env: dict, settings: dict):
    """(results, setup) an earlier call wrote into `out` with this commit, device and settings, else None (and why)."""
    try:
        results = json.loads((out / "results.json").read_text())
        setup = json.loads((out / "setup.json").read_text())
    except (OSError, ValueError):
        return None, "no earlier results there"
    if schema.validate(results) or "seed" not in setup:
        return None, "the earlier results are incomplete"
    for what, old, new in (("device", results["env"]["gpu"], env["gpu"]),
                           ("commit", results["env"]["commit"], env["commit"]),
                           ("settings", setup.get("settings"), settings),
                           ("kernel switches", results["env"].get("settings"), env.get("settings"))):
        if old != new:
            return None, f"the earlier results differ in {what} ({old} there, now {new})"
    return (results, setup), None


def main(argv=None) -> int:
    started = time.monotonic()  # the budget includes the setup (peak, env): the step's limit does too
    args = parse_args(argv)
    env_mod.kernel_settings()  # a bad VITFAST_* value: one line before anything runs
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    gpu = device.type == "cuda"
    rows = plan(args, gpu)
    if not rows:
        print("error: no rows left to run: --backends removed every row of the plan", file=sys.stderr)
        return 2
    cli._set_precision()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = env_mod.collect(device, cli._overrides(TINY) if args.tiny else None)
    fixed = {"tiny": args.tiny, "resolution": 112 if args.tiny else 224, "compile_mode": args.compile_mode,
             "repeats": args.repeats, "warmup": args.warmup}  # what rows of one run must share
    previous, why_not = _previous(out, env, fixed) if args.resume else (None, None)
    if why_not:
        print(f"not resuming: {why_not}", flush=True)
    if previous:
        results, setup = previous
        seed, peak, how = setup["seed"], results["matmul_peak_tflops"], setup["matmul_peak"]
    else:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        peak, how = timing.matmul_peak_tflops(device)
    if args.deadline is not None:
        left = args.deadline - time.time() + (time.monotonic() - started)  # from this process's start
        args.time_budget = left if args.time_budget is None else min(args.time_budget, left)
    settings = _settings(args, device, rows, seed)
    run = Run(out, env, peak, how, seed, previous, started)
    run.setup["settings"] = fixed
    pending = [r for r in rows if r not in run.done()]
    print(f"headline on {env['gpu']} (torch {env['torch']}, triton {env['triton']}, commit {env['commit']}), "
          f"seed {seed}; matmul peak {peak:.1f} TFLOP/s ({how}); {len(pending)} of {len(rows)} rows to run"
          + (" (resumed)" if previous else ""), flush=True)
    run.write()
    old_handler = signal.signal(signal.SIGTERM, runner._sigterm)
    try:
        _measure_all(pending, settings, peak, run)
    except (runner.Interrupted, KeyboardInterrupt) as e:
        for m, b, dtype, backend in pending:
            if (m, b, dtype, backend) not in run.done():
                run.add(schema.empty_row(m, b, dtype, backend, _graphs(settings, b, backend),
                                         f"{NOT_RUN}: the run was interrupted ({e or type(e).__name__})"))
        return 143
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    print(f"wrote {out / 'results.json'}, {out / 'setup.json'}, {out / 'headline.md'}")
    print((out / "headline.md").read_text())
    return 0


def _graphs(settings: runner.Settings, batch: int, backend: str) -> bool:
    # compile (max-autotune) captures its own CUDA graphs; wrapping it again would nest captures
    return settings.device.type == "cuda" and batch <= settings.graph_max_batch and backend != "compile"


def _measure_all(pending, settings: runner.Settings, peak: float, run: Run) -> None:
    device = settings.device
    masters, refs, built = {}, {}, {}
    for model, batch, dtype_name, backend in pending:
        graphs = _graphs(settings, batch, backend)
        dtype = runner.DTYPES[dtype_name]
        if settings.time_budget is not None:
            left = settings.time_budget - (time.monotonic() - run.started)
            need = run.need_s(model, dtype_name, backend)
            if left < need:
                run.add(schema.empty_row(model, batch, dtype_name, backend, graphs,
                                         f"{NOT_RUN}: {left:.0f} s of the {settings.time_budget:g} s time budget "
                                         f"left, a {dtype_name} {backend} row takes about {need:.0f} s"))
                continue
        reason = builders.static_skip_reason(backend, device)
        if not reason and dtype == builders.FP8:
            reason = builders.fp8_skip_reason(backend, device)
        if reason:
            run.add(schema.empty_row(model, batch, dtype_name, backend, graphs, reason))
            continue
        row_start = time.monotonic()
        first_s = measure_s = None
        compiled = None
        try:
            if model not in masters:
                masters[model] = builders.build_master(model, settings.resolution,
                                                       builders.model_seed(settings.seed, model), settings.overrides)
            if model not in refs:
                batches = sorted({b for m, b, _, _ in pending if m == model})
                refs[model] = runner.reference_logits(masters[model], batches, settings)
            ref = refs[model][batch]
            if isinstance(ref, str):
                raise RuntimeError(ref)
            t0 = time.monotonic()
            cached = triton_cached_kernels() if backend == "vit_fast" else None
            if (model, dtype_name, backend) not in built:
                for key in [k for k in built if k[0] != model]:  # one model's copies on the device at a time
                    del built[key]
                    if key[2] == "compile":
                        torch.compiler.reset()  # its compiled graphs and CUDA-graph pools too
                built[(model, dtype_name, backend)] = builders.build(backend, masters[model], dtype, device,
                                                                     settings.compile_mode, preset=model)
            b = built[(model, dtype_name, backend)]
            x = runner.make_inputs(batch, settings.resolution, builders.input_dtype(dtype), device, settings.seed,
                                   count=1)[0]
            with torch.inference_mode():  # the first output at this batch: compilation and autotuning happen here
                b.before_call()
                b.fn(x)
                timing.sync(device)
            first_s = time.monotonic() - t0
            after = triton_cached_kernels() if cached is not None else None
            compiled = after - cached if after is not None else None
            del x
            t1 = time.monotonic()
            metrics = runner.measure(b, batch, builders.input_dtype(dtype), ref,
                                     flops.vit_flops(masters[model].config), peak, graphs, settings)
            measure_s = time.monotonic() - t1
            row = schema.empty_row(model, batch, dtype_name, backend, graphs)
            row.update(metrics)
        except (runner.Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the row records why; the run goes on
            row = schema.empty_row(model, batch, dtype_name, backend, graphs, runner._error_text(e))
        finally:
            runner._cleanup(device)
        run.add(row, first_s, measure_s, time.monotonic() - row_start, compiled)


def triton_cached_kernels():
    """Compiled kernels in Triton's cache directory (one `__grp__` file per finished compile), or None when it
    cannot be read. Its growth over a vit_fast row's first result is what that row compiled itself: the rest came
    from the cache (a lease compiles the headline's kernels beside its tests, benchmarks/prewarm.py)."""
    import triton

    try:
        root = Path(triton.knobs.cache.dir)
        return sum(1 for _ in root.glob("*/__grp__*.json")) if root.is_dir() else 0
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
