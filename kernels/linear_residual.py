"""Linear with the residual add fused into the epilogue: the attention out-projection and the MLP's fc2
(x_next = residual + x @ W^T + b) without a separate elementwise pass. This module checks the inputs and picks the GEMM
engine: the persistent TMA engine (gemm_tma.py) on sm_90, the pointer engine (gemm.py) elsewhere."""
from typing import Optional

import torch

from ._common import check, check_device, check_linear, check_out, rows_view
from .gemm import gemm_aot_variants, launch_fused_gemm
from .gemm_tma import launch_tma_gemm, select_engine, tma_aot_variants

OP = "linear_residual"


def _check(x, weight, bias, residual, runnable=True):
    _, n = check_linear(OP, x, weight, bias)
    expected = (*x.shape[:-1], n)
    check(tuple(residual.shape) == expected, f"{OP}: residual.shape", expected, tuple(residual.shape))
    check(residual.dtype == x.dtype, f"{OP}: residual.dtype", f"{x.dtype} (x.dtype)", residual.dtype)
    check_device(OP, dict(x=x, weight=weight, bias=bias, residual=residual), runnable)


def linear_residual_launch(x, weight, bias, residual, out=None):
    """Plain launcher; `out` (optional, residual's shape, x.dtype) lets tests hand in a poisoned buffer."""
    _check(x, weight, bias, residual)
    if out is None:
        out = x.new_empty(residual.shape)
    out2d = check_out(OP, out, residual.shape, x.dtype)
    if out.numel() == 0:
        return out
    x2d, res2d = rows_view(OP, "x", x), rows_view(OP, "residual", residual)
    launch = launch_tma_gemm if select_engine(x2d, weight, out2d, res2d) == "tma" else launch_fused_gemm
    launch(x2d, weight, bias, out2d, residual=res2d)
    return out


@torch.library.custom_op("vitfast::linear_residual", mutates_args=())
def _linear_residual_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        residual: torch.Tensor) -> torch.Tensor:
    return linear_residual_launch(x, weight, bias, residual)


@_linear_residual_op.register_fake
def _(x, weight, bias, residual):
    _check(x, weight, bias, residual, runnable=False)
    return x.new_empty(residual.shape)


def linear_residual(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight^T + bias; x (..., K), weight (N, K), residual (..., N); bias may be None.
    Returns a new tensor shaped like residual, in x.dtype."""
    return _linear_residual_op(x, weight, bias, residual)


def aot_variants(exhaustive: bool = False):
    """Both engines with this op's switches: residual, bias or not."""
    args = dict(row_stats=False, activations=(0,), has_bias=(True, False), has_residual=True, exhaustive=exhaustive)
    return gemm_aot_variants(**args) + tma_aot_variants(**args)
