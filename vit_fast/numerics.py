"""Error budgets, stated once: the test suite (through tests/tolerances.py) and `vit-fast validate` both judge
kernels and models with the definitions here, so a number a user sees on their GPU means what the tests mean.

- `KERNEL_TOL` / `MODEL_TOL`: absolute/relative tolerances per dtype for one fused op / a whole model.
- `FP8_TOL`: an FP8 kernel against the torch emulation of the same FP8 arithmetic (vit_fast.fp8).
- The "2x PyTorch" rule (`kernel_budget`, `model_budget`): a result in a low-precision dtype may be off from an
  exact reference by at most `TORCH_ERR_FACTOR` times the error PyTorch's own composition makes in that same dtype,
  plus a small floor so that two near-exact results (fp32, tiny shapes) do not flake. For an FP8 op, PyTorch's own
  result is the emulation (torch float8 casts with the same scales) and the exact reference is the unquantized op.
- `e4m3_rounding_flips`: how two per-row e4m3 quantizations of the same LayerNorm output may differ (another
  summation order of the statistics moves an element across a rounding boundary), and no more.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# dtype -> (atol, rtol). fp32 kernels run with ieee dots (no tf32). The bf16 bound was set when the Triton interpreter
# still truncated fp32->bf16 casts (kernels/_interpreter.py now makes it round as the GPU does); the 2x-PyTorch
# budgets below are the sharp check.
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

# FP8 kernels against their torch emulation (vit_fast.fp8: same float8 casts and scales, fp32 matmul), in the dtype
# of their output (the kernel tests and the FP8 rows of `vit-fast validate`). Identical quantized inputs leave only
# the fp32 summation order (~1e-6); the LayerNorm-quantizing engines may round an element one e4m3 step the other way
# when the fp32 LN differs in its last bit (4 % of that element, times its weight), hence the absolute slack.
FP8_TOL = {
    torch.float32: (2e-2, 1e-2),
    torch.bfloat16: (6e-2, 6e-2),
}

# Loaders and backends must reproduce the source model in fp32 to this relative error.
LOADER_REL_ERR = 1e-5

TORCH_ERR_FACTOR = 2.0
# Absolute floor under the 2x rule for one op (max |error| of elements of order 1).
KERNEL_FLOOR = {torch.float32: 1e-6, torch.float16: 1e-5, torch.bfloat16: 1e-4}
# Relative floor under the 2x rule for whole-model outputs (per-image relative error).
MODEL_FLOOR = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def e4m3_rounding_flips(q: torch.Tensor, scale: torch.Tensor, ref_q: torch.Tensor, ref_scale: torch.Tensor):
    """Where per-row e4m3 quantizations (q, scale) and (ref_q, ref_scale) of the same rows differ (a bool mask), when
    they differ only by rounding: the same scales (to 1e-6) and each differing code a neighbour of the other (e4m3
    codes of one sign are ordered by magnitude). None when they differ in any other way."""
    if not bool(torch.isclose(scale, ref_scale, rtol=1e-6, atol=0).all()):
        return None
    codes, ref_codes = q.view(torch.uint8).int(), ref_q.view(torch.uint8).int()
    flipped = codes != ref_codes
    return flipped if bool(((codes - ref_codes).abs()[flipped] == 1).all()) else None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def rel_err_rows(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-row (per-image) relative error ||out_i - ref_i|| / ||ref_i|| of (B, ...) tensors, in float64."""
    out, ref = out.double().flatten(1), ref.double().flatten(1)
    return (out - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30)


def max_abs_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| in float64."""
    err = (out.double() - ref.double()).abs()
    return err.max().item() if err.numel() else 0.0


@dataclass
class Budget:
    """One comparison against the 2x rule: `err` of the candidate, `torch_err` of PyTorch in the same dtype."""

    err: float
    torch_err: float
    budget: float

    @property
    def passed(self) -> bool:
        return self.err <= self.budget  # NaN errors fail

    def __str__(self) -> str:
        verdict = "within" if self.passed else "exceeds"
        return (f"error {self.err:.3g} {verdict} the budget {self.budget:.3g} "
                f"({TORCH_ERR_FACTOR:g} x PyTorch's own {self.torch_err:.3g} + floor)")


def within_tol(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, table=None) -> bool:
    """Every element finite and within atol + rtol * |ref| of `table` (default KERNEL_TOL), as the tests'
    `assert_close` requires."""
    atol, rtol = (KERNEL_TOL if table is None else table)[dtype]
    out, ref = out.double(), ref.double()
    return bool(torch.isfinite(out).all() and ((out - ref).abs() <= atol + rtol * ref.abs()).all())


def _check_finite(out: torch.Tensor) -> bool:
    return bool(torch.isfinite(out).all())


def kernel_budget(out: torch.Tensor, ref: torch.Tensor, torch_out: torch.Tensor, dtype: torch.dtype) -> Budget:
    """A kernel's output `out` against an exact reference `ref` (float64 or fp32 eager composition), with the
    budget set by `torch_out`, the same eager composition computed in `dtype`. Non-finite outputs fail."""
    err = max_abs_err(out, ref) if _check_finite(out) else float("inf")
    torch_err = max_abs_err(torch_out, ref)
    return Budget(err, torch_err, TORCH_ERR_FACTOR * torch_err + KERNEL_FLOOR[dtype])


def model_budget(err: float, torch_err: float, dtype: torch.dtype) -> Budget:
    """A whole-model relative error (e.g. the worst image's logits) against PyTorch's own in the same dtype."""
    return Budget(err, torch_err, TORCH_ERR_FACTOR * torch_err + MODEL_FLOOR[dtype])


# Whole-model outputs judged by the 2x rule in a plain dtype (per-image relative errors against fp32).
MODEL_RULE_METRICS = ("logits_rel_err_max", "logits_rel_err_mean", "embedding_rel_err_max", "embedding_rel_err_mean")
# An FP8 model has no PyTorch FP8 composition to compare with: it must keep these minimums against fp32 (issue 13:
# per-token scaling keeps top-1 agreement >= 99 %).
FP8_MODEL_MINIMUMS = {"top1_agreement": 0.99, "embedding_cosine_min": 0.99}
