"""LayerNorm -> fused QKV projection, stored head-major: one launch writes a contiguous (3, B, H, N, d) tensor, so
q, k, v = out[0], out[1], out[2] feed attention with no permute or copy. A float8_e4m3fn weight (with its per-channel
`weight_scale`) dispatches to the FP8 engines: quantizing LayerNorm (quant_fp8.py), then gemm_fp8.py."""
from typing import Optional

import torch

from ._common import (FLOAT_DTYPES, FP8_DTYPE, check, check_device, check_dtype, check_fp8_device, check_linear_fp8,
                      check_out, check_vector, rows_view)
from .gemm import gemm_aot_variants, launch_fused_gemm
from .gemm_fp8 import launch_fp8_gemm
from .quant_fp8 import launch_quant_rows

OP = "ln_qkv"


def _check(x, ln_weight, ln_bias, weight, bias, num_heads, runnable=True, weight_scale=None):
    check_dtype(OP, "x", x, FLOAT_DTYPES)
    check(x.dim() == 3, f"{OP}: x.shape", "(B, N, D)", tuple(x.shape))
    d = x.shape[-1]
    check(d > 0, f"{OP}: x.shape[-1]", "> 0", d)
    check(isinstance(num_heads, int) and num_heads > 0 and d % num_heads == 0, f"{OP}: num_heads",
          f"a positive divisor of D={d}", num_heads)
    check(tuple(weight.shape) == (3 * d, d), f"{OP}: weight.shape", f"({3 * d}, {d}) (rows [q; k; v])",
          tuple(weight.shape))
    if weight.dtype == FP8_DTYPE:
        check_linear_fp8(OP, x, weight, weight_scale, bias)
        if runnable:
            check_fp8_device(OP, x.device)
    else:
        check(weight.dtype == x.dtype, f"{OP}: weight.dtype", f"{x.dtype} (x.dtype)", weight.dtype)
        check(weight_scale is None, f"{OP}: weight_scale", "None for a non-float8 weight", "a tensor")
    check_vector(OP, "ln_weight", ln_weight, d, x.dtype)
    check_vector(OP, "ln_bias", ln_bias, d, x.dtype)
    if bias is not None:
        check_vector(OP, "bias", bias, 3 * d, x.dtype)
    check_device(OP, dict(x=x, ln_weight=ln_weight, ln_bias=ln_bias, weight=weight, bias=bias), runnable)


def _out_shape(x, num_heads):
    b, n, d = x.shape
    return (3, b, num_heads, n, d // num_heads)


def ln_qkv_launch(x, ln_weight, ln_bias, eps, weight, bias, num_heads, out=None, weight_scale=None):
    """Plain launcher; `out` (optional, contiguous (3, B, H, N, d), x.dtype) lets tests hand in a poisoned buffer."""
    _check(x, ln_weight, ln_bias, weight, bias, num_heads, weight_scale=weight_scale)
    shape = _out_shape(x, num_heads)
    if out is None:
        out = x.new_empty(shape)
    check_out(OP, out, shape, x.dtype, rows=False)
    if out.numel() == 0:
        return out
    if weight.dtype == FP8_DTYPE:
        a_q, a_scale = launch_quant_rows(rows_view(OP, "x", x), ln=(ln_weight, ln_bias, eps))
        launch_fp8_gemm(a_q, a_scale, weight, weight_scale, bias, out, qkv=(x.shape[1], shape[-1]))
        return out
    launch_fused_gemm(rows_view(OP, "x", x), weight, bias, out, ln=(ln_weight, ln_bias, eps),
                      qkv=(x.shape[1], shape[-1]))
    return out


@torch.library.custom_op("vitfast::ln_qkv", mutates_args=())
def _ln_qkv_op(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
               bias: Optional[torch.Tensor], num_heads: int,
               weight_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    return ln_qkv_launch(x, ln_weight, ln_bias, eps, weight, bias, num_heads, weight_scale=weight_scale)


@_ln_qkv_op.register_fake
def _(x, ln_weight, ln_bias, eps, weight, bias, num_heads, weight_scale=None):
    _check(x, ln_weight, ln_bias, weight, bias, num_heads, runnable=False, weight_scale=weight_scale)
    return x.new_empty(_out_shape(x, num_heads))


def ln_qkv(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
           bias: Optional[torch.Tensor], num_heads: int,
           weight_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LayerNorm(x) @ weight^T + bias for x (B, N, D) and the fused qkv weight (3D, D) (timm layout: rows [q; k; v],
    head-major inside each), returned as one contiguous (3, B, H, N, D // H) tensor in x.dtype; bias may be None.
    FP8: weight float8_e4m3fn with weight_scale (3D,) fp32; LayerNorm(x) is quantized per token (vit_fast.fp8)."""
    return _ln_qkv_op(x, ln_weight, ln_bias, float(eps), weight, bias, int(num_heads), weight_scale)


def aot_variants(exhaustive: bool = False):
    """See gemm.gemm_aot_variants."""
    return gemm_aot_variants(
        has_ln=True, activations=(0,), has_bias=(True, False), has_residual=False, qkv=True,
        exhaustive=exhaustive,
    )
