"""The "triton" backend: the whole ViT forward as a chain of fused kernels from `kernels/`.

Per block five GEMM/attention launches: LN1+QKV (rows (B, N, 3, H, d), which attention reads in place), attention,
out-projection+residual, LN2+FC1+GELU, FC2+residual. Each LayerNorm is folded into the weight of the GEMM after it
(derived tensors cached on the model, see kernels/ln_fold.py) and adds a small per-row statistics launch. The patch
embedding writes the token buffer directly ([CLS] row and position embeddings included);
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


def _folded(model, norm, linear) -> kernels.FoldedLinear:
    """The LayerNorm folded into the linear after it: derived tensors cached on the model, parameters untouched."""
    tensors = [norm.weight, norm.bias, linear.weight] + ([linear.bias] if linear.bias is not None else [])
    return model._cached(("ln_fold", id(linear)), tensors,
                         lambda: kernels.fold_layer_norm(norm.weight, norm.bias, linear.weight, linear.bias))


def _block(model, block, tokens: torch.Tensor, eps: float, cls_only: bool) -> torch.Tensor:
    attn, mlp = block.attn, block.mlp
    qkv = kernels.ln_qkv_folded(tokens, eps, _folded(model, block.norm1, attn.qkv), attn.num_heads)
    q, k, v = qkv.unbind(0)
    if cls_only:
        q, tokens = q[:, :, :1], tokens[:, :1].contiguous()
    ctx = kernels.attention(q, k, v, attn.scale)
    tokens = kernels.linear_residual(ctx, attn.proj.weight, attn.proj.bias, tokens)
    hidden = kernels.ln_linear_folded(tokens, eps, _folded(model, block.norm2, mlp.fc1), activation="gelu")
    return kernels.linear_residual(hidden, mlp.fc2.weight, mlp.fc2.bias, tokens)


def _encode(model, x: torch.Tensor, is_uint8: bool, cls_only: bool) -> torch.Tensor:
    eps = model.config.layer_norm_eps
    tokens = _embed(model, x, is_uint8)
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        tokens = _block(model, block, tokens, eps, cls_only and i == last)
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
