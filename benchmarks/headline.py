"""The headline comparison, first thing on a GPU and in one run: ViT-B/16 at batch 256 and batch 1 (CUDA graphs),
then ViT-L/16 at batch 256 and ViT-H/14 at batch 64, bf16, backends sdpa, compile (max-autotune) and vit_fast, with
the matmul peak measured in the same run.

Unlike the grid (runner.run_grid), rows run in exactly this order and each row is written as soon as it is
measured, so a run cut short still holds the rows that matter most. Building, compiling and autotuning stay out of
the timed region and are reported per row as `first_result_s` (seconds from building the backend to its first
output at that batch) in setup.json. Files in --out: results.json (the harness schema, mergeable with
`python -m benchmarks.merge`), setup.json, headline.md (the targets of issue 10, met or not, from the JSON).

`python -m benchmarks.headline --out DIR [--only vit_b_16:256,...] [--time-budget S]`; `--tiny` shrinks every
model (CPU smoke test; compile is left out on a CPU unless --backends names it).
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

ROWS = [("vit_b_16", 256), ("vit_b_16", 1), ("vit_l_16", 256), ("vit_h_14", 64)]
BACKENDS = ["sdpa", "vit_fast", "compile"]  # compile last per (model, batch): its build is the slowest
DTYPE = "bfloat16"
TINY = "depth=1,embed_dim=64,num_heads=2,mlp_dim=128"
# issue 10's targets: (model, batch) -> minimum vit_fast speedup over compile
SPEEDUP_TARGETS = {("vit_b_16", 256): 1.25, ("vit_l_16", 256): 1.2, ("vit_h_14", 64): 1.2}
MFU_TARGET = ("vit_b_16", 256, 0.60)
LATENCY_TARGET = ("vit_b_16", 1, 0.5)  # p50 ms with CUDA graphs


def _rows_arg(text: str) -> list:
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        model, _, batch = item.partition(":")
        if not batch.isdigit() or int(batch) < 1:
            raise argparse.ArgumentTypeError(f"expected MODEL:BATCH (e.g. vit_h_14:64), got {item!r}")
        out.append((model, int(batch)))
    if not out:
        raise argparse.ArgumentTypeError("expected at least one MODEL:BATCH")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.headline", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for results.json, setup.json and headline.md")
    p.add_argument("--only", type=_rows_arg, default=None,
                   help="MODEL:BATCH list to run instead of the four headline rows (e.g. vit_h_14:64)")
    p.add_argument("--backends", type=cli._csv(str), default=None,
                   help=f"default {','.join(BACKENDS)} (on a CPU without compile)")
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 50 GPU, 2 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after the first (default 5 GPU, 1 CPU)")
    p.add_argument("--compile-mode", default="max-autotune")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; rows not started by then are written as not run")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="shrink every model (smoke test of the harness)")
    args = p.parse_args(argv)
    import vit_fast

    rows = args.only or ROWS
    unknown = sorted({m for m, _ in rows} - set(vit_fast.list_models()))
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(vit_fast.list_models())}")
    bad = [b for b in (args.backends or []) if b not in schema.BACKENDS]
    if bad:
        p.error(f"unknown backends {bad}; expected some of {', '.join(schema.BACKENDS)}")
    return args


def _settings(args, device: torch.device, models: list, batches: list) -> runner.Settings:
    gpu = device.type == "cuda"
    return runner.Settings(
        models=models, batch_sizes=batches, dtypes=[DTYPE], backends=args.backends, device=device,
        resolution=112 if args.tiny else 224, repeats=args.repeats or (50 if gpu else 2),
        warmup=args.warmup if args.warmup is not None else (5 if gpu else 1), cuda_graphs=gpu, graph_max_batch=1,
        compile_mode=args.compile_mode if gpu else "default", time_budget=args.time_budget,
        overrides=cli._overrides(TINY) if args.tiny else {},
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(2**31), progress=False)


class Run:
    """Rows in the order measured, written after each one."""

    def __init__(self, out: Path, env: dict, peak: float, peak_how: str):
        self.out, self.results = out, {"env": env, "matmul_peak_tflops": peak, "rows": []}
        self.setup = {"matmul_peak": peak_how, "rows": []}
        self.started = time.monotonic()

    def add(self, row: dict, first_result_s=None, measure_s=None):
        self.results["rows"].append(row)
        self.setup["rows"].append({k: row[k] for k in ("model", "batch", "dtype", "backend")}
                                  | {"first_result_s": first_result_s, "measure_s": measure_s})
        self.write()
        what = row["error"] or (f"{row['images_per_s']:,.1f} img/s, p50 {row['latency_ms_p50']:.3f} ms, "
                                f"MFU {row['mfu']:.1%}, max_rel_err {row['max_rel_err']:.2e}")
        first = f", first result after {first_result_s:.1f} s" if first_result_s is not None else ""
        print(f"[{time.monotonic() - self.started:7.1f} s] {row['model']} b{row['batch']} {row['backend']}"
              f"{' (CUDA graphs)' if row['cuda_graphs'] else ''}: {what}{first}", flush=True)

    def write(self):
        cli.write_json(self.results, self.out / "results.json")
        tmp = self.out / "setup.json.tmp"
        tmp.write_text(json.dumps(self.setup, indent=1))
        tmp.replace(self.out / "setup.json")
        (self.out / "headline.md").write_text(summary(self.results, self.setup))


def _row(key, rows):
    return next((r for r in rows if (r["model"], r["batch"], r["backend"]) == key and r["error"] is None), None)


def summary(results: dict, setup: dict) -> str:
    """The headline table and issue 10's targets, every number read from `results`/`setup`."""
    rows = results["rows"]
    first = {(s["model"], s["batch"], s["backend"]): s["first_result_s"] for s in setup["rows"]}
    lines = [f"# Headline ({results['env']['gpu']}, {results['env']['date']})", "",
             f"matmul peak {results['matmul_peak_tflops']:.1f} TFLOP/s ({setup['matmul_peak']})", "",
             "| model | batch | backend | graphs | img/s | p50 ms | p90 ms | TFLOP/s | MFU | max rel err | top-1 | "
             "first result s | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, s: "—" if v is None else format(v, s)  # noqa: E731
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {'yes' if r['cuda_graphs'] else 'no'} | "
                     f"{f(r['images_per_s'], ',.1f')} | {f(r['latency_ms_p50'], '.3f')} | "
                     f"{f(r['latency_ms_p90'], '.3f')} | {f(r['tflops'], '.1f')} | {f(r['mfu'], '.1%')} | "
                     f"{f(r['max_rel_err'], '.2e')} | {f(r['top1_agree'], '.3f')} | "
                     f"{f(first.get((r['model'], r['batch'], r['backend'])), '.1f')} | {r['error'] or ''} |")
    lines += ["", "## Targets (issue 10)", ""]

    def verdict(ok, text):
        lines.append(f"- {'MET' if ok else 'NOT MET'}: {text}")

    for (model, batch), target in SPEEDUP_TARGETS.items():
        fast, comp = _row((model, batch, "vit_fast"), rows), _row((model, batch, "compile"), rows)
        if fast and comp:
            s = fast["images_per_s"] / comp["images_per_s"]
            verdict(s >= target, f"{model} b{batch}: vit_fast {s:.2f}x compile (target >= {target}x)")
        else:
            lines.append(f"- not measured: {model} b{batch} vit_fast vs compile")
    model, batch, target = MFU_TARGET
    fast = _row((model, batch, "vit_fast"), rows)
    if fast:
        verdict(fast["mfu"] >= target, f"{model} b{batch}: vit_fast MFU {fast['mfu']:.1%} of the measured peak "
                                       f"(target >= {target:.0%})")
    model, batch, target = LATENCY_TARGET
    fast = _row((model, batch, "vit_fast"), rows)
    if fast:
        verdict(fast["latency_ms_p50"] <= target and fast["cuda_graphs"],
                f"{model} b{batch}: vit_fast p50 {fast['latency_ms_p50']:.3f} ms "
                f"{'with' if fast['cuda_graphs'] else 'WITHOUT'} CUDA graphs (target <= {target} ms)")
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        fast, sdpa = _row((model, batch, "vit_fast"), rows), _row((model, batch, "sdpa"), rows)
        if fast and sdpa:
            verdict(fast["images_per_s"] >= sdpa["images_per_s"],
                    f"{model} b{batch}: vit_fast {fast['images_per_s'] / sdpa['images_per_s']:.2f}x sdpa eager")
            verdict(fast["max_rel_err"] <= 2 * sdpa["max_rel_err"],
                    f"{model} b{batch}: bf16 error vs fp32 {fast['max_rel_err']:.2e}, sdpa's {sdpa['max_rel_err']:.2e}"
                    f" (target <= 2x); top-1 agreement {fast['top1_agree']:.3f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    gpu = device.type == "cuda"
    args.backends = args.backends or (BACKENDS if gpu else [b for b in BACKENDS if b != "compile"])
    rows = args.only or ROWS
    if args.tiny:  # a smoke test: small batches too (112 px fits patch 14 and 16)
        rows = list(dict.fromkeys((m, min(b, 2)) for m, b in rows))
    models = list(dict.fromkeys(m for m, _ in rows))
    settings = _settings(args, device, models, sorted({b for _, b in rows}))
    cli._set_precision()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = env_mod.collect(device)
    peak, how = timing.matmul_peak_tflops(device)
    print(f"headline on {env['gpu']} (torch {env['torch']}, triton {env['triton']}), seed {settings.seed}; "
          f"matmul peak {peak:.1f} TFLOP/s ({how})", flush=True)
    run = Run(out, env, peak, how)
    run.write()
    previous = signal.signal(signal.SIGTERM, runner._sigterm)
    pending = [(m, b, backend) for m, b in rows for backend in settings.backends]
    try:
        _measure_all(pending, settings, peak, run)
    except (runner.Interrupted, KeyboardInterrupt) as e:
        done = {(r["model"], r["batch"], r["backend"]) for r in run.results["rows"]}
        for m, b, backend in pending:
            if (m, b, backend) not in done:
                run.add(schema.empty_row(m, b, DTYPE, backend, gpu and b <= 1 and backend != "compile",
                                         f"not run: the run was interrupted ({e or type(e).__name__})"))
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"wrote {out / 'results.json'}, {out / 'setup.json'}, {out / 'headline.md'}")
    print((out / "headline.md").read_text())
    return 0


