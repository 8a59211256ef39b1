"""Loading weights from timm, Hugging Face and vit-fast's own checkpoints, offline (local objects and files only)."""
from .checkpoint import load, save
from .hf import from_hf
from .timm import from_timm

__all__ = ["load", "save", "from_hf", "from_timm"]
