"""Hugging Face `ViTModel` / `ViTForImageClassification` -> vit-fast: a live model or a local directory in HF format
(`config.json` + `model.safetensors` or `pytorch_model.bin`), with the classic key names that files on disk have
(`vit.encoder.layer.N.attention.attention.query.weight`) or transformers-5 module names
(`vit.layers.N.attention.q_proj.weight`). Separate q/k/v projections are fused into timm's single qkv matrix.
"""
from __future__ import annotations

import json
import copy
import re
from pathlib import Path

import torch

from ..config import ViTConfig, drop_processor_sizes
from . import hf_dual, hub
from .state_dict import build_and_load, labels_for_head, like_source, read_json, read_weights, weights_in
from .hf_common import broadcast_stats, check_act, labels_of, processor_fields
from .timm_hub import is_timm_config

# (HF suffix pattern, vit-fast name); \1 is the layer index. Classic names first, then transformers-5 names.
_RENAMES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"layers\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"layers\.(\d+)\.attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layers\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"layers\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"pooler\.dense\.(weight|bias)", r"pre_logits.fc.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
]
_RENAMES = [(re.compile(f"^(?:vit\\.)?{pattern}$"), target) for pattern, target in _RENAMES]
_QKV = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_IGNORED = re.compile(r"^(?:vit\.)?embeddings\.mask_token$")  # masked-image-modeling only, unused at inference


def convert_hf_state(state: dict) -> dict:
    """HF ViT state dict -> vit-fast (timm-named) state dict; unknown keys are kept so the loader reports them."""
    out, qkv = {}, {}
    for key, value in state.items():
        if _IGNORED.match(key):
            continue
        for pattern, target in _RENAMES:
            if pattern.match(key):
                new = pattern.sub(target, key)
                parts = new.split(".")
                if len(parts) == 5 and parts[3] in _QKV:  # blocks.N.attn.{q,k,v}.{weight,bias}: fuse below
                    qkv.setdefault((parts[1], parts[-1]), [None] * 3)[_QKV[parts[-2]]] = value
                else:
                    out[new] = value
                break
        else:
            out[key] = value
    for (layer, kind), parts in qkv.items():
        if any(p is None for p in parts):
            absent = [name for name, p in zip(("query", "key", "value"), parts) if p is None]
            raise ValueError(f"layer {layer}: attention {kind} lacks {absent}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


def ours_for_hf_key(key: str, ours: dict) -> torch.Tensor:
    """The tensor of a vit-fast state dict that an HF ViT key holds (a third of the fused qkv for q/k/v); the inverse
    of `convert_hf_state`, used to put vit-fast weights into an HF model."""
    for pattern, target in _RENAMES:
        if pattern.match(key):
            parts = pattern.sub(target, key).split(".")
            if len(parts) == 5 and parts[3] in _QKV:
                fused = ours[f"blocks.{parts[1]}.attn.qkv.{parts[4]}"]
                return fused.chunk(3, dim=0)[_QKV[parts[3]]]
            return ours[".".join(parts)]
    raise KeyError(f"no vit-fast parameter corresponds to Hugging Face key {key!r}")


def config_from_hf(hf: dict, state: dict, preprocessor: dict | None = None, **overrides) -> ViTConfig:
    """ViTConfig from an HF config dict and the converted state dict (which tells head and pooler sizes)."""
    if hf.get("model_type", "vit") != "vit":
        raise ValueError(f"expected a Hugging Face ViT config (model_type 'vit'); got {hf.get('model_type')!r}")
    if "pre_logits.fc.weight" in state and hf.get("pooler_act", "tanh") != "tanh":
        raise ValueError(f"only a tanh pooler is supported; got pooler_act {hf['pooler_act']!r}")
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    cfg = dict(
        img_size=hf.get("image_size", 224),
        patch_size=hf.get("patch_size", 16),
        in_chans=hf.get("num_channels", 3),
        num_classes=num_classes,
        embed_dim=hf.get("hidden_size", 768),
        depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        mlp_dim=hf.get("intermediate_size", 3072),
        qkv_bias=hf.get("qkv_bias", True),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        act_layer=check_act(hf, "hidden_act", default="gelu"),
        representation_size=state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None,
        crop_pct=1.0,
        resize_mode="squash",
        interpolation="bilinear",
        pos_embed_antialias=False,
    )
    labels = labels_of(hf, num_classes)
    if labels is not None:
        cfg["labels"] = labels
    if preprocessor:
        if "image_mean" in preprocessor and "image_std" in preprocessor:
            cfg.update(image_mean=preprocessor["image_mean"], image_std=preprocessor["image_std"])
    cfg.update(overrides)
    return ViTConfig.from_dict(cfg)  # unknown override names: a ValueError listing the known fields


# HF config keys vit-fast reads, and the JSON types they must have (a file edited by hand, or from another tool)
_HF_KEY_TYPES = {
    "hidden_size": "int", "num_hidden_layers": "int", "num_attention_heads": "int", "intermediate_size": "int",
    "patch_size": "int", "num_channels": "int", "image_size": "size", "layer_norm_eps": "number",
    "qkv_bias": "bool", "id2label": "dict", "model_type": "str", "hidden_act": "str",
}
_HF_TYPE_NAMES = {"int": "an integer", "number": "a number", "bool": "true or false", "dict": "an object",
                  "str": "a string", "size": "an integer or a list of two integers"}


def _hf_type_ok(kind: str, v) -> bool:
    is_int = isinstance(v, int) and not isinstance(v, bool)
    if kind == "size":
        return is_int or (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                      for x in v))
    return {"int": is_int, "number": is_int or isinstance(v, float), "bool": isinstance(v, bool),
            "dict": isinstance(v, dict), "str": isinstance(v, str)}[kind]


