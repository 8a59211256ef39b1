"""LayerNorm -> Linear (-> GELU) in one GEMM: the pre-norm MLP's fc1, or any norm followed by a dense layer.

The norm is folded (ln_fold.py): the op takes the folded weight, a per-row statistics pass runs first, and the GEMM
applies rstd · (acc − mean · colsum) + bias and the activation in its epilogue. This module checks the inputs and
picks the GEMM engine: the persistent TMA engine (gemm_tma.py) on sm_90, the pointer engine (gemm.py) elsewhere.
"""
from typing import Optional

import torch

from ._common import ACTIVATIONS, check, check_device, check_linear, check_out, check_vector, rows_view
from .gemm import gemm_aot_variants, launch_fused_gemm
from .gemm_tma import launch_tma_gemm, select_engine, tma_aot_variants
from .ln_fold import FoldedLinear, check_folded, fold_layer_norm, launch_row_stats

OP = "ln_linear"


def _check(x, weight, colsum, bias, activation, runnable=True):
    check_folded(OP, x, weight, colsum, bias)
    check(activation in ACTIVATIONS, f"{OP}: activation", " | ".join(ACTIVATIONS), repr(activation))
    check_device(OP, dict(x=x, weight=weight, colsum=colsum, bias=bias), runnable)


def ln_linear_launch(x, eps, weight, colsum, bias, activation="none", out=None):
    """Plain launcher on folded weights (see fold_layer_norm); `out` (optional, shape (..., N), x.dtype) lets tests
    hand in a poisoned buffer."""
    _check(x, weight, colsum, bias, activation)
    shape = (*x.shape[:-1], weight.shape[0])
    if out is None:
        out = x.new_empty(shape)
    out2d = check_out(OP, out, shape, x.dtype)
    if out.numel() == 0:
        return out
    x2d = rows_view(OP, "x", x)
    stats = launch_row_stats(x2d, eps)
    launch = launch_tma_gemm if select_engine(x2d, weight, out2d) == "tma" else launch_fused_gemm
    launch(x2d, weight, bias, out2d, activation=ACTIVATIONS[activation], stats=stats, colsum=colsum)
    return out


@torch.library.custom_op("vitfast::ln_linear", mutates_args=())
def _ln_linear_op(x: torch.Tensor, eps: float, weight: torch.Tensor, colsum: torch.Tensor, bias: torch.Tensor,
                  activation: str) -> torch.Tensor:
    return ln_linear_launch(x, eps, weight, colsum, bias, activation)


@_ln_linear_op.register_fake
def _(x, eps, weight, colsum, bias, activation):
    _check(x, weight, colsum, bias, activation, runnable=False)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def ln_linear_folded(x: torch.Tensor, eps: float, folded: FoldedLinear, activation: str = "none") -> torch.Tensor:
    """activation(LayerNorm(x) @ W^T + b) from `fold_layer_norm(γ, β, W, b)` (cache it: it is per weight, not per
    call); x (..., K). Returns (..., N) in x.dtype."""
    return _ln_linear_op(x, float(eps), folded.weight, folded.colsum, folded.bias, activation)


def ln_linear(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float, weight: torch.Tensor,
              bias: Optional[torch.Tensor], activation: str = "none") -> torch.Tensor:
    """activation(LayerNorm(x) @ weight^T + bias); x (..., K), weight (N, K); activation "none" | "gelu" (exact
    erf) | "gelu_tanh" | "quick_gelu" (x·sigmoid(1.702x), CLIP). LayerNorm statistics in fp32. Returns (..., N) in
    x.dtype. Folds the norm into the weight on every call: repeated callers cache fold_layer_norm and use
    ln_linear_folded."""
    k, _ = check_linear(OP, x, weight, bias)
    check_vector(OP, "ln_weight", ln_weight, k, x.dtype)
    check_vector(OP, "ln_bias", ln_bias, k, x.dtype)
    return ln_linear_folded(x, eps, fold_layer_norm(ln_weight, ln_bias, weight, bias), activation)


def aot_variants(exhaustive: bool = False):
    """Both engines with this op's switches: folded LN, every activation, bias always (folding makes one)."""
    args = dict(row_stats=True, activations=tuple(ACTIVATIONS.values()), has_bias=(True,), has_residual=False,
                exhaustive=exhaustive)
    return gemm_aot_variants(**args) + tma_aot_variants(**args)
