"""The on-screen tables and the JSON report of `vit-fast validate`."""
from __future__ import annotations

import json
import math
from pathlib import Path

LABELS = {
    "logits_rel_err_max": "logits rel. error, max",
    "logits_rel_err_mean": "logits rel. error, mean",
    "embedding_rel_err_max": "embedding rel. error, max",
    "embedding_rel_err_mean": "embedding rel. error, mean",
    "embedding_cosine_min": "embedding cosine, min",
    "embedding_cosine_mean": "embedding cosine, mean",
    "top1_agreement": "top-1 agreement",
    "top5_agreement": "top-5 agreement (overlap)",
}

SHORT = {"logits_rel_err": "logits rel. err", "embedding_rel_err": "emb. rel. err", "embedding_cosine": "emb. cosine",
         "top1": "same top-1", "top5": "top-5 overlap"}


def _num(value, key: str = "") -> str:
    if "cosine" in key and isinstance(value, float):
        return f"{value:.6f}"  # interesting digits are the last ones
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"


def _table(header, rows) -> list:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]


def _status(entry: dict) -> str:
    return entry["status"].upper() if entry["status"] in ("fail", "error") else entry["status"]


def where(row: dict) -> str:
    return row["op"] if row["block"] is None else f"{row['op']} (block {row['block']})"


def format_report(report: dict) -> str:
    m = report["model"]
    lines = [f"vit-fast validate: {m['name']}{' (RANDOM weights)' if m['random_weights'] else ''}, "
             f"{m['depth']} layers, width {m['embed_dim']}, {m['num_heads']} heads, MLP {m['mlp_dim']}, "
             f"{m['tokens']} tokens; dtype {report['dtype']}, batch {report['batch']}, device {report['device']}"]
    k = report["kernels"]
    lines.append("")
    if k["ran"]:
        where_ = ", Triton interpreter" if k["interpreter"] else ""
        lines.append(f"per-op: each Triton kernel at this model's shapes (weights of the first and last block, "
                     f"activations of the fp32 model{where_}); error = max |out - exact|, budget = {report['rule']}")
        if k.get("settings"):
            lines.append(f"kernel switches: {k['settings']}")
        rows = [[r["op"], "-" if r["block"] is None else r["block"], "x".join(map(str, r["shape"] or [])) or "-",
                 r["dtype"] or "-", _num(r["kernel_err"]), _num(r["torch_err"]), _num(r["budget"]), _status(r)]
                for r in report["ops"]]
        lines += _table(["op", "block", "input shape", "dtype", "kernel err", "torch err", "budget", "result"], rows)
        lines += [f"  {where(r)}: {r['reason']}" for r in report["ops"] if r["reason"]]
    else:
        lines.append(f"per-op: skipped: {k['reason']}")
    w = report["whole_model"]
    lines.append("")
    lines.append(f"whole model on {w['num_images']} {w['inputs']}: candidate {w['candidate']}, PyTorch "
                 f"{w['baseline']}, both against {w['reference']}")
    rows = [[LABELS.get(name, name), _num(v["candidate"], name), _num(v["baseline"], name), _num(v["budget"], name),
             _status(v)]
            for name, v in w["metrics"].items()]
    lines += _table(["metric", "candidate", "pytorch", "budget", "result"], rows)
    if w["skipped_images"]:
        lines.append(f"{len(w['skipped_images'])} file(s) skipped: "
                     + "; ".join(f"{s['image']}: {s['error']}" for s in w["skipped_images"][:3]))
    worst = w["worst"]
    if worst:
        keys = [k for k in worst[0] if k != "image"]
        lines.append("")
        lines.append(f"worst {len(worst)} images (candidate against fp32):")
        lines += _table(["image"] + [SHORT.get(k, k) for k in keys], [[r["image"]] + [_num(r[k], k) for k in keys]
                                                                     for r in worst])
    lines.append("")
    if report["passed"]:
        lines.append("PASS: every check is within its budget")
    else:
        lines.append(f"FAIL: {len(report['failures'])} budget(s) exceeded: " + "; ".join(report["failures"]))
    return "\n".join(lines)


def _strict(value):
    """NaN and infinities (a kernel that wrote garbage) as the strings "nan"/"inf", so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_strict(report), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
