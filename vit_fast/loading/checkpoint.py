"""vit-fast's own checkpoint format, and `load`, which recognizes every format this package reads.

A vit-fast checkpoint is a directory with `model.safetensors` (timm-named weights) and `vit_fast.json` (the
ViTConfig, and for an FP8 model its `quantization` record: fp8_checkpoint.py). Both are also stored in the
safetensors metadata, so the weight file alone loads too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import ViTConfig, drop_processor_sizes
from .fp8_checkpoint import METADATA_KEY as QUANT_METADATA_KEY
from .fp8_checkpoint import DTYPES, RECORD_KEY, check_fp8_state, fp8_state, fp8_structure, read_record
from .state_dict import build_and_load, labels_for_head, read_json, read_weights, safetensors_metadata

CONFIG_NAME = "vit_fast.json"
WEIGHTS_NAME = "model.safetensors"
_METADATA_KEY = "vit_fast_config"


def save(model, dst) -> Path:
    """Write `model` to the directory `dst` (created if needed); returns the directory. An FP8 model (`to_fp8()`)
    is written with float8 weights and per-channel scales and loads back bit-identical (fp8_checkpoint.py)."""
    from safetensors.torch import save_file

    dst = check_destination(dst)
    if getattr(model, "is_fp8", False):
        state, record = fp8_state(model)
    else:
        state, record = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, None
    dst.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    metadata = {_METADATA_KEY: json.dumps(config, indent=2), "format": "pt"}
    if record is not None:
        config[RECORD_KEY] = record
        metadata[QUANT_METADATA_KEY] = json.dumps(record)
    # both files under temporary names first: a failed write leaves no half checkpoint (nor half of an old one)
    weights, config_file = dst / f".{WEIGHTS_NAME}.partial", dst / f".{CONFIG_NAME}.partial"
    try:
        save_file(state, str(weights), metadata=metadata)
        config_file.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(weights, dst / WEIGHTS_NAME)
        os.replace(config_file, dst / CONFIG_NAME)
    finally:
        for tmp in (weights, config_file):
            tmp.unlink(missing_ok=True)
    return dst


def check_destination(dst) -> Path:
    """`dst` as a checkpoint directory `save` can write (paths.check_output_dir), its two files not folders:
    ValueError naming what is in the way, before anything is loaded or written."""
    from ..paths import check_output_dir

    dst = check_output_dir(dst, "the checkpoint")
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if (dst / name).is_dir():
            raise ValueError(f"cannot write {dst / name}: a folder of that name is in the way")
    return dst


def _load_native(weights: Path, config: dict | None, backend: str, overrides: dict):
    config_file = config is not None
    state, metadata = read_weights(weights)
    if config is None:
        if _METADATA_KEY not in metadata:
            raise ValueError(f"{weights} carries no vit-fast config")
        try:
            config = json.loads(metadata[_METADATA_KEY])
        except json.JSONDecodeError as e:
            raise ValueError(f"{weights}: the stored vit-fast config is not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{weights}: the stored vit-fast config is not a JSON object")
        record = metadata.get(QUANT_METADATA_KEY)
    else:
        config = dict(config)
        record = config.pop(RECORD_KEY, None)
    where = weights.parent / CONFIG_NAME if config_file else f"the config stored in {weights}"
    record = read_record(record, str(where))
    try:
        stored = ViTConfig.from_dict(config)  # the grid the position table was saved at
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    layers = check_fp8_state(state, record, str(weights))
    # the stored processor's sizes go where the caller's overrides make them stale, as loading the HF directory
    sizes = drop_processor_sizes({"input_size": stored.input_size, "resize_size": stored.resize_size}, overrides,
                                 stored.img_size)
    overrides = {**sizes, **labels_for_head(overrides, state), **overrides}
    model = build_and_load(stored.replace(**overrides), state, backend, str(weights), pos_grid=stored.grid_size,
                           prepare=fp8_structure(layers, str(weights)) if record else None)
    return model if record is None else model.to(DTYPES[record["dtype"]])


def is_fp8_checkpoint(path) -> bool:
    """Whether `path` is a vit-fast checkpoint of an FP8 model (read from its records, no weights loaded); an
    unreadable one is not (loading it reports why)."""
    path = Path(path)
    try:
        if path.is_dir() and (path / CONFIG_NAME).is_file():
            return RECORD_KEY in read_json(path / CONFIG_NAME)
        if path.is_file() and path.suffix == ".safetensors":
            return QUANT_METADATA_KEY in safetensors_metadata(path)
    except ValueError:
        pass
    return False


def load(path, backend: str = "auto", revision: str | None = None, **config_overrides):
    """Load a model from a vit-fast directory or file, a Hugging Face directory, a timm checkpoint directory
    (config.json naming a timm architecture), a timm weight file, or a Hugging Face Hub repository holding any of
    these directories ("org/name", downloaded into huggingface_hub's cache: hub.py; `revision` pins one), or, with
    timm installed, a timm model name ("vit_base_patch16_clip_224.openai": the weights timm would download)."""
    from . import hub, timm_hub
    from .hf import from_hf
    from .timm import from_timm

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load expects a checkpoint path or a Hugging Face Hub name, got {type(path).__name__}")
    named = hub.name_of(path, revision)
    if named is not None and named.architecture is not None:  # a timm model name
        return from_timm(path, backend=backend, revision=revision, **config_overrides)
    path = Path(path) if named is None else hub.download(named.repo, named.revision)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            config = read_json(path / CONFIG_NAME)
            return _load_native(path / WEIGHTS_NAME, config, backend, config_overrides)
        if timm_hub.read_config(path) is not None:
            return from_timm(path, backend=backend, **config_overrides)
        if (path / "config.json").is_file():
            return from_hf(path, backend=backend, **config_overrides)
        raise ValueError(
            f"{path} is neither a vit-fast checkpoint ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a Hugging Face or timm "
            f"directory (config.json + weights); it holds {sorted(p.name for p in path.iterdir())[:10]}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}{hub.missing_hint(str(path)) if not path.exists() else ''}")
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"unknown weight file type {path.suffix!r}; expected .safetensors, .pth, .pt or .bin")
    if path.suffix == ".safetensors":
        if _METADATA_KEY in safetensors_metadata(path):
            return _load_native(path, None, backend, config_overrides)
    return from_timm(path, backend=backend, **config_overrides)

