"""Analytic FLOP count of a ViT forward pass, so throughput can be turned into achieved TFLOP/s and MFU.

Counted per image, multiply-add = 2 FLOPs, N = tokens including [CLS], D = width:
  encoder layer   8·N·D² (QKV and output projection) + 4·N·D·mlp (two MLP matmuls) + 4·N²·D (QKᵀ and PV)
                  which is 24·N·D² + 4·N²·D when mlp = 4·D;
  patch embedding 2·(N−1)·C·P²·D;
  head            2·D·R + 2·R·classes with a pre-logits layer of width R, else 2·D·classes.
LayerNorm, softmax, GELU and bias adds are left out (they are memory-bound and a rounding error here).
Every backend is credited with the same count, even one that skips work (e.g. [CLS]-only last layer).
"""
from __future__ import annotations

from vit_fast.config import image_fits


def _field(cfg, name, default=None):
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _pair(v):
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def vit_tokens(cfg, img_size=None) -> int:
    """Tokens per image, [CLS] included, for `cfg` at its own image size or at `img_size` (int or (H, W))."""
    native = _pair(_field(cfg, "img_size"))
    h, w = _pair(img_size) if img_size is not None else native
    p = int(_field(cfg, "patch_size"))
    if not image_fits((h, w), native, p):
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {p} (nor the model's {native})")
    return (h // p) * (w // p) + 1


def vit_flops(cfg, img_size=None) -> int:
    """FLOPs for one image through the model described by `cfg` (a ViTConfig, or any object/dict with its fields)."""
    n = vit_tokens(cfg, img_size)
    d = int(_field(cfg, "embed_dim"))
    depth = int(_field(cfg, "depth"))
    mlp = int(_field(cfg, "mlp_dim", None) or 4 * d)
    p = int(_field(cfg, "patch_size"))
    c = int(_field(cfg, "in_chans", 3) or 3)
    classes = int(_field(cfg, "num_classes", 1000) or 0)
    rep = _field(cfg, "representation_size", None)

    layer = 8 * n * d * d + 4 * n * d * mlp + 4 * n * n * d
    patch = 2 * (n - 1) * c * p * p * d
    if rep:
        head = 2 * d * int(rep) + 2 * int(rep) * classes
    else:
        head = 2 * d * classes
    return depth * layer + patch + head


def vit_gflops(cfg, img_size=None) -> float:
    return vit_flops(cfg, img_size) / 1e9
