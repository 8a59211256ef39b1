"""Measure what FP8 costs in accuracy: logits SQNR and top-1 agreement of the FP8 model against the fp32 and bf16
models, with and without outlier channels in the residual stream.

    python -m vit_fast.fp8_accuracy --out benchmarks/fp8/accuracy.json

The FP8 model is the torch emulation (vit_fast.fp8: float8 casts, the same scales as the kernels, fp32 matmul), run
with fp32 activations, so the figures isolate the FP8 GEMMs; the tests prove the Triton kernels compute the same
thing (under the interpreter). "bf16" is the unquantized model in bfloat16 (PyTorch's own error at that dtype, for
scale). "FP8 per-tensor" quantizes each activation with one scale for the whole tensor instead of one per token,
for contrast: it is what per-token scaling protects against.

Two settings, because top-1 agreement depends as much on the model's margins as on the quantization error:
- trained: each test model is trained here, on CPU, on a synthetic 32-class task (task_images: oriented gratings on
  random low-frequency backgrounds with pixel noise; the class is the orientation, jittered by half a class width),
  then measured on fresh draws of the task (random images it never saw). Its fp32 accuracy stays well below 100 %,
  so many inputs lie near a decision boundary, as for ImageNet classifiers. Outlier models are trained with their
  outlier channels in place, and the ratio the residual stream keeps after training is measured and recorded.
- random: random weights and a random linear probe on standardized features (random-weight logits barely depend on
  the input otherwise), on random structured images: every class varies with the input by the same small amount,
  so FP8 noise flips decisions far more often than in any trained model. A stress figure, not a prediction.

Outlier models: OUTLIER_CHANNELS channels of the patch embedding, class token and position embedding are scaled so
that each is OUTLIER_GAIN times the median channel (mean |x|) at the first block's input, far larger than the others
in every layer, as in trained ViTs; the ratios measured at every layer are recorded.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .provenance import source_commit

OUTLIER_CHANNELS = 3
OUTLIER_GAIN = 50.0
TASK_CLASSES = 32
# orientation jitter in class widths: sets how many inputs lie near a decision boundary; at 0.3 the trained models'
# fp32 accuracy is 73-89 % (benchmarks/fp8/accuracy.json), where ImageNet ViTs are (0.5 gives ~67 %, 0.2 ~97 %)
JITTER = 0.3

# name -> (preset, config overrides, image size, (training steps, batch))
MODELS = {
    "tiny_nonsquare": ("vit_ti_16", dict(img_size=(32, 48), embed_dim=64, num_heads=2, mlp_dim=128, depth=2), (32, 48),
                       (800, 128)),
    "tiny_headdim80": ("vit_ti_16", dict(img_size=32, embed_dim=160, num_heads=2, mlp_dim=96, depth=1), (32, 32),
                       (800, 128)),
    "tiny_avgpool": ("vit_ti_16", dict(img_size=24, patch_size=8, embed_dim=96, num_heads=3, mlp_dim=128, depth=1,
                                       global_pool="avg", representation_size=40), (24, 24), (800, 128)),
    "vit_s_16_d4_64px": ("vit_s_16", dict(img_size=64, depth=4), (64, 64), (400, 64)),
    "vit_b_16_d2_64px": ("vit_b_16", dict(img_size=64, depth=2), (64, 64), (400, 64)),
}
SETTINGS = ("trained", "random")


def images(n: int, size, gen) -> torch.Tensor:
    """Random images with image-level structure (a random 4x4 low-frequency field per channel, upsampled, plus
    pixel noise): i.i.d. pixel noise alone averages out over the patches and leaves the output input-independent."""
    low = torch.randn(n, 3, 4, 4, generator=gen)
    field = F.interpolate(low, size=tuple(size), mode="bilinear", align_corners=False)
    return field + 0.5 * torch.randn(n, 3, *size, generator=gen)


def task_images(n: int, size, gen, classes: int = TASK_CLASSES) -> tuple:
    """(images, labels) of the training task: a sinusoidal grating whose orientation is the class (π·k/classes,
    jittered by a Gaussian of half a class width, so neighbouring classes overlap), with random frequency, phase,
    contrast and colour, over images()' random background."""
    h, w = size
    labels = torch.randint(0, classes, (n,), generator=gen)
    theta = math.pi * (labels.float() + JITTER * torch.randn(n, generator=gen)) / classes
    freq = 0.5 + 0.3 * torch.rand(n, generator=gen)  # radians per pixel
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    along = xx * theta.cos()[:, None, None] + yy * theta.sin()[:, None, None]
    grating = torch.sin(freq[:, None, None] * along + phase[:, None, None])
    amplitude = (0.5 + torch.rand(n, generator=gen))[:, None] * (0.5 + torch.rand(n, 3, generator=gen))
    return amplitude[:, :, None, None] * grating[:, None] + images(n, size, gen), labels


