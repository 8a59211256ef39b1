"""The environment block of results.json: which device, driver and software versions produced the numbers."""
from __future__ import annotations

import datetime as _dt
import platform
import re
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd=None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def git_commit() -> str:
    """The measured source's commit ("+changes" for an edited tree; vit_fast.provenance)."""
    from vit_fast.provenance import source_commit

    return source_commit()


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def driver_version(device) -> str | None:
    if torch.device(device).type != "cuda":
        return None
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def triton_version() -> str | None:
    try:
        import triton
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return None
    return getattr(triton, "__version__", None)


def kernel_settings() -> str | None:
    """'NAME=value, ...' for each kernel switch read at launch (which GEMM engine runs, whether FP8 partial sums are
    promoted, whether the autotuner sees the whole table) that this process sets to other than its default; None
    when all are at defaults. A row measured with a switch is labelled with it (the schema's optional env key
    "settings"). A switch set to a value it does not take ends the run in one line: every entry point (the harness,
    the headline, the breakdown) collects the env before it measures anything."""
    from vit_fast.switches import switch_settings

    try:
        return switch_settings()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def collect(device, overrides: dict | None = None) -> dict:
    """The env dict with the keys the results.json schema names (the optional "settings" included, and "config"
    where the run changed the presets' fields: `overrides`)."""
    cuda = torch.device(device).type == "cuda"
    config = {"config": ", ".join(f"{k}={v}" for k, v in overrides.items())} if overrides else {}
    return {
        "gpu": device_name(device),
        "driver": driver_version(device),
        "cuda": torch.version.cuda if cuda else None,
        "torch": torch.__version__,
        "triton": triton_version(),
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": kernel_settings(),
        **config,
    }


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (for result directory names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def default_results_dir(env: dict, root=None) -> Path:
    """root/<YYYY-MM-DD>-<device>; root defaults to benchmarks/results, the layout the README updater reads."""
    root = Path(root) if root is not None else REPO_ROOT / "benchmarks" / "results"
    return root / f"{env['date'][:10]}-{slug(env['gpu'] or 'unknown')}"
