"""The "triton" backend: the whole ViT forward as a chain of fused kernels from `kernels/`.

Per block five GEMM/attention launches: LN1+QKV (rows (B, N, 3, H, d), which attention reads in place), attention,
out-projection+residual, LN2+FC1+activation, FC2+residual. Each LayerNorm is folded into the weight of the GEMM
after it (derived tensors cached on the model, see kernels/ln_fold.py); its rows' statistics come from the residual
GEMM that wrote them (partial statistics from its epilogue, merged in the next GEMM's), so only the first block's
LN1 (after the patch embedding) adds a statistics launch.
The patch embedding writes the token buffer directly ([CLS] row and position embeddings included); the final
LayerNorm runs on the prefix rows only when the head needs nothing else. With `keep_last`, the last block computes
attention, out-projection and MLP for the queries the head reads (keys and values still cover every token): the
logits are the same, the last block costs about 1/N of the others.

In an FP8 model FC1's epilogue stores its output as e4m3 codes with one scale per token and 128 channels, the way
FC2's input is quantized (vit_fast.fp8.INPUT_GROUPS), so FC2 reads them with no pass between (a dense FC1's rows go
through kernels.quantize_fp8_groups). With QKV FP8 too, attention stores its output as the out-projection's e4m3
codes (kernels.attention_fp8: one scale per image, a bound from the QKV GEMM's input scales and weights), so no
pass runs between them either; an FP8 out-projection after a kept QKV quantizes attention's bf16 rows in a pass.

Model families: LayerScale is folded into the weights at load, quick / tanh GELU and the SwiGLU gate (DINOv2 giant:
FC1 takes the packed gate/up weight and stores silu(gate) · up) are kernel epilogues. Run as torch ops inside this
path: the prefix tokens when there are not exactly one (SigLIP: none; DeiT distilled, registers: several) and the
pooling head (SigLIP's attention pool, fc_norm, heads).
"""
from __future__ import annotations

import torch

from . import kernels
from .kernels._common import LN_PARTIALS_ENV, switch_value


