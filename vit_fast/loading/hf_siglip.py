"""Hugging Face SigLIP vision tower (`SiglipVisionModel`) <-> vit-fast.

SigLIP: no [CLS] token, tanh GELU, `post_layernorm` on every token (-> norm, so `last_hidden_state` is
normalized), and the attention-pooling head (`head.probe` -> attn_pool.latent; nn.MultiheadAttention's packed
in-projection split into timm's q and kv; `head.layernorm`, `head.mlp`), whose output is `pooler_output`.
"""
from __future__ import annotations

import re

import torch

from ..config import ViTConfig
from .hf_common import HF_NAMES, LAYER, check_act, common_config, compile_table, rename_back, rename

MODEL_TYPES = ("siglip_vision_model",)
CONVERTS_RGB = True  # its HF image processor composites transparent pixels onto white (do_convert_rgb)

_TABLE = compile_table([
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"embeddings\.patch_embedding\.(weight|bias)", r"patch_embed.proj.\1"),
    (LAYER + r"\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (LAYER + r"\.self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (LAYER + r"\.layer_norm1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (LAYER + r"\.layer_norm2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (LAYER + r"\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"post_layernorm\.(weight|bias)", r"norm.\1"),
    (r"head\.probe", "attn_pool.latent"),
    (r"head\.attention\.out_proj\.(weight|bias)", r"attn_pool.proj.\1"),
    (r"head\.layernorm\.(weight|bias)", r"attn_pool.norm.\1"),
    (r"head\.mlp\.(fc1|fc2)\.(weight|bias)", r"attn_pool.mlp.\1.\2"),
    (r"head\.attention\.in_proj_(weight|bias)", r"attn_pool.in_proj.\1"),
], prefixes=("vision_model.",))
_IGNORED = re.compile(r"^(?:vision_model\.)?embeddings\.position_ids$")


def convert_state(state: dict, hf: dict) -> dict:
    out = rename(state, _TABLE, _IGNORED)
    if "pos_embed" in out and out["pos_embed"].dim() == 2:
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    for kind in ("weight", "bias"):
        packed = out.pop(f"attn_pool.in_proj.{kind}", None)
        if packed is not None:  # rows [q; k; v]: timm keeps q apart and k, v together
            d = packed.shape[0] // 3
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = packed[:d], packed[d:]
    return out


def config_from_hf(hf: dict, state: dict, preprocessor: dict | None = None, **overrides) -> ViTConfig:
    if hf.get("vision_use_head", True) is False or "attn_pool.latent" not in state:
        raise ValueError("SigLIP without its attention-pooling head (vision_use_head=False) is not supported; "
                         "vit-fast needs head.probe / head.attention / head.mlp")
    cfg = common_config(hf, preprocessor)
    cfg.update(
        mlp_dim=hf["intermediate_size"],
        layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
        act_layer=check_act(hf, "hidden_act"),
        class_token=False,
        global_pool="map",
        num_classes=0,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
    )
    if preprocessor and "image_mean" in preprocessor:
        cfg.update(image_mean=preprocessor["image_mean"], image_std=preprocessor["image_std"])
    cfg.update(overrides)
    return ViTConfig(**cfg)


# ---- vit-fast -> Hugging Face (vit_fast.loading.hf_export) ----


def hf_architecture(cfg: ViTConfig) -> tuple:
    """(HF class name, its config, the output field that equals `model(x)`) for a SigLIP-switched ViTConfig."""
    from transformers import SiglipVisionConfig

    config = SiglipVisionConfig(
        hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, num_channels=cfg.in_chans, image_size=cfg.img_size[0],
        patch_size=cfg.patch_size, hidden_act=HF_NAMES[cfg.act_layer], layer_norm_eps=cfg.layer_norm_eps,
        vision_use_head=True)
    return "SiglipVisionModel", config, "pooler_output"


def export_state(hf_state: dict, ours: dict) -> dict:
    ours = dict(ours, pos_embed=ours["pos_embed"][0])
    for kind in ("weight", "bias"):  # timm's q and kv -> nn.MultiheadAttention's packed [q; k; v]
        if f"attn_pool.q.{kind}" in ours:
            ours[f"attn_pool.in_proj.{kind}"] = torch.cat([ours.pop(f"attn_pool.q.{kind}"),
                                                           ours.pop(f"attn_pool.kv.{kind}")], dim=0)
    return rename_back(hf_state, ours, _TABLE, _IGNORED)
