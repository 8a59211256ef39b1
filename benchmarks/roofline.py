"""The two numbers per model that bound any implementation: FLOPs and bytes moved through device memory.

Bytes are counted per image in the activation dtype (2 bytes for bf16/fp16), for three cases:
  floor    the image read once (uint8 pixels) and the logits written once, plus the weights once per batch;
  fused    vit-fast's five-launch block (LN1+QKV, attention, out-proj+residual, LN2+FC1+GELU, FC2+residual):
           14·N·D + 2·N·mlp elements per layer;
  eager    PyTorch's unfused chain (LN, QKV, head permute copies, SDPA, out-proj, residual add, LN, FC1, GELU,
           FC2, residual add): 24·N·D + 4·N·mlp elements per layer.
Each tensor is counted once per read and once per write (no L2 reuse). `python -m benchmarks.roofline` prints the
table that benchmarks/NOTES.md quotes.
"""
from __future__ import annotations

import argparse

from .flops import vit_flops, vit_tokens

MODELS = [f"vit_{s}_{p}" for s in ("b", "l", "h") for p in (14, 16, 32)]


def _params(cfg) -> int:
    import torch
    import vit_fast

    with torch.device("meta"):  # shapes only, no memory
        model = vit_fast.VisionTransformer(cfg, backend="sdpa")
    return sum(p.numel() for p in model.parameters())


def traffic_bytes(cfg, batch: int, elem: int = 2) -> dict:
    """Bytes per image moved through device memory: the floor, the fused chain, the eager chain."""
    n, d, mlp = vit_tokens(cfg), cfg.embed_dim, cfg.mlp_dim
    h, w = cfg.img_size
    weights = _params(cfg) * elem / batch
    edge = 3 * h * w + cfg.num_classes * elem  # uint8 pixels in, logits out
    fused = cfg.depth * (14 * n * d + 2 * n * mlp) * elem + n * d * elem
    eager = cfg.depth * (24 * n * d + 4 * n * mlp) * elem + 3 * n * d * elem
    return {"floor": weights + edge, "fused": weights + edge + fused, "eager": weights + edge + eager}


def main(argv=None) -> int:
    import vit_fast

    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=800.0, help="matmul peak to divide by (default 800)")
    parser.add_argument("--bandwidth-tbs", type=float, default=3.35, help="memory bandwidth, TB/s (default 3.35)")
    args = parser.parse_args(argv)
    print(f"per image, batch {args.batch}, bf16; times at {args.peak_tflops:g} TFLOP/s and {args.bandwidth_tbs:g} TB/s")
    print("| model | tokens | GFLOP | MB floor | MB fused | MB eager | µs compute | µs fused bytes | µs eager bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        cfg = vit_fast.get_config(name)
        flops = vit_flops(cfg)
        t = traffic_bytes(cfg, args.batch)
        us = lambda b: b / (args.bandwidth_tbs * 1e12) * 1e6  # noqa: E731
        print(f"| {name} | {vit_tokens(cfg)} | {flops / 1e9:.1f} | {t['floor'] / 1e6:.2f} | {t['fused'] / 1e6:.1f} | "
              f"{t['eager'] / 1e6:.1f} | {flops / (args.peak_tflops * 1e12) * 1e6:.1f} | {us(t['fused']):.1f} | "
              f"{us(t['eager']):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
