"""Reading weight files and loading state dicts strictly: every key accounted for, every shape checked, before
anything is copied into the model, so a bad checkpoint never leaves a half-loaded model behind."""
from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path

import torch

from ..config import ViTConfig
from ..model import VisionTransformer
from ..pos_embed import infer_square_grid, resample_pos_embed_table


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    text = text[0] if text else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _size(path: Path) -> str:
    n = path.stat().st_size
    return "an empty file" if n == 0 else f"{n:,} bytes"


def read_json(path) -> dict:
    """A JSON object from `path`; ValueError naming the file when it is not valid JSON or not an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: expected a JSON object, but the file is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got a JSON {type(obj).__name__}")
    return obj


def safetensors_metadata(path) -> dict:
    """The metadata of a .safetensors file; ValueError naming the file when it is not one (empty, cut, garbage)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: the file is not a safetensors file
        raise ValueError(f"cannot read {path}: expected a safetensors file, got {_size(Path(path))} that is not "
                         f"one ({_first_line(e)})") from None


def _read_torch(path: Path):
    try:
        with warnings.catch_warnings():  # garbage bytes can read as an odd pickle protocol: the error says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).rpartition("WeightsUnpickler error:")[2] or _first_line(e)
        reason = f"not a torch.save archive of tensors ({_first_line(reason.strip())})"
    except EOFError:
        reason = "the file ends before the archive does"
    except Exception as e:  # noqa: BLE001 - the unpickler fails on garbage in many ways (IndexError, KeyError, ...)
        reason = f"{type(e).__name__}: {_first_line(e)}" if isinstance(e, (IndexError, KeyError)) else _first_line(e)
    raise ValueError(f"cannot read {path}: expected a PyTorch checkpoint (torch.save of a state dict), got "
                     f"{_size(path)}: {reason}")


def read_weights(path) -> tuple:
    """(state dict, safetensors metadata or {}) from a .safetensors file, a torch pickle (.pth/.pt/.bin), or the
    index of a sharded checkpoint (`*.index.json`, as `save_pretrained` writes large models: every shard read and
    merged). A file that is empty, cut short or not of its type raises one ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        from .hub import missing_hint

        raise FileNotFoundError(f"no weight file at {path}{missing_hint(str(path)) if not path.exists() else ''}")
    if path.name.endswith(".index.json"):
        return _read_sharded(path), {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        metadata = safetensors_metadata(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, metadata
        except Exception as e:  # noqa: BLE001 - a tensor that cannot be read: the file is damaged
            raise ValueError(f"cannot read {path}: a tensor of this safetensors file is unreadable "
                             f"({_first_line(e)})") from None
    obj = _read_torch(path)
    for wrapper in ("state_dict", "model", "module"):  # training checkpoints nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj, {}


def shard_names(index) -> list:
    """The shard files a sharded checkpoint's index names (its "weight_map": tensor name -> file in the same
    directory); ValueError naming the index when that is not what it holds."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) and Path(v).name == v and v.endswith((".safetensors", ".bin"))
            for v in weight_map.values()):
        raise ValueError(f"{index}: expected a \"weight_map\" object naming the shard file (.safetensors or .bin, in "
                         "the same directory) of every tensor")
    return sorted(set(weight_map.values()))


def _read_sharded(index: Path) -> dict:
    """The state dict of a sharded checkpoint: every shard its index names, each tensor from the shard named for it."""
    shards = shard_names(index)  # checks the index first
    weight_map = read_json(index)["weight_map"]
    state = {}
    for shard in shards:
        file = index.parent / shard
        if not file.is_file():
            raise FileNotFoundError(f"{index} lists the shard {shard}, which is not in {index.parent}")
        part, _ = read_weights(file)
        state.update({k: v for k, v in part.items() if weight_map.get(k) == shard})
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise ValueError(f"{index}: {len(absent)} tensors are not in the shards it names them in, e.g. {absent[:3]}")
    return state


WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")  # beside a config.json: HF's and timm's names
INDEX_NAMES = tuple(f"{name}.index.json" for name in WEIGHT_NAMES)  # the same, sharded
# what a directory is read from, in transformers' order: safetensors (whole, then sharded), then the pickles
WEIGHT_PREFERENCE = tuple(name for pair in zip(WEIGHT_NAMES, INDEX_NAMES) for name in pair)


