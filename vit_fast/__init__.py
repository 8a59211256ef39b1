"""vit-fast: Vision Transformer inference with fused Triton kernels, a drop-in for timm and Hugging Face ViTs.

    import vit_fast
    model = vit_fast.create("vit_b_16")                  # a preset, random weights
    model = vit_fast.from_timm(timm_model)               # or from_hf(hf_model_or_dir), load(path)
    logits = model(images)                               # float (B,3,H,W) normalized, or uint8 pixels
    model.set_backend("triton")                          # "torch" | "sdpa" | "triton" | "auto"
    model.to_fp8()                                       # or vit_fast.quantize(model, "fp8"): FP8 GEMMs (sm_89/90)
"""
from .backends import BACKENDS, available_backends
from .config import PRESETS, ViTConfig, get_config, list_models
from .loading import from_hf, from_timm, load, save
from .model import VisionTransformer

__version__ = "0.1.0"


def create(name: str, backend: str = "auto", **config_overrides) -> VisionTransformer:
    """A preset model (`list_models()`) with random weights; keyword arguments override its config."""
    return VisionTransformer(get_config(name, **config_overrides), backend=backend).eval()


def __getattr__(name):
    if name == "Predictor":  # lazy: the predictor pulls in image decoding
        from .predictor import Predictor

        return Predictor
    if name == "quantize":  # lazy: FP8 imports the kernels (and triton), which `import vit_fast` does not need
        from .fp8 import quantize

        return quantize
    raise AttributeError(f"module 'vit_fast' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "PRESETS",
    "Predictor",
    "ViTConfig",
    "VisionTransformer",
    "available_backends",
    "create",
    "from_hf",
    "from_timm",
    "get_config",
    "list_models",
    "load",
    "quantize",
    "save",
]