def _measure_all(pending, settings: runner.Settings, peak: float, run: Run) -> None:
    device, dtype = settings.device, runner.DTYPES[DTYPE]
    masters, refs, built = {}, {}, {}
    for model, batch, backend in pending:
        graphs = device.type == "cuda" and batch <= settings.graph_max_batch and backend != "compile"
        if settings.time_budget is not None and time.monotonic() - run.started > settings.time_budget:
            run.add(schema.empty_row(model, batch, DTYPE, backend, graphs,
                                     f"not run: the {settings.time_budget:g} s time budget was used up"))
            continue
        reason = builders.static_skip_reason(backend, device)
        if reason:
            run.add(schema.empty_row(model, batch, DTYPE, backend, graphs, reason))
            continue
        t0 = time.monotonic()
        first_s = measure_s = None
        try:
            if model not in masters:
                masters[model] = builders.build_master(model, settings.resolution,
                                                       builders.model_seed(settings.seed, model), settings.overrides)
                batches = sorted({b for m, b, _ in pending if m == model})
                refs[model] = runner.reference_logits(masters[model], batches, settings)
            ref = refs[model][batch]
            if isinstance(ref, str):
                raise RuntimeError(ref)
            if (model, backend) not in built:
                for key in [k for k in built if k[0] != model]:  # one model's copies on the device at a time
                    del built[key]
                    if key[1] == "compile":
                        torch.compiler.reset()  # its compiled graphs and CUDA-graph pools too
                built[(model, backend)] = builders.build(backend, masters[model], dtype, device,
                                                         settings.compile_mode, preset=model)
            b = built[(model, backend)]
            x = runner.make_inputs(batch, settings.resolution, dtype, device, settings.seed, count=1)[0]
            with torch.inference_mode():  # the first output at this batch: compilation and autotuning happen here
                b.before_call()
                b.fn(x)
                timing.sync(device)
            first_s = time.monotonic() - t0
            del x
            t1 = time.monotonic()
            metrics = runner.measure(b, batch, dtype, ref, flops.vit_flops(masters[model].config), peak, graphs,
                                     settings)
            measure_s = time.monotonic() - t1
            row = schema.empty_row(model, batch, DTYPE, backend, graphs)
            row.update(metrics)
        except (runner.Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the row records why; the run goes on
            row = schema.empty_row(model, batch, DTYPE, backend, graphs, runner._error_text(e))
        finally:
            runner._cleanup(device)
        run.add(row, first_s, measure_s)


if __name__ == "__main__":
    sys.exit(main())
