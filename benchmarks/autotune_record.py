"""What the autotuner picked on a GPU, and what every config it timed measured.

Read from Triton's on-disk autotune cache: an autotuned kernel with `cache_results=True` (all of this project's) or
any under TRITON_CACHE_AUTOTUNING=1 (gpu_steps.sh sets it) writes `<kernel>.autotune.json` next to its compiled
binaries, one file per key, holding each config it timed and the timings (median, 20th and 80th percentiles, ms, of
`vit_fast.kernels.autotune.autotune_bench`: triton's `do_bench`, or for every config of a key whose first config ran
under GRAPH_TIMED_BELOW_MS there, its CUDA-graph benchmarker; a config that failed to build or run times as
infinite, recorded here as null). The lease writes this record beside its results, so a tiling change (a new table
row, a prune rule) is checked against what the autotuner chose and by how much, not only against end-to-end speed.
`python -m benchmarks.autotune_record --cache DIR --out DIR` -> DIR/autotune.json and DIR/autotune.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def collect(cache_dir) -> list:
    """[{kernel, key, file, configs: [{kwargs, num_warps, num_stages, ms}] fastest first, failed (ms null) last}],
    one entry per cached key; `file` is the cache file under cache_dir (two compiles of one kernel, e.g. another
    source version, can share a key)."""
    entries = []
    for path in sorted(Path(cache_dir).rglob("*.autotune.json")):
        try:
            data = json.loads(path.read_text())
            configs = [{"kwargs": c["kwargs"], "num_warps": c["num_warps"], "num_stages": c["num_stages"],
                        "ms": _finite(t[0] if isinstance(t, list) else t)} for c, t in data["configs_timings"]]
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            print(f"autotune_record: skipped {path}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        entries.append({"kernel": path.name.removesuffix(".autotune.json"), "key": data.get("key"),
                        "file": path.relative_to(cache_dir).as_posix(),
                        "configs": sorted(configs, key=lambda c: (c["ms"] is None, c["ms"] or 0.0))})
    return sorted(entries, key=lambda e: (e["kernel"], json.dumps(e["key"])))


def _finite(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _config(c: dict) -> str:
    kw = c["kwargs"]
    tile = "x".join(str(kw[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in kw)
    rest = ",".join(f"{k}={v}" for k, v in kw.items() if k not in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"))
    return f"{tile} w{c['num_warps']}s{c['num_stages']}" + (f" {rest}" if rest else "")


def markdown(entries: list) -> str:
    lines = ["# Autotuner choices", "",
             "Per kernel and autotune key: the picked config (fastest median), the runner-up, and how much slower "
             "each and the slowest timed config ran (configs that failed to run are counted, not timed).", "",
             "| kernel | key | picked | ms | runner-up | +% | configs | slowest +% |",
             "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        best, *others = [c for c in e["configs"] if c["ms"] is not None] or [None]
        if best is None:
            continue
        up = others[0] if others else None
        pct = (lambda c: f"{100 * (c['ms'] / best['ms'] - 1):.1f}") if best["ms"] > 0 else (lambda c: "—")
        key = json.dumps(e["key"]).replace('"torch.', '"')
        lines.append(f"| `{e['kernel']}` | `{key}` | {_config(best)} | {best['ms']:.4f} | "
                     f"{_config(up) if up else '—'} | {pct(up) if up else '—'} | {len(e['configs'])} | "
                     f"{pct(others[-1]) if others else '—'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="Triton's cache directory (TRITON_CACHE_DIR)")
    parser.add_argument("--out", required=True, help="folder for autotune.json and autotune.md")
    args = parser.parse_args(argv)
    entries = collect(args.cache)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "autotune.json").write_text(json.dumps(entries, indent=1) + "\n")
    (out / "autotune.md").write_text(markdown(entries))
    print(f"autotune_record: {len(entries)} autotuned keys from {args.cache} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
