"""PNG plots of a results dict: throughput vs batch size per model (a line per backend, log-x), and heatmaps of
vit_fast's speedup over torch.compile across models x batch sizes (one per dtype; missing cells drawn as such).
Without matplotlib the plots are skipped with a message; nothing else depends on it.
"""
from __future__ import annotations

import math
from pathlib import Path

from .report import env_line, group_by_model, index, ok, speedup

LINESTYLES = {"bfloat16": "-", "float16": "--", "float32": ":"}


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict, out_dir) -> list:
    plt = _matplotlib()
    if plt is None:
        print("matplotlib is not installed: plots skipped "
              "(pip install matplotlib, then python -m benchmarks.report DIR)")
        return []
    out_dir = Path(out_dir)
    written = []
    for model, rows in group_by_model(results["rows"]).items():
        written.append(throughput_plot(plt, model, rows, results["env"], out_dir / f"throughput_{model}.png"))
    dtypes = list(dict.fromkeys(r["dtype"] for r in results["rows"]))
    for dtype in dtypes:
        written.append(speedup_heatmap(plt, results, dtype, out_dir / f"speedup_vit_fast_vs_compile_{dtype}.png"))
    return written


def throughput_plot(plt, model: str, rows: list, env: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colors = {b: f"C{i}" for i, b in enumerate(backends)}
    drawn = 0
    for backend in backends:
        for dtype in dict.fromkeys(r["dtype"] for r in rows):
            pts = sorted((r["batch"], r["images_per_s"]) for r in rows
                         if r["backend"] == backend and r["dtype"] == dtype and ok(r))
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[backend],
                    linestyle=LINESTYLES.get(dtype, "-"), label=f"{backend} {dtype}")
            drawn += 1
    ax.set_xscale("log", base=2)
    if drawn:
        _log_y(ax, [r["images_per_s"] for r in rows if ok(r)])
        ax.legend(fontsize=8, ncol=2)
    else:
        ax.text(0.5, 0.5, "no successful rows", ha="center", va="center", transform=ax.transAxes)
    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"{model}: throughput\n{env_line(env)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_y(ax, values) -> None:
    """Log y axis with plain numbers on the ticks (minor ticks labelled too when the data span under 1.5 decades)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    span = math.log10(max(values) / min(values)) if min(values) > 0 else 2
    ax.yaxis.set_minor_formatter(plain if span < 1.5 else NullFormatter())


def speedup_heatmap(plt, results: dict, dtype: str, path: Path) -> Path:
    from matplotlib.colors import TwoSlopeNorm

    rows = results["rows"]
    by_key = index(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    grid = []
    for m in models:
        line = []
        for b in batches:
            row = by_key.get((m, dtype, b, "vit_fast"))
            s = speedup(by_key, row, "compile") if row else None
            line.append(float("nan") if s is None else s)
        grid.append(line)
    finite = [v for line in grid for v in line if not math.isnan(v)]
    lo = min(finite + [0.9]) if finite else 0.5
    hi = max(finite + [1.1]) if finite else 2.0
    fig, ax = plt.subplots(figsize=(max(6.5, 1.3 * len(batches) + 3), 0.45 * len(models) + 2))
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("#d0d0d0")
    import numpy as np

    data = np.ma.masked_invalid(np.array(grid, dtype=float))
    im = ax.imshow(data, cmap=cmap, norm=TwoSlopeNorm(vmin=min(lo, 0.99), vcenter=1.0, vmax=max(hi, 1.01)),
                   aspect="auto")
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}×", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(batches)))
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels(models)
    ax.set_xlabel("batch size")
    ax.set_title(f"vit_fast images/s over torch.compile's, {dtype} (n/a: not measured)\n{env_line(results['env'])}",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="speedup")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
