"""timm's checkpoint directories: a config.json naming the timm architecture beside model.safetensors (or
pytorch_model.bin), as timm's Hugging Face Hub repositories (`timm/<model>.<tag>`, what `timm.create_model(...,
pretrained=True)` downloads) and timm's `push_to_hf_hub` / `save_for_hf` write them.

Weights alone do not say all that timm's model definition does: the MLP activation (quick GELU for OpenAI's CLIP),
the LayerNorm eps, the block structure (post-norm blocks keep the plain key names), the input size (so400m/14 at 384
and at 378 px have the same 27x27 grid). The config.json names the architecture: where timm imports, it is built on
the meta device (no memory, nothing downloaded) and read exactly as a live model is, so the load follows timm's own
definition and a structure vit-fast does not run is refused. Without timm, the config's preprocessing (mean, std,
input size, crop, interpolation) is used and the rest follows the key-name rules of a bare weight file, with a
warning.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import _is_numbers
from .state_dict import WEIGHT_NAMES, _first_line, read_json


def is_timm_config(config: dict) -> bool:
    """timm's config.json names an "architecture"; Hugging Face's name a "model_type"."""
    return "model_type" not in config and "architecture" in config


def read_config(directory: Path) -> Optional[dict]:
    """timm's config.json in `directory`, or None (no config.json, or Hugging Face's)."""
    file = Path(directory) / "config.json"
    if not file.is_file():
        return None
    config = read_json(file)
    if not is_timm_config(config):
        return None
    if not isinstance(config["architecture"], str) or not config["architecture"]:
        raise ValueError(f"{file}: expected \"architecture\" to name a timm model, got {config['architecture']!r}")
    return config


def config_for(path: Path) -> Optional[dict]:
    """timm's config.json for a checkpoint directory, or for a weight file timm wrote beside one; else None."""
    path = Path(path)
    if path.is_dir():
        return read_config(path)
    return read_config(path.parent) if path.name in WEIGHT_NAMES else None


MODEL_NAME = re.compile(r"^[a-z0-9_]+(?:\.[\w-]+)?$")  # timm's model names, with an optional pretrained tag


def pretrained_repo(name) -> Optional[tuple]:
    """(Hub repository, architecture, tagged name) of a timm model name as `timm.create_model(name, pretrained=True)`
    resolves it ("vit_base_patch16_clip_224.openai", or an untagged name for timm's default weights); None when
    `name` is not a timm model name or timm does not import. The architecture is the named one: timm's repositories
    are shared by architectures (`*_clip_quickgelu_*` loads the `*_clip_*` weights), and their config.json names
    only one. The tagged name is `name` with the tag timm resolved (its default weights' tag made explicit)."""
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        return None
    try:
        import timm
    except Exception:  # noqa: BLE001 - not installed, or not importable here: a plain path then
        return None
    arch = name.partition(".")[0]
    if not timm.is_model(arch):
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):  # an unknown tag, or an architecture without weights
        tags = timm.list_pretrained(arch + ".*")
        raise ValueError(f"timm has no pretrained weights {name!r}; it has {tags[:6]}" if tags else
                         f"timm has no pretrained weights for {arch}")
    if not cfg.hf_hub_id:
        raise ValueError(f"timm's {name} weights are not on the Hugging Face Hub (timm downloads them from "
                         f"{cfg.url}); load that file with from_timm")
    return cfg.hf_hub_id, arch, f"{arch}.{cfg.tag}" if cfg.tag else name


def settings(hub: dict, source: str, live_config: Callable[[torch.nn.Module], dict]) -> dict:
    """ViTConfig settings from timm's config.json. `live_config` reads a live timm model (timm.py's, which also
    refuses structures vit-fast does not run); it is given the architecture built on the meta device."""
    arch = hub["architecture"]
    pretrained = hub.get("pretrained_cfg")
    preprocessing = _preprocessing({} if pretrained is None else pretrained, source)  # checked first
    if not isinstance(hub.get("model_args") or {}, dict):
        raise ValueError(f"{source}: expected \"model_args\" in config.json to be an object, got "
                         f"{type(hub['model_args']).__name__}")
    try:
        import timm
    except Exception as e:  # noqa: BLE001 - not installed, or a torchvision that does not match torch
        why = "timm is not installed" if isinstance(e, ImportError) else \
            f"timm does not import here ({type(e).__name__}: {_first_line(e)})"
        warnings.warn(f"{source}: {why}, so the definition of {arch!r} cannot be read; settings the weights do not "
                      "record (MLP activation, LayerNorm eps, block structure) follow the key names as for a bare "
                      "weight file. Install timm for an exact load.", stacklevel=3)
        out = {}
    else:
        try:
            out = live_config(_meta_model(timm, hub, source))
        except ValueError as e:  # a structure or feature vit-fast does not run: say which checkpoint
            raise ValueError(f"{source} ({arch}): {e}") from None
    size = preprocessing.pop("input_size", None)
    if "img_size" not in out and size is not None:  # without timm: the size the weights were made for
        out["img_size"] = size
    out.update(preprocessing)
    return out


def _preprocessing(pretrained, source: str) -> dict:
    """ViTConfig settings from timm's pretrained_cfg (input_size as (H, W), used only where timm cannot say)."""
    if not isinstance(pretrained, dict):
        raise ValueError(f"{source}: expected \"pretrained_cfg\" in config.json to be an object, got "
                         f"{type(pretrained).__name__}")
    out = {}
    for key, field in (("mean", "image_mean"), ("std", "image_std")):
        if key in pretrained:
            out[field] = _numbers(pretrained[key], 3, f"pretrained_cfg.{key}", source)
    if "crop_pct" in pretrained:
        out["crop_pct"] = _numbers([pretrained["crop_pct"]], 1, "pretrained_cfg.crop_pct", source)[0]
    if pretrained.get("interpolation") in ("bicubic", "bilinear"):
        out["interpolation"] = pretrained["interpolation"]
    if "input_size" in pretrained:
        size = _numbers(pretrained["input_size"], 3, "pretrained_cfg.input_size", source)
        out["input_size"] = (int(size[1]), int(size[2]))
    return out


def _meta_model(timm, hub: dict, source: str) -> torch.nn.Module:
    arch = hub["architecture"]
    if not timm.is_model(arch):
        raise ValueError(f"{source}: config.json names the timm architecture {arch!r}, which timm {timm.__version__} "
                         "does not know (made with a newer timm?)")
    kwargs = dict(hub.get("model_args") or {})
    if "num_classes" in hub:
        kwargs.setdefault("num_classes", hub["num_classes"])
    try:
        with torch.device("meta"):
            return timm.create_model(arch, pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm raises many kinds for bad model_args
        raise ValueError(f"{source}: timm cannot build {arch!r} with the model_args of its config.json "
                         f"({type(e).__name__}: {_first_line(e)})") from None


def _numbers(value, n: int, what: str, source: str) -> tuple:
    if not _is_numbers(value) or len(value) != n:
        raise ValueError(f"{source}: expected {what} in config.json to be {n} number{'s' if n > 1 else ''}, "
                         f"got {value!r}")
    return tuple(float(v) for v in value)
