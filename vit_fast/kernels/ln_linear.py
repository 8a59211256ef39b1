"""LayerNorm -> Linear (-> GELU, or SwiGLU's gate) in one GEMM: the pre-norm MLP's fc1, or any norm followed by a dense
layer. The norm is folded (ln_fold.py): the op takes the folded weight and the rows' statistics (a per-row statistics
pass runs first, unless `partials` hands over what the residual GEMM that wrote x recorded), and the GEMM applies
rstd · (acc − mean · colsum) + bias and the activation in its epilogue. With activation "swiglu" the weight is timm's
packed (2H, K) fc1 as it is (gate rows, then up rows): every engine keeps a gate and an up accumulator per (BLOCK_M,
BLOCK_N) tile, sharing the A tile, and stores silu(gate) · up, (M, H). A float8_e4m3fn weight (with its per-channel
`weight_scale`) goes to the FP8 engines instead: the quantizing LayerNorm (quant_fp8.py) writes e4m3 rows + per-token
scales, then gemm_fp8.py; with `fp8_groups` its epilogue stores the output as e4m3 codes with one scale per row and
128 columns, FC2's input as the next FP8 GEMM (linear_residual with `x_scale`) reads it: no quantization pass, and
half the bytes of bf16 rows. This module checks the inputs and picks the engine: the persistent TMA engine
(gemm_tma.py) on sm_90, the pointer engine (gemm.py) elsewhere, for float8 weights the FP8 TMA engine gemm_fp8_tma.py
on sm_90 or gemm_fp8.py (on sm_89, and SwiGLU's FC1: gemm_fp8_tma.select_fp8_engine).
"""
from typing import Optional

import torch

from ._common import (ACTIVATIONS, FP8_DTYPE, check, check_device, check_fp8_device, check_group_scales,
                      check_linear, check_linear_fp8, check_out, check_vector, epilogue_activation,
                      GELU_LIBDEVICE, rows_view)
from .gemm import gemm_aot_variants
from .gemm_fp8_tma import fp8_launcher, select_fp8_engine
from .gemm_tma import gemm_launcher, select_engine, tma_aot_variants
from .ln_fold import FoldedLinear, check_folded, check_partials, fold_layer_norm, launch_row_stats
from .quant_fp8 import launch_quant_rows, new_group_codes

OP = "ln_linear"


def _check_activation(activation, weight):
    check(activation in ACTIVATIONS, f"{OP}: activation", " | ".join(ACTIVATIONS), repr(activation))
    if activation == "swiglu":
        check(weight.shape[0] % 2 == 0, f"{OP}: weight.shape[0] with activation 'swiglu'",
              "an even row count (packed gate rows, then up rows)", weight.shape[0])


def _out_features(weight, activation):
    """N, or H = N / 2 for SwiGLU's packed (2H, K) weight."""
    return weight.shape[0] // 2 if activation == "swiglu" else weight.shape[0]


def _check(x, weight, colsum, bias, activation, runnable=True, partials=None):
    check_folded(OP, x, weight, colsum, bias)
    _check_activation(activation, weight)
    check_device(OP, dict(x=x, weight=weight, colsum=colsum, bias=bias), runnable)
    if partials is not None:
        check_partials(OP, "partials", partials, x)


def _check_fp8(x, ln_weight, ln_bias, weight, weight_scale, bias, activation, runnable=True):
    k, _ = check_linear_fp8(OP, x, weight, weight_scale, bias)
    if runnable:
        check_fp8_device(OP, x.device)
    check_vector(OP, "ln_weight", ln_weight, k, x.dtype)
    check_vector(OP, "ln_bias", ln_bias, k, x.dtype)
    _check_activation(activation, weight)
    check_device(OP, dict(x=x, ln_weight=ln_weight, ln_bias=ln_bias, weight=weight, bias=bias), runnable)


def ln_linear_launch(x, eps, weight, colsum, bias, activation="none", out=None, partials=None):
    """Plain launcher on folded weights (see fold_layer_norm); `out` (optional, shape (..., N), x.dtype) lets tests
    hand in a poisoned buffer; `partials`: x's row statistics as linear_residual_stats wrote them (merged in the
    GEMM's epilogue), else a statistics launch reads x first."""
    _check(x, weight, colsum, bias, activation, partials=partials)
    shape = (*x.shape[:-1], _out_features(weight, activation))
    if out is None:
        out = x.new_empty(shape)
    out2d = check_out(OP, out, shape, x.dtype)
    if out.numel() == 0:
        return out
    x2d = rows_view(OP, "x", x)
    stats = launch_row_stats(x2d, eps) if partials is None else partials
    launch = gemm_launcher(select_engine(x2d, weight, out2d))
    launch(x2d, weight, bias, out2d, activation=epilogue_activation(ACTIVATIONS[activation]), stats=stats,
           colsum=colsum, eps=eps)
    return out


