"""FP8 models in vit-fast checkpoints: quantize once, serve the file.

In the safetensors file each quantized layer `L` (QKV, out-projection, FC1, FC2 of every block) is stored as
`L.weight` (float8_e4m3fn, (N, K)) and `L.weight_scale` (float32, (N,): one scale per output channel), its bias and
every other tensor in the model's dtype (layers a `quantize(..., exclude=...)` kept unquantized included).
`vit_fast.json` (and the file's metadata) records the quantization: {"scheme": "fp8", "dtype": the model's dtype,
"layers": [the FP8 layers]}. Loading restores the exact bits and the dtype, so
the loaded model's outputs are bit-identical to the saved model's. A file whose tensors disagree with its record is
refused with one line naming the keys.
"""
from __future__ import annotations

import json

import torch

FP8_DTYPE = torch.float8_e4m3fn  # vit_fast.kernels' FP8_DTYPE, named here so loading needs no triton

RECORD_KEY = "quantization"  # in vit_fast.json, beside the config fields
METADATA_KEY = "vit_fast_quantization"  # in the safetensors metadata
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _model_dtype(model) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def fp8_state(model) -> tuple:
    """(state dict to write, quantization record) of an FP8 model: each Fp8Linear's state is its `weight`
    (float8_e4m3fn) and `weight_scale` (float32) tensors."""
    from ..fp8 import fp8_layers

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    layers = fp8_layers(model)
    dtype = str(_model_dtype(model)).replace("torch.", "")
    return state, {"scheme": "fp8", "weights": "float8_e4m3fn, one float32 scale per output channel",
                   "activations": "float8_e4m3fn, one scale per token, computed at run time", "dtype": dtype,
                   "layers": layers}


def read_record(value, where: str):
    """The quantization record from vit_fast.json's entry or the metadata's JSON text (None: not quantized)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: the quantization record is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: 'quantization' expects an object {{\"scheme\": \"fp8\", ...}}, got {value!r}")
    if value.get("scheme") != "fp8":
        raise ValueError(f"{where}: unknown quantization scheme {value.get('scheme')!r}; this vit-fast reads 'fp8'")
    if value.get("dtype") not in DTYPES:
        raise ValueError(f"{where}: quantization 'dtype' expects one of {', '.join(DTYPES)}, got "
                         f"{value.get('dtype')!r}")
    layers = value.get("layers")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{where}: quantization 'layers' expects a list of layer names, got {layers!r}")
    return value


def check_fp8_state(state: dict, record, source: str) -> list:
    """The recorded FP8 layer names (none without a record), after checking every quantized tensor against the
    record: float8 weights and positive finite (N,) float32 scales for exactly the recorded layers, and no float8
    tensor without a record."""
    float8 = sorted(k for k, v in state.items() if v.dtype == FP8_DTYPE)
    if record is None:
        if float8:
            raise ValueError(f"cannot load {source}: it holds FP8 weights {float8[:4]} but its config records no "
                             "quantization (expected a 'quantization' entry in vit_fast.json, as vit_fast.save writes)")
        return []
    layers = record["layers"]
    wanted = [f"{n}.{t}" for n in layers for t in ("weight", "weight_scale")]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"cannot load {source}: the FP8 checkpoint lacks {missing[:6]}"
                         f"{f' and {len(missing) - 6} more' if len(missing) > 6 else ''}")
    stray = sorted(set(float8) - {f"{n}.weight" for n in layers})
    if stray:
        raise ValueError(f"cannot load {source}: float8 tensors {stray[:4]} are not in the recorded FP8 layers")
    for name in layers:
        w, s = state[f"{name}.weight"], state[f"{name}.weight_scale"]
        if w.dtype != FP8_DTYPE or w.dim() != 2:
            raise ValueError(f"cannot load {source}: {name}.weight is {w.dtype} {tuple(w.shape)}; an FP8 layer "
                             "expects a 2-D float8_e4m3fn weight")
        if s.dtype != torch.float32 or tuple(s.shape) != (w.shape[0],):
            raise ValueError(f"cannot load {source}: {name}.weight_scale is {s.dtype} {tuple(s.shape)}; expected "
                             f"float32 ({w.shape[0]},), one scale per output channel of {name}.weight")
        if not bool((torch.isfinite(s) & (s > 0)).all()):
            raise ValueError(f"cannot load {source}: {name}.weight_scale holds scales that are not positive and "
                             "finite")
    return list(layers)


def fp8_structure(layers: list, source: str):
    """For build_and_load's `prepare`: makes the recorded `layers` of the (meta) model Fp8Linear, the others stay
    nn.Linear (layers the saved model kept out of FP8), so the stored bits load into them as they are."""
    def prepare(model):
        from ..fp8 import quantize, quantized_linears

        names = set(quantized_linears(model))
        extra = sorted(set(layers) - names)
        if extra or not layers:
            raise ValueError(f"cannot load {source}: the recorded FP8 layers are not layers vit_fast quantizes "
                             f"({extra[:4] if extra else 'none recorded'}; expected some of {sorted(names)[:2]} ...)")
        quantize(model, "fp8", exclude=sorted(names - set(layers)))

    return prepare