def check_hf_config_types(hf: dict, source) -> None:
    """ValueError naming `source` and every key whose value has the wrong JSON type (also inside a nested
    "vision_config"), before any of them is used."""
    problems = []
    for prefix, block in (("", hf), ("vision_config.", hf.get("vision_config"))):
        if not isinstance(block, dict):
            continue
        for key, kind in _HF_KEY_TYPES.items():
            if key in block and not _hf_type_ok(kind, block[key]):
                problems.append(f"{prefix}{key} must be {_HF_TYPE_NAMES[kind]}, got {json.dumps(block[key])}")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))


def _read_hf_dir(path: Path) -> tuple:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    hf = read_json(config_file)
    if is_timm_config(hf):
        raise ValueError(f"{path} is a timm checkpoint directory (its config.json names the timm architecture "
                         f"{hf['architecture']!r}): load it with vit_fast.from_timm or vit_fast.load")
    check_hf_config_types(hf, config_file)
    state, _ = read_weights(weights_in(path, "config.json"))
    pre_file = path / "preprocessor_config.json"
    preprocessor = _read_processor(pre_file, hf) if pre_file.is_file() else None
    return hf, state, preprocessor


def _read_processor(pre_file: Path, hf: dict) -> dict:
    """preprocessor_config.json, its mean and std as one number per channel."""
    return broadcast_stats(read_json(pre_file), hf.get("num_channels", 3), pre_file)


def _families() -> dict:
    """model_type -> module with convert_state(state, hf) and config_from_hf(hf, state, preprocessor, **kw)."""
    from . import hf_clip, hf_deit, hf_dinov2, hf_siglip

    return {t: m for m in (hf_clip, hf_dinov2, hf_siglip, hf_deit) for t in m.MODEL_TYPES}


def supported_model_types() -> list:
    return ["vit"] + sorted(_families()) + sorted(hf_dual.DUAL_TYPES)


def _convert(hf: dict, state: dict, preprocessor, overrides: dict) -> tuple:
    model_type = hf.get("model_type", "vit")
    family = _families().get(model_type)
    if family is None and model_type != "vit":
        raise ValueError(f"unsupported Hugging Face model_type {model_type!r}; supported: "
                         f"{', '.join(supported_model_types())}")
    fields = processor_fields(preprocessor, getattr(family, "CONVERTS_RGB", False))
    processor = drop_processor_sizes(fields, overrides, hf.get("image_size", 224))
    state = convert_hf_state(state) if family is None else family.convert_state(state, hf)
    overrides = {**{k: v for k, v in processor.items() if v is not None}, **labels_for_head(overrides, state),
                 **overrides}  # under the caller's
    config = (config_from_hf if family is None else family.config_from_hf)(hf, state, preprocessor, **overrides)
    if config.input_size == config.img_size:  # the processor says what the model's size says already
        config = config.replace(input_size=None)
    return state, config


def from_hf(obj, backend: str = "auto", hf_outputs: bool = False, revision: str | None = None, **config_overrides):
    """vit-fast model equal to an HF ViT, CLIP vision tower, DINOv2 (with registers), SigLIP vision tower or DeiT,
    given as a live model, a local HF-format directory or a Hub repository ("org/name", downloaded: hub.py;
    `revision` pins one). A full CLIP or SigLIP model (`CLIPModel`, `SiglipModel`)
    gives its image tower (hf_dual.py). With `hf_outputs=True` the result is a `vit_fast.hf_compat.HFDropIn`: HF's
    forward signature and output classes around the fast model."""
    named = hub.name_of(obj, revision)  # a Hub repository (raises for a revision given with anything else)
    if isinstance(obj, torch.nn.Module):
        if not hasattr(obj, "config"):
            raise ValueError(f"from_hf expects a transformers ViT model; {type(obj).__name__} has no config")
        hf, state, source = obj.config.to_dict(), obj.state_dict(), type(obj).__name__
        hf["architectures"] = [source]  # the module's class, whatever the config it was built from says
        pre_file = hub.local_processor_file(obj.config)  # None: the family's defaults stand in for the processor
        preprocessor = _read_processor(pre_file, hf) if pre_file else None
    elif isinstance(obj, (str, Path)):
        where = Path(obj) if named is None else hub.download(named.repo, named.revision)
        hf, state, preprocessor = _read_hf_dir(where)
        source = str(obj)
    else:
        raise ValueError(f"from_hf expects a transformers ViT model or a directory; got {type(obj).__name__}")
    dual = hf_dual.is_dual(hf)
    if dual:
        source_class = hf_dual.source_class(hf)
        hf, state = hf_dual.vision_tower(hf, state, source)
    state, config = _convert(hf, state, preprocessor, config_overrides)
    model = build_and_load(config, state, backend, source)
    if isinstance(obj, torch.nn.Module):
        model = like_source(model, obj)
    if not hf_outputs:
        return model
    return _drop_in(obj, hf, model, source_class if dual else None)


def _drop_in(obj, hf: dict, model, tower_class=None):
    """HFDropIn around `model`; `tower_class` is the class a full CLIP/SigLIP model's image tower answers as."""
    import transformers

    from ..hf_compat import HFDropIn

    if tower_class is not None:
        hf_config, source_class = transformers.AutoConfig.for_model(**hf), tower_class
    elif isinstance(obj, torch.nn.Module):
        hf_config, source_class = copy.deepcopy(obj.config), type(obj).__name__  # the wrapper must not edit the source's
    else:
        hf_config = transformers.AutoConfig.for_model(**hf)
        source_class = (hf.get("architectures") or [None])[0]
        if source_class is None:
            raise ValueError(f"{obj}/config.json names no architectures: cannot tell which outputs to return")
    return HFDropIn(hf_config, model, source_class).eval()