def weights_in(directory, config_kind: str) -> Path:
    """The weight file of a Hugging Face or timm model directory (or its sharded checkpoint's index, which
    `read_weights` reads); FileNotFoundError naming `config_kind` if there is none."""
    for name in WEIGHT_PREFERENCE:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise FileNotFoundError(f"{directory} has {config_kind} but no {' or '.join(WEIGHT_NAMES)} (nor the index of a "
                            f"sharded checkpoint, {' or '.join(INDEX_NAMES)})")


def fit_pos_embed(state: dict, expected: dict, config: ViTConfig, source: str, pos_grid=None) -> dict:
    """`state` with its position table resampled to `config`'s patch grid when the checkpoint was trained at another
    size (an `img_size` override): 2-D bicubic in fp32, the arithmetic forward uses on the fly, so the stored table
    equals what the original model computes at the new size. `pos_grid` is the checkpoint's grid when known (a
    non-square training size); otherwise a square grid is inferred from the table's length."""
    old, new = state.get("pos_embed"), expected.get("pos_embed")
    if old is None or new is None or old.shape == new.shape:
        return state
    if old.dim() != 3 or old.shape[0] != 1 or old.shape[2] != new.shape[2]:
        return state  # not a different grid but a different model: the strict check below reports it
    num_prefix = new.shape[1] - config.num_patches  # [CLS] (and any other leading tokens) are not resampled
    old_patches = old.shape[1] - num_prefix
    if old_patches <= 0:
        return state
    if pos_grid is None or pos_grid[0] * pos_grid[1] != old_patches:
        try:
            pos_grid = infer_square_grid(old_patches)
        except ValueError as e:
            raise ValueError(
                f"cannot resample the position embeddings of {source} to img_size {config.img_size}: {e}, so the "
                "size it was trained at is unknown; convert it at its training size first (img_size=(H, W), "
                "CLI: --set 'img_size=[H,W]'), then load that checkpoint with the new img_size"
            ) from None
    table = resample_pos_embed_table(old, num_prefix, pos_grid, config.grid_size, config.pos_embed_antialias)
    return {**state, "pos_embed": table}


def float_state(model, target: str) -> dict:
    """`model`'s state dict in fp32 on the CPU, to fill another library's model (`target` names it). An FP8 model is
    refused: its state holds float8 weights and their scales, which no float model can take as they are."""
    if getattr(model, "is_fp8", False):
        raise ValueError(f"cannot convert an FP8 model to {target}: its float weights are gone (convert the model "
                         "it was quantized from)")
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def _own(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A new CPU tensor of `like`'s dtype (fp32 for float weights; float8 / fp32 for an FP8 layer's) holding `t`:
    contiguous, in aligned storage of its own. Never `t` itself: the caller's tensors (a live timm or HF model, a
    state dict) stay theirs, and safetensors' tensors (8-byte aligned) would make CPU results depend on alignment."""
    return torch.empty(t.shape, dtype=like.dtype, device="cpu").copy_(t.detach())


def _finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in `t`: from its min and max (NaN propagates into both), one reduction pass with no
    boolean tensor of every element, as isfinite(t).all() makes; float8 e4m3fn codes by their NaN pattern (it has
    no infinity)."""
    if t.numel() == 0 or not t.dtype.is_floating_point:
        return True
    if t.dtype == torch.float8_e4m3fn:
        return not bool(((t.view(torch.uint8) & 0x7F) == 0x7F).any())
    if t.element_size() == 1:  # other 8-bit floats: not a dtype a checkpoint of this package holds
        return True
    return bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())



def _same_kind(got: torch.dtype, want: torch.dtype) -> bool:
    """A checkpoint tensor may be stored in any floating dtype where the model holds a floating one (fp16 weights
    into an fp32 model, float8 codes as float8); anything else must be the model's own dtype."""
    return (got.is_floating_point and want.is_floating_point) or got == want


_HEAD = re.compile(r"^head(?:_dist)?\.(?:weight|bias)$")  # the classifier (and DeiT's distillation head)


