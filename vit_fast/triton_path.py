"""The "triton" backend: the whole ViT forward as a chain of fused kernels from `kernels/`.

Per block five launches: LN1+QKV (head-major Q/K/V), attention, out-projection+residual, LN2+FC1+GELU,
FC2+residual. The patch embedding writes the token buffer directly ([CLS] row and position embeddings included);
the final LayerNorm runs on the [CLS] rows only when the head needs nothing else. With `cls_only`, the last block
computes attention, out-projection and MLP for the [CLS] query alone (keys and values still cover every token):
the logits are the same, the last block costs about 1/N of the others.
"""
from __future__ import annotations

import torch

import kernels


def _embed(model, x: torch.Tensor, is_uint8: bool) -> torch.Tensor:
    cfg = model.config
    proj = model.patch_embed.proj
    dtype = proj.weight.dtype
    grid = (x.shape[-2] // cfg.patch_size, x.shape[-1] // cfg.patch_size)
    pos = model.pos_embed_for(grid)[0]
    if is_uint8:
        weight, bias = model.folded_patch_weights()  # fp32; the kernel reads the uint8 pixels directly
    else:
        x, weight, bias = x.to(dtype), proj.weight, proj.bias
    # cls_token + pos[0]: cached with the resampled table, so a forward pass launches no extra elementwise op
    cls_pos = model._cached(("cls_pos", grid), [model.cls_token, model.pos_embed],
                            lambda: model.cls_token[0, 0] + pos[0])
    return kernels.patch_embed(x, weight, bias, pos[1:], cls_pos)


def _scale(linear):
    """Per-channel scales of an FP8 layer (vit_fast.fp8.Fp8Linear), None for a plain nn.Linear: the ops dispatch to
    their FP8 engines on the float8 weight."""
    return getattr(linear, "weight_scale", None)


def _block(block, tokens: torch.Tensor, eps: float, cls_only: bool) -> torch.Tensor:
    attn, mlp = block.attn, block.mlp
    qkv = kernels.ln_qkv(tokens, block.norm1.weight, block.norm1.bias, eps, attn.qkv.weight, attn.qkv.bias,
                         attn.num_heads, weight_scale=_scale(attn.qkv))
    q, k, v = qkv.unbind(0)
    if cls_only:
        q, tokens = q[:, :, :1], tokens[:, :1].contiguous()
    ctx = kernels.attention(q, k, v, attn.scale)
    tokens = kernels.linear_residual(ctx, attn.proj.weight, attn.proj.bias, tokens, weight_scale=_scale(attn.proj))
    # FP8 MLP: FC1's epilogue records max |hidden| per token, so FC2 quantizes its input rows in its own main loop
    fp8_mlp = _scale(mlp.fc1) is not None and _scale(mlp.fc2) is not None
    hidden = kernels.ln_linear(tokens, block.norm2.weight, block.norm2.bias, eps, mlp.fc1.weight, mlp.fc1.bias,
                               activation="gelu", weight_scale=_scale(mlp.fc1), return_row_amax=fp8_mlp)
    hidden, amax = hidden if fp8_mlp else (hidden, None)
    return kernels.linear_residual(hidden, mlp.fc2.weight, mlp.fc2.bias, tokens, weight_scale=_scale(mlp.fc2),
                                   x_amax=amax)


def _encode(model, x: torch.Tensor, is_uint8: bool, cls_only: bool) -> torch.Tensor:
    eps = model.config.layer_norm_eps
    tokens = _embed(model, x, is_uint8)
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        tokens = _block(block, tokens, eps, cls_only and i == last)
    return tokens


def forward_features(model, x: torch.Tensor, is_uint8: bool) -> torch.Tensor:
    """(B, 1+N, D) tokens after the final norm (identity with average pooling, as timm)."""
    tokens = _encode(model, x, is_uint8, cls_only=False)
    if model.config.global_pool == "avg":
        return tokens
    return kernels.layer_norm(tokens, model.norm.weight, model.norm.bias, model.config.layer_norm_eps)


def forward_cls(model, x: torch.Tensor, is_uint8: bool) -> torch.Tensor:
    """(B, 1, D) normalized [CLS] tokens, pruning the last block to the [CLS] query. Only for "cls" pooling."""
    tokens = _encode(model, x, is_uint8, cls_only=True)
    return kernels.layer_norm(tokens, model.norm.weight, model.norm.bias, model.config.layer_norm_eps)
