"""LayerNorm -> fused QKV projection in one GEMM, its output laid out for attention to read in place.

The GEMM writes plain (B·N, 3·D) rows, i.e. a contiguous (B, N, 3, H, d) buffer (a TMA-friendly store); the op
returns it as the (3, B, H, N, d) view, so q, k, v = out[0], out[1], out[2] are strided (B, H, N, d) tensors with a
contiguous last dim, which `kernels.attention` reads without a copy. The norm is folded (ln_fold.py). A
float8_e4m3fn weight (with its per-channel `weight_scale`) goes to the FP8 engines instead: the quantizing LayerNorm
(quant_fp8.py) writes e4m3 rows and per-token scales, then the FP8 TMA engine gemm_fp8_tma.py on sm_90 (gemm_fp8.py
on sm_89) writes the same plain rows. This module checks the inputs and picks the engine
(gemm_tma.py on sm_90, gemm.py elsewhere, the FP8 engines for float8 weights: gemm_fp8_tma.select_fp8_engine).
"""
from typing import Optional, Tuple

import torch

from ._common import (FLOAT_DTYPES, FP8_DTYPE, check, check_device, check_dtype, check_fp8_device, check_linear_fp8,
                      check_vector, rows_view)
from .gemm import gemm_aot_variants
from .gemm_fp8_tma import fp8_launcher, select_fp8_engine
from .gemm_tma import gemm_launcher, select_engine, tma_aot_variants
from .ln_fold import FoldedLinear, check_folded, check_partials, fold_layer_norm, launch_row_stats
from .quant_fp8 import launch_quant_rows

OP = "ln_qkv"


def _check_x(x, weight, num_heads):
    check_dtype(OP, "x", x, FLOAT_DTYPES)
    check(x.dim() == 3, f"{OP}: x.shape", "(B, N, D)", tuple(x.shape))
    d = x.shape[-1]
    check(d > 0, f"{OP}: x.shape[-1]", "> 0", d)
    check(isinstance(num_heads, int) and num_heads > 0 and d % num_heads == 0, f"{OP}: num_heads",
          f"a positive divisor of D={d}", num_heads)
    check(tuple(weight.shape) == (3 * d, d), f"{OP}: weight.shape", f"({3 * d}, {d}) (rows [q; k; v])",
          tuple(weight.shape))


def _check(x, weight, colsum, bias, num_heads, runnable=True, partials=None):
    _check_x(x, weight, num_heads)
    check_folded(OP, x, weight, colsum, bias)
    check_device(OP, dict(x=x, weight=weight, colsum=colsum, bias=bias), runnable)
    if partials is not None:
        check_partials(OP, "partials", partials, x)


def _check_ln(x, ln_weight, ln_bias, bias):
    d = x.shape[-1]
    check_vector(OP, "ln_weight", ln_weight, d, x.dtype)
    check_vector(OP, "ln_bias", ln_bias, d, x.dtype)
    if bias is not None:
        check_vector(OP, "bias", bias, 3 * d, x.dtype)


def _check_fp8(x, ln_weight, ln_bias, weight, weight_scale, bias, num_heads, runnable=True):
    _check_x(x, weight, num_heads)
    check_linear_fp8(OP, x, weight, weight_scale, bias)
    if runnable:
        check_fp8_device(OP, x.device)
    _check_ln(x, ln_weight, ln_bias, None)
    check_device(OP, dict(x=x, ln_weight=ln_weight, ln_bias=ln_bias, weight=weight, bias=bias), runnable)


def _new_out(x, num_heads):
    """(3, B, H, N, d) view of a new contiguous (B, N, 3, H, d) buffer."""
    b, n, d = x.shape
    return x.new_empty(b, n, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4)


