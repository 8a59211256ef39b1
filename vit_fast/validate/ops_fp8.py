"""The FP8 rows of `vit-fast validate --dtype fp8`: the four GEMMs an FP8 model runs in e4m3 (LN+QKV, LN+FC1,
out-projection + residual, FC2 + residual) and attention storing the out-projection's e4m3 input, each at the
model's shapes, on its own weights quantized per output channel as `vit_fast.quantize` does, and on bf16
activations (an FP8 model's residual stream is bf16).

Each row is judged as the bf16 rows are, with PyTorch's own FP8 arithmetic in place of a composition in the dtype:
- exact reference: the unquantized op (fp32 weights, the bf16-rounded activations) in float64, so the error is what
  FP8 costs against the fp32 model;
- PyTorch's own: `vit_fast.fp8.emulate_linear` (torch float8 casts, the same per-token (FC2: per token and 128
  channels) and per-channel scales);
  budget 2 x its error + floor (`numerics.kernel_budget`);
- and the kernel tests' bound against the emulation (`numerics.FP8_TOL`). For the LayerNorm-quantizing GEMMs
  (LN+QKV, LN+FC1) that bound is taken against the GEMM emulated on the rows the engine quantized, when those are
  torch's up to rounding flips: the engine's fp32 LayerNorm sums in another order than torch's, so at a model's
  shapes a few elements land one e4m3 step apart, and each moves its output row by more than FP8_TOL. Rows that
  differ more (another scale, a wrong code, more than 1 element in 1,000 flipped) leave torch's own operands as the
  reference, and the row fails.
Attention (`kernels.attention_fp8`) is judged on its dequantized codes: exact attention in float64 as the reference,
PyTorch's own the bf16 attention quantized at the same bound (`vit_fast.fp8.quantize_bounded`), and against that
one e4m3 step (ATTENTION_CODES_TOL: bf16's rounding moves a few values across a rounding boundary). The
out-projection reads e4m3 rows with one scale per row, here the per-row quantization of the captured rows (in the
model attention writes them at its bound: the row above). FC2 reads its input as e4m3 codes per row and 128 columns
(vit_fast.fp8.INPUT_GROUPS), here from `kernels.quantize_fp8_groups` of the captured bf16 rows (in the model FC1's
epilogue writes them from its fp32 values, with the same rule; the tests check both against the emulation). FC1 runs
the model's activation, GELU, or for SwiGLU models the gate on the packed (2H) weight (the emulation's "swiglu"),
storing bf16 rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import fp8, kernels
from ..kernels.quant_fp8 import launch_quant_rows
from ..numerics import FP8_TOL, e4m3_rounding_flips
from .ops import (_STAYS_BF16, OpCheck, _attention_eager, _attention_inputs, _fc1_inputs, _fc2_inputs,
                  _linear_residual_eager, _ln_linear_eager, _ln_qkv_eager, _ln_qkv_inputs, _proj_inputs)

_FP8 = {"fp8": _STAYS_BF16["fp8"]}  # activations, LayerNorm parameters, bias and residual in bf16


def _quantized(inputs_fn, layer):
    """inputs_fn's operands in bf16, plus the layer's fp32 weight (`w`, for the exact reference), its e4m3 weight
    and per-channel scales (`wq`, `ws`)."""

    def inputs(acts, dtype):
        i = inputs_fn(acts, dtype)
        weight = layer(acts).weight.detach().float()
        i["w"] = weight.contiguous()
        i["wq"], i["ws"] = fp8.quantize_rows(weight)
        return i

    return inputs


# attention_fp8 against the bf16 emulation: one e4m3 step (2^-3 relative) on top of bf16's kernel tolerance
ATTENTION_CODES_TOL = {torch.bfloat16: (6e-2, 0.13)}


def _attention_fp8_inputs(a, dtype):
    """attention's bf16 q, k, v, plus what attention_fp8 bounds its output with: the per-token scales of the FP8
    QKV GEMM's input (LN1 of the block's tokens, quantized per row) and the FP8 QKV weights' (c, b). q, k, v are the
    fp32 model's, so the bound (made for the FP8 QKV's values) may sit a rounding below a value; such codes clamp
    to ±448 in the kernel and in the emulation alike."""
    i = _attention_inputs(a, dtype)
    blk, x = a.blk, a.tokens0.float()
    ln = F.layer_norm(x, x.shape[-1:], blk.norm1.weight.float(), blk.norm1.bias.float(), blk.norm1.eps)
    wq, ws = fp8.quantize_rows(blk.attn.qkv.weight.detach().float())
    i["in_scale"] = fp8.quantize_rows(ln)[1].contiguous()
    i["bound"] = fp8.value_bound(wq, ws, blk.attn.qkv.bias, x.shape[-1]).to(x.device)
    return i


def _attention_fp8_kernel(i):
    codes, scale = kernels.attention_fp8(i["q"], i["k"], i["v"], i["scale"], i["in_scale"], i["bound"])
    return fp8.dequantize(codes, scale)


def _attention_fp8_emulation(i):
    ctx = _attention_eager(i, i["q"].dtype)
    return fp8.dequantize(*fp8.quantize_bounded(ctx, fp8.attention_output_bound(i["in_scale"], i["bound"])))


def _proj_kernel(i):
    q, s = fp8.quantize_rows(i["x"])
    return kernels.linear_residual(q, i["wq"], i["bias"], i["res"], weight_scale=i["ws"], x_scale=s)


def _emulate(i, *, ln=False, activation="none", residual=False, input_group=0):
    return fp8.emulate_linear(i["x"], i["wq"], i["ws"], i["bias"], ln=(i["g"], i["b"], i["eps"]) if ln else None,
                              activation=activation, residual=i["res"] if residual else None,
                              input_group=input_group)


def _fc2_kernel(i):
    codes, scales = kernels.quantize_fp8_groups(i["x"])
    return kernels.linear_residual(codes, i["wq"], i["bias"], i["res"], weight_scale=i["ws"], x_scale=scales)


def _ln_qkv_emulation(i):
    b, n, d = i["x"].shape
    return _emulate(i, ln=True).view(b, n, 3, i["heads"], d // i["heads"]).permute(2, 0, 3, 1, 4)


FLIPS_ALLOWED = 1e-3  # fraction of the LayerNorm-quantized elements that may sit one e4m3 step from torch's


def engine_rows(i, quantize=launch_quant_rows):
    """(q, scale) the LN-quantizing engines feed their GEMM (`quant_fp8.launch_quant_rows`, their first stage) when
    they equal torch's `quantize_rows(layer_norm(x))` up to rounding flips (`numerics.e4m3_rounding_flips`, at most
    FLIPS_ALLOWED of them); else torch's own."""
    x2d = i["x"].reshape(-1, i["x"].shape[-1]).contiguous()
    ln = F.layer_norm(x2d.float(), x2d.shape[-1:], i["g"].float(), i["b"].float(), i["eps"])
    ref_q, ref_s = fp8.quantize_rows(ln)
    q, s = quantize(x2d, (i["g"], i["b"], i["eps"]))
    flipped = e4m3_rounding_flips(q, s, ref_q, ref_s)
    if flipped is not None and flipped.float().mean().item() <= FLIPS_ALLOWED:
        return q, s
    return ref_q, ref_s