def _create(name: str, outliers: bool, seed: int, num_classes: int):
    import vit_fast

    preset, overrides, size, _ = MODELS[name]
    torch.manual_seed(seed)
    model = vit_fast.create(preset, backend="torch", num_classes=num_classes, **overrides)
    return model, size


def _add_outliers(model, gen, probe: torch.Tensor):
    """Scale OUTLIER_CHANNELS channels of the embeddings (patch projection, class token, position table) so that,
    at the first block's input, each has OUTLIER_GAIN times the median channel's mean |x| on `probe` images.
    Returns a function that puts those channels back to these values (training calls it after every step)."""
    channels = torch.randperm(model.config.embed_dim, generator=gen)[:OUTLIER_CHANNELS]
    with torch.no_grad():
        per_channel = model.hidden_states(probe)[0].float().abs().mean(dim=(0, 1))
        gain = OUTLIER_GAIN * per_channel.median() / per_channel[channels]
    fixed = []
    for p, dim in ((model.patch_embed.proj.weight, 0), (model.patch_embed.proj.bias, 0), (model.cls_token, 2),
                   (model.pos_embed, 2)):
        shape = [1] * p.dim()
        shape[dim] = -1
        with torch.no_grad():
            p.index_copy_(dim, channels, p.index_select(dim, channels) * gain.view(shape).to(p.dtype))
        fixed.append((p, dim, p.detach().index_select(dim, channels).clone()))

    @torch.no_grad()
    def restore():
        for p, dim, values in fixed:
            p.index_copy_(dim, channels, values)
    return restore


