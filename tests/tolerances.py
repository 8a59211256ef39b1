"""Tolerances per dtype, stated once for the whole suite.

`KERNEL_TOL` bounds a single fused op against the eager PyTorch composition it replaces; `MODEL_TOL` bounds
whole-model outputs (errors add up over layers); `FP8_TOL` bounds an FP8 kernel against its torch emulation;
`kernel_budget` is the "2x PyTorch's own error" rule. They live
in `vit_fast.numerics` so that `vit-fast validate` judges a user's GPU with the same numbers.
"""
import torch

# One definition for the tests and `vit-fast validate`: see vit_fast/numerics.py.
from vit_fast.numerics import (FP8_TOL, KERNEL_TOL, LOADER_REL_ERR, MODEL_TOL,  # noqa: F401
                               kernel_budget, rel_err)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, table=KERNEL_TOL):
    atol, rtol = table[dtype]
    assert torch.isfinite(out).all(), "non-finite values (unwritten or poisoned elements?)"
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN so any element a kernel fails to write makes the comparison fail."""
    return t.fill_(float("nan"))