def _qkv_shape(x, num_heads):
    b, n, d = x.shape
    return (3, b, num_heads, n, d // num_heads)


def _out_rows(x, num_heads, out):
    """(out, its (B·N, 3D) rows): a new output, or a caller's, which must be the (3, B, H, N, d) view of a contiguous
    (B, N, 3, H, d) buffer in x.dtype (tests hand in a poisoned one)."""
    b, n, d = x.shape
    if out is None:
        out = _new_out(x, num_heads)
    shape = _qkv_shape(x, num_heads)
    rows = out.permute(1, 3, 0, 2, 4) if out.dim() == 5 else out
    check(tuple(out.shape) == shape and out.dtype == x.dtype and rows.is_contiguous(), f"{OP}: out",
          f"a {shape} {x.dtype} view of a contiguous (B, N, 3, H, d) buffer",
          f"{tuple(out.shape)} {out.dtype} strides {out.stride()}")
    return out, rows.view(b * n, 3 * d)


def ln_qkv_launch(x, eps, weight, colsum, bias, num_heads, out=None, partials=None):
    """Plain launcher on folded weights; `out` as in _out_rows; `partials`: x's row statistics as
    linear_residual_stats wrote them (merged in the GEMM's epilogue), else a statistics launch reads x first."""
    _check(x, weight, colsum, bias, num_heads, partials=partials)
    out, out2d = _out_rows(x, num_heads, out)
    if out.numel() == 0:
        return out
    x2d = rows_view(OP, "x", x)
    stats = launch_row_stats(x2d, eps) if partials is None else partials
    launch = gemm_launcher(select_engine(x2d, weight, out2d))
    launch(x2d, weight, bias, out2d, stats=stats, colsum=colsum, eps=eps)
    return out


def ln_qkv_fp8_launch(x, ln_weight, ln_bias, eps, weight, weight_scale, bias, num_heads, out=None):
    """Plain FP8 launcher: weight (3D, D) float8_e4m3fn, weight_scale (3D,) fp32; `out` as in _out_rows. Returns
    (out, the per-token scales (B, N) fp32 the normalized rows were quantized with)."""
    _check_fp8(x, ln_weight, ln_bias, weight, weight_scale, bias, num_heads)
    out, out2d = _out_rows(x, num_heads, out)
    if out.numel() == 0:
        return out, x.new_empty(x.shape[:-1], dtype=torch.float32)
    launch = fp8_launcher(select_fp8_engine(x.shape[-1], weight, out2d))
    a_q, a_scale = launch_quant_rows(rows_view(OP, "x", x), ln=(ln_weight, ln_bias, eps))
    launch(a_q, a_scale, weight, weight_scale, bias, out2d)
    return out, a_scale.view(x.shape[:-1])


@torch.library.custom_op("vitfast::ln_qkv", mutates_args=())
def _ln_qkv_op(x: torch.Tensor, eps: float, weight: torch.Tensor, colsum: torch.Tensor, bias: torch.Tensor,
               num_heads: int, partials: Optional[torch.Tensor] = None) -> torch.Tensor:
    return ln_qkv_launch(x, eps, weight, colsum, bias, num_heads, partials=partials)


@_ln_qkv_op.register_fake
def _(x, eps, weight, colsum, bias, num_heads, partials=None):
    _check(x, weight, colsum, bias, num_heads, runnable=False, partials=partials)
    return _new_out(x, num_heads)


@torch.library.custom_op("vitfast::ln_qkv_fp8", mutates_args=())
def _ln_qkv_fp8_op(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
                   weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
                   num_heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return ln_qkv_fp8_launch(x, ln_weight, ln_bias, eps, weight, weight_scale, bias, num_heads)


@_ln_qkv_fp8_op.register_fake
def _(x, ln_weight, ln_bias, eps, weight, weight_scale, bias, num_heads):
    _check_fp8(x, ln_weight, ln_bias, weight, weight_scale, bias, num_heads, runnable=False)
    return _new_out(x, num_heads), x.new_empty(x.shape[:-1], dtype=torch.float32)


def ln_qkv_folded(x: torch.Tensor, eps: float, folded: FoldedLinear, num_heads: int,
                  partials: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ln_qkv from `fold_layer_norm(γ, β, W_qkv, b_qkv)` (cache it per weight); `partials`: x's row statistics from
    the linear_residual_stats that wrote x (no statistics launch then)."""
    return _ln_qkv_op(x, float(eps), folded.weight, folded.colsum, folded.bias, int(num_heads), partials)


def ln_qkv(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
           bias: Optional[torch.Tensor], num_heads: int, weight_scale: Optional[torch.Tensor] = None,
           return_input_scale: bool = False):
    """LayerNorm(x) @ weight^T + bias for x (B, N, D) and the fused qkv weight (3D, D) (timm layout: rows [q; k; v],
    head-major inside each), returned as a (3, B, H, N, D // H) tensor in x.dtype (last dim contiguous: a view of
    one new (B, N, 3, H, d) buffer, on every engine); bias may be None. Folds the norm on every call: repeated
    callers use ln_qkv_folded. FP8: weight float8_e4m3fn with weight_scale (3D,) fp32; LayerNorm(x) is quantized
    per token; with return_input_scale, returns (qkv, those per-token scales (B, N) fp32), which attention_fp8
    bounds its output with."""
    _check_x(x, weight, num_heads)
    if weight.dtype == FP8_DTYPE:
        qkv, in_scale = _ln_qkv_fp8_op(x, ln_weight, ln_bias, float(eps), weight, weight_scale, bias, int(num_heads))
        return (qkv, in_scale) if return_input_scale else qkv
    check(not return_input_scale, f"{OP}: return_input_scale", "False for a non-float8 weight", True)
    check(weight.dtype == x.dtype, f"{OP}: weight.dtype", f"{x.dtype} (x.dtype)", weight.dtype)
    check(weight_scale is None, f"{OP}: weight_scale", "None for a non-float8 weight", "a tensor")
    _check_ln(x, ln_weight, ln_bias, bias)
    return ln_qkv_folded(x, eps, fold_layer_norm(ln_weight, ln_bias, weight, bias), num_heads)


def aot_variants(exhaustive: bool = False):
    """Both bf16/fp16/fp32 engines with this op's switches: folded LN and bias, no activation (the FP8 engine
    lists its own variants in gemm_fp8.py)."""
    args = dict(row_stats=True, activations=(0,), has_bias=(True,), has_residual=False, exhaustive=exhaustive,
                op="ln_qkv")
    return gemm_aot_variants(**args) + tma_aot_variants(**args)
