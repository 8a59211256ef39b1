"""The benchmark's weights, loaded into the reference libraries: timm's `VisionTransformer` and Hugging Face's own
class of each model family (`ViTForImageClassification` for the classic ViT; `CLIPVisionModel(WithProjection)`,
`Dinov2Model` / `Dinov2WithRegistersModel` (or their classifiers), `SiglipVisionModel`,
`DeiTForImageClassificationWithTeacher` for the family presets), so every backend in a run computes the same
function of the same parameters.

vit_fast's parameter names mirror timm's, so timm takes our state dict unchanged. Hugging Face names are derived
from the live HF model's own state dict (classic `encoder.layer.N.attention.attention.query` and transformers-5
`layers.N.attention.q_proj` layouts both) through the loaders' key tables read in reverse
(vit_fast.loading.hf_export for the families), splitting our fused qkv into query/key/value.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from vit_fast.loading.hf import ours_for_hf_key
from vit_fast.loading.state_dict import float_state


class Unsupported(Exception):
    """The reference library cannot express this configuration (the row's error says why)."""


def to_timm(model, device="cpu") -> nn.Module:
    """A timm VisionTransformer holding `model`'s weights (fp32 on `device`, eval mode)."""
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except Exception as e:  # noqa: BLE001 - timm absent or broken (e.g. no torchvision)
        raise Unsupported(f"timm is not importable here ({type(e).__name__}: {e})") from None
    cfg = model.config
    if cfg.representation_size:
        raise Unsupported("timm's VisionTransformer has no pre-logits (representation_size) layer")
    if int(cfg.embed_dim * (cfg.mlp_dim / cfg.embed_dim)) != cfg.mlp_dim:  # timm: hidden = int(dim * mlp_ratio)
        raise Unsupported(f"mlp_dim {cfg.mlp_dim} is not expressible as a timm mlp_ratio of width {cfg.embed_dim}")
    if cfg.global_pool == "cls_avg":
        raise Unsupported("timm has no [CLS] + mean-of-patches pooling (HF's DINOv2 classifier)")
    if cfg.dist_token and not cfg.dist_head and cfg.num_classes:
        raise Unsupported("timm's distilled ViT always has the distillation head (HF's DeiTForImageClassification "
                          "has none)")
    kwargs = dict(
        img_size=tuple(cfg.img_size),
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        global_pool={"avg": "avg", "map": "map"}.get(cfg.global_pool, "token"),
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.embed_dim,
        qkv_bias=cfg.qkv_bias,
        class_token=cfg.class_token,
        norm_layer=functools.partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
    )
    # model-family switches (LayerScale is folded into our weights, so timm runs without it: same function)
    if cfg.reg_tokens or cfg.no_embed_class:
        kwargs.update(reg_tokens=cfg.reg_tokens, no_embed_class=cfg.no_embed_class)
    if cfg.pre_norm:
        kwargs["pre_norm"] = True
    if cfg.fc_norm is not None:
        kwargs["fc_norm"] = cfg.use_fc_norm
    if cfg.act_layer != "gelu":
        kwargs["act_layer"] = cfg.act_layer
    if cfg.mlp_type == "swiglu":
        from timm.layers import SwiGLUPacked

        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=2 * cfg.mlp_dim / cfg.embed_dim)
    if cfg.patch_bias == cfg.pre_norm:  # timm ties the patch bias to pre_norm (CLIP: no bias)
        raise Unsupported(f"timm builds a patch bias only without pre_norm; got patch_bias={cfg.patch_bias}, "
                          f"pre_norm={cfg.pre_norm}")
    if cfg.dist_token:
        from timm.models.deit import VisionTransformerDistilled as TimmViT  # noqa: N814
    with torch.device(device):  # random init on the target device: much faster than on the CPU for ViT-H
        timm_model = TimmViT(**kwargs)
    if cfg.global_pool == "map":  # timm's attention pool: LayerNorm eps and MLP width of the blocks'
        timm_model.attn_pool.norm.eps = cfg.layer_norm_eps
    state = float_state(model, "timm")
    for key in ("head.bias", "head_dist.bias"):  # timm heads always have a bias (HF's CLIP projection has none)
        if key not in state and key in timm_model.state_dict():
            state[key] = torch.zeros(cfg.num_classes)
    timm_model.load_state_dict(state, strict=True)
    return timm_model.eval()


