"""LayerNorm -> Linear (-> GELU) in one GEMM launch: the pre-norm MLP's fc1, or any norm followed by a dense layer.

The normalized activations exist only in registers (see gemm.py); bias and activation run in the epilogue.
With a float8_e4m3fn weight (and its per-channel `weight_scale`) the op dispatches to the FP8 engines: the
quantizing LayerNorm (quant_fp8.py) writes e4m3 rows + per-token scales, then gemm_fp8.py. With
`return_row_amax` (FP8 only) the epilogue also atomically records max |output| of each row, so the next FP8 GEMM
(linear_residual with `x_amax`, the MLP's FC2) quantizes these rows per token in its main loop, with no pass of its
own.
"""
from typing import Optional

import torch

from ._common import (ACTIVATIONS, FP8_DTYPE, check, check_device, check_fp8_device, check_linear, check_linear_fp8,
                      check_out, check_row_stats, check_vector, rows_view)
from .gemm import gemm_aot_variants, launch_fused_gemm
from .gemm_fp8 import launch_fp8_gemm
from .quant_fp8 import launch_quant_rows

OP = "ln_linear"


def _check(x, ln_weight, ln_bias, weight, bias, activation, runnable=True, weight_scale=None, row_amax=None):
    if row_amax is not None:
        check(weight.dtype == FP8_DTYPE, f"{OP}: row_amax", "None unless weight is float8_e4m3fn", "a tensor")
        check_row_stats(OP, "row_amax", row_amax, x)
    if weight.dtype == FP8_DTYPE:
        k, _ = check_linear_fp8(OP, x, weight, weight_scale, bias)
        if runnable:
            check_fp8_device(OP, x.device)
    else:
        k, _ = check_linear(OP, x, weight, bias)
        check(weight_scale is None, f"{OP}: weight_scale", "None for a non-float8 weight", "a tensor")
    check_vector(OP, "ln_weight", ln_weight, k, x.dtype)
    check_vector(OP, "ln_bias", ln_bias, k, x.dtype)
    check(activation in ACTIVATIONS, f"{OP}: activation", " | ".join(ACTIVATIONS), repr(activation))
    check_device(OP, dict(x=x, ln_weight=ln_weight, ln_bias=ln_bias, weight=weight, bias=bias), runnable)


def ln_linear_launch(x, ln_weight, ln_bias, eps, weight, bias, activation="none", out=None, weight_scale=None,
                     row_amax=None):
    """Plain launcher; `out` (optional, shape (..., N), x.dtype) lets tests hand in a poisoned buffer."""
    _check(x, ln_weight, ln_bias, weight, bias, activation, weight_scale=weight_scale, row_amax=row_amax)
    shape = (*x.shape[:-1], weight.shape[0])
    if out is None:
        out = x.new_empty(shape)
    out2d = check_out(OP, out, shape, x.dtype)
    if out.numel() == 0:
        return out
    if weight.dtype == FP8_DTYPE:
        a_q, a_scale = launch_quant_rows(rows_view(OP, "x", x), ln=(ln_weight, ln_bias, eps))
        launch_fp8_gemm(a_q, a_scale, weight, weight_scale, bias, out2d, activation=ACTIVATIONS[activation],
                        amax_out=row_amax.view(-1) if row_amax is not None else None)
        return out
    launch_fused_gemm(rows_view(OP, "x", x), weight, bias, out2d, ln=(ln_weight, ln_bias, eps),
                      activation=ACTIVATIONS[activation])
    return out


@torch.library.custom_op("vitfast::ln_linear", mutates_args=())
def _ln_linear_op(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
                  bias: Optional[torch.Tensor], activation: str,
                  weight_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    return ln_linear_launch(x, ln_weight, ln_bias, eps, weight, bias, activation, weight_scale=weight_scale)


@_ln_linear_op.register_fake
def _(x, ln_weight, ln_bias, eps, weight, bias, activation, weight_scale=None):
    _check(x, ln_weight, ln_bias, weight, bias, activation, runnable=False, weight_scale=weight_scale)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# The FP8 MLP's FC1: also returns max |output| per row (a second output, not a mutated argument, so that
# torch.compile's functionalization sees a plain op).
@torch.library.custom_op("vitfast::ln_linear_row_amax", mutates_args=())
def _ln_linear_amax_op(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
                       weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str,
                       weight_scale: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    amax = torch.zeros(x.shape[:-1], device=x.device, dtype=torch.float32)
    out = ln_linear_launch(x, ln_weight, ln_bias, eps, weight, bias, activation, weight_scale=weight_scale,
                           row_amax=amax)
    return out, amax


@_ln_linear_amax_op.register_fake
def _(x, ln_weight, ln_bias, eps, weight, bias, activation, weight_scale):
    amax = x.new_empty(x.shape[:-1], dtype=torch.float32)
    _check(x, ln_weight, ln_bias, weight, bias, activation, runnable=False, weight_scale=weight_scale, row_amax=amax)
    return x.new_empty((*x.shape[:-1], weight.shape[0])), amax


def ln_linear(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
              bias: Optional[torch.Tensor], activation: str = "none", weight_scale: Optional[torch.Tensor] = None,
              return_row_amax: bool = False):
    """activation(LayerNorm(x) @ weight^T + bias); x (..., K), weight (N, K); activation "none" | "gelu" (exact
    erf) | "gelu_tanh" | "quick_gelu" (x·sigmoid(1.702x), CLIP). LayerNorm statistics in fp32.
    Returns (..., N) in x.dtype. FP8: weight float8_e4m3fn with weight_scale (N,) fp32; LayerNorm(x) is quantized
    per token (vit_fast.fp8). return_row_amax=True (FP8 only): returns (out, max |out| per row as fp32 of shape
    x.shape[:-1]), which linear_residual(..., x_amax=) takes to quantize out inside its GEMM."""
    if return_row_amax:
        return _ln_linear_amax_op(x, ln_weight, ln_bias, float(eps), weight, bias, activation, weight_scale)
    return _ln_linear_op(x, ln_weight, ln_bias, float(eps), weight, bias, activation, weight_scale)


def aot_variants(exhaustive: bool = False):
    """See gemm.gemm_aot_variants."""
    return gemm_aot_variants(
        has_ln=True, activations=tuple(ACTIVATIONS.values()), has_bias=(True, False), has_residual=False,
        qkv=False, exhaustive=exhaustive,
    )
