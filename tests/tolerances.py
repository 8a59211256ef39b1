"""Tolerances per dtype, stated once for the whole suite.

`KERNEL_TOL` bounds a single fused op against the eager PyTorch composition it replaces; `MODEL_TOL` bounds
whole-model outputs (errors add up over layers); `FP8_TOL` bounds an FP8 kernel against its torch emulation;
`kernel_budget` is the "2x PyTorch's own error" rule; `assert_fp8_model_matches_emulation` is how a whole FP8 model
on the kernels may differ from its fp32 emulation. They live
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


def assert_fp8_model_matches_emulation(out: torch.Tensor, ref: torch.Tensor, images_off: int = 1):
    """An fp32 FP8 model on the kernels against its torch emulation (out and ref: one row of logits or tokens per
    image). Both quantize the same operands, so each image agrees to fp32 rounding (on a GPU: to its FP8 MMA's),
    except that the kernels' fp32 LayerNorm (another summation order) can move a value across an e4m3 rounding
    boundary: one element one FP8 step off changes every token of its image (attention mixes them) by up to ~1.5 %
    (measured over 200 draws of the tiny test models, flips in about 1 image in 40). A wrong scale or layer moves
    every image."""
    assert torch.isfinite(out).all(), "non-finite values (unwritten or poisoned elements?)"
    per_image = (out - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    # On a GPU the FP8 MMA keeps its partial sums to about 2^-13 between promotions (the emulation: fp32), which moves
    # every image a little: 0.03-0.3 % on an H100 (fourth lease); a wrong scale or layer moves them far more.
    agree = 1e-2 if out.is_cuda else 1e-4
    assert (per_image > agree).sum() <= images_off and per_image.max() < 3e-2, per_image
