"""Tolerances per dtype, stated once for the whole suite.

`KERNEL_TOL` bounds a single fused op against the eager PyTorch composition it replaces; `MODEL_TOL` bounds
whole-model outputs (errors add up over layers). fp32 kernels run with ieee dots (no tf32). bf16 is loose
because the Triton interpreter truncates fp32->bf16 casts instead of rounding them.
"""
import torch

# dtype -> (atol, rtol)
KERNEL_TOL = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (6e-2, 6e-2),
}

MODEL_TOL = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (5e-2, 5e-2),
    torch.bfloat16: (1e-1, 1e-1),
}

# Loaders and backends must reproduce the source model in fp32 to this relative error (issue: <= 1e-5).
LOADER_REL_ERR = 1e-5


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, table=KERNEL_TOL):
    atol, rtol = table[dtype]
    assert torch.isfinite(out).all(), "non-finite values (unwritten or poisoned elements?)"
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN so any element a kernel fails to write makes the comparison fail."""
    return t.fill_(float("nan"))

# FP8 kernels against their torch emulation (vit_fast.fp8: same float8 casts and scales, fp32 matmul). Identical
# quantized inputs leave only the fp32 summation order (~1e-6); the LayerNorm-quantizing engines may round an
# element one e4m3 step the other way when the fp32 LN differs in its last bit (4 % of that element, times its
# weight), hence the absolute slack; bf16 outputs add the interpreter's truncating cast.
FP8_TOL = {
    torch.float32: (2e-2, 1e-2),
    torch.bfloat16: (6e-2, 6e-2),
}
