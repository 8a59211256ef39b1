"""Hugging Face DINOv2 (`Dinov2Model`, `Dinov2ForImageClassification`, `Dinov2WithRegistersModel`, ...) <->
vit-fast.

DINOv2: LayerScale after attention and MLP (folded into the out-projection and FC2 at load), patch 14, SwiGLU
MLP for the giant model (`weights_in` / `gate_proj`+`up_proj` -> fc1), classifier on [CLS] concatenated with
the mean of the patch tokens ("cls_avg"). With registers: register tokens after [CLS] without position
embeddings; the [CLS] position embedding is folded into the class token (timm's no_embed_class layout, exact
since both are added once). HF's DINOv2 resamples position embeddings without antialiasing, DINOv2 with
registers with it.
"""
from __future__ import annotations

import math
import re

import torch

from ..config import ViTConfig
from .hf_common import (HF_NAMES, LAYER, check_act, common_config, compile_table, fold_layer_scale, labels_of,
                        rename, rename_back)

MODEL_TYPES = ("dinov2", "dinov2_with_registers")
CONVERTS_RGB = True  # its HF image processor composites transparent pixels onto white (do_convert_rgb)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TABLE = compile_table([
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.register_tokens", "reg_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (LAYER + r"\.norm(1|2)\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (LAYER + r"\.attention\.attention\.(query|key|value)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (LAYER + r"\.attention\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (LAYER + r"\.attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (LAYER + r"\.layer_scale(1|2)\.lambda1", r"blocks.\1.ls\2.gamma"),
    (LAYER + r"\.mlp\.(?:fc1|weights_in)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (LAYER + r"\.mlp\.(?:fc2|weights_out|down_proj)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (LAYER + r"\.mlp\.(gate|up)_proj\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
], prefixes=("dinov2.", "dinov2_with_registers."))
_IGNORED = re.compile(r"^(?:dinov2\.|dinov2_with_registers\.)?embeddings\.mask_token$")


def convert_state(state: dict, hf: dict) -> dict:
    out = fold_layer_scale(rename(state, _TABLE, _IGNORED))
    if "reg_token" in out and "cls_token" in out and "pos_embed" in out:
        # registers carry no position embedding: move [CLS]'s into the token, keep the patch rows
        pos = out["pos_embed"]
        out["cls_token"] = (out["cls_token"].float() + pos[:, :1].float()).to(pos.dtype)
        out["pos_embed"] = pos[:, 1:]
    return out


def config_from_hf(hf: dict, state: dict, preprocessor: dict | None = None, **overrides) -> ViTConfig:
    swiglu = bool(hf.get("use_swiglu_ffn", False))
    act = "gelu" if swiglu else check_act(hf, "hidden_act", default="gelu")  # SwiGLU's gate is SiLU whatever it says
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    cfg = common_config(hf, preprocessor)
    cfg.update(
        mlp_dim=state["blocks.0.mlp.fc2.weight"].shape[1] if "blocks.0.mlp.fc2.weight" in state
        else int(hf["hidden_size"] * hf.get("mlp_ratio", 4)),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
        qkv_bias=hf.get("qkv_bias", True),
        mlp_type="swiglu" if swiglu else "mlp",
        act_layer=act,
        reg_tokens=registers,
        no_embed_class=registers > 0,
        global_pool="cls_avg" if num_classes else "cls",
        num_classes=num_classes,
        labels=labels_of(hf, num_classes),
        pos_embed_antialias=hf.get("model_type") == "dinov2_with_registers",
        resize_mode="shortest",
        crop_pct=224 / 256,
    )
    if not (preprocessor and "image_mean" in preprocessor):
        cfg.update(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    cfg.update(overrides)
    return ViTConfig(**cfg)


# ---- vit-fast -> Hugging Face (vit_fast.loading.hf_export) ----


def hf_architecture(cfg: ViTConfig) -> tuple:
    """(HF class name, its config, the output field that equals `model(x)`): with registers when the model has
    register tokens, the classifier when it has classes."""
    import transformers

    prefix = "Dinov2WithRegisters" if cfg.reg_tokens else "Dinov2"
    config_class = getattr(transformers, prefix + "Config", None)
    if config_class is None:
        raise ValueError(f"transformers {transformers.__version__} has no {prefix}Config")
    kw = dict(hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
              mlp_ratio=_mlp_ratio(cfg), num_channels=cfg.in_chans, image_size=cfg.img_size[0],
              patch_size=cfg.patch_size, qkv_bias=cfg.qkv_bias, layer_norm_eps=cfg.layer_norm_eps,
              use_swiglu_ffn=cfg.mlp_type == "swiglu", hidden_act=HF_NAMES[cfg.act_layer])
    if cfg.reg_tokens:
        kw["num_register_tokens"] = cfg.reg_tokens
    if cfg.num_classes:
        kw["num_labels"] = cfg.num_classes
    try:
        config = config_class(**kw)
    except Exception as e:  # noqa: BLE001 - transformers 5 validates field types (mlp_ratio: int)
        raise ValueError(f"transformers {transformers.__version__}'s {prefix}Config cannot express this model: "
                         f"{str(e).splitlines()[-1].strip()}") from None
    if cfg.num_classes:
        return prefix + "ForImageClassification", config, "logits"
    return prefix + "Model", config, "pooler_output"


def _mlp_ratio(cfg: ViTConfig):
    """HF's DINOv2 has no intermediate_size: the MLP width is int(hidden_size * mlp_ratio) (SwiGLU: 2/3 of it
    rounded up to a multiple of 8). An integer ratio when one gives mlp_dim (the released models; transformers 5
    accepts nothing else), else the float that does."""
    d, swiglu = cfg.embed_dim, cfg.mlp_type == "swiglu"

    def width(ratio):
        w = int(d * ratio)
        return (int(w * 2 / 3) + 7) // 8 * 8 if swiglu else w

    for ratio in range(1, 17):
        if width(ratio) == cfg.mlp_dim:
            return ratio
    ratio = (3 * cfg.mlp_dim / 2 if swiglu else cfg.mlp_dim) / d
    if width(ratio) < cfg.mlp_dim:  # d * (w / d) rounded to just under w: step up to the next float
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def export_state(hf_state: dict, ours: dict) -> dict:
    """LayerScale was folded into the weights at load: its gammas go out as ones. With registers, the [CLS]
    position embedding folded into the class token goes back as a zero row."""
    ours = dict(ours)
    for key in [k for k in ours if re.fullmatch(r"blocks\.\d+\.norm1\.weight", k)]:
        block = key.rsplit(".", 2)[0]
        for which in ("ls1", "ls2"):
            ours[f"{block}.{which}.gamma"] = torch.ones_like(ours[key])
    if "reg_token" in ours:
        pos = ours["pos_embed"]
        ours["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    return rename_back(hf_state, ours, _TABLE, _IGNORED)
