"""results.json -> results.md (one table per model, with speedups) and the PNG plots.

The harness calls `write_report` at the end of a run; `python -m benchmarks.report DIR` redraws both from a saved
DIR/results.json (for instance one fetched from a GPU machine). Every number printed comes from the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

from . import schema

BASELINES = ("eager", "sdpa", "compile")


def load(path) -> dict:
    """Read and validate results.json (a file or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    results = json.loads(path.read_text())
    problems = schema.validate(results)
    if problems:
        raise ValueError(f"{path} does not match the results schema: " + "; ".join(problems[:5]))
    return results


def ok(row) -> bool:
    return row["error"] is None and row["images_per_s"] is not None


def index(rows) -> dict:
    return {(r["model"], r["dtype"], r["batch"], r["backend"]): r for r in rows}


# float8 rows (vit_fast only) are compared with the baselines' bfloat16 rows: the same activations and outputs
BASELINE_DTYPE = {"float8": "bfloat16"}


def speedup(rows_by_key: dict, row: dict, baseline: str):
    dtype = BASELINE_DTYPE.get(row["dtype"], row["dtype"])
    base = rows_by_key.get((row["model"], dtype, row["batch"], baseline))
    if base is None or not ok(base) or not ok(row) or not base["images_per_s"]:
        return None
    return row["images_per_s"] / base["images_per_s"]


def gflop_per_image(rows) -> float | None:
    for r in rows:
        if ok(r) and r["tflops"] and r["images_per_s"]:
            return r["tflops"] * 1e3 / r["images_per_s"]
    return None


def is_cpu(env: dict) -> bool:
    return not env.get("cuda") and (env.get("gpu") or "cpu").lower().startswith("cpu")


def peak_description(results: dict) -> str:
    peak = results["matmul_peak_tflops"]
    if is_cpu(results["env"]):
        return (f"{peak:.3g} TFLOP/s, a torch.matmul in the first dtype of the grid measured on the CPU with all "
                "threads in this run; each row's MFU is against the peak of its own dtype, and is left out where "
                "a row beat that peak")
    return f"{peak:.1f} TFLOP/s, a bf16 8192³ torch.matmul measured on this GPU in this run"


def _fmt(v, spec: str, none: str = "—") -> str:
    return none if v is None else format(v, spec)


def _num(v) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3g}"


def _x(v) -> str:
    return "—" if v is None else f"{v:.2f}×"


def env_line(env: dict) -> str:
    parts = [env.get("gpu") or "unknown device"]
    if env.get("driver"):
        parts.append(f"driver {env['driver']}")
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    parts.append(f"torch {env.get('torch')}")
    parts.append(f"triton {env.get('triton') or 'absent'}")
    parts.append(f"Python {env.get('python')}")
    if env.get("settings"):
        parts.append(f"kernel switches {env['settings']}")
    if env.get("config"):
        parts.append(f"every model with {env['config']}")
    return ", ".join(parts)


def group_by_model(rows) -> "OrderedDict[str, list]":
    groups: OrderedDict = OrderedDict()
    for r in rows:
        groups.setdefault(r["model"], []).append(r)
    return groups


def markdown(results: dict) -> str:
    env, rows = results["env"], results["rows"]
    by_key = index(rows)
    out = [
        "# ViT inference benchmark",
        "",
        f"- Device: {env_line(env)}",
        f"- Commit `{env.get('commit')}`, {env.get('date')}",
        f"- Matmul peak (MFU denominator): {peak_description(results)}",
        "- Latency is one batch (p50 / p90 over the timed repeats, warm-up excluded); images/s = batch / p50;",
        "  TFLOP/s from analytic FLOPs (benchmarks/flops.py); max rel err = max over the batch of",
        "  ‖logits − ref‖ / ‖ref‖ against fp32 eager math on the same weights and inputs;",
        "  top-1 = argmax agreement with that reference.",
        "- Peak mem: torch.cuda.max_memory_allocated over the timed calls (weights, inputs, activations, CUDA-graph",
        "  pools; not compilation or autotuning scratch). MFU: TFLOP/s over the matmul peak above, for every dtype.",
        "- Speedup columns: this row's images/s over the eager / sdpa / compile row of the same model, dtype, batch "
        "(float8 rows: over the bfloat16 rows).",
        "",
    ]
    for model, mrows in group_by_model(rows).items():
        g = gflop_per_image(mrows)
        out.append(f"## {model}" + (f" ({_num(g)} GFLOP/image)" if g else ""))
        out.append("")
        good = [r for r in mrows if ok(r)]
        if good:
            out.append("| batch | dtype | backend | CUDA graphs | images/s | p50 ms | p90 ms | TFLOP/s | MFU | "
                       "peak mem GB | max rel err | top-1 | vs eager | vs sdpa | vs compile |")
            out.append("|---:|---|---|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in good:
                out.append(
                    f"| {r['batch']} | {r['dtype']} | {r['backend']} | {'yes' if r['cuda_graphs'] else ''} | "
                    f"{_num(r['images_per_s'])} | {_num(r['latency_ms_p50'])} | "
                    f"{_num(r['latency_ms_p90'])} | {_num(r['tflops'])} | "
                    f"{_fmt(r['mfu'] * 100 if r['mfu'] is not None else None, '.1f')}% | "
                    f"{_fmt(r['peak_mem_gb'], '.2f')} | {_fmt(r['max_rel_err'], '.2e')} | "
                    f"{_fmt(r['top1_agree'] * 100 if r['top1_agree'] is not None else None, '.0f')}% | "
                    + " | ".join(_x(speedup(by_key, r, b)) for b in BASELINES) + " |"
                )
            out.append("")
        failed: OrderedDict = OrderedDict()
        for r in mrows:
            if not ok(r):
                failed.setdefault((r["backend"], r["dtype"], r["error"]), []).append(r["batch"])
        if failed:
            out.append("Not measured:")
            out.append("")
            for (backend, dtype, error), batches in failed.items():
                out.append(f"- {backend}, {dtype}, batch {', '.join(map(str, batches))}: {error}")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_report(results: dict, out_dir, plots: bool = True) -> list:
    """Write results.md (and the plots) into out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    md.write_text(markdown(results))
    written = [md]
    if plots:
        from . import plots as plots_mod

        written += plots_mod.write_plots(results, out_dir)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                     description="Regenerate results.md and the plots from DIR/results.json.")
    parser.add_argument("dir", help="a results directory (holding results.json)")
    parser.add_argument("--no-plots", action="store_true", help="write results.md only")
    args = parser.parse_args(argv)
    try:
        results = load(args.dir)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in write_report(results, args.dir, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
