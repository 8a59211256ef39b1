"""LayerNorm -> Linear (-> GELU) in one GEMM launch: the pre-norm MLP's fc1, or any norm followed by a dense layer.

The normalized activations exist only in registers (see gemm.py); bias and activation run in the epilogue.
"""
from typing import Optional

import torch

from ._common import ACTIVATIONS, check, check_device, check_linear, check_out, check_vector, rows_view
from .gemm import gemm_aot_variants, launch_fused_gemm

OP = "ln_linear"


def _check(x, ln_weight, ln_bias, weight, bias, activation, runnable=True):
    k, _ = check_linear(OP, x, weight, bias)
    check_vector(OP, "ln_weight", ln_weight, k, x.dtype)
    check_vector(OP, "ln_bias", ln_bias, k, x.dtype)
    check(activation in ACTIVATIONS, f"{OP}: activation", " | ".join(ACTIVATIONS), repr(activation))
    check_device(OP, dict(x=x, ln_weight=ln_weight, ln_bias=ln_bias, weight=weight, bias=bias), runnable)


def ln_linear_launch(x, ln_weight, ln_bias, eps, weight, bias, activation="none", out=None):
    """Plain launcher; `out` (optional, shape (..., N), x.dtype) lets tests hand in a poisoned buffer."""
    _check(x, ln_weight, ln_bias, weight, bias, activation)
    shape = (*x.shape[:-1], weight.shape[0])
    if out is None:
        out = x.new_empty(shape)
    out2d = check_out(OP, out, shape, x.dtype)
    if out.numel() == 0:
        return out
    launch_fused_gemm(rows_view(OP, "x", x), weight, bias, out2d, ln=(ln_weight, ln_bias, eps),
                      activation=ACTIVATIONS[activation])
    return out


@torch.library.custom_op("vitfast::ln_linear", mutates_args=())
def _ln_linear_op(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
                  bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    return ln_linear_launch(x, ln_weight, ln_bias, eps, weight, bias, activation)


@_ln_linear_op.register_fake
def _(x, ln_weight, ln_bias, eps, weight, bias, activation):
    _check(x, ln_weight, ln_bias, weight, bias, activation, runnable=False)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def ln_linear(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
              bias: Optional[torch.Tensor], activation: str = "none") -> torch.Tensor:
    """activation(LayerNorm(x) @ weight^T + bias); x (..., K), weight (N, K); activation "none" | "gelu" (exact
    erf) | "gelu_tanh" | "quick_gelu" (x·sigmoid(1.702x), CLIP). LayerNorm statistics in fp32. Returns (..., N) in x.dtype."""
    return _ln_linear_op(x, ln_weight, ln_bias, float(eps), weight, bias, activation)


def aot_variants(exhaustive: bool = False):
    """See gemm.gemm_aot_variants."""
    return gemm_aot_variants(
        has_ln=True, activations=(1, 0, 2, 3), has_bias=(True, False), has_residual=False,
        qkv=False, exhaustive=exhaustive,
    )
