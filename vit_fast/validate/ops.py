"""Per-op checks of `vit-fast validate`: each Triton kernel at the model's own shapes, on the model's own weights (of
the first and the last block, where activations are largest) and on activations captured from its fp32 forward
pass, judged by the same "2x PyTorch's own error" rule as the tests.

Every check is one `OpCheck` row of `OP_CHECKS`: how to cut the op's inputs out of the captured activations, how to
call the kernel, and the eager composition the kernel replaces. The composition runs twice: in float64 (the exact
reference) and in the checked dtype (PyTorch's own error, which sets the budget). An FP8 engine adds its rows here:
an `OpCheck` with the op's name whose `dtypes` maps "fp8" to its compute dtype and whose `emulation` is PyTorch's own
result (ops_fp8.FP8_CHECKS); under `--dtype fp8` it runs in place of the bf16 entry, which otherwise reports "no fp8 check".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .. import kernels
from ..fp8 import ACTIVATIONS as EPILOGUE_ACTIVATIONS
from ..numerics import KERNEL_TOL, Budget, kernel_budget, within_tol
from ..triton_path import fc1_activation

# requested dtype name -> the dtype a bf16/fp16/fp32 op computes in. Under "fp8", ops that stay bf16 in an FP8
# model (patch embedding, the final LayerNorm) are checked in bf16.
_PLAIN = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_STAYS_BF16 = {**_PLAIN, "fp8": torch.bfloat16}


@dataclass
class Activations:
    """fp32 tensors of one batch through the fp32 model, captured at the points where kernels take their inputs."""

    model: torch.nn.Module
    block: int  # the block whose inputs were captured
    pixels: torch.Tensor  # (B, C, H, W) uint8, what patch_embed reads
    tokens0: torch.Tensor  # (B, N, D) input of the block
    qkv: torch.Tensor  # (3, B, H, N, d) the block's q, k, v (the view ln_qkv returns)
    ctx: torch.Tensor  # (B, N, D) attention output (input of the out-projection)
    tokens1: torch.Tensor  # (B, N, D) after the attention residual (input of LN2)
    hidden: torch.Tensor  # (B, N, mlp) the MLP hidden layer after the activation (input of FC2)
    tokens_last: torch.Tensor  # (B, N, D) output of the last block (input of the final norm)

    @property
    def blk(self) -> torch.nn.Module:
        return self.model.blocks[self.block]


@torch.no_grad()
def capture(model: torch.nn.Module, pixels: torch.Tensor, block: int = 0) -> Activations:
    """Run the fp32 `model` (torch backend) on uint8 `pixels` and keep the tensors the op checks of `block` need."""
    seen = {}
    blk, last = model.blocks[block], model.blocks[-1]
    hooks = [
        blk.register_forward_pre_hook(lambda m, a: seen.__setitem__("tokens0", a[0])),
        blk.attn.qkv.register_forward_hook(lambda m, a, out: seen.__setitem__("qkv", out)),
        blk.attn.proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("ctx", a[0])),
        blk.norm2.register_forward_pre_hook(lambda m, a: seen.__setitem__("tokens1", a[0])),
        blk.mlp.fc2.register_forward_pre_hook(lambda m, a: seen.__setitem__("hidden", a[0])),
        last.register_forward_hook(lambda m, a, out: seen.__setitem__("tokens_last", out)),
    ]
    try:
        model.forward_features(pixels)
    finally:
        for h in hooks:
            h.remove()
    b, n, _ = seen["tokens0"].shape
    heads = blk.attn.num_heads
    qkv = seen["qkv"].reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return Activations(model, block, pixels, seen["tokens0"], qkv, seen["ctx"], seen["tokens1"], seen["hidden"],
                       seen["tokens_last"])


def _cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(dtype).contiguous()


def _act(y: torch.Tensor, activation: str) -> torch.Tensor:
    return EPILOGUE_ACTIVATIONS[activation](y)


# ----- inputs: operands rounded to the checked dtype once; kernel and both compositions see the same values --------

def _patch_embed_inputs(a: Activations, dtype):
    m = a.model
    w, b = m.folded_patch_weights()  # fp32 weights with the normalization folded in, as the model runs uint8
    pos = m.pos_embed[0]
    prefix = m.num_pos_prefix  # rows of the table that belong to prefix tokens (0 with no_embed_class)
    lead = m.cls_token if m.cls_token is not None else torch.zeros_like(pos[:1]).unsqueeze(0)
    cls_pos = lead[0, 0] + pos[0] if prefix else lead[0, 0]
    return dict(x=a.pixels, weight=w, bias=b, pos=_cast(pos[prefix:], dtype), cls_pos=_cast(cls_pos, dtype))


def _ln_qkv_inputs(a: Activations, dtype):
    blk = a.blk
    return dict(x=_cast(a.tokens0, dtype), g=_cast(blk.norm1.weight, dtype), b=_cast(blk.norm1.bias, dtype),
                eps=blk.norm1.eps, w=_cast(blk.attn.qkv.weight, dtype), bias=_cast(blk.attn.qkv.bias, dtype),
                heads=blk.attn.num_heads, block=a.block)


def _attention_inputs(a: Activations, dtype):
    q, k, v = _cast(a.qkv, dtype).unbind(0)
    return dict(q=q, k=k, v=v, scale=a.blk.attn.scale)


def _proj_inputs(a: Activations, dtype):
    proj = a.blk.attn.proj
    return dict(x=_cast(a.ctx, dtype), w=_cast(proj.weight, dtype), bias=_cast(proj.bias, dtype),
                res=_cast(a.tokens0, dtype), writes_stats=True)


def _fc1_inputs(a: Activations, dtype):
    blk = a.blk
    return dict(x=_cast(a.tokens1, dtype), g=_cast(blk.norm2.weight, dtype), b=_cast(blk.norm2.bias, dtype),
                eps=blk.norm2.eps, w=_cast(blk.mlp.fc1.weight, dtype), bias=_cast(blk.mlp.fc1.bias, dtype),
                activation=fc1_activation(a.model.config))


def _fc2_inputs(a: Activations, dtype):
    fc2 = a.blk.mlp.fc2
    return dict(x=_cast(a.hidden, dtype), w=_cast(fc2.weight, dtype), bias=_cast(fc2.bias, dtype),
                res=_cast(a.tokens1, dtype), writes_stats=a.block < len(a.model.blocks) - 1)


def _fc1_model_inputs(a: Activations, dtype):
    """FC1's operands as the model feeds them: x is the out-projection kernel's output and comes with the partial
    statistics that kernel wrote (the eager compositions read the same x)."""
    proj = _proj_inputs(a, dtype)
    x, partials = kernels.linear_residual_stats(proj["x"], proj["w"], proj["bias"], proj["res"])
    return dict(_fc1_inputs(a, dtype), x=x, partials=partials)


def _final_norm_inputs(a: Activations, dtype):
    norm = a.model.norm
    prefix = a.model.config.num_prefix_tokens
    # [CLS] pooling: the logits path normalizes only the prefix rows; other heads (SigLIP's map pool) read them all
    x = a.tokens_last[:, :prefix] if a.model.config.global_pool == "cls" and prefix else a.tokens_last
    return dict(x=_cast(x, dtype), w=_cast(norm.weight, dtype), b=_cast(norm.bias, dtype), eps=norm.eps)


def _final_norm_unused(model) -> Optional[str]:
    if not isinstance(model.norm, torch.nn.LayerNorm):
        return "not used by this model (the norm follows the pooling: fc_norm runs in PyTorch)"
    return None


def _partials(x: torch.Tensor) -> torch.Tensor:
    """x's partial LayerNorm statistics as the model's residual GEMMs write them (kernels/ln_fold.py), from the same
    op: x + 0 @ 0ᵀ stores x exactly, and its epilogue writes the statistics of the stored rows (the previous block's
    FC2, which writes them in the model, is not among the captured operands)."""
    zeros = x.new_zeros(*x.shape[:-1], 16)
    return kernels.linear_residual_stats(zeros, x.new_zeros(x.shape[-1], 16), None, x)[1]


def _ln_qkv_kernel(i):
    """ln_qkv as the model runs it: the first block's statistics from a launch of their own, the others' merged
    from the residual GEMM's partials."""
    if i["block"] == 0:
        return kernels.ln_qkv(i["x"], i["g"], i["b"], i["eps"], i["w"], i["bias"], i["heads"])
    folded = kernels.fold_layer_norm(i["g"], i["b"], i["w"], i["bias"])
    return kernels.ln_qkv_folded(i["x"], i["eps"], folded, i["heads"], _partials(i["x"]))


