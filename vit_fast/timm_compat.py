"""timm's names on vit-fast's model, so code written against a timm `VisionTransformer` runs on it unchanged.

timm users read attributes (`model.embed_dim`, `model.num_prefix_tokens`), swap heads (`get_classifier`,
`reset_classifier(0)` for features), and build their input pipeline from `model.pretrained_cfg` through
`timm.data.resolve_model_data_config` + `create_transform`. Without `pretrained_cfg` that recipe silently falls back
to timm's defaults (224 px, ImageNet statistics), which are wrong for most checkpoints; here it describes the
preprocessing vit-fast itself applies (`vit_fast.preprocess`). Everything is read from `model.config`.
"""
from __future__ import annotations

import math

from torch import nn

# vit-fast's global_pool -> timm's
_TIMM_POOL = {"cls": "token", "avg": "avg", "map": "map", "cls_avg": "token"}


def _ratio(size: int, scaled: int) -> float:
    """A crop_pct for which timm's floor(size / crop_pct) is `scaled` (size / scaled can land a hair above)."""
    pct = size / scaled
    return pct if math.floor(size / pct) == scaled else size / (scaled + 0.5)


class TimmAttributes:
    """Mixed into `VisionTransformer`: read-only views of its config under timm's names, and timm's head methods."""

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    @property
    def has_class_token(self) -> bool:
        return self.config.class_token

    @property
    def no_embed_class(self) -> bool:
        return self.config.no_embed_class

    @property
    def global_pool(self) -> str:
        return _TIMM_POOL[self.config.global_pool]

    @property
    def pretrained_cfg(self) -> dict:
        """timm's data config for this model's own preprocessing: `timm.data.resolve_model_data_config(model)` and
        `create_transform(**that)` then resize, crop and normalize as `vit_fast.preprocess` does (HF processors'
        floored crop offset and the alpha and EXIF choices aside)."""
        cfg = self.config
        h, w = cfg.eval_size
        resize = cfg.resize_size
        if cfg.resize_mode == "squash":
            crop_pct, crop_mode = 1.0, "squash"
        else:  # timm scales to floor(size / crop_pct), then center-crops: the processor's resize gives the ratio
            crop_pct = _ratio(h, resize[0]) if resize else cfg.crop_pct
            crop_mode = "center" if cfg.resize_mode == "shortest" else "squash"
        return {"input_size": (cfg.in_chans, h, w), "interpolation": cfg.interpolation, "mean": cfg.image_mean,
                "std": cfg.image_std, "crop_pct": crop_pct, "crop_mode": crop_mode, "num_classes": cfg.num_classes,
                "first_conv": "patch_embed.proj", "classifier": "head"}

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's: a new head for `num_classes` (0: none, the model returns pooled features), initialized as a new
        `nn.Linear` (weights to train or load), on the old head's device and dtype. The labels are dropped; a
        distilled model's second head and CLIP's projection go the same way. The pooling cannot change."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"reset_classifier expects num_classes >= 0, got {num_classes!r}")
        if global_pool is not None and global_pool != self.global_pool:
            raise ValueError(f"reset_classifier cannot change the pooling ({self.global_pool!r}) to {global_pool!r}")
        like = next(p for p in self.parameters() if p.is_floating_point() and p.dtype.itemsize > 1)
        self.config = self.config.replace(num_classes=num_classes, labels=None, embedding_head=False)

        def head():
            if not num_classes:
                return nn.Identity()
            return nn.Linear(self.config.num_features, num_classes, bias=self.config.head_bias,
                             device=like.device, dtype=like.dtype)

        self.head = head()
        if self.head_dist is not None:
            self.head_dist = head()
