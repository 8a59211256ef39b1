"""Which attention/kernel implementation a model runs with, and where each one can run.

"torch" is eager math attention (the reference), "sdpa" is PyTorch's scaled_dot_product_attention, "triton" is
the fused Triton kernels of `kernels/`, "auto" picks triton on CUDA for bf16/fp16 models and sdpa otherwise (an fp32
model's dots would run as ieee FMA in the Triton kernels, about 2x slower than cuBLAS fp32 behind sdpa; ask for
"triton" to get it anyway). An FP8 model (vit_fast.quantize) needs sm_89 / sm_90 for its kernels: there "auto" runs
the torch emulation instead, with a warning. Nothing here touches the GPU at import time.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

BACKENDS = ("torch", "sdpa", "triton", "auto")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def triton_unavailable_reason(device: Optional[torch.device] = None) -> Optional[str]:
    """None when the triton backend can run on `device` (None: anywhere on this machine), else why not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton package is not installed"
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device is None and torch.cuda.is_available():
        return None
    if triton_interpreting():
        return None
    where = "a CPU tensor" if device is not None else "this machine"
    return (
        f"the triton backend needs a CUDA GPU and {where} has none; set TRITON_INTERPRET=1 before importing "
        "vit_fast to run the kernels (slowly) in Triton's CPU interpreter, or use backend 'sdpa'"
    )


AUTO_TRITON_DTYPES = (torch.bfloat16, torch.float16)


def resolve(name: str, device: torch.device, dtype: Optional[torch.dtype] = None, fp8: bool = False,
            warn: bool = True) -> str:
    """The concrete backend `name` means for a model of `dtype` (None: not known, treated as 16-bit) on `device`;
    raises if triton cannot run there. "auto" is triton only on CUDA and for bf16/fp16 models. `fp8`: the model has
    FP8 GEMM weights (vit_fast.quantize): on a GPU without FP8 tensor cores (older than sm_89) "auto" runs the torch
    emulation with sdpa attention (with a warning, unless `warn` is False: a question, not a run) and "triton" is
    refused with the reason."""
    if name == "auto":
        sixteen_bit = dtype is None or dtype in AUTO_TRITON_DTYPES
        if not (device.type == "cuda" and sixteen_bit and triton_unavailable_reason(device) is None):
            return "sdpa"
        reason = fp8_unavailable_reason(device) if fp8 else None
        if reason is not None:
            if warn:
                warnings.warn(f"backend 'auto' runs this FP8 model with the torch emulation (slow), not the FP8 "
                              f"kernels: {reason}", stacklevel=3)
            return "sdpa"
        return "triton"
    if name == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend 'triton' cannot run: {reason}")
        reason = fp8_unavailable_reason(device) if fp8 else None
        if reason is not None:
            raise RuntimeError(f"backend 'triton' cannot run this FP8 model: {reason}")
    return name


def fp8_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the FP8 kernels can run on `device` (sm_89 / sm_90, or the CPU interpreter), else why not."""
    from .kernels._common import fp8_unsupported_reason  # imported here: `import vit_fast` does not load kernels

    return fp8_unsupported_reason(device)


def fp8_cli_check(backend: str, device: Optional[str], dtype, why: str = "--dtype fp8") -> tuple:
    """For the command line, before any model work: (refusal, note) for `--dtype fp8` with `--backend` on this
    machine's `device` (None: the default device). refusal: why "triton" cannot run the FP8 kernels here; note: on
    a GPU older than sm_89, "auto" will run the torch emulation instead (as resolve() does). Each None when moot.
    why: what made the run FP8, as the messages name it (the flag, or an FP8 checkpoint)."""
    if dtype != "fp8" or backend not in ("triton", "auto"):
        return None, None
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if backend == "triton":
        reason = triton_unavailable_reason(dev) or fp8_unavailable_reason(dev)
        return (None if reason is None else f"--backend triton cannot run {why}: {reason}"), None
    if dev.type != "cuda" or triton_unavailable_reason(dev) is not None:
        return None, None
    reason = fp8_unavailable_reason(dev)
    note = None if reason is None else (f"{why} with --backend auto runs the torch emulation (slow), not the "
                                        f"FP8 kernels: {reason}")
    return None, note


def available_backends(device=None) -> list:
    """Backend names usable on `device` (default: the best device of this machine)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = ["torch", "sdpa"]
    if triton_unavailable_reason(torch.device(device)) is None:
        names.append("triton")
    return names + ["auto"]
