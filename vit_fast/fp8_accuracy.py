"""Measure what FP8 costs in accuracy: logits SQNR and top-1 agreement of the FP8 model against the bf16 and fp32
models, on test models with random weights, with and without outlier channels in the residual stream.

    python -m vit_fast.fp8_accuracy --out benchmarks/fp8/accuracy.json

The FP8 model is the torch emulation (vit_fast.fp8: float8 casts, the same scales as the kernels, fp32 matmul),
run with fp32 activations, so the figures isolate the FP8 GEMMs; the tests prove the Triton kernels compute the
same thing (under the interpreter). "bf16" is the unquantized model in bfloat16 (PyTorch's own error at that
dtype, for scale). Outlier models: after the random initialization, OUTLIER_CHANNELS channels of the patch
embedding, class token and position embedding are multiplied by OUTLIER_GAIN, so those channels of the residual
stream are ~50x the others in every layer, as in trained ViTs.

Random weights give nearly input-independent logits (the class token and position embeddings dominate), which
would make top-1 agreement trivial. So the head is fitted as a random linear probe on standardized features:
logits = R · (f - mean) / std with mean and std of the fp32 pooled features over separate calibration images and
R ~ N(0, 1/F); every class then varies with the input by about the same amount, and top-1 agreement measures how
often FP8 noise changes the decision relative to the input-driven spread (harsher than a trained model with
confident margins).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

OUTLIER_CHANNELS = 3
OUTLIER_GAIN = 50.0

# name -> (preset, config overrides, image size)
MODELS = {
    "tiny_nonsquare": ("vit_ti_16", dict(img_size=(32, 48), embed_dim=64, num_heads=2, mlp_dim=128, depth=2), (32, 48)),
    "tiny_headdim80": ("vit_ti_16", dict(img_size=32, embed_dim=160, num_heads=2, mlp_dim=96, depth=1), (32, 32)),
    "tiny_avgpool": ("vit_ti_16", dict(img_size=24, patch_size=8, embed_dim=96, num_heads=3, mlp_dim=128, depth=1,
                                       global_pool="avg", representation_size=40), (24, 24)),
    "vit_s_16_d4_112px": ("vit_s_16", dict(img_size=112, depth=4), (112, 112)),
    "vit_b_16_d2_64px": ("vit_b_16", dict(img_size=64, depth=2), (64, 64)),
}


@torch.no_grad()
def build(name: str, outliers: bool, seed: int, num_classes: int = 100):
    """A test model with random weights large enough to matter (tests/helpers.randomize_'s rule)."""
    import vit_fast

    preset, overrides, size = MODELS[name]
    torch.manual_seed(seed)
    model = vit_fast.create(preset, backend="torch", num_classes=num_classes, **overrides)
    for pname, p in model.named_parameters():
        if p.dim() >= 2 and p.shape[0] > 1:
            p.normal_(0.0, p[0].numel() ** -0.5)
        elif "norm" in pname and pname.endswith("weight"):
            p.normal_(1.0, 0.2)
        else:
            p.normal_(0.0, 0.1)
    if outliers:
        d = model.config.embed_dim
        channels = torch.randperm(d)[:OUTLIER_CHANNELS]
        model.patch_embed.proj.weight[channels] *= OUTLIER_GAIN
        model.patch_embed.proj.bias[channels] *= OUTLIER_GAIN
        model.cls_token[..., channels] *= OUTLIER_GAIN
        model.pos_embed[..., channels] *= OUTLIER_GAIN
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1000)
    calib = images(256, size, gen)
    feats = torch.cat([model.forward_head(model.forward_features(c), pre_logits=True) for c in calib.split(64)])
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    probe = torch.randn(num_classes, feats.shape[1], generator=gen) / feats.shape[1] ** 0.5 / std
    model.head.weight.copy_(probe)
    model.head.bias.copy_(-(probe @ mean))
    return model, size


def images(n: int, size, gen) -> torch.Tensor:
    """Random images with image-level structure (a random 4x4 low-frequency field per channel, upsampled, plus
    pixel noise): i.i.d. pixel noise alone averages out over the patches and leaves the output input-independent."""
    low = torch.randn(n, 3, 4, 4, generator=gen)
    field = torch.nn.functional.interpolate(low, size=tuple(size), mode="bilinear", align_corners=False)
    return field + 0.5 * torch.randn(n, 3, *size, generator=gen)


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """10 log10(||ref||² / ||out - ref||²) in float64."""
    out, ref = out.double(), ref.double()
    noise = (out - ref).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.pow(2).sum().item() / noise)


def top1(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.argmax(-1) == ref.argmax(-1)).double().mean().item()