def _fc1_kernel(i):
    """ln_linear as the model runs it: statistics merged from the out-projection's partials."""
    folded = kernels.fold_layer_norm(i["g"], i["b"], i["w"], i["bias"])
    return kernels.ln_linear_folded(i["x"], i["eps"], folded, i["activation"], i["partials"])


def _residual_kernel(i):
    """linear_residual as the model runs it: writing the next LayerNorm's statistics, except the last block's FC2."""
    if i["writes_stats"]:
        return kernels.linear_residual_stats(i["x"], i["w"], i["bias"], i["res"])[0]
    return kernels.linear_residual(i["x"], i["w"], i["bias"], i["res"])


# ----- the eager compositions each kernel replaces, with every operand in `dt` -----------------------------------

def _up(t, dt):
    return None if t is None else t.to(dt)


def _patch_embed_eager(i, dt):
    p = i["weight"].shape[-1]
    y = F.conv2d(i["x"].to(dt), i["weight"].to(dt), _up(i["bias"], dt), stride=p).flatten(2).transpose(1, 2)
    y = y + i["pos"].to(dt)
    return torch.cat([i["cls_pos"].to(dt).expand(y.shape[0], 1, -1), y], dim=1)


def _ln_qkv_eager(i, dt):
    x = i["x"].to(dt)
    b, n, d = x.shape
    y = F.linear(F.layer_norm(x, (d,), i["g"].to(dt), i["b"].to(dt), i["eps"]), i["w"].to(dt), _up(i["bias"], dt))
    return y.view(b, n, 3, i["heads"], d // i["heads"]).permute(2, 0, 3, 1, 4)


def _attention_eager(i, dt):
    q, k, v = i["q"].to(dt), i["k"].to(dt), i["v"].to(dt)
    out = torch.softmax((q @ k.transpose(-1, -2)) * i["scale"], dim=-1) @ v
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def _linear_residual_eager(i, dt):
    return i["res"].to(dt) + F.linear(i["x"].to(dt), i["w"].to(dt), _up(i["bias"], dt))


def _ln_linear_eager(i, dt):
    x = i["x"].to(dt)
    y = F.layer_norm(x, x.shape[-1:], i["g"].to(dt), i["b"].to(dt), i["eps"])
    return _act(F.linear(y, i["w"].to(dt), _up(i["bias"], dt)), i["activation"])


def _layer_norm_eager(i, dt):
    x = i["x"].to(dt)
    return F.layer_norm(x, x.shape[-1:], i["w"].to(dt), i["b"].to(dt), i["eps"])


# ----- the table ------------------------------------------------------------------------------------------------

@dataclass
class OpCheck:
    name: str  # the row's name: the op, and which use of it in the model
    inputs: Callable  # (Activations, dtype) -> dict of the op's operands at the model's shapes
    kernel: Callable  # dict -> the kernel's output
    eager: Callable  # (dict, dtype) -> the eager composition with every operand in that dtype
    dtypes: dict = field(default_factory=lambda: dict(_STAYS_BF16))  # requested dtype name -> compute dtype
    per_block: bool = True  # an op of every block (checked on the first and the last), or of the model once
    unused: Callable = lambda model: None  # model -> why this model never runs the op, or None
    judge: Callable = kernel_budget  # (out, ref, torch_out, dtype) -> numerics.Budget
    # inputs -> PyTorch's own result when the op has no eager composition in its dtype (FP8: the torch emulation of
    # the same float8 arithmetic); None: eager(inputs, dtype). With an emulation, `tol` bounds the kernel against it
    emulation: Optional[Callable] = None
    tol: dict = field(default_factory=lambda: dict(KERNEL_TOL))  # dtype -> (atol, rtol): the kernel tests' bound
    # inputs -> the result `tol` bounds the kernel against, where that is not the emulation (FP8 LN ops: the GEMM
    # emulated on the rows the engine quantized, see ops_fp8); the budget keeps the emulation
    tol_reference: Optional[Callable] = None
    label: Optional[str] = None  # the row's dtype column (default: the compute dtype)

    def shape(self, inputs: dict) -> list:
        """Shape of the op's first tensor operand (its activation input)."""
        return list(next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape)


OP_CHECKS = [
    OpCheck("patch_embed", _patch_embed_inputs,
            lambda i: kernels.patch_embed(i["x"], i["weight"], i["bias"], i["pos"], i["cls_pos"]), _patch_embed_eager,
            per_block=False),
    OpCheck("ln_qkv", _ln_qkv_inputs, _ln_qkv_kernel, _ln_qkv_eager, dtypes=dict(_PLAIN)),
    OpCheck("attention", _attention_inputs, lambda i: kernels.attention(i["q"], i["k"], i["v"], i["scale"]),
            _attention_eager, dtypes=dict(_PLAIN)),
    OpCheck("linear_residual[proj]", _proj_inputs, _residual_kernel, _linear_residual_eager, dtypes=dict(_PLAIN)),
    OpCheck("ln_linear[fc1]", _fc1_model_inputs, _fc1_kernel, _ln_linear_eager, dtypes=dict(_PLAIN)),
    OpCheck("linear_residual[fc2]", _fc2_inputs, _residual_kernel, _linear_residual_eager, dtypes=dict(_PLAIN)),
    OpCheck("layer_norm[final]", _final_norm_inputs,
            lambda i: kernels.layer_norm(i["x"], i["w"], i["b"], i["eps"]), _layer_norm_eager, per_block=False,
            unused=_final_norm_unused),
]


def checks_for(dtype_name: str) -> list:
    """The checks to run for a requested dtype, one per op name in table order: the first entry of OP_CHECKS and
    then ops_fp8.FP8_CHECKS that handles that dtype (an FP8 entry takes the place of the bf16 one), or the first
    entry (which then reports itself skipped)."""
    from .ops_fp8 import FP8_CHECKS  # here: ops_fp8 builds on this module

    chosen = {}
    for c in OP_CHECKS + FP8_CHECKS:
        if c.name not in chosen or (dtype_name in c.dtypes and dtype_name not in chosen[c.name].dtypes):
            chosen[c.name] = c
    return list(chosen.values())


def empty_row(check: OpCheck, acts: Activations) -> dict:
    return {"op": check.name, "block": acts.block if check.per_block else None, "dtype": None, "shape": None,
            "status": "skipped", "kernel_err": None, "torch_err": None, "budget": None, "reason": None}


@torch.no_grad()
def run_check(check: OpCheck, acts: Activations, dtype_name: str) -> dict:
    """One row of the report: {"op", "block" (None for a model-level op), "dtype", "shape", "status":
    pass|fail|skipped, "kernel_err", "torch_err", "budget", "reason"}."""
    dtype = check.dtypes.get(dtype_name)
    row = empty_row(check, acts)
    if dtype is None:
        row["reason"] = f"no {dtype_name} check for this op"
        return row
    unused = check.unused(acts.model)
    if unused:
        row["reason"] = unused
        return row
    inputs = check.inputs(acts, dtype)
    row["dtype"] = check.label or str(dtype).replace("torch.", "")
    row["shape"] = check.shape(inputs)
    out = check.kernel(inputs)
    ref = check.eager(inputs, torch.float64)
    torch_out = check.eager(inputs, dtype) if check.emulation is None else check.emulation(inputs)
    budget: Budget = check.judge(out, ref, torch_out, dtype)
    # the kernel tests' other bound (atol + rtol * |ref|), looser than the 2x rule in practice: KERNEL_TOL against
    # the exact composition, or FP8_TOL against the emulation
    tol_ref = ref if check.emulation is None else torch_out if check.tol_reference is None \
        else check.tol_reference(inputs)
    in_tol = dtype not in check.tol or within_tol(out, tol_ref, dtype, check.tol)
    row.update(status="pass" if budget.passed and in_tol else "fail", kernel_err=budget.err,
               torch_err=budget.torch_err, budget=budget.budget)
    if not budget.passed:
        row["reason"] = f"kernel {budget}"
    elif not in_tol:
        atol, rtol = check.tol[dtype]
        against = "the exact composition" if check.emulation is None else "the torch emulation"
        row["reason"] = f"kernel output outside the tests' tolerance atol={atol:g}, rtol={rtol:g} against {against}"
    return row
