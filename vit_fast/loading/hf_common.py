"""Shared steps of the Hugging Face family loaders: renaming keys by a table, fusing separate q/k/v (and SwiGLU
gate/up) projections into timm's single matrices, and folding LayerScale into the layer before it; and the way
back (`rename_back`: the same tables read in reverse, to put vit-fast weights into an HF module).

A family module (hf_clip.py, hf_dinov2.py, ...) holds only its key table and its config mapping (both ways).
"""
from __future__ import annotations

import re
import warnings

import torch

# block-level names shared by most HF vision towers; \1 is the layer index. Families prepend their own.
LAYER = r"(?:encoder\.layers?|layers)\.(\d+)"
_QKV = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_GLU = {"gate": 0, "up": 1}


def compile_table(table, prefixes=()) -> list:
    """[(regex, target)] with an optional leading model prefix (e.g. "vision_model.", "dinov2.")."""
    lead = "(?:" + "|".join(re.escape(p) for p in prefixes) + ")?" if prefixes else ""
    return [(re.compile(f"^{lead}{pattern}$"), target) for pattern, target in table]


def rename(state: dict, table: list, ignored: re.Pattern | None = None) -> dict:
    """Apply `table` to every key; unknown keys stay as they are (so the strict loader names them). Targets
    `blocks.N.attn.{q,k,v}.X` are fused into `blocks.N.attn.qkv.X` and `blocks.N.mlp.{gate,up}.X` into
    `blocks.N.mlp.fc1.X`."""
    out, parts_of = {}, {}
    for key, value in state.items():
        if ignored is not None and ignored.match(key):
            continue
        for pattern, target in table:
            if pattern.match(key):
                new = pattern.sub(target, key)
                *stem, part, kind = ["", ""] + new.split(".")
                stem = [p for p in stem if p]
                if stem[-1:] == ["attn"] and part in _QKV:
                    parts_of.setdefault((".".join(stem) + ".qkv", kind), [None] * 3)[_QKV[part]] = value
                elif stem[-1:] == ["mlp"] and part in _GLU:
                    parts_of.setdefault((".".join(stem) + ".fc1", kind), [None] * 2)[_GLU[part]] = value
                else:
                    out[new] = value
                break
        else:
            out[key] = value
    for (stem, kind), parts in parts_of.items():
        if any(p is None for p in parts):
            raise ValueError(f"{stem}.{kind}: the checkpoint holds only {sum(p is not None for p in parts)} of "
                             f"the {len(parts)} projections fused there")
        out[f"{stem}.{kind}"] = torch.cat(parts, dim=0)
    return out


def rename_back(hf_state: dict, ours: dict, table: list, ignored: re.Pattern | None = None) -> dict:
    """The inverse of `rename`: for every key of an HF module's `hf_state`, the vit-fast tensor the table maps it
    to (a third of the fused qkv, a half of the fused SwiGLU fc1), of exactly the HF tensor's shape. Keys matching
    `ignored` (buffers, training-only parameters) keep the HF module's own values. A key with no vit-fast tensor,
    a shape that differs, or a vit-fast tensor no key takes is a ValueError naming it."""
    out, used = {}, set()
    for key, theirs in hf_state.items():
        if ignored is not None and ignored.match(key):
            out[key] = theirs
            continue
        for pattern, target in table:
            if pattern.match(key):
                name, tensor = _ours_for(pattern.sub(target, key), ours, key)
                break
        else:
            raise ValueError(f"no vit-fast parameter corresponds to Hugging Face key {key!r}")
        if tensor.shape != theirs.shape:
            raise ValueError(f"{key} has shape {tuple(theirs.shape)}, vit-fast's {tuple(tensor.shape)}")
        out[key] = tensor
        used.add(name)
    left = sorted(set(ours) - used)
    if left:
        raise ValueError(f"no place for vit-fast's {left}")
    return out


def _ours_for(name: str, ours: dict, hf_key: str) -> tuple:
    """(vit-fast key, tensor) for the target name of an HF key."""
    if name in ours:
        return name, ours[name]
    *stem, part, kind = ["", ""] + name.split(".")
    stem = ".".join(p for p in stem if p)
    layer = stem.rpartition(".")[2]
    if layer == "attn" and part in _QKV and f"{stem}.qkv.{kind}" in ours:  # blocks.N.attn.{q,k,v}.X
        return f"{stem}.qkv.{kind}", ours[f"{stem}.qkv.{kind}"].chunk(3, dim=0)[_QKV[part]]
    if layer == "mlp" and part in _GLU and f"{stem}.fc1.{kind}" in ours:  # blocks.N.mlp.{gate,up}.X
        return f"{stem}.fc1.{kind}", ours[f"{stem}.fc1.{kind}"].chunk(2, dim=0)[_GLU[part]]
    raise ValueError(f"Hugging Face key {hf_key!r} needs vit-fast's {name!r}, which this model does not have")


def fold_layer_scale(state: dict) -> dict:
    """Fold `blocks.N.ls1.gamma` into the attention out-projection and `blocks.N.ls2.gamma` into FC2 (weights
    and biases): gamma * (W x + b) = (gamma W) x + gamma b. The computation is exact up to rounding."""
    out = dict(state)
    for key in [k for k in state if re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k)]:
        block, which = key.rsplit(".", 2)[0], key.split(".")[2]
        layer = f"{block}.attn.proj" if which == "ls1" else f"{block}.mlp.fc2"
        gamma = out.pop(key).float()
        if f"{layer}.weight" not in out:
            raise ValueError(f"{key} has no {layer}.weight to fold into")
        w = out[f"{layer}.weight"]
        if gamma.shape != (w.shape[0],):
            raise ValueError(f"{key} has shape {tuple(gamma.shape)}; expected ({w.shape[0]},)")
        out[f"{layer}.weight"] = (w.float() * gamma[:, None]).to(w.dtype)
        if f"{layer}.bias" in out:
            b = out[f"{layer}.bias"]
            out[f"{layer}.bias"] = (b.float() * gamma).to(b.dtype)
    return out