@torch.no_grad()
def measure(name: str, outliers: bool, n_images: int = 256, seed: int = 0, batch: int = 64) -> dict:
    """Logits of the fp32, bf16 and FP8 (emulated) models on `n_images` random structured images."""
    from .fp8 import quantize

    model, size = build(name, outliers, seed)
    fp8 = quantize(copy.deepcopy(model), "fp8")
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(seed + 1)
    x = images(n_images, size, gen)
    outs = {"fp32": [], "bf16": [], "fp8": []}
    embs = {"fp32": [], "fp8": []}
    for chunk in x.split(batch):
        for key, m, inp in (("fp32", model, chunk), ("bf16", bf16, chunk.bfloat16()), ("fp8", fp8, chunk)):
            emb = m.forward_head(m.forward_features(inp), pre_logits=True)
            outs[key].append(m.head(emb).float())
            if key in embs:
                embs[key].append(emb.float())
    fp32, b16, f8 = (torch.cat(outs[k]) for k in ("fp32", "bf16", "fp8"))
    e32, e8 = torch.cat(embs["fp32"]), torch.cat(embs["fp8"])
    cfg = model.config
    top2 = fp32.topk(2, dim=-1).values
    return {
        "model": name, "outliers": outliers, "images": n_images,
        "config": {"embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads, "mlp_dim": cfg.mlp_dim,
                   "patch_size": cfg.patch_size, "image_size": list(size), "global_pool": cfg.global_pool,
                   "num_classes": cfg.num_classes},
        "fp32_distinct_top1_classes": int(fp32.argmax(-1).unique().numel()),
        "fp32_median_top1_margin": (top2[:, 0] - top2[:, 1]).median().item(),
        "fp8_vs_fp32": {"sqnr_db": sqnr_db(f8, fp32), "top1_agree": top1(f8, fp32),
                        "embedding_sqnr_db": sqnr_db(e8, e32),
                        "embedding_min_cosine": torch.nn.functional.cosine_similarity(e8, e32, dim=-1).min().item()},
        "fp8_vs_bf16": {"sqnr_db": sqnr_db(f8, b16), "top1_agree": top1(f8, b16)},
        "bf16_vs_fp32": {"sqnr_db": sqnr_db(b16, fp32), "top1_agree": top1(b16, fp32)},
    }


def markdown_table(result: dict) -> str:
    """The README's table, from the JSON this module writes."""
    lines = ["| model (random weights) | 50x outlier channels | FP8 vs fp32: logits SQNR / top-1 | FP8 vs bf16 | "
             "bf16 vs fp32 (PyTorch's own bf16 error) | pooled embedding: SQNR / min cosine (FP8 vs fp32) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        a, b, c = r["fp8_vs_fp32"], r["fp8_vs_bf16"], r["bf16_vs_fp32"]
        cfg = r["config"]
        desc = (f"{r['model']} (D={cfg['embed_dim']}, {cfg['depth']} layers, {cfg['image_size'][0]}x"
                f"{cfg['image_size'][1]} px)")
        lines.append(f"| {desc} | {'yes' if r['outliers'] else 'no'} | {a['sqnr_db']:.1f} dB / "
                     f"{100 * a['top1_agree']:.1f} % | {b['sqnr_db']:.1f} dB / {100 * b['top1_agree']:.1f} % | "
                     f"{c['sqnr_db']:.1f} dB / {100 * c['top1_agree']:.1f} % | {a['embedding_sqnr_db']:.1f} dB / "
                     f"{a['embedding_min_cosine']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_fast.fp8_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/fp8/accuracy.json", help="JSON file to write")
    parser.add_argument("--images", type=int, default=256, help="random images per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names: " + ", ".join(MODELS))
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown or args.images < 1:
        print(f"error: expected --models from {', '.join(MODELS)} and --images >= 1, got {unknown or args.images}",
              file=sys.stderr)
        return 2
    start = time.time()
    rows = []
    for name in names:
        for outliers in (False, True):
            row = measure(name, outliers, args.images, args.seed)
            rows.append(row)
            a, b, c = row["fp8_vs_fp32"], row["fp8_vs_bf16"], row["bf16_vs_fp32"]
            print(f"{name:<20} outliers={'yes' if outliers else 'no ':<3}  fp8 vs fp32: {a['sqnr_db']:5.1f} dB "
                  f"top-1 {a['top1_agree']:.3f} | fp8 vs bf16: {b['sqnr_db']:5.1f} dB top-1 {b['top1_agree']:.3f} | "
                  f"bf16 vs fp32: {c['sqnr_db']:5.1f} dB top-1 {c['top1_agree']:.3f}", flush=True)
    result = {
        "what": "logits of FP8 (torch emulation of the kernels' arithmetic) vs fp32 and bf16 models, random weights, "
                "random structured images (see vit_fast/fp8_accuracy.py)",
        "outliers": {"channels": OUTLIER_CHANNELS, "gain": OUTLIER_GAIN},
        "torch": torch.__version__, "python": platform.python_version(), "seed": args.seed,
        "seconds": round(time.time() - start, 1),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
