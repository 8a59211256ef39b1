"""Hugging Face CLIP vision tower (`CLIPVisionModel`, `CLIPVisionModelWithProjection`) <-> vit-fast.

CLIP: patch projection without bias, LayerNorm before the blocks (`pre_layrnorm` -> norm_pre), quick GELU,
`last_hidden_state` un-normalized and `post_layernorm` on the pooled [CLS] (-> fc_norm), optional projection
without bias (`visual_projection` -> head, `image_embeds`).
"""
from __future__ import annotations

import re

from ..config import ViTConfig
from .hf_common import HF_NAMES, LAYER, check_act, common_config, compile_table, rename_back, rename

MODEL_TYPES = ("clip_vision_model",)
CONVERTS_RGB = True  # its HF image processor composites transparent pixels onto white (do_convert_rgb)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_TABLE = compile_table([
    (r"embeddings\.class_embedding", "cls_token"),
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"embeddings\.patch_embedding\.weight", "patch_embed.proj.weight"),
    (r"pre_layrnorm\.(weight|bias)", r"norm_pre.\1"),
    (LAYER + r"\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (LAYER + r"\.self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (LAYER + r"\.layer_norm1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (LAYER + r"\.layer_norm2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (LAYER + r"\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"post_layernorm\.(weight|bias)", r"fc_norm.\1"),
    (r"visual_projection\.weight", "head.weight"),
], prefixes=("vision_model.",))
_IGNORED = re.compile(r"^(?:vision_model\.)?embeddings\.position_ids$")


def convert_state(state: dict, hf: dict) -> dict:
    out = rename(state, _TABLE, _IGNORED)
    if out.get("cls_token") is not None and out["cls_token"].dim() == 1:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if out.get("pos_embed") is not None and out["pos_embed"].dim() == 2:
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    return out


def config_from_hf(hf: dict, state: dict, preprocessor: dict | None = None, **overrides) -> ViTConfig:
    cfg = common_config(hf, preprocessor)
    cfg.update(
        mlp_dim=hf["intermediate_size"],
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
        act_layer=check_act(hf, "hidden_act"),
        pre_norm=True,
        patch_bias=False,
        fc_norm=True,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        head_bias=False,
        embedding_head="head.weight" in state,
        resize_mode="shortest",
    )
    if not (preprocessor and "image_mean" in preprocessor):
        cfg.update(image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    cfg.update(overrides)
    return ViTConfig(**cfg)


# ---- vit-fast -> Hugging Face (vit_fast.loading.hf_export) ----


def hf_architecture(cfg: ViTConfig) -> tuple:
    """(HF class name, its config, the output field that equals `model(x)`) for a CLIP-switched ViTConfig."""
    from transformers import CLIPVisionConfig

    config = CLIPVisionConfig(
        hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, num_channels=cfg.in_chans, image_size=cfg.img_size[0],
        patch_size=cfg.patch_size, hidden_act=HF_NAMES[cfg.act_layer], layer_norm_eps=cfg.layer_norm_eps,
        projection_dim=cfg.num_classes or 512)
    if cfg.num_classes:
        return "CLIPVisionModelWithProjection", config, "image_embeds"
    return "CLIPVisionModel", config, "pooler_output"


def export_state(hf_state: dict, ours: dict) -> dict:
    ours = dict(ours, cls_token=ours["cls_token"].reshape(-1), pos_embed=ours["pos_embed"][0])
    return rename_back(hf_state, ours, _TABLE, _IGNORED)