def _train(model, size, gen, steps: int, batch: int, after_step=None) -> list:
    """AdamW with a one-cycle schedule on fresh task_images every step (no overfitting to measure around)."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = task_images(batch, size, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
    model.eval()
    return losses


def build_trained(name: str, outliers: bool, seed: int, steps: int | None = None):
    """(model, image size, training record): trained on task_images from the preset's own initialization, then
    half as long again. An outlier model gets its outlier channels between the two phases and keeps them fixed in
    the second, so that it works with them (as trained ViTs do) and they keep their size; both kinds see the same
    schedule and the same images."""
    model, size = _create(name, outliers, seed, TASK_CLASSES)
    gen = torch.Generator().manual_seed(seed + 2000)
    default_steps, default_batch = MODELS[name][3]
    steps, batch = steps or default_steps, default_batch
    start = time.time()
    losses = _train(model, size, gen, steps, batch)
    restore = _add_outliers(model, gen, task_images(64, size, gen)[0]) if outliers else None
    losses += _train(model, size, gen, steps // 2, batch, after_step=restore)
    tail = losses[-max(1, steps // 10):]
    return model, size, {"steps": len(losses), "batch": batch, "seconds": round(time.time() - start, 1),
                         "final_loss": sum(tail) / len(tail)}


@torch.no_grad()
def build_random(name: str, outliers: bool, seed: int, num_classes: int = 100):
    """(model, image size): random weights large enough to matter (tests/helpers.randomize_'s rule) and a head fitted
    as a random probe on standardized features: logits = R · (f - mean) / std over separate calibration images."""
    model, size = _create(name, outliers, seed, num_classes)
    for pname, p in model.named_parameters():
        if p.dim() >= 2 and p.shape[0] > 1:
            p.normal_(0.0, p[0].numel() ** -0.5)
        elif "norm" in pname and pname.endswith("weight"):
            p.normal_(1.0, 0.2)
        else:
            p.normal_(0.0, 0.1)
    model.eval()
    if outliers:
        probe = images(64, size, torch.Generator().manual_seed(seed))
        _add_outliers(model, torch.Generator().manual_seed(seed + 2000), probe)
    gen = torch.Generator().manual_seed(seed + 1000)
    calib = images(256, size, gen)
    feats = torch.cat([model.forward_head(model.forward_features(c), pre_logits=True) for c in calib.split(64)])
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    probe = torch.randn(num_classes, feats.shape[1], generator=gen) / feats.shape[1] ** 0.5 / std
    model.head.weight.copy_(probe)
    model.head.bias.copy_(-(probe @ mean))
    return model, size


@contextlib.contextmanager
def per_tensor_activations():
    """Inside: the emulation quantizes each activation tensor with one scale (max |x| over the whole tensor)
    instead of one per token. Weights keep their per-channel scales (quantized before)."""
    from . import fp8

    per_row = fp8.quantize_rows

    def per_tensor(x):
        q, scale = per_row(x.reshape(1, -1))
        return q.reshape(x.shape), scale.expand(x.shape[:-1])

    fp8.quantize_rows = per_tensor
    try:
        yield
    finally:
        fp8.quantize_rows = per_row


def db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): an SQNR from two energies (inf without noise)."""
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """10 log10(||ref||² / ||out - ref||²) in float64."""
    out, ref = out.double(), ref.double()
    return db(ref.pow(2).sum().item(), (out - ref).pow(2).sum().item())


def top1(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.argmax(-1) == ref.argmax(-1)).double().mean().item()


def agreement(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Logits SQNR and top-1 agreement of `out` against `ref`."""
    return {"sqnr_db": sqnr_db(out, ref), "top1_agree": top1(out, ref)}


def outlier_ratios(model, x: torch.Tensor) -> list:
    """At every block's input and after the last block (before the final norm): max / median over channels of
    mean |x| of the residual stream, i.e. how far the largest channel stands out in the model as measured."""
    ratios = []
    for tokens in model.hidden_states(x):
        per_channel = tokens.float().abs().mean(dim=(0, 1))
        ratios.append((per_channel.max() / per_channel.median()).item())
    return ratios


@torch.no_grad()
def logits_and_embeddings(model, x: torch.Tensor, batch: int) -> tuple:
    logits, embeddings = [], []
    for chunk in x.split(batch):
        emb = model.forward_head(model.forward_features(chunk.to(next(model.parameters()).dtype)), pre_logits=True)
        embeddings.append(emb.float())
        logits.append(model.head(emb).float())
    return torch.cat(logits), torch.cat(embeddings)


@torch.no_grad()
def compare(model, x: torch.Tensor, batch: int = 64) -> dict:
    """fp32, bf16, FP8 (per token) and FP8 (per-tensor activations) logits of `model` on x, compared."""
    from .fp8 import quantize

    fp8 = quantize(copy.deepcopy(model), "fp8")
    fp32, e32 = logits_and_embeddings(model, x, batch)
    b16, _ = logits_and_embeddings(copy.deepcopy(model).to(torch.bfloat16), x, batch)
    f8, e8 = logits_and_embeddings(fp8, x, batch)
    with per_tensor_activations():
        f8t, _ = logits_and_embeddings(fp8, x, batch)
    top2 = fp32.topk(2, dim=-1).values
    return {
        "logits": {"fp32": fp32, "bf16": b16, "fp8": f8, "fp8_per_tensor": f8t},
        "fp32_distinct_top1_classes": int(fp32.argmax(-1).unique().numel()),
        "fp32_median_top1_margin": (top2[:, 0] - top2[:, 1]).median().item(),
        "fp8_vs_fp32": {**agreement(f8, fp32), "embedding_sqnr_db": sqnr_db(e8, e32),
                        "embedding_min_cosine": F.cosine_similarity(e8, e32, dim=-1).min().item()},
        "fp8_vs_bf16": agreement(f8, b16),
        "bf16_vs_fp32": agreement(b16, fp32),
        "fp8_per_tensor_vs_fp32": agreement(f8t, fp32),
    }


def _config(model, size) -> dict:
    cfg = model.config
    return {"embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads, "mlp_dim": cfg.mlp_dim,
            "patch_size": cfg.patch_size, "image_size": list(size), "global_pool": cfg.global_pool,
            "num_classes": cfg.num_classes}


def model_and_images(name: str, outliers: bool, n_images: int, seed: int, setting: str, steps: int | None = None):
    """(model, image size, images, labels, training record) of one row: the trained model and fresh task images,
    or the random-probe model and random images (labels and record None)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    gen = torch.Generator().manual_seed(seed + 1)
    if setting == "trained":
        model, size, train = build_trained(name, outliers, seed, steps=steps)
        return (model, size, *task_images(n_images, size, gen), train)
    model, size = build_random(name, outliers, seed)
    return model, size, images(n_images, size, gen), None, None


def measure(name: str, outliers: bool, n_images: int = 256, seed: int = 0, batch: int = 64,
            setting: str = "random", steps: int | None = None) -> dict:
    """One row: the model of `setting` ("trained" or "random") measured on `n_images` fresh random images."""
    model, size, x, labels, train = model_and_images(name, outliers, n_images, seed, setting, steps)
    row = {"model": name, "setting": setting, "outliers": outliers, "images": n_images}
    if train is not None:
        row["train"] = train
    row["config"] = _config(model, size)
    with torch.no_grad():
        row["residual_outlier_ratios"] = outlier_ratios(model, x[:64])
    result = compare(model, x, batch)
    logits = result.pop("logits")
    row.update(result)
    if labels is not None:
        row["task_accuracy"] = {k: (v.argmax(-1) == labels).double().mean().item() for k, v in logits.items()}
    return row


def _cell(pair: dict) -> str:
    return f"{pair['sqnr_db']:.1f} dB / {100 * pair['top1_agree']:.1f} %"


def markdown_table(result: dict, setting: str) -> str:
    """One of the README's two tables, from the JSON this module writes."""
    trained = setting == "trained"
    head = ("| model | outlier channels (max/median channel, first block → output) | "
            "FP8 vs fp32: logits SQNR / top-1 agreement | FP8 vs bf16 | "
            "bf16 vs fp32 (PyTorch's own bf16 error) | FP8 per-tensor activations vs fp32 (contrast) | "
            + ("task accuracy fp32 / FP8 |" if trained else "pooled embedding: SQNR / min cosine (FP8 vs fp32) |"))
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in (r for r in result["rows"] if r["setting"] == setting):
        cfg = r["config"]
        desc = (f"{r['model']} (D={cfg['embed_dim']}, {cfg['depth']} layer{'s' * (cfg['depth'] > 1)}, "
                f"{cfg['image_size'][0]}x{cfg['image_size'][1]} px)")
        ratios = r["residual_outlier_ratios"]
        span = f"{ratios[0]:.0f}x → {ratios[-1]:.0f}x"
        out = span if r["outliers"] else f"no ({span})"
        if trained:
            acc = r["task_accuracy"]
            last = f"{100 * acc['fp32']:.1f} % / {100 * acc['fp8']:.1f} %"
        else:
            a = r["fp8_vs_fp32"]
            last = f"{a['embedding_sqnr_db']:.1f} dB / {a['embedding_min_cosine']:.4f}"
        lines.append(f"| {desc} | {out} | {_cell(r['fp8_vs_fp32'])} | {_cell(r['fp8_vs_bf16'])} | "
                     f"{_cell(r['bf16_vs_fp32'])} | {_cell(r['fp8_per_tensor_vs_fp32'])} | {last} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_fast.fp8_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/fp8/accuracy.json", help="JSON file to write")
    parser.add_argument("--images", type=int, default=2048, help="fresh random images per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names: " + ", ".join(MODELS))
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: trained, random")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    settings = [s for s in args.settings.split(",") if s]
    bad = [m for m in names if m not in MODELS] + [s for s in settings if s not in SETTINGS]
    if bad or args.images < 1 or not names or not settings:
        print(f"error: expected --models from {', '.join(MODELS)}, --settings from {', '.join(SETTINGS)} and "
              f"--images >= 1, got models={names} settings={settings} images={args.images}", file=sys.stderr)
        return 2
    start, commit = time.time(), source_commit()  # the source measured, not what is checked out at the end
    rows = []
    for setting in settings:
        for name in names:
            for outliers in (False, True):
                row = measure(name, outliers, args.images, args.seed, setting=setting)
                rows.append(row)
                a, c, t = row["fp8_vs_fp32"], row["bf16_vs_fp32"], row["fp8_per_tensor_vs_fp32"]
                ratios = row["residual_outlier_ratios"]
                print(f"{setting:<7} {name:<18} outliers={'yes' if outliers else 'no ':<3} "
                      f"(ratio {ratios[0]:5.1f} -> {ratios[-1]:5.1f})  fp8 vs fp32: {_cell(a)} | bf16 vs fp32: "
                      f"{_cell(c)} | per-tensor fp8: {_cell(t)}"
                      + (f" | acc {row['task_accuracy']['fp32']:.3f}" if "task_accuracy" in row else ""), flush=True)
    result = {
        "what": "logits of FP8 (torch emulation of the kernels' arithmetic) vs fp32 and bf16 models: trained on a "
                "synthetic task and measured on fresh task images, and random weights with a random probe on random "
                "structured images (see vit_fast/fp8_accuracy.py)",
        "outliers": {"channels": OUTLIER_CHANNELS, "gain": OUTLIER_GAIN},
        "task_classes": TASK_CLASSES,
        "commit": commit, "torch": torch.__version__, "python": platform.python_version(), "seed": args.seed,
        "threads": torch.get_num_threads(), "seconds": round(time.time() - start, 1),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for setting in settings:
        print(markdown_table(result, setting))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
