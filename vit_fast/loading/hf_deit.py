"""Hugging Face DeiT (`DeiTForImageClassificationWithTeacher`, `DeiTModel`, ...) <-> vit-fast.

The encoder is the classic ViT's (same key names); distilled models add a distillation token after [CLS]
(with its own position embedding) and a second head on it; the logits are the mean of the two heads.
`DeiTModel`'s pooler (dense + tanh on [CLS]) is the pre-logits layer, as for the classic ViT.
"""
from __future__ import annotations

import re

from ..config import ViTConfig
from .hf_common import (HF_NAMES, check_act, common_config, compile_table, labels_of, rename,
                        rename_back)

MODEL_TYPES = ("deit",)
CONVERTS_RGB = False  # its HF image processor (DeiTImageProcessor) leaves do_convert_rgb unset
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_L = r"(?:encoder\.layer|layers)\.(\d+)"
_TABLE = compile_table([
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.distillation_token", "dist_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (_L + r"\.attention\.attention\.(query|key|value)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (_L + r"\.attention\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (_L + r"\.attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_L + r"\.(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_L + r"\.(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (_L + r"\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (_L + r"\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"pooler\.dense\.(weight|bias)", r"pre_logits.fc.\1"),
    (r"cls_classifier\.(weight|bias)", r"head.\1"),
    (r"distillation_classifier\.(weight|bias)", r"head_dist.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
], prefixes=("deit.",))
_IGNORED = re.compile(r"^(?:deit\.)?embeddings\.mask_token$")


def convert_state(state: dict, hf: dict) -> dict:
    return rename(state, _TABLE, _IGNORED)


def config_from_hf(hf: dict, state: dict, preprocessor: dict | None = None, **overrides) -> ViTConfig:
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    cfg = common_config(hf, preprocessor)
    cfg.update(
        mlp_dim=hf["intermediate_size"],
        qkv_bias=hf.get("qkv_bias", True),
        act_layer=check_act(hf, "hidden_act", default="gelu"),
        dist_token="dist_token" in state,
        # DeiTForImageClassification: [CLS]'s head only, an identity one included (num_labels 0: its weights
        # cannot tell it from a headless distilled model, the architecture can)
        dist_head="head_dist.weight" in state or not (num_classes or _cls_only(hf)),
        num_classes=num_classes,
        labels=labels_of(hf, num_classes),
        representation_size=state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None,
        resize_mode="squash_crop",  # DeiTImageProcessor's default: 256 x 256, then the 224 crop
        crop_pct=224 / 256,
    )
    if not (preprocessor and "image_mean" in preprocessor):
        cfg.update(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    cfg.update(overrides)
    return ViTConfig(**cfg)


def _cls_only(hf: dict) -> bool:
    """Whether the HF class is DeiTForImageClassification (config.json's architectures, a live module's class)."""
    return "DeiTForImageClassification" in (hf.get("architectures") or [])


# ---- vit-fast -> Hugging Face (vit_fast.loading.hf_export) ----


def hf_architecture(cfg: ViTConfig) -> tuple:
    """(HF class name, its config, the output field that equals `model(x)`): the distilled classifier for a
    model with a distillation token, else `DeiTForImageClassification` (num_classes 0: HF's identity head, the
    normalized [CLS] token, which is what vit-fast returns then)."""
    from transformers import DeiTConfig

    h, w = cfg.img_size
    config = DeiTConfig(
        hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, num_channels=cfg.in_chans, image_size=h if h == w else [h, w],
        patch_size=cfg.patch_size, hidden_act=HF_NAMES[cfg.act_layer], layer_norm_eps=cfg.layer_norm_eps,
        qkv_bias=cfg.qkv_bias,
        num_labels=cfg.num_classes)
    name = ("DeiTForImageClassificationWithTeacher" if cfg.dist_token and cfg.dist_head
            else "DeiTForImageClassification")
    config.architectures = [name]
    return name, config, "logits"


def export_state(hf_state: dict, ours: dict) -> dict:
    return rename_back(hf_state, ours, _TABLE, _IGNORED)
