"""`forward_intermediates` with timm's meaning: the tokens after chosen blocks, for dense-prediction heads and
retrieval on DINOv2-style backbones. Kept apart from the model so its argument handling does not crowd it."""
from __future__ import annotations

import torch

OUTPUT_FORMATS = ("NCHW", "NLC")


def block_indices(depth: int, indices) -> list:
    """timm's rule: None -> every block; an int n -> the last n blocks; a sequence -> those blocks (negative
    counts from the end). Returns sorted, non-negative, validated indices."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices}: an int asks for the last n blocks, 1 <= n <= {depth}")
        return list(range(depth - indices, depth))
    out = []
    for i in indices:
        if not isinstance(i, int) or not -depth <= i < depth:
            raise ValueError(f"block index {i!r} out of range for a model with {depth} blocks")
        out.append(i % depth)
    return sorted(set(out))


def forward_intermediates(model, x: torch.Tensor, indices, return_prefix_tokens: bool, norm: bool,
                          stop_early: bool, output_fmt: str, intermediates_only: bool):
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}; got {output_fmt!r}")
    cfg = model.config
    take = block_indices(cfg.depth, indices)
    # [embeddings, block 0, ..., block L-1], or up to the last block taken (timm's stop_early)
    states = model.hidden_states(x, depth=max(take) + 1 if stop_early and take else None)
    prefix = cfg.num_prefix_tokens
    checked, _ = model._check_input(x)
    h, w = checked.shape[-2] // cfg.patch_size, checked.shape[-1] // cfg.patch_size
    final_norm = _final_norm(model)
    intermediates, prefixes = [], []
    for i in take:
        tokens = states[i + 1]
        if norm:
            tokens = final_norm(tokens)
        prefixes.append(tokens[:, :prefix])
        tokens = tokens[:, prefix:]
        if output_fmt == "NCHW":
            tokens = tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
        intermediates.append(tokens)
    if return_prefix_tokens and prefix:  # timm: a model without prefix tokens (SigLIP) returns the maps alone
        intermediates = list(zip(intermediates, prefixes))
    if intermediates_only:
        return intermediates
    return final_norm(states[-1]), intermediates


def _final_norm(model):
    """The LayerNorm timm applies to every token after the blocks. HF's CLIP applies it (post_layernorm) to the
    pooled [CLS] only, so vit-fast holds it as fc_norm, where timm's CLIP holds the same weights as its final norm;
    a model pooling the mean of the patches keeps fc_norm after the pooling, as timm does (no final norm)."""
    cfg = model.config
    return model.fc_norm if cfg.use_fc_norm and cfg.global_pool == "cls" else model.norm
