"""Full CLIP and SigLIP checkpoints (`CLIPModel`, `SiglipModel`: the image and the text tower in one model, as
`openai/clip-vit-*` and `google/siglip-*` are published) -> the image tower, which is what vit-fast runs.

The image tower is what the full model's `get_image_features` computes: for CLIP the vision model and its
`visual_projection` (as `CLIPVisionModelWithProjection`: `image_embeds`), for SigLIP the vision model with its
attention-pool head (as `SiglipVisionModel`: `pooler_output`). The text tower and the logit scale and bias are
left out; any other key stays, so the strict loader names it.
"""
from __future__ import annotations

import re

# full model_type -> (its vision tower's model_type, the HF class whose outputs the tower's equal)
DUAL_TYPES = {
    "clip": ("clip_vision_model", "CLIPVisionModelWithProjection"),
    "siglip": ("siglip_vision_model", "SiglipVisionModel"),
}
# transformers' defaults (CLIPVisionConfig, SiglipVisionConfig) for the vision_config keys the loaders read: a
# config.json written by an older transformers may store only the values that differ from them
_VISION_DEFAULTS = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True),
}
_TEXT = re.compile(r"^(?:text_model\.|text_projection\.|logit_scale$|logit_bias$)")
_CLIP_PROJECTION_DIM = 512  # CLIPConfig's default projection_dim


def is_dual(hf: dict) -> bool:
    return hf.get("model_type") in DUAL_TYPES


def source_class(hf: dict) -> str:
    """The HF class whose outputs the image tower of this full model gives (for `hf_outputs=True`)."""
    return DUAL_TYPES[hf["model_type"]][1]


def vision_tower(hf: dict, state: dict, source) -> tuple:
    """(the vision tower's HF config dict, the state dict without the text tower) of a full CLIP or SigLIP model."""
    kind = DUAL_TYPES[hf["model_type"]][0]
    vision = {}  # an old config.json may leave the whole vision config at its defaults
    for key in ("vision_config", "vision_config_dict"):  # the second, in old CLIP configs, wins as in transformers
        part = hf.get(key)
        if part is not None and not isinstance(part, dict):
            raise ValueError(f"{source}: expected \"{key}\" to be an object, got {type(part).__name__}")
        vision.update({k: v for k, v in (part or {}).items() if v is not None})
    config = {**_VISION_DEFAULTS[kind], **vision, "model_type": kind}
    if kind == "clip_vision_model":
        config["projection_dim"] = hf.get("projection_dim", _CLIP_PROJECTION_DIM)
    return config, {k: v for k, v in state.items() if not _TEXT.match(k)}