def _embed(model, x: torch.Tensor, is_uint8: bool) -> torch.Tensor:
    cfg = model.config
    proj = model.patch_embed.proj
    dtype = proj.weight.dtype
    grid = (x.shape[-2] // cfg.patch_size, x.shape[-1] // cfg.patch_size)
    pos = model.pos_embed_for(grid)[0]
    pos_prefix = model.num_pos_prefix
    if is_uint8:
        weight, bias = model.folded_patch_weights()  # fp32; the kernel reads the uint8 pixels directly
    else:
        x, weight, bias = x.to(dtype), proj.weight, proj.bias
    prefix = model.prefix_tokens()
    if cfg.num_prefix_tokens == 1:
        # cls_token (+ pos[0]): cached with the resampled table, so a forward pass launches no extra elementwise op
        cls = model.cls_token if model.cls_token is not None else model.reg_token
        cls_pos = model._cached(("cls_pos", grid), [cls, model.pos_embed],
                                lambda: cls[0, 0] + pos[0] if pos_prefix else cls[0, 0].clone())
        return kernels.patch_embed(x, weight, bias, pos[pos_prefix:], cls_pos)
    # no prefix token or several: the kernel writes one spare row, replaced here
    spare = torch.zeros(cfg.embed_dim, dtype=pos.dtype, device=pos.device)
    tokens = kernels.patch_embed(x, weight, bias, pos[pos_prefix:], spare)[:, 1:]
    if not prefix:
        return tokens.contiguous()
    lead = torch.cat(prefix, dim=1)
    if pos_prefix:
        lead = lead + pos[:pos_prefix]
    return torch.cat([lead.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)


def _folded(model, norm, linear) -> kernels.FoldedLinear:
    """The LayerNorm folded into the linear after it: derived tensors cached on the model, parameters untouched."""
    tensors = [norm.weight, norm.bias, linear.weight] + ([linear.bias] if linear.bias is not None else [])
    return model._cached(("ln_fold", id(linear)), tensors,
                         lambda: kernels.fold_layer_norm(norm.weight, norm.bias, linear.weight, linear.bias))


def _scale(linear):
    """Per-channel scales of an FP8 layer (vit_fast.fp8.Fp8Linear), None for a plain nn.Linear: the ops dispatch to
    their FP8 engines on the float8 weight (which quantize the normalized rows themselves: no fold)."""
    return getattr(linear, "weight_scale", None)


def _value_bound(model, qkv):
    """(2,) fp32 (c, b) bounding an FP8 QKV layer's values (vit_fast.fp8.value_bound), cached per weight."""
    from .fp8 import value_bound

    tensors = [qkv.weight_bits, qkv.scale_bits] + ([qkv.bias] if qkv.bias is not None else [])
    return model._cached(("value_bound", id(qkv)), tensors,
                         lambda: value_bound(qkv.weight, qkv.weight_scale, qkv.bias, qkv.in_features))


def _ln_then(model, norm, linear, tokens, eps, partials=None, **kwargs):
    """LayerNorm + linear: the folded bf16/fp16/fp32 op (merging the tokens' partial statistics when given), or
    the FP8 op on the raw norm."""
    if _scale(linear) is not None:
        op = kernels.ln_qkv if "num_heads" in kwargs else kernels.ln_linear
        return op(tokens, norm.weight, norm.bias, eps, linear.weight, linear.bias, weight_scale=_scale(linear),
                  **kwargs)
    if "num_heads" in kwargs:
        return kernels.ln_qkv_folded(tokens, eps, _folded(model, norm, linear), kwargs["num_heads"], partials)
    return kernels.ln_linear_folded(tokens, eps, _folded(model, norm, linear), kwargs["activation"], partials)


def _partials_on() -> bool:
    """VITFAST_LN_PARTIALS (default 1); while torch.compile traces, the default (the switch is for comparing the two
    paths eagerly, as the benchmark's lnstats step does)."""
    return torch.compiler.is_compiling() or switch_value(LN_PARTIALS_ENV) == "1"


def _residual(x, linear, residual, stats: bool, x_scale=None):
    """residual + linear(x), and with `stats` the new rows' partial LayerNorm statistics for the folded norm that
    reads them next (None when not asked for: an FP8 layer on either side quantizes rows it reads whole; or with
    VITFAST_LN_PARTIALS=0, where each LayerNorm launches its own statistics kernel)."""
    if stats and _scale(linear) is None and _partials_on():
        return kernels.linear_residual_stats(x, linear.weight, linear.bias, residual)
    out = kernels.linear_residual(x, linear.weight, linear.bias, residual, weight_scale=_scale(linear),
                                  x_scale=x_scale)
    return out, None


def fc1_activation(cfg) -> str:
    """FC1's epilogue: the model's activation, or SwiGLU's gate on the packed (2H) FC1 (the kernel stores the gated
    (.., H) hidden rows, which FC2 reads)."""
    return "swiglu" if cfg.mlp_type == "swiglu" else cfg.act_layer


def _block(model, block, tokens: torch.Tensor, eps: float, activation: str, keep: int, partials=None,
           next_qkv=None):
    """One encoder block -> (its output tokens, their partial statistics or None); `keep` > 0 computes the outputs
    of the first `keep` tokens only; `partials`: the input tokens' statistics; `next_qkv`: the next block's QKV
    linear (None after the last block), whose folded norm reads this block's output."""
    attn, mlp = block.attn, block.mlp
    codes = _scale(attn.qkv) is not None and _scale(attn.proj) is not None
    qkv = _ln_then(model, block.norm1, attn.qkv, tokens, eps, partials, num_heads=attn.num_heads,
                   **({"return_input_scale": True} if codes else {}))
    if codes:
        qkv, in_scale = qkv
    q, k, v = qkv.unbind(0)
    if keep:
        q, tokens = q[:, :, :keep], tokens[:, :keep].contiguous()
    ctx_scale = None
    if codes:
        # attention writes the FP8 out-projection's e4m3 input; with `keep` for the kept queries only, as the
        # residual rows are (the bound covers every key of the image)
        ctx, ctx_scale = kernels.attention_fp8(q, k, v, attn.scale, in_scale, _value_bound(model, attn.qkv))
    else:
        ctx = kernels.attention(q, k, v, attn.scale)
    tokens, partials = _residual(ctx, attn.proj, tokens, _scale(mlp.fc1) is None, ctx_scale)
    if _scale(mlp.fc2) is not None:
        # FP8 FC2 reads its input quantized per token and 128 channels (vit_fast.fp8.INPUT_GROUPS): e4m3 codes from
        # an FP8 FC1's epilogue, or a pass over a dense FC1's rows
        if _scale(mlp.fc1) is not None:
            codes, scales = _ln_then(model, block.norm2, mlp.fc1, tokens, eps, activation=activation,
                                     fp8_groups=True)
        else:
            codes, scales = kernels.quantize_fp8_groups(
                _ln_then(model, block.norm2, mlp.fc1, tokens, eps, partials, activation=activation))
        return kernels.linear_residual(codes, mlp.fc2.weight, mlp.fc2.bias, tokens, weight_scale=_scale(mlp.fc2),
                                       x_scale=scales), None
    hidden = _ln_then(model, block.norm2, mlp.fc1, tokens, eps, partials, activation=activation)
    return _residual(hidden, mlp.fc2, tokens, next_qkv is not None and _scale(next_qkv) is None)


def _states(model, x: torch.Tensor, is_uint8: bool, keep_last: int = 0, collect: bool = False, depth=None):
    """Tokens after the last block (or, with `collect`, the list of embeddings and every block's output); with
    `depth`, the first `depth` blocks only."""
    cfg = model.config
    eps = cfg.layer_norm_eps
    tokens = _embed(model, x, is_uint8)
    if cfg.pre_norm:
        tokens = kernels.layer_norm(tokens, model.norm_pre.weight, model.norm_pre.bias, eps)
    states = [tokens]
    blocks = list(model.blocks)[:depth]
    partials = None  # the embeddings' statistics: the first block's LN1 reads them in a launch of its own
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        tokens, partials = _block(model, block, tokens, eps, fc1_activation(cfg), keep_last if last else 0,
                                  partials, None if last else blocks[i + 1].attn.qkv)
        if collect:
            states.append(tokens)
    return states if collect else tokens


def _final_norm(model, tokens: torch.Tensor) -> torch.Tensor:
    if isinstance(model.norm, torch.nn.LayerNorm):
        return kernels.layer_norm(tokens, model.norm.weight, model.norm.bias, model.config.layer_norm_eps)
    return tokens  # the norm follows the pooling (fc_norm), applied by the head


def forward_features(model, x: torch.Tensor, is_uint8: bool) -> torch.Tensor:
    """(B, P+N, D) tokens after the final norm (identity when the norm follows the pooling, as timm)."""
    return _final_norm(model, _states(model, x, is_uint8))


def hidden_states(model, x: torch.Tensor, is_uint8: bool, depth=None) -> list:
    """[embeddings, block 1, ..., block L] before the final norm (HF's hidden_states); up to block `depth`."""
    return _states(model, x, is_uint8, collect=True, depth=depth)


def forward_prefix(model, x: torch.Tensor, is_uint8: bool) -> torch.Tensor:
    """(B, K, D) normalized first tokens (K: 2 with a distillation token, else 1), pruning the last block to
    those queries. Only for "cls" pooling."""
    keep = 2 if model.config.dist_token else 1
    return _final_norm(model, _states(model, x, is_uint8, keep_last=keep))