def labels_of(hf: dict, num_classes: int):
    """The class names of id2label, or None (class_N) when it has none or not one per class (then with a warning:
    transformers fills in LABEL_0, LABEL_1 for configs that set none)."""
    id2label = hf.get("id2label") or {}
    if num_classes and len(id2label) == num_classes:
        return [id2label[k] for k in sorted(id2label, key=int)]
    if num_classes and id2label and set(id2label.values()) != {f"LABEL_{i}" for i in range(len(id2label))}:
        warnings.warn(f"config.json's id2label has {len(id2label)} labels for the head's {num_classes} classes: "
                      "they are not used, the labels are class_0 ... class_N", stacklevel=3)
    return None


def broadcast_stats(preprocessor: dict, channels: int, where) -> dict:
    """preprocessor_config.json's image_mean/image_std as lists (transformers also takes one number for every
    channel); ValueError naming the file `where` for anything else."""
    out = dict(preprocessor)
    for key in ("image_mean", "image_std"):
        value = out.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = [float(value)] * channels
        elif value is not None and not (isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"{where}: {key} must be a number or a list of numbers, got {value!r}")
    return out


# transformers' activation names -> ViTConfig act_layer (gelu_new, gelu_fast and gelu_pytorch_tanh are the same tanh
# approximation), and the way back
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "quick_gelu": "quick_gelu"}
HF_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}


def check_act(hf: dict, key: str, allowed: dict = HF_ACTIVATIONS, default: str | None = None) -> str:
    """Map HF's activation name (`default` where the config has none) to a ViTConfig act_layer, or raise naming
    what is supported."""
    act = hf.get(key, default)
    if act not in allowed:
        raise ValueError(f"{hf.get('model_type')}: {key} {act!r} is not supported; expected one of "
                         f"{sorted(allowed)}")
    return allowed[act]


_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes, as HF's processors store `resample`


def _pair(value):
    """An HF `size`/`crop_size` entry as (H, W), (S,) for {"shortest_edge": S}, or None when it says neither."""
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if set(value) == {"shortest_edge"}:
            return (int(value["shortest_edge"]),)
    return None


# HF image processors whose do_convert_rgb defaults to true (transformers 5): they composite transparency onto white
_CONVERTS_RGB = {"CLIPImageProcessor", "BitImageProcessor", "SiglipImageProcessor"}


def _converts_rgb(preprocessor: dict | None, family_default: bool) -> bool:
    """Whether the processor composites transparent pixels onto white: its own do_convert_rgb, else its class's
    default, else (no processor, or an unnamed one) the family's."""
    if not preprocessor:
        return family_default
    if isinstance(preprocessor.get("do_convert_rgb"), bool):
        return preprocessor["do_convert_rgb"]
    kind = preprocessor.get("image_processor_type")
    if isinstance(kind, str):
        return kind.removesuffix("Fast").removesuffix("Pil") in _CONVERTS_RGB
    return family_default


def processor_fields(preprocessor: dict | None, converts_rgb: bool = False) -> dict:
    """The ViTConfig preprocessing fields an HF image processor's config sets: every HF processor center-crops at
    the floored offset; transparency as its do_convert_rgb (`converts_rgb`: the family's processor's default when
    the file does not say); the resize (shortest edge, or both sides), the crop size and the resampling filter as
    `preprocessor_config.json` gives them. Sizes in a form these fields cannot hold (an old integer `size`, a
    shortest edge without a crop) leave the family's defaults."""
    out = {"crop_offset": "floor", "transparency": "white" if _converts_rgb(preprocessor, converts_rgb) else "drop"}
    if not preprocessor:
        return out
    if preprocessor.get("resample") in _PIL_RESAMPLE:
        out["interpolation"] = _PIL_RESAMPLE[preprocessor["resample"]]
    if preprocessor.get("do_resize", True) is False:
        return out
    size, crop = _pair(preprocessor.get("size")), _pair(preprocessor.get("crop_size"))
    # a crop_size without do_center_crop: HF's cropping processors (CLIP, Bit, DeiT) default it to true
    do_crop = bool(preprocessor.get("do_center_crop", True)) and crop is not None and len(crop) == 2
    if size is None:
        return out
    if len(size) == 1 and do_crop:  # shortest edge, then the crop (CLIP, DINOv2's BitImageProcessor)
        out.update(resize_mode="shortest", resize_size=size, input_size=crop)
    elif len(size) == 2 and do_crop:  # both sides, then the crop (DeiT)
        out.update(resize_mode="squash_crop", resize_size=size, input_size=crop)
    elif len(size) == 2:  # both sides, no crop (ViT, SigLIP)
        out.update(resize_mode="squash", resize_size=None, input_size=size)
    return out


def common_config(hf: dict, preprocessor: dict | None) -> dict:
    """ViTConfig fields every HF vision config carries the same way."""
    cfg = dict(
        img_size=hf.get("image_size", 224),
        patch_size=hf.get("patch_size", 16),
        in_chans=hf.get("num_channels", 3),
        embed_dim=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        crop_pct=1.0,
        resize_mode="squash",
        interpolation="bicubic",
        pos_embed_antialias=False,
    )
    if preprocessor and "image_mean" in preprocessor and "image_std" in preprocessor:
        cfg.update(image_mean=preprocessor["image_mean"], image_std=preprocessor["image_std"])
    return cfg
