"""Which attention/kernel implementation a model runs with, and where each one can run.

"torch" is eager math attention (the reference), "sdpa" is PyTorch's scaled_dot_product_attention, "triton" is
the fused Triton kernels of `kernels/`, "auto" picks triton on CUDA for bf16/fp16 models and sdpa otherwise (an fp32
model's dots would run as ieee FMA in the Triton kernels, about 2x slower than cuBLAS fp32 behind sdpa; ask for
"triton" to get it anyway). Nothing here touches the GPU at import time.
"""
from __future__ import annotations

import os
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


def resolve(name: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """The concrete backend `name` means for a model of `dtype` (None: not known, treated as 16-bit) on `device`;
    raises if triton cannot run there. "auto" is triton only on CUDA and for bf16/fp16 models."""
    if name == "auto":
        sixteen_bit = dtype is None or dtype in AUTO_TRITON_DTYPES
        return "triton" if (device.type == "cuda" and sixteen_bit and triton_unavailable_reason(device) is None) \
            else "sdpa"
    if name == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend 'triton' cannot run: {reason}")
    return name


def available_backends(device=None) -> list:
    """Backend names usable on `device` (default: the best device of this machine)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = ["torch", "sdpa"]
    if triton_unavailable_reason(torch.device(device)) is None:
        names.append("triton")
    return names + ["auto"]