def ln_linear_fp8_launch(x, ln_weight, ln_bias, eps, weight, weight_scale, bias, activation="none", out=None,
                         out_scale=None):
    """Plain FP8 launcher: weight (N, K) float8_e4m3fn, weight_scale (N,) fp32; `out` lets tests hand in a poisoned
    buffer. With `out_scale` ((..., cdiv(N, 128)) fp32, as quant_fp8.new_group_scales lays it out) `out` is
    float8_e4m3fn and receives the output's codes per row and 128 columns, `out_scale` their scales."""
    _check_fp8(x, ln_weight, ln_bias, weight, weight_scale, bias, activation)
    shape = (*x.shape[:-1], _out_features(weight, activation))
    out_dtype = FP8_DTYPE if out_scale is not None else x.dtype
    if out is None:
        out = torch.empty(shape, device=x.device, dtype=out_dtype)
    out2d = check_out(OP, out, shape, out_dtype)
    if out_scale is not None:
        check_group_scales(OP, "out_scale", out_scale, out)
        check_device(OP, dict(x=x, out_scale=out_scale))
    if out.numel() == 0:
        return out
    if out_scale is not None:
        try:
            scale2d = out_scale.view(-1, out_scale.shape[-1])
        except RuntimeError:
            scale2d = None
        check(scale2d is not None and scale2d.stride(0) == 1, f"{OP}: out_scale strides",
              "rows that merge with a unit row stride (a (G, rows) buffer's transpose: quant_fp8.new_group_scales)",
              out_scale.stride())
    act = epilogue_activation(ACTIVATIONS[activation])
    launch = fp8_launcher(select_fp8_engine(x.shape[-1], weight, out2d, activation=act))
    a_q, a_scale = launch_quant_rows(rows_view(OP, "x", x), ln=(ln_weight, ln_bias, eps))
    launch(a_q, a_scale, weight, weight_scale, bias, out2d, activation=act,
           out_scale=scale2d if out_scale is not None else None)
    return out


@torch.library.custom_op("vitfast::ln_linear", mutates_args=())
def _ln_linear_op(x: torch.Tensor, eps: float, weight: torch.Tensor, colsum: torch.Tensor, bias: torch.Tensor,
                  activation: str, partials: Optional[torch.Tensor] = None) -> torch.Tensor:
    return ln_linear_launch(x, eps, weight, colsum, bias, activation, partials=partials)


@_ln_linear_op.register_fake
def _(x, eps, weight, colsum, bias, activation, partials=None):
    _check(x, weight, colsum, bias, activation, runnable=False, partials=partials)
    return x.new_empty((*x.shape[:-1], _out_features(weight, activation)))


@torch.library.custom_op("vitfast::ln_linear_fp8", mutates_args=())
def _ln_linear_fp8_op(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
                      weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
                      activation: str) -> torch.Tensor:
    return ln_linear_fp8_launch(x, ln_weight, ln_bias, eps, weight, weight_scale, bias, activation)


@_ln_linear_fp8_op.register_fake
def _(x, ln_weight, ln_bias, eps, weight, weight_scale, bias, activation):
    _check_fp8(x, ln_weight, ln_bias, weight, weight_scale, bias, activation, runnable=False)
    return x.new_empty((*x.shape[:-1], _out_features(weight, activation)))


def _codes_and_scales(x, weight, activation):
    """Fresh (codes (..., N) e4m3, scales (..., G) fp32 in the kernels' layout) for an FP8 FC1 with fp8_groups."""
    return new_group_codes((*x.shape[:-1], _out_features(weight, activation)), x.device)


