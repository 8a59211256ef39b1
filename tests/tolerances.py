"""Tolerances per dtype, stated once for the whole suite.

`KERNEL_TOL` bounds a single fused op against the eager PyTorch composition it replaces; `MODEL_TOL` bounds
whole-model outputs (errors add up over layers); `kernel_budget` is the "2x PyTorch's own error" rule. They live
in `vit_fast.numerics` so that `vit-fast validate` judges a user's GPU with the same numbers.
"""
import torch

# One definition for the tests and `vit-fast validate`: see vit_fast/numerics.py.
from vit_fast.numerics import (KERNEL_TOL, LOADER_REL_ERR, MODEL_TOL, kernel_budget,  # noqa: F401
                               rel_err)


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
