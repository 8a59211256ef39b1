"""Model configuration: one dataclass for every ViT this runtime builds, and the registry of named presets.

The presets follow Table 1 of Dosovitskiy et al. (2020) for B/L/H and timm for Ti/S, so parameter counts equal
timm's (ViT-B/16 with 1000 classes: 86,567,656).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

GLOBAL_POOLS = ("cls", "avg")
RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass
class ViTConfig:
    img_size: tuple = (224, 224)  # (H, W) the position embeddings were trained at; an int means square
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000  # 0: no head, the model returns pooled features
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6  # timm 1e-6, Hugging Face 1e-12
    global_pool: str = "cls"  # "cls": [CLS] token after the final norm; "avg": mean of patch tokens, then fc_norm
    representation_size: Optional[int] = None  # pre-logits dense + tanh (HF's pooler), None for none
    image_mean: tuple = (0.5, 0.5, 0.5)  # normalization constants carried with the weights (for uint8 inputs)
    image_std: tuple = (0.5, 0.5, 0.5)
    crop_pct: float = 0.9  # preprocessing: resize shortest side to img_size / crop_pct, then center-crop
    resize_mode: str = "shortest"  # "shortest" (timm) or "squash" (resize to img_size exactly, as HF)
    interpolation: str = "bicubic"
    pos_embed_antialias: bool = False  # resampling to another resolution: timm antialiases, HF does not
    labels: Optional[list] = field(default=None, repr=False)  # class names, index -> label

    def __post_init__(self):
        _check_types(self)
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(s) for s in self.img_size)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
        self.validate()

    def validate(self) -> None:
        problems = []
        if len(self.img_size) != 2 or min(self.img_size) <= 0:
            problems.append(f"img_size must be (H, W) > 0, got {self.img_size}")
        elif any(s % self.patch_size for s in self.img_size):
            problems.append(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.global_pool not in GLOBAL_POOLS:
            problems.append(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
        if self.resize_mode not in RESIZE_MODES:
            problems.append(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.image_mean) != self.in_chans or len(self.image_std) != self.in_chans:
            problems.append(f"image_mean/image_std need {self.in_chans} values each")
        if any(s <= 0 for s in self.image_std):
            problems.append(f"image_std must be positive, got {self.image_std}")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.num_classes < 0 or self.depth < 1 or self.patch_size < 1:
            problems.append("num_classes must be >= 0, depth and patch_size >= 1")
        if self.labels is not None and self.num_classes and len(self.labels) != self.num_classes:
            problems.append(f"{len(self.labels)} labels given for {self.num_classes} classes")
        if problems:
            raise ValueError("invalid ViTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid_size(self) -> tuple:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding the head sees."""
        return self.representation_size or self.embed_dim

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **overrides) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_numbers(v) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_int(x) or isinstance(x, float) for x in v)


# annotation -> (check, what it expects): values from JSON files and --set arrive untyped
_TYPE_CHECKS = {
    "int": (_is_int, "an integer"),
    "float": (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple": (_is_numbers, "a list of numbers"),
    "list": (lambda v: isinstance(v, (list, tuple)), "a list"),
}


def _check_types(cfg) -> None:
    """ValueError listing every field whose value has the wrong type, before any arithmetic on it."""
    problems = []
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), str(f.type)
        optional = kind.startswith("Optional[")
        kind = kind[len("Optional["):-1] if optional else kind
        if value is None:
            if not optional:
                problems.append(f"{f.name} must not be null")
            continue
        if f.name == "img_size" and _is_int(value):  # an int means a square
            continue
        check, expected = _TYPE_CHECKS.get(kind, (lambda v: True, ""))
        if not check(value):
            problems.append(f"{f.name} must be {expected}, got {value!r}")
    if problems:
        raise ValueError("invalid ViTConfig: " + "; ".join(problems))


# name -> (embed_dim, depth, num_heads, mlp_dim)
_SIZES = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
    "h": (1280, 32, 16, 5120),
}
_PATCHES: Sequence[int] = (14, 16, 32)

PRESETS = {
    f"vit_{size}_{patch}": dict(embed_dim=d, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=patch)
    for size, (d, depth, heads, mlp) in _SIZES.items()
    for patch in _PATCHES
}


def list_models() -> list:
    """Names of the presets `create` knows."""
    return sorted(PRESETS)


def get_config(name: str, **overrides) -> ViTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return ViTConfig.from_dict({**PRESETS[name], **overrides})
