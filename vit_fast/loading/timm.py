"""timm `VisionTransformer` -> vit-fast: a live model, its state dict, or a .safetensors/.pth file of it.

vit-fast's parameter names mirror timm's, so the state dict loads unchanged; what a file does not record (heads,
non-square training size, normalization constants) comes from the live model's attributes, from `config_overrides`,
or from the presets.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..config import ViTConfig
from .state_dict import build_and_load, infer_num_heads, read_weights


def config_from_timm_state(state: dict, **overrides) -> ViTConfig:
    """Infer a ViTConfig from timm key names and shapes; `overrides` win."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        hint = ""
        if any("embeddings.patch_embeddings" in k for k in state):
            hint = " (these are Hugging Face weights: load their directory, with its config.json)"
        raise ValueError(f"not a timm ViT state dict: no 'patch_embed.proj.weight' / 'pos_embed'{hint}")
    d, in_chans, p, p2 = state["patch_embed.proj.weight"].shape
    if p != p2:
        raise ValueError(f"only square patches are supported, got {p}x{p2}")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    cfg = dict(
        patch_size=p,
        in_chans=in_chans,
        embed_dim=d,
        depth=depth,
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        global_pool="avg" if "fc_norm.weight" in state else "cls",
        representation_size=state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None,
        layer_norm_eps=1e-6,
        pos_embed_antialias=True,  # timm's resample_abs_pos_embed antialiases
    )
    cfg.update(overrides)
    if "num_heads" not in cfg:
        cfg["num_heads"] = infer_num_heads(d)
    if "img_size" not in cfg:
        side = math.isqrt(state["pos_embed"].shape[1] - 1)
        if side * side != state["pos_embed"].shape[1] - 1:
            raise ValueError("the position embeddings do not form a square grid; pass img_size=(H, W) "
                             "(CLI: --set 'img_size=[H,W]')")
        cfg["img_size"] = side * p
    return ViTConfig.from_dict(cfg)  # unknown override names: a ValueError listing the known fields


def _live_model_config(model) -> dict:
    """Settings a live timm model knows but its state dict does not."""
    block = model.blocks[0]
    cfg = dict(
        num_heads=block.attn.num_heads,
        img_size=tuple(model.patch_embed.img_size),
        layer_norm_eps=block.norm1.eps,
    )
    unsupported = []
    if getattr(model, "num_reg_tokens", 0) or getattr(model, "no_embed_class", False):
        unsupported.append("register tokens / position embeddings without the class token")
    if getattr(model, "cls_token", None) is None:
        unsupported.append("models without a class token")
    if getattr(model, "global_pool", "token") not in ("token", "avg"):
        unsupported.append(f"global_pool={model.global_pool!r}")
    if getattr(model, "global_pool", "token") == "token" and not hasattr(model.norm, "weight"):
        unsupported.append("[CLS] pooling without a final LayerNorm")
    if unsupported:
        raise ValueError("this timm model uses features vit-fast does not implement: " + ", ".join(unsupported))
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in pretrained and "std" in pretrained:
        cfg.update(image_mean=tuple(pretrained["mean"]), image_std=tuple(pretrained["std"]))
    if "crop_pct" in pretrained:
        cfg["crop_pct"] = pretrained["crop_pct"]
    if pretrained.get("interpolation") in ("bicubic", "bilinear"):
        cfg["interpolation"] = pretrained["interpolation"]
    return cfg


def from_timm(obj, backend: str = "auto", **config_overrides):
    """vit-fast model equal to a timm ViT given as a live model, a state dict, or a weight file path."""
    if isinstance(obj, torch.nn.Module):
        state = obj.state_dict()
        config_overrides = {**_live_model_config(obj), **config_overrides}
        source = f"timm model {type(obj).__name__}"
    elif isinstance(obj, dict):
        state, source = obj, "timm state dict"
    elif isinstance(obj, (str, Path)):
        state, _ = read_weights(obj)
        source = str(obj)
    else:
        raise ValueError(f"from_timm expects a timm model, a state dict or a file path; got {type(obj).__name__}")
    config = config_from_timm_state(state, **config_overrides)
    return build_and_load(config, state, backend, source)
