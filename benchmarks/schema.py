"""The results.json schema, written down once: the harness writes it, the report and README tools read it, the
tests check it. Every row carries every key; a failed row has its reason in "error" and null metrics."""
from __future__ import annotations

ENV_KEYS = ("gpu", "driver", "cuda", "torch", "triton", "python", "commit", "date")
# "settings": the kernel switches set in the run (vit_fast/switches.py), null at defaults; results of
# earlier runs do not have the key. "config": the config fields the run changed on every preset (k=v, ...), only
# when it changed some (`vit-fast demo --checkpoint/--set` times that architecture)
ENV_OPTIONAL_KEYS = ("settings", "config")
TOP_KEYS = ("env", "matmul_peak_tflops", "rows")
ROW_KEYS = ("model", "batch", "dtype", "backend", "cuda_graphs", "images_per_s", "latency_ms_p50",
            "latency_ms_p90", "tflops", "mfu", "peak_mem_gb", "max_rel_err", "top1_agree", "error")
METRIC_KEYS = ("images_per_s", "latency_ms_p50", "latency_ms_p90", "tflops", "mfu", "peak_mem_gb",
               "max_rel_err", "top1_agree")
# metrics allowed to be null on a successful row (no CUDA memory counter on CPU; no MFU where the measured peak is
# below what the row achieved, i.e. no meaningful peak exists)
OPTIONAL_METRICS = ("peak_mem_gb", "mfu")

BACKENDS = ("eager", "sdpa", "compile", "vit_fast", "timm", "hf")
DTYPES = ("bfloat16", "float16", "float32", "float8")


def empty_row(model: str, batch: int, dtype: str, backend: str, cuda_graphs: bool, error: str | None = None) -> dict:
    row = {k: None for k in ROW_KEYS}
    row.update(model=model, batch=batch, dtype=dtype, backend=backend, cuda_graphs=cuda_graphs, error=error)
    return row


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(results: dict) -> list[str]:
    """Problems with a results dict (empty list when it matches the schema exactly)."""
    problems = []
    if not isinstance(results, dict):
        return [f"results must be an object, got {type(results).__name__}"]
    if tuple(sorted(results)) != tuple(sorted(TOP_KEYS)):
        problems.append(f"top-level keys {sorted(results)} != {sorted(TOP_KEYS)}")
    env = results.get("env")
    if not isinstance(env, dict) or not set(ENV_KEYS) <= set(env) <= set(ENV_KEYS + ENV_OPTIONAL_KEYS):
        problems.append(f"env keys {sorted(env) if isinstance(env, dict) else env}: expected {sorted(ENV_KEYS)} "
                        f"and optionally {list(ENV_OPTIONAL_KEYS)}")
    else:
        for k, v in env.items():
            if v is not None and not isinstance(v, str):
                problems.append(f"env.{k} must be a string or null, got {v!r}")
    peak = results.get("matmul_peak_tflops")
    if not _is_num(peak):
        problems.append(f"matmul_peak_tflops must be a number, got {peak!r}")
    rows = results.get("rows")
    if not isinstance(rows, list):
        return problems + [f"rows must be a list, got {type(rows).__name__}"]
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict) or sorted(row) != sorted(ROW_KEYS):
            problems.append(f"{where} keys {sorted(row) if isinstance(row, dict) else row} != {sorted(ROW_KEYS)}")
            continue
        if not isinstance(row["model"], str) or not isinstance(row["backend"], str):
            problems.append(f"{where}: model and backend must be strings")
        if not isinstance(row["batch"], int) or isinstance(row["batch"], bool) or row["batch"] < 1:
            problems.append(f"{where}: batch must be a positive int, got {row['batch']!r}")
        if row["dtype"] not in DTYPES:
            problems.append(f"{where}: dtype {row['dtype']!r} not in {DTYPES}")
        if not isinstance(row["cuda_graphs"], bool):
            problems.append(f"{where}: cuda_graphs must be a bool")
        if row["error"] is not None:
            if not isinstance(row["error"], str) or not row["error"]:
                problems.append(f"{where}: error must be a non-empty string or null")
            bad = [k for k in METRIC_KEYS if row[k] is not None]
            if bad:
                problems.append(f"{where}: failed row has non-null metrics {bad}")
            continue
        for k in METRIC_KEYS:
            v = row[k]
            if v is None and k in OPTIONAL_METRICS:
                continue
            if not _is_num(v) or v != v or v < 0:
                problems.append(f"{where}: {k} must be a non-negative number, got {v!r}")
        if _is_num(row["mfu"]) and row["mfu"] > 1:
            problems.append(f"{where}: mfu {row['mfu']:.3g} > 1: the peak is not a ceiling")
        if _is_num(row["top1_agree"]) and row["top1_agree"] > 1:
            problems.append(f"{where}: top1_agree must be a fraction in [0, 1]")
    return problems
