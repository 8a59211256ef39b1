"""Merge results of several runs on one kind of device into one results directory.

A device session limits each command to minutes, less than the whole grid takes; run the grid in slices
(`--models ...`, one call each) and merge: `python -m benchmarks.merge OUT_DIR RUN_DIR...`. Rows of later runs
replace rows with the same (model, dtype, batch, backend), except that a row without a measurement (not run, failed)
never replaces one with a measurement. The matmul peak becomes the median of the runs' peaks
and every row's MFU is recomputed against it; env comes from the newest run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from .cli import write_json
from .report import load, write_report


def merge(results_list: list) -> dict:
    if not results_list:
        raise ValueError("nothing to merge")
    gpus = {r["env"]["gpu"] for r in results_list}
    if len(gpus) > 1:
        raise ValueError(f"runs come from different devices {sorted(gpus)}; merge only runs of one device")
    settings = {r["env"].get("settings") for r in results_list}
    if len(settings) > 1:  # rows measured with other kernel switches would carry the wrong label
        raise ValueError(f"runs were measured with different kernel settings {sorted(map(str, settings))}; "
                         "merge only runs of one setting")
    configs = {r["env"].get("config") for r in results_list}
    if len(configs) > 1:  # rows of one model name, but other architectures (vit-fast demo --checkpoint)
        raise ValueError(f"runs were measured with different model configs {sorted(map(str, configs))}; merge only "
                         "runs of the same models")
    peak = statistics.median(r["matmul_peak_tflops"] for r in results_list)
    rows, order = {}, []
    for results in results_list:
        for row in results["rows"]:
            key = (row["model"], row["dtype"], row["batch"], row["backend"])
            if key not in rows:
                order.append(key)
            elif row["error"] is not None and rows[key]["error"] is None:
                continue  # a later run that did not measure the row (not run, failed) keeps the measurement
            rows[key] = dict(row, _run_peak=results["matmul_peak_tflops"])
    for row in rows.values():
        run_peak = row.pop("_run_peak")
        if row["mfu"] is not None:  # rescaled, so a CPU row measured against its own dtype's peak stays so
            mfu = row["mfu"] * run_peak / peak
            row["mfu"] = mfu if mfu <= 1 else None
    newest = max(results_list, key=lambda r: r["env"].get("date") or "")
    return {"env": dict(newest["env"]), "matmul_peak_tflops": peak, "rows": [rows[k] for k in order]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory to write the merged results.json, results.md and plots into")
    parser.add_argument("runs", nargs="+", help="result directories (or results.json files), oldest first")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    try:
        merged = merge([load(p) for p in args.runs])
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(merged, out / "results.json")
    for path in [out / "results.json"] + write_report(merged, out, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