# The FP8 MLP's FC1 when FC2 is FP8: e4m3 codes and their per-(row, 128 columns) scales (two outputs, not mutated
# arguments, so that torch.compile's functionalization sees a plain op).
@torch.library.custom_op("vitfast::ln_linear_fp8_groups", mutates_args=())
def _ln_linear_fp8_groups_op(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
                             weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
                             activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_fp8(x, ln_weight, ln_bias, weight, weight_scale, bias, activation)
    codes, scales = _codes_and_scales(x, weight, activation)
    ln_linear_fp8_launch(x, ln_weight, ln_bias, eps, weight, weight_scale, bias, activation, out=codes,
                         out_scale=scales)
    return codes, scales


@_ln_linear_fp8_groups_op.register_fake
def _(x, ln_weight, ln_bias, eps, weight, weight_scale, bias, activation):
    _check_fp8(x, ln_weight, ln_bias, weight, weight_scale, bias, activation, runnable=False)
    return _codes_and_scales(x, weight, activation)


def ln_linear_folded(x: torch.Tensor, eps: float, folded: FoldedLinear, activation: str = "none",
                     partials: Optional[torch.Tensor] = None) -> torch.Tensor:
    """activation(LayerNorm(x) @ W^T + b) from `fold_layer_norm(γ, β, W, b)` (cache it: it is per weight, not per
    call); x (..., K). Returns (..., N) in x.dtype. `partials`: x's row statistics from the linear_residual_stats
    that wrote x (no statistics launch then)."""
    return _ln_linear_op(x, float(eps), folded.weight, folded.colsum, folded.bias, activation, partials)


def ln_linear(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
              bias: Optional[torch.Tensor], activation: str = "none", weight_scale: Optional[torch.Tensor] = None,
              fp8_groups: bool = False):
    """activation(LayerNorm(x) @ weight^T + bias); x (..., K), weight (N, K); activation "none" | "gelu" (exact
    erf) | "gelu_tanh" | "quick_gelu" (x·sigmoid(1.702x), CLIP) | "swiglu" (packed SwiGLU: weight (2H, K) and bias
    (2H,) as timm's SwiGLUPacked fc1, gate rows first; returns silu(y[..., :H]) * y[..., H:], (..., H), the gate
    applied in the GEMM's epilogue). LayerNorm statistics in fp32. Returns (..., N) in x.dtype. Folds the norm
    into the weight on every call: repeated callers cache fold_layer_norm and use ln_linear_folded. FP8: weight
    float8_e4m3fn with weight_scale (N,) fp32 ((2H,) for swiglu); LayerNorm(x) is quantized per token;
    fp8_groups=True (FP8 only) returns the output as FC2's FP8 input: (codes float8_e4m3fn (..., N), scales fp32
    (..., cdiv(N, 128))), one scale per row and 128 columns (vit_fast.fp8.quantize_groups of the fp32 output), which
    linear_residual(codes, ..., x_scale=scales) reads."""
    if weight.dtype == FP8_DTYPE:
        op = _ln_linear_fp8_groups_op if fp8_groups else _ln_linear_fp8_op
        return op(x, ln_weight, ln_bias, float(eps), weight, weight_scale, bias, activation)
    check(not fp8_groups, f"{OP}: fp8_groups", "False unless weight is float8_e4m3fn", True)
    check(weight_scale is None, f"{OP}: weight_scale", "None for a non-float8 weight", "a tensor")
    k, _ = check_linear(OP, x, weight, bias)
    check_vector(OP, "ln_weight", ln_weight, k, x.dtype)
    check_vector(OP, "ln_bias", ln_bias, k, x.dtype)
    return ln_linear_folded(x, eps, fold_layer_norm(ln_weight, ln_bias, weight, bias), activation)


def aot_variants(exhaustive: bool = False):
    """Both bf16/fp16/fp32 engines with this op's switches: folded LN, every activation, bias always (folding makes
    one); SwiGLU (two accumulators, its own prune rule) at every tile as a base of its own. The FP8 engine lists its
    own variants in gemm_fp8.py."""
    # exact GELU first: the base variant is the presets' FC1; 5: the same through libdevice's erf (VITFAST_GELU)
    args = dict(row_stats=True, activations=(1, 0, 2, 3, GELU_LIBDEVICE), has_bias=(True,), has_residual=False,
                exhaustive=exhaustive)
    swiglu = dict(args, activations=(ACTIVATIONS["swiglu"],))
    return (gemm_aot_variants(**args) + tma_aot_variants(**args) + gemm_aot_variants(**swiglu)
            + tma_aot_variants(**swiglu))
