"""Linear with the residual add fused into the epilogue: the attention out-projection and the MLP's fc2
(x_next = residual + x @ W^T + b) without a separate elementwise pass. This module checks the inputs and picks the
GEMM engine: the persistent TMA engine (gemm_tma.py) on sm_90, the pointer engine (gemm.py) elsewhere. A
float8_e4m3fn weight (with its per-channel `weight_scale`) dispatches to the FP8 engines (gemm_fp8_tma.py on sm_90,
gemm_fp8.py), in one of three ways:
- x float8_e4m3fn with `x_scale` (..., cdiv(K, 128)), one scale per row and 128 columns (FC2: ln_linear's
  `fp8_groups` output, or quantize_fp8_groups of a dense FC1's rows): read as they are, each K step scaled by its
  group's scales;
- x float8_e4m3fn with `x_scale` (...,), one scale per row (the out-projection: attention_fp8's output): read as
  they are;
- x in the model dtype: quantized per token in a pass of its own first (quant_fp8.py).

`linear_residual_stats` (16-bit and fp32 weights) also returns the output rows' partial LayerNorm statistics,
written by the GEMM's epilogue (ln_fold.py), which ln_qkv / ln_linear take as `partials`: the next LayerNorm then
needs no statistics launch of its own."""
from typing import Optional, Tuple

import torch

from ._common import (FLOAT_DTYPES, FP8_DTYPE, check, check_device, check_dtype, check_fp8_device,
                      check_group_scales, check_linear, check_linear_fp8, check_out, check_row_stats,
                      group_scales_view, rows_view)
from .gemm import gemm_aot_variants
from .gemm_fp8_tma import fp8_launcher, select_fp8_engine
from .gemm_tma import gemm_launcher, select_engine, tma_aot_variants
from .ln_fold import check_partials, new_partials
from .quant_fp8 import launch_quant_rows

OP = "linear_residual"


def _row_scales(x, x_scale) -> bool:
    """x_scale holds one scale per row of x (attention_fp8's), not per row and 128 columns (FC1's codes)."""
    return x_scale.dim() == x.dim() - 1


def _check(x, weight, bias, residual, runnable=True, weight_scale=None, x_scale=None):
    if x.dtype == FP8_DTYPE or x_scale is not None:
        check(x.dtype == FP8_DTYPE and weight.dtype == FP8_DTYPE and x_scale is not None,
              f"{OP}: FP8 input", "x float8_e4m3fn with x_scale and a float8_e4m3fn weight",
              f"x {x.dtype}, weight {weight.dtype}, x_scale {'given' if x_scale is not None else 'None'}")
        if _row_scales(x, x_scale):
            check_row_stats(OP, "x_scale", x_scale, x)
        else:
            check_group_scales(OP, "x_scale", x_scale, x)
    if weight.dtype == FP8_DTYPE:
        _, n = check_linear_fp8(OP, x, weight, weight_scale, bias,
                                residual.dtype if x.dtype == FP8_DTYPE else None)
        if runnable:
            check_fp8_device(OP, x.device)
    else:
        _, n = check_linear(OP, x, weight, bias)
        check(weight_scale is None, f"{OP}: weight_scale", "None for a non-float8 weight", "a tensor")
    expected = (*x.shape[:-1], n)
    check(tuple(residual.shape) == expected, f"{OP}: residual.shape", expected, tuple(residual.shape))
    if x.dtype != FP8_DTYPE:
        check(residual.dtype == x.dtype, f"{OP}: residual.dtype", f"{x.dtype} (x.dtype)", residual.dtype)
    else:  # the output's dtype
        check_dtype(OP, "residual", residual, FLOAT_DTYPES)
    check_device(OP, dict(x=x, weight=weight, bias=bias, residual=residual, x_scale=x_scale), runnable)


