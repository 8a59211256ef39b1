"""vit-fast -> Hugging Face for the model families: the HF module (CLIP vision tower, DINOv2 with or without
registers, SigLIP vision tower, distilled DeiT) that computes what a vit-fast model computes, with its weights.

The benchmark's HF baseline rows use it, so that they time the same network rather than one of the same shape;
tests use it to check the loaders both ways. Each family module (hf_clip.py, ...) gives the HF class and config
for a ViTConfig (`hf_architecture`) and its weights under HF's names (`export_state`: its loader table read in
reverse). Before building anything, the family's own loader mapping (`config_from_hf`) is applied to that HF
config: it must give back the model's architecture, or the HF class cannot express the model and the error says
which fields differ.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from ..config import ViTConfig
from .state_dict import float_state

FAMILIES = ("clip", "dinov2", "siglip", "deit")
# fields that do not change what the network computes at its own resolution: preprocessing, names, and how the
# position embeddings are resampled for other sizes (which each HF class fixes: DINOv2 without antialiasing,
# with registers with it)
_NOT_ARCHITECTURE = ("image_mean", "image_std", "crop_pct", "resize_mode", "interpolation", "labels",
                     "pos_embed_antialias", "fc_norm", "input_size", "resize_size", "crop_offset", "transparency",
                     "exif_transpose")


def family_module(family: str):
    from . import hf_clip, hf_deit, hf_dinov2, hf_siglip

    modules = {"clip": hf_clip, "dinov2": hf_dinov2, "siglip": hf_siglip, "deit": hf_deit}
    if family not in modules:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return modules[family]


def family_of_preset(name: str) -> str | None:
    """The family of a preset name (`clip_l_14` -> "clip"); None for the classic ViT presets (`vit_b_16`)."""
    prefix = name.split("_", 1)[0]
    return prefix if prefix in FAMILIES else None


def _architecture(cfg: ViTConfig) -> dict:
    d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _NOT_ARCHITECTURE}
    d["use_fc_norm"] = cfg.use_fc_norm  # fc_norm None and False mean the same for a [CLS]-pooled model
    return d


def to_hf(model, family: str, device="cpu") -> tuple:
    """(HF module in eval mode holding `model`'s weights in fp32 on `device`, the name of its output field that
    equals `model(x)`: "logits", "image_embeds" or "pooler_output"). ValueError, one line, when the installed
    transformers lacks the family's class or the class cannot express the model."""
    import transformers

    fam = family_module(family)
    cfg = model.config
    class_name, hf_config, primary = fam.hf_architecture(cfg)
    hf_class = getattr(transformers, class_name, None)
    if hf_class is None:
        raise ValueError(f"transformers {transformers.__version__} has no {class_name} (the {family} family's "
                         "Hugging Face class)")
    ours = float_state(model, f"Hugging Face's {class_name}")
    mine, theirs = _architecture(cfg), _architecture(fam.config_from_hf(hf_config.to_dict(), ours))
    differ = [f"{k}={mine[k]!r} (HF: {theirs[k]!r})" for k in mine if mine[k] != theirs[k]]
    if differ:
        raise ValueError(f"Hugging Face's {class_name} cannot express this model: {'; '.join(differ)}")
    return into_class(model, hf_config, class_name, device, ours), primary


def into_class(model, hf_config, class_name: str, device="cpu", ours: dict | None = None):
    """The HF `class_name` built from `hf_config` (`to_hf`'s, or a drop-in's source config) holding `model`'s
    weights (`ours`: its fp32 state, when the caller has it) in fp32 on `device`, in eval mode: what `to_hf` returns
    and `HFDropIn.save_pretrained` writes. The family's key table read in reverse, the classic ViT's too; a
    ViTModel or DeiTModel has a pooler exactly when the model has the pre-logits layer."""
    import transformers

    from .hf import _IGNORED, _families, ours_for_hf_key

    if ours is None:
        ours = float_state(model, f"Hugging Face's {class_name}")
    kwargs = {"add_pooling_layer": bool(model.config.representation_size)} if class_name in ("ViTModel",
                                                                                            "DeiTModel") else {}
    with torch.device(device):
        hf_model = getattr(transformers, class_name)(copy.deepcopy(hf_config), **kwargs)
    hf_state = hf_model.state_dict()
    family = _families().get(hf_config.model_type)
    try:
        if family is not None:
            state = family.export_state(hf_state, ours)
        else:
            state = {k: v if _IGNORED.match(k) else ours_for_hf_key(k, ours) for k, v in hf_state.items()}
    except (KeyError, ValueError) as e:
        raise ValueError(f"Hugging Face's {class_name}: {e}") from None
    hf_model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    return hf_model.eval()
