"""Model configuration: one dataclass for every ViT this runtime builds, and the registry of named presets.

The presets follow Table 1 of Dosovitskiy et al. (2020) for B/L/H and timm for Ti/S, so parameter counts equal
timm's (ViT-B/16 with 1000 classes: 86,567,656).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

GLOBAL_POOLS = ("cls", "avg", "map", "cls_avg")
ACT_LAYERS = ("gelu", "gelu_tanh", "quick_gelu")  # exact erf GELU; tanh GELU (SigLIP); x*sigmoid(1.702x) (CLIP)
MLP_TYPES = ("mlp", "swiglu")
RESIZE_MODES = ("shortest", "squash", "squash_crop")
CROP_OFFSETS = ("round", "floor")
TRANSPARENCIES = ("drop", "white")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass
class ViTConfig:
    img_size: tuple = (224, 224)  # (H, W) the position embeddings were trained at; an int means square. Not
    # always a multiple of patch_size: the grid is img_size // patch_size, and the last img_size % patch_size rows
    # and columns of pixels are never seen, as timm's and HF's stride-P convolution drops them (SigLIP so400m/14 at
    # 384 px: 27x27 patches of the top-left 378x378 pixels)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000  # 0: no head, the model returns pooled features
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6  # timm 1e-6, Hugging Face 1e-12
    global_pool: str = "cls"  # "cls": token 0 (the mean of tokens 0 and 1 with dist_token); "avg": mean of patch
    # tokens; "map": attention pooling (a learned probe attends over the patch tokens, then LN + MLP: SigLIP);
    # "cls_avg": [token 0, mean of patch tokens] concatenated (HF's DINOv2 classifier)
    fc_norm: Optional[bool] = None  # final LayerNorm after pooling instead of on every token; None: only for "avg"
    class_token: bool = True
    reg_tokens: int = 0  # register tokens after the class token (DINOv2 with registers)
    dist_token: bool = False  # distillation token after the class token, with its own head (DeiT distilled)
    dist_head: bool = True  # with dist_token: the distillation head exists and the logits are the mean of both
    # heads; False: [CLS]'s head alone (HF's DeiTForImageClassification, which keeps the token but not its head)
    no_embed_class: bool = False  # position embeddings cover the patches only, not the prefix tokens
    pre_norm: bool = False  # LayerNorm on the tokens before the first block (CLIP's pre_layrnorm)
    patch_bias: bool = True  # the patch projection has a bias (CLIP's has none)
    act_layer: str = "gelu"  # MLP activation, one of ACT_LAYERS
    mlp_type: str = "mlp"  # "swiglu": fc1 outputs 2*mlp_dim, silu(first half) * second half (DINOv2 giant)
    head_bias: bool = True  # HF's CLIP projection has no bias
    embedding_head: bool = False  # the head projects into an embedding space (CLIP's image_embeds), not classes
    representation_size: Optional[int] = None  # pre-logits dense + tanh (HF's pooler), None for none
    image_mean: tuple = (0.5, 0.5, 0.5)  # normalization constants carried with the weights (for uint8 inputs)
    image_std: tuple = (0.5, 0.5, 0.5)
    crop_pct: float = 0.9  # preprocessing: resize shortest side to img_size / crop_pct, then center-crop
    resize_mode: str = "shortest"  # "shortest" (timm) or "squash" (resize to img_size exactly, as HF);
    # "squash_crop": resize both sides to img_size / crop_pct, then center-crop (HF's DeiT processor)
    interpolation: str = "bicubic"
    # The checkpoint's own processor, where it says more than the fields above (HF's preprocessor_config.json):
    input_size: Optional[tuple] = None  # (H, W) images are preprocessed to; None: img_size (HF's DINOv2 processors
    # crop 224 for a model whose position table is 518: the model resamples it, as HF does)
    resize_size: Optional[tuple] = None  # the resize before the crop: (S,) shortest edge ("shortest") or (H, W)
    # ("squash_crop"), as the processor's `size`; None: input size / crop_pct, floored (timm's arithmetic)
    crop_offset: str = "round"  # center crop's offset: "round" (torchvision, timm) or "floor" (HF's processors)
    transparency: str = "drop"  # images with an alpha channel: "drop" it and keep the colour under it (timm's and
    # open_clip's convert("RGB")), or composite onto "white" (HF's CLIP, SigLIP and DINOv2 processors)
    exif_transpose: bool = False  # turn photos upright by their EXIF orientation before resizing, as transformers'
    # load_image (its pipelines) does; timm, and HF's processors given an opened image, do not
    pos_embed_antialias: bool = False  # resampling to another resolution: timm antialiases, HF does not
    labels: Optional[list] = field(default=None, repr=False)  # class names, index -> label

    def __post_init__(self):
        _check_types(self)
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(s) for s in self.img_size)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        for name in ("input_size", "resize_size"):  # an int: a square, or the shortest edge
            value = getattr(self, name)
            if value is not None:
                value = (value,) * (2 if name == "input_size" else 1) if isinstance(value, int) else value
                if not all(_is_int(v) for v in value):
                    raise ValueError(f"invalid ViTConfig: {name} must be whole pixels, got {list(value)}")
                setattr(self, name, tuple(int(v) for v in value))
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
        self.validate()

    def validate(self) -> None:
        problems = []
        if len(self.img_size) != 2 or min(self.img_size) <= 0:
            problems.append(f"img_size must be (H, W) > 0, got {self.img_size}")
        elif min(self.img_size) < self.patch_size:
            problems.append(f"img_size {self.img_size} must be at least patch_size {self.patch_size} on each side")
        sizes = {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                 "in_chans": self.in_chans}
        if self.representation_size is not None:
            sizes["representation_size"] = self.representation_size
        bad = [f"{k} {v}" for k, v in sizes.items() if v < 1]
        if bad:  # checked first: the divisibility below and the layers' shapes need them
            problems.append(f"{', '.join(bad)}: must be >= 1")
        elif self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0 < self.layer_norm_eps < math.inf:  # 0 divides a constant row by zero, < 0 takes a NaN root, inf: 0s
            problems.append(f"layer_norm_eps must be > 0 and finite, got {self.layer_norm_eps}")
        if self.global_pool not in GLOBAL_POOLS:
            problems.append(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
        if self.act_layer not in ACT_LAYERS:
            problems.append(f"act_layer must be one of {ACT_LAYERS}, got {self.act_layer!r}")
        if self.mlp_type not in MLP_TYPES:
            problems.append(f"mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}")
        if self.reg_tokens < 0:
            problems.append(f"reg_tokens must be >= 0, got {self.reg_tokens}")
        if self.dist_token and not self.class_token:
            problems.append("dist_token needs class_token")
        if self.dist_token and self.global_pool != "cls":
            problems.append(f"dist_token needs global_pool 'cls', got {self.global_pool!r}")
        if self.global_pool in ("cls", "cls_avg") and not self.class_token:
            problems.append(f"global_pool {self.global_pool!r} needs class_token")
        if self.dist_token and self.representation_size and self.num_classes:
            problems.append("dist_token with representation_size is HF's DeiTModel pooler: num_classes must be 0")
        if self.use_fc_norm and self.global_pool == "cls_avg":
            problems.append("fc_norm does not combine with global_pool 'cls_avg'")
        if self.global_pool == "map" and self.representation_size:
            problems.append("global_pool 'map' does not combine with representation_size")
        if self.resize_mode not in RESIZE_MODES:
            problems.append(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.crop_offset not in CROP_OFFSETS:
            problems.append(f"crop_offset must be one of {CROP_OFFSETS}, got {self.crop_offset!r}")
        if self.transparency not in TRANSPARENCIES:
            problems.append(f"transparency must be one of {TRANSPARENCIES}, got {self.transparency!r}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            problems.append(f"input_size must be (H, W) >= 1, got {self.input_size}")
        elif self.input_size is not None and not self.accepts_image(*self.input_size):
            problems.append(f"input_size {self.input_size} must be multiples of patch_size {self.patch_size} (or "
                            f"img_size {self.img_size})")
        sides = {"shortest": 1, "squash_crop": 2}.get(self.resize_mode)
        if self.resize_size is not None and (len(self.resize_size) != sides or min(self.resize_size) < 1):
            problems.append(f"resize_size with resize_mode {self.resize_mode!r} must be "
                            f"{'(S,): the shortest edge' if sides == 1 else '(H, W)' if sides else 'null'}, "
                            f"got {self.resize_size}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.image_mean) != self.in_chans or len(self.image_std) != self.in_chans:
            problems.append(f"image_mean/image_std need {self.in_chans} values each (in_chans {self.in_chans}), got "
                            f"{len(self.image_mean)} and {len(self.image_std)}: pass image_mean=[...] and "
                            "image_std=[...] with one value per channel")
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
    def eval_size(self) -> tuple:
        """(H, W) of the preprocessed images: input_size, else img_size."""
        return self.input_size or self.img_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def accepts_image(self, h: int, w: int) -> bool:
        """Whether the model runs an h x w image (image_fits)."""
        return image_fits((h, w), self.img_size, self.patch_size)

    @property
    def grid_size(self) -> tuple:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: class, distillation, registers."""
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def num_pos_tokens(self) -> int:
        """Rows of the position embedding table."""
        return self.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding the head sees."""
        if self.representation_size:
            return self.representation_size
        return 2 * self.embed_dim if self.global_pool == "cls_avg" else self.embed_dim

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        for name in ("input_size", "resize_size"):
            if d[name] is not None:
                d[name] = list(d[name])
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


def drop_processor_sizes(fields: dict, overrides: dict, img_size) -> dict:
    """`fields` (a checkpoint processor's preprocessing: input_size, resize_size, ...) with None for what the
    caller's config `overrides` make stale: the sizes when another image size than the checkpoint's own `img_size`
    is asked for (the crop was for that one), the resize when the caller picks the resize (`resize_mode`,
    `crop_pct`) without giving one. Used by every loader that carries a processor's fields."""
    def square(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    drop = set()
    if "img_size" in overrides and square(overrides["img_size"]) != square(img_size):
        drop |= {"input_size", "resize_size"}
    if ({"resize_mode", "crop_pct"} & set(overrides)) and "resize_size" not in overrides:
        drop.add("resize_size")
    return {k: (None if k in drop else v) for k, v in fields.items()}


def image_fits(size, img_size, patch_size: int) -> bool:
    """Whether an (H, W) image can run: both sides positive multiples of the patch size, or exactly `img_size`
    (whose last img_size % patch_size pixel rows and columns the patches never cover, as in timm and HF)."""
    h, w = size
    return tuple(size) == tuple(img_size) or (h > 0 and w > 0 and not h % patch_size and not w % patch_size)


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
        if f.name in ("img_size", "input_size", "resize_size") and _is_int(value):  # a square, a shortest edge
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


# Families (timm's / HF's settings); sizes from the source models, so parameter counts equal theirs.
_CLIP = dict(pre_norm=True, patch_bias=False, act_layer="quick_gelu", layer_norm_eps=1e-5, num_classes=512,
             head_bias=False, embedding_head=True, fc_norm=True, image_mean=(0.48145466, 0.4578275, 0.40821073),
             image_std=(0.26862954, 0.26130258, 0.27577711), crop_pct=1.0, interpolation="bicubic")
_DINOV2 = dict(patch_size=14, img_size=518, num_classes=0, image_mean=(0.485, 0.456, 0.406),
               image_std=(0.229, 0.224, 0.225), crop_pct=1.0)
# with registers: no position embeddings on the prefix tokens; timm and HF both resample with antialiasing
_REG4 = dict(reg_tokens=4, no_embed_class=True, pos_embed_antialias=True)
_SIGLIP = dict(class_token=False, global_pool="map", act_layer="gelu_tanh", num_classes=0, crop_pct=1.0,
               resize_mode="squash", interpolation="bicubic")
PRESETS.update({
    "clip_b_32": dict(_CLIP, patch_size=32, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "clip_b_16": dict(_CLIP, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "clip_l_14": dict(_CLIP, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, num_classes=768),
    "clip_l_14_336": dict(_CLIP, patch_size=14, img_size=336, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096,
                          num_classes=768),
    "dinov2_s_14": dict(_DINOV2, embed_dim=384, depth=12, num_heads=6, mlp_dim=1536),
    "dinov2_b_14": dict(_DINOV2, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "dinov2_l_14": dict(_DINOV2, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096),
    "dinov2_g_14": dict(_DINOV2, embed_dim=1536, depth=40, num_heads=24, mlp_dim=4096, mlp_type="swiglu"),
    "dinov2_s_14_reg4": dict(_DINOV2, embed_dim=384, depth=12, num_heads=6, mlp_dim=1536, **_REG4),
    "dinov2_b_14_reg4": dict(_DINOV2, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, **_REG4),
    "dinov2_l_14_reg4": dict(_DINOV2, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, **_REG4),
    "siglip_b_16": dict(_SIGLIP, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "siglip_b_16_384": dict(_SIGLIP, patch_size=16, img_size=384, embed_dim=768, depth=12, num_heads=12,
                            mlp_dim=3072),
    "siglip_l_16": dict(_SIGLIP, patch_size=16, img_size=256, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096),
    "siglip_so400m_14": dict(_SIGLIP, patch_size=14, img_size=224, embed_dim=1152, depth=27, num_heads=16,
                             mlp_dim=4304),
    "siglip_so400m_14_384": dict(_SIGLIP, patch_size=14, img_size=384, embed_dim=1152, depth=27, num_heads=16,
                                 mlp_dim=4304),
    "deit_ti_16_distilled": dict(embed_dim=192, depth=12, num_heads=3, mlp_dim=768, dist_token=True,
                                 image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225), crop_pct=0.875),
    "deit_s_16_distilled": dict(embed_dim=384, depth=12, num_heads=6, mlp_dim=1536, dist_token=True,
                                image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225), crop_pct=0.875),
    "deit_b_16_distilled": dict(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, dist_token=True,
                                image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225), crop_pct=0.875),
})


def list_models() -> list:
    """Names of the presets `create` knows."""
    return sorted(PRESETS)


def get_config(name: str, **overrides) -> ViTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return ViTConfig.from_dict({**PRESETS[name], **overrides})