def linear_residual_launch(x, weight, bias, residual, out=None, weight_scale=None, stats_out=None, x_scale=None):
    """Plain launcher; `out` (optional, residual's shape and dtype) lets tests hand in a poisoned buffer;
    `stats_out` (16-bit and fp32 weights: ln_fold.new_partials(residual)) receives the output rows' partial
    statistics."""
    _check(x, weight, bias, residual, weight_scale=weight_scale, x_scale=x_scale)
    if stats_out is not None:
        _check_stats_out(weight, residual, stats_out)
    if out is None:
        out = torch.empty(residual.shape, device=residual.device, dtype=residual.dtype)
    out2d = check_out(OP, out, residual.shape, residual.dtype)
    if out.numel() == 0:
        return out
    if weight.dtype == FP8_DTYPE:
        res2d = rows_view(OP, "residual", residual)
        x2d = rows_view(OP, "x", x)
        engine = select_fp8_engine(x.shape[-1], weight, out2d, res2d, a=x2d if x_scale is not None else None)
        if x_scale is not None:  # e4m3 codes: per row (the out-projection) or per row and 128 columns (FC2)
            check(x2d.stride(1) == 1, f"{OP}: x.stride(-1)", "1 (e4m3 rows)", x.stride(-1))
            scales = x_scale.reshape(-1) if _row_scales(x, x_scale) else group_scales_view(x_scale)
            fp8_launcher(engine)(x2d, scales, weight, weight_scale, bias, out2d, residual=res2d)
        else:  # rows in the model dtype: quantized per token in a pass of their own
            a_q, a_scale = launch_quant_rows(x2d)
            fp8_launcher(engine)(a_q, a_scale, weight, weight_scale, bias, out2d, residual=res2d)
        return out
    x2d, res2d = rows_view(OP, "x", x), rows_view(OP, "residual", residual)
    launch = gemm_launcher(select_engine(x2d, weight, out2d, res2d))
    launch(x2d, weight, bias, out2d, residual=res2d, stats_out=stats_out)
    return out


def _check_stats_weight(weight):
    check(weight.dtype != FP8_DTYPE, f"{OP}: partial statistics",
          "a 16-bit or fp32 weight (the FP8 engines write none)", weight.dtype)


def _check_stats_out(weight, residual, stats_out):
    _check_stats_weight(weight)
    check_partials(OP, "stats_out", stats_out, residual)


@torch.library.custom_op("vitfast::linear_residual", mutates_args=())
def _linear_residual_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        residual: torch.Tensor, weight_scale: Optional[torch.Tensor] = None,
                        x_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    return linear_residual_launch(x, weight, bias, residual, weight_scale=weight_scale, x_scale=x_scale)


@_linear_residual_op.register_fake
def _(x, weight, bias, residual, weight_scale=None, x_scale=None):
    _check(x, weight, bias, residual, runnable=False, weight_scale=weight_scale, x_scale=x_scale)
    return residual.new_empty(residual.shape)


@torch.library.custom_op("vitfast::linear_residual_stats", mutates_args=())
def _linear_residual_stats_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                              residual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    stats = new_partials(residual)
    return linear_residual_launch(x, weight, bias, residual, stats_out=stats), stats


@_linear_residual_stats_op.register_fake
def _(x, weight, bias, residual):
    _check(x, weight, bias, residual, runnable=False)
    _check_stats_weight(weight)
    return x.new_empty(residual.shape), new_partials(residual)


def linear_residual_stats(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          residual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """linear_residual for 16-bit and fp32 weights, and the output rows' partial LayerNorm statistics, (rows, 3, S)
    fp32 (ln_fold.py), for the next ln_qkv / ln_linear's `partials` (or ln_fold.merge_partials)."""
    return _linear_residual_stats_op(x, weight, bias, residual)


def linear_residual(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: torch.Tensor, weight_scale: Optional[torch.Tensor] = None,
                    x_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """residual + x @ weight^T + bias; x (..., K), weight (N, K), residual (..., N); bias may be None.
    Returns a new tensor shaped like residual, in residual.dtype (x's, except for e4m3 x). FP8: weight
    float8_e4m3fn with weight_scale (N,) fp32; x in the model dtype is quantized per token (vit_fast.fp8) in a pass
    of its own. x float8_e4m3fn is already quantized: with x_scale (...,) fp32 contiguous, one scale per row
    (attention_fp8's output), or (..., cdiv(K, 128)), per row and 128 columns (ln_linear's fp8_groups output, or
    quantize_fp8_groups)."""
    return _linear_residual_op(x, weight, bias, residual, weight_scale, x_scale)


def aot_variants(exhaustive: bool = False):
    """Both bf16/fp16/fp32 engines with this op's switches: residual, bias or not (the FP8 engine lists its own
    variants in gemm_fp8.py)."""
    args = dict(row_stats=False, activations=(0,), has_bias=(True, False), has_residual=True, exhaustive=exhaustive)
    return gemm_aot_variants(**args) + tma_aot_variants(**args)