def labels_for_head(overrides: dict, state: dict) -> dict:
    """{"labels": None} when the caller's `overrides` ask for another class count than the head in `state` (vit-fast
    names) holds, naming no labels: the checkpoint's labels named that head's classes. Else {}."""
    held = state["head.weight"].shape[0] if "head.weight" in state else 0
    if "num_classes" in overrides and "labels" not in overrides and overrides["num_classes"] != held:
        return {"labels": None}
    return {}


def like_source(model, source: torch.nn.Module):
    """`model` on the device and in the floating dtype of a live `source` module's weights, as the source was:
    `from_hf(hf.cuda().half())` gives a CUDA fp16 model (loading itself runs in fp32 on the CPU)."""
    weight = next((p for p in source.parameters() if p.is_floating_point()), None)
    if weight is None or weight.device.type == "meta" or (weight.device.type == "cpu" and
                                                          weight.dtype == torch.float32):
        return model
    return model.to(device=weight.device, dtype=weight.dtype)


def build_and_load(config: ViTConfig, state: dict, backend: str, source: str, pos_grid=None,
                   prepare=None) -> VisionTransformer:
    """A new model for `config` with `state` loaded; raises listing every missing, unexpected, mis-shaped, wrongly
    typed (an integer or boolean tensor for a float one) or non-finite key.
    A position table trained at another size is resampled to `config.img_size` first (see `fit_pos_embed`).
    The model is built on the meta device and takes a copy of each state tensor (`_own`), so no weight is allocated
    or randomly initialized only to be overwritten. `prepare(model)` changes the structure before the check (an FP8
    checkpoint's layers: fp8_checkpoint.py)."""
    with torch.device("meta"):
        model = VisionTransformer(config, backend=backend)
        if prepare is not None:
            prepare(model)
    expected = model.state_dict()
    state = fit_pos_embed(state, expected, config, source, pos_grid)
    if not config.num_classes:  # num_classes=0 asked of a classifier: pooled features, its head left out (as timm)
        state = {k: v for k, v in state.items() if not _HEAD.match(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    wrong_type = [f"{k}: {str(state[k].dtype).removeprefix('torch.')} where the model holds "
                  f"{str(expected[k].dtype).removeprefix('torch.')}"
                  for k in sorted(set(expected) & set(state)) if not _same_kind(state[k].dtype, expected[k].dtype)]
    not_finite = [] if missing or unexpected or mismatched or wrong_type else \
        [k for k in sorted(state) if not _finite(state[k])]
    if missing or unexpected or mismatched or wrong_type or not_finite:
        parts = []
        if wrong_type:  # an integer or boolean tensor would be cast to float silently (int weights -> 0s, 1s)
            parts.append(f"tensors of the wrong kind {wrong_type}")
        if not_finite:
            parts.append(f"NaN or infinite values in {not_finite}")
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if mismatched:
            parts.append(f"shapes that disagree with the config {mismatched}")
            if any(_HEAD.match(m.partition(":")[0]) for m in mismatched):
                parts.append(f"the checkpoint's head has {state['head.weight'].shape[0]} classes: num_classes=0 "
                             "leaves it out (pooled features); another number needs a head trained for it")
        raise ValueError(f"cannot load {source}: " + "; ".join(parts))
    model.load_state_dict({k: _own(v, expected[k]) for k, v in state.items()}, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # every tensor of the model is in its state dict; a meta tensor here is a bug, not a bad file
        raise RuntimeError(f"loading {source} left {left[:4]} unfilled")
    return model.eval()


def infer_num_heads(embed_dim: int) -> int:
    """Heads for a width, from the presets (B 12, L and H 16, ...); checkpoints of timm do not record it."""
    from ..config import PRESETS

    known = {p["embed_dim"]: p["num_heads"] for p in PRESETS.values()}
    if embed_dim not in known:
        raise ValueError(
            f"cannot tell the number of attention heads for width {embed_dim} from the weights alone; "
            "pass num_heads=N (CLI: --set num_heads=N)"
        )
    import warnings

    warnings.warn(
        f"timm weights do not record the number of heads: assuming {known[embed_dim]} (the preset for width "
        f"{embed_dim}); pass num_heads=N (CLI: --set num_heads=N) if the model differs",
        stacklevel=3,
    )
    return known[embed_dim]
