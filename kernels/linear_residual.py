"""Linear with the residual add fused into the epilogue: the attention out-projection and the MLP's fc2
(x_next = residual + x @ W^T + b) without a separate elementwise pass. A float8_e4m3fn weight (with its per-channel
`weight_scale`) dispatches to the FP8 engines: x is quantized per token in its own pass (quant_fp8.py: the attention
output and the GELU output are produced by kernels that never see a whole row), then gemm_fp8.py."""
from typing import Optional

import torch

from ._common import FP8_DTYPE, check, check_device, check_fp8_device, check_linear, check_linear_fp8, check_out, rows_view
from .gemm import gemm_aot_variants, launch_fused_gemm
from .gemm_fp8 import launch_fp8_gemm
from .quant_fp8 import launch_quant_rows

OP = "linear_residual"


def _check(x, weight, bias, residual, runnable=True, weight_scale=None):
    if weight.dtype == FP8_DTYPE:
        _, n = check_linear_fp8(OP, x, weight, weight_scale, bias)
        if runnable:
            check_fp8_device(OP, x.device)
    else:
        _, n = check_linear(OP, x, weight, bias)
        check(weight_scale is None, f"{OP}: weight_scale", "None for a non-float8 weight", "a tensor")
    expected = (*x.shape[:-1], n)
    check(tuple(residual.shape) == expected, f"{OP}: residual.shape", expected, tuple(residual.shape))
    check(residual.dtype == x.dtype, f"{OP}: residual.dtype", f"{x.dtype} (x.dtype)", residual.dtype)
    check_device(OP, dict(x=x, weight=weight, bias=bias, residual=residual), runnable)


def linear_residual_launch(x, weight, bias, residual, out=None, weight_scale=None):
    """Plain launcher; `out` (optional, residual's shape, x.dtype) lets tests hand in a poisoned buffer."""
    _check(x, weight, bias, residual, weight_scale=weight_scale)
    if out is None:
        out = x.new_empty(residual.shape)
    out2d = check_out(OP, out, residual.shape, x.dtype)
    if out.numel() == 0:
        return out
    if weight.dtype == FP8_DTYPE:
        a_q, a_scale = launch_quant_rows(rows_view(OP, "x", x))
        launch_fp8_gemm(a_q, a_scale, weight, weight_scale, bias, out2d, residual=rows_view(OP, "residual", residual))
        return out
    launch_fused_gemm(rows_view(OP, "x", x), weight, bias, out2d, residual=rows_view(OP, "residual", residual))
    return out


@torch.library.custom_op("vitfast::linear_residual", mutates_args=())
def _linear_residual_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        residual: torch.Tensor, weight_scale: Optional[torch.Tensor]) -> torch.Tensor:
    return linear_residual_launch(x, weight, bias, residual, weight_scale=weight_scale)


@_linear_residual_op.register_fake
def _(x, weight, bias, residual, weight_scale):
    _check(x, weight, bias, residual, runnable=False, weight_scale=weight_scale)
    return x.new_empty(residual.shape)


def linear_residual(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: torch.Tensor, weight_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """residual + x @ weight^T + bias; x (..., K), weight (N, K), residual (..., N); bias may be None.
    Returns a new tensor shaped like residual, in x.dtype. FP8: weight float8_e4m3fn with weight_scale (N,) fp32;
    x is quantized per token (vit_fast.fp8)."""
    return _linear_residual_op(x, weight, bias, residual, weight_scale)


def aot_variants(exhaustive: bool = False):
    """See gemm.gemm_aot_variants."""
    return gemm_aot_variants(
        has_ln=False, activations=(0,), has_bias=(True, False), has_residual=True, qkv=False,
        exhaustive=exhaustive,
    )