def _on_engine_rows(i, activation="none"):
    """The FP8 GEMM emulated on `engine_rows`, then bias and activation in fp32 and one cast, as the emulation does."""
    q, s = engine_rows(i)
    y = fp8.fp8_matmul(q, s, i["wq"], i["ws"])
    if i["bias"] is not None:
        y = y + i["bias"].float()
    return fp8.ACTIVATIONS[activation](y).to(i["x"].dtype).view(*i["x"].shape[:-1], -1)


def _ln_qkv_on_engine_rows(i):
    b, n, d = i["x"].shape
    return _on_engine_rows(i).view(b, n, 3, i["heads"], d // i["heads"]).permute(2, 0, 3, 1, 4)


def _check(name, inputs, kernel, eager, emulation, tol_reference=None):
    return OpCheck(name, inputs, kernel, eager, dtypes=dict(_FP8), emulation=emulation, tol=dict(FP8_TOL),
                   label="float8_e4m3fn", tol_reference=tol_reference)


FP8_CHECKS = [
    _check("ln_qkv", _quantized(_ln_qkv_inputs, lambda a: a.blk.attn.qkv),
           lambda i: kernels.ln_qkv(i["x"], i["g"], i["b"], i["eps"], i["wq"], i["bias"], i["heads"],
                                    weight_scale=i["ws"]),
           _ln_qkv_eager, _ln_qkv_emulation, _ln_qkv_on_engine_rows),
    OpCheck("attention", _attention_fp8_inputs, _attention_fp8_kernel, _attention_eager, dtypes=dict(_FP8),
            emulation=_attention_fp8_emulation, tol=dict(ATTENTION_CODES_TOL), label="float8_e4m3fn"),
    _check("linear_residual[proj]", _quantized(_proj_inputs, lambda a: a.blk.attn.proj), _proj_kernel,
           _linear_residual_eager, lambda i: _emulate(i, residual=True)),
    _check("ln_linear[fc1]", _quantized(_fc1_inputs, lambda a: a.blk.mlp.fc1),
           lambda i: kernels.ln_linear(i["x"], i["g"], i["b"], i["eps"], i["wq"], i["bias"], i["activation"],
                                       weight_scale=i["ws"]),
           _ln_linear_eager, lambda i: _emulate(i, ln=True, activation=i["activation"]),
           lambda i: _on_engine_rows(i, i["activation"])),
    _check("linear_residual[fc2]", _quantized(_fc2_inputs, lambda a: a.blk.mlp.fc2), _fc2_kernel,
           _linear_residual_eager, lambda i: _emulate(i, residual=True, input_group=fp8.INPUT_GROUPS["fc2"])),
]