class HFOutput(nn.Module):
    """A Hugging Face model called like the other backends: images in, its primary output (the field that equals
    vit_fast's `model(x)`: logits, image_embeds or pooler_output) out."""

    def __init__(self, hf_model: nn.Module, field: str = "logits"):
        super().__init__()
        self.hf = hf_model
        self.field = field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.hf(pixel_values=x), self.field)


def to_hf(model, device="cpu", family: str | None = None) -> nn.Module:
    """`model`'s weights (fp32 on `device`) in Hugging Face's class for its `family` (a family preset's prefix:
    clip, dinov2, siglip, deit), or in ViTForImageClassification when `family` is None; wrapped to return the
    output that equals `model(x)`."""
    try:
        from transformers import ViTConfig as HFConfig
        from transformers import ViTForImageClassification
    except Exception as e:  # noqa: BLE001 - transformers absent or broken
        raise Unsupported(f"transformers is not importable here ({type(e).__name__}: {e})") from None
    if family is not None:
        from vit_fast.loading.hf_export import to_hf as export

        try:
            hf_model, field = export(model, family, device)
        except ValueError as e:
            raise Unsupported(str(e)) from None
        return HFOutput(hf_model, field).eval()
    cfg = model.config
    switches = [name for name, classic in (("class_token", True), ("reg_tokens", 0), ("dist_token", False),
                                         ("no_embed_class", False), ("pre_norm", False), ("patch_bias", True),
                                         ("act_layer", "gelu"), ("mlp_type", "mlp"), ("head_bias", True))
              if getattr(cfg, name) != classic]
    if switches:
        raise Unsupported(f"ViTForImageClassification is the classic ViT; this model sets {switches} (a family "
                          "preset's HF row needs its family: clip, dinov2, siglip or deit)")
    if cfg.global_pool != "cls":
        raise Unsupported("ViTForImageClassification classifies the [CLS] token only (no average pooling)")
    if cfg.representation_size:
        raise Unsupported("ViTForImageClassification has no pre-logits (pooler) layer before its classifier")
    if cfg.num_classes < 1:
        raise Unsupported("ViTForImageClassification needs a classifier (num_classes >= 1)")
    hf_config = HFConfig(
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_dim,
        hidden_act="gelu",
        layer_norm_eps=cfg.layer_norm_eps,
        image_size=cfg.img_size[0] if cfg.img_size[0] == cfg.img_size[1] else list(cfg.img_size),
        patch_size=cfg.patch_size,
        num_channels=cfg.in_chans,
        qkv_bias=cfg.qkv_bias,
        num_labels=cfg.num_classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.device(device):
        hf_model = ViTForImageClassification(hf_config)
    ours = float_state(model, "Hugging Face's ViTForImageClassification")
    target = hf_model.state_dict()
    state = {}
    for key, value in target.items():
        if key.endswith("mask_token"):  # masked-image-modeling only; unused here
            state[key] = value
            continue
        try:
            tensor = ours_for_hf_key(key, ours)
        except KeyError as e:
            raise Unsupported(str(e)) from None
        if tensor.numel() != value.numel():
            raise Unsupported(f"{key}: shape {tuple(value.shape)} has no match in vit_fast ({tuple(tensor.shape)})")
        state[key] = tensor.reshape(value.shape).clone()
    hf_model.load_state_dict(state, strict=True)
    return HFOutput(hf_model.eval()).eval()
