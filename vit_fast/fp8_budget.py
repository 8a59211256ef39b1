"""Where a model's FP8 error comes from: a per-GEMM error budget, next to the e4m3 format's own limit.

    python -m vit_fast.fp8_budget --models tiny_avgpool,vit_b_16_d2_64px --out budget.json

vit_fast.fp8_accuracy measures the whole FP8 model; this module takes it apart, on the same models (trained here
with the same seed, or the random-probe ones) and the same fresh images. Per GEMM kind of the encoder blocks (QKV,
out-projection, FC1, FC2), summed over the blocks:
- operands: SQNR of the per-token e4m3 activations (FC2's per token and 128 channels, the recipe's; the
  out-projection's per token, as it is quantized when QKV is kept dense: in the whole FP8 model attention writes
  it at a per-image bound, fp8.attention_output_bound, which the "all four" figures include) and of the
  per-channel e4m3 weights against fp32, next to its
  bound for the same values at the same scales (3-bit mantissa rounding without e4m3's exponent range: what
  subnormals and saturation cost is the gap);
- GEMM output: SQNR against fp32 on the same fp32 inputs with the weights only, the activations only, or both in
  e4m3, next to what independent round-to-nearest errors predict (the sum over k of a²·δw² + δa²·w²). The GEMM
  here is an fp32 matmul of the dequantized operands (the kernels compute the same, up to fp32 accumulation order,
  as the tests show), so measured equal to predicted means the two operands' rounding errors are independent and
  the output error is nothing but their sum;
- logits: SQNR and top-1 agreement with fp32 when only that kind is FP8 (weights, activations, both), and all four;
  QKV's activation error kept on q, k or v alone, and how sharp each block's attention is (sharp attention turns
  a small relative error of q or k into a large change of the softmax);
- one kind kept unquantized (`vit_fast.quantize(model, "fp8", exclude=(kind,))`, what a model too close to e4m3's
  limit can choose): logits against fp32 with the other three kinds FP8, for the amax rule and each weight draw;
- weight rounding draws: the whole FP8 model again with each output channel's scale moved by a random factor
  2^u, u uniform in [0, 1) (the channel's max maps into (224, 448]: nothing clips; each draw is as valid a per-channel
  e4m3 rounding as the amax rule). The weights are rounded once per model, so a model's figure on a fixed image set
  is one draw of that rounding: the spread over draws is the figure's own uncertainty, and their mean what the
  format gives in expectation.
The FP8 arithmetic is the emulation's (vit_fast.fp8), which the tests prove equal to the Triton kernels.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fp8
from . import fp8_accuracy as acc
from .provenance import source_commit

KINDS = fp8.GEMMS
MODES = {"w": (True, False), "a": (False, True), "both": (True, True)}  # (weights in e4m3, activations in e4m3)


def mantissa_limit(x: torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3's 3 mantissa bits (nearest, ties to even) at each value's own exponent: the format's
    rounding without its exponent range."""
    m, e = torch.frexp(x.float())  # x = m · 2^e, |m| in [0.5, 1)
    return torch.ldexp(torch.round(m * 16) / 16, e)


def _rows(x: torch.Tensor, group: int = 0) -> torch.Tensor:
    """x through the recipe's quantization: per row, or per (row, group channels) (fp8.quantize_input)."""
    return fp8.dequantize_input(*fp8.quantize_input(x, group), group)


def _rows_limit(x: torch.Tensor, group: int = 0) -> torch.Tensor:
    """x rounded to 3 mantissa bits at the scale quantize_rows picks for each row (or row and group), without
    e4m3's exponent range: what the recipe would store if the format had no subnormals and no saturation (its SQNR
    bounds the real one)."""
    if group:
        return _rows_limit(fp8.as_groups(x.float(), group)).flatten(-2)[..., :x.shape[-1]]
    inv, scale = fp8.row_scales(x.float())
    return mantissa_limit(x.float() * inv[..., None]) * scale[..., None]


class PartialFp8Linear(nn.Module):
    """A dense layer with e4m3 weights (per output channel) and/or e4m3 activations (per token, or per token and
    `group` channels as FC2's), the other operand fp32: the emulation's rounding of one operand at a time."""

    def __init__(self, linear: nn.Linear, weights: bool, activations: bool, group: int = 0):
        super().__init__()
        w = linear.weight.detach().float()
        self.register_buffer("weight", _rows(w) if weights else w)
        self.register_buffer("bias", linear.bias.detach().float() if linear.bias is not None else None)
        self.activations, self.group = activations, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        return F.linear(_rows(h, self.group) if self.activations else h, self.weight, self.bias)


class QkvPartFp8(nn.Module):
    """The QKV GEMM with e4m3 activations whose error is kept on one of q, k, v only (the others exact): which of
    the three carries the QKV error to the logits."""

    def __init__(self, linear: nn.Linear, part: int):
        super().__init__()
        self.exact, self.quantized, self.part = linear, PartialFp8Linear(linear, False, True), part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.exact(x.float())
        d = out.shape[-1] // 3
        out[..., self.part * d:(self.part + 1) * d] = self.quantized(x)[..., self.part * d:(self.part + 1) * d]
        return out


def _layers(model, kind: str):
    parent_path, _, leaf = KINDS[kind].rpartition(".")
    return [(block.get_submodule(parent_path), leaf) for block in model.blocks]


def with_fp8(model, kinds, mode: str = "both"):
    """A copy of `model` whose GEMMs of `kinds` are FP8 in `mode` ("w", "a", "both"); "both" is vit_fast.quantize
    with the other kinds excluded (all four: exactly vit_fast.quantize(model))."""
    out = copy.deepcopy(model)
    if mode == "both":
        return fp8.quantize(out, "fp8", exclude=[k for k in KINDS if k not in kinds])
    for kind in kinds:
        for parent, leaf in _layers(out, kind):
            layer = getattr(parent, leaf)
            setattr(parent, leaf, PartialFp8Linear(layer, *MODES[mode], fp8.INPUT_GROUPS.get(kind, 0)))
    return out


def with_qkv_part(model, part: int):
    """A copy of `model` whose QKV activations are e4m3 on q (0), k (1) or v (2) only."""
    out = copy.deepcopy(model)
    for parent, leaf in _layers(out, "qkv"):
        setattr(parent, leaf, QkvPartFp8(getattr(parent, leaf), part))
    return out


@torch.no_grad()
def attention_sharpness(model, x: torch.Tensor) -> list:
    """Per block, over heads and queries: mean std of the scaled attention scores over the keys and mean largest
    attention probability. Large scores (sharp attention) turn a small relative error of q or k into a large change
    of the softmax."""
    stats = []

    def hook(module, args, out, attn):
        b, n, _ = out.shape
        q, k, _ = out.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scale
        stats.append({"score_std": scores.std(-1).mean().item(),
                      "max_probability": scores.softmax(-1).amax(-1).mean().item()})

    hooks = [block.attn.qkv.register_forward_hook(lambda m, a, o, attn=block.attn: hook(m, a, o, attn))
             for block in model.blocks]
    try:
        model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return stats


def with_weight_draw(model, seed: int, exclude=()):
    """The FP8 model (`exclude`d kinds kept dense) with each output channel's scale amax/448 · 2^u, u ~ U[0, 1) (see
    the module docstring); the draw of a layer does not depend on what is excluded."""
    out = fp8.quantize(copy.deepcopy(model), "fp8", exclude=exclude)
    gen = torch.Generator().manual_seed(seed)
    for kind in KINDS:
        for (parent, leaf), (dense_parent, _) in zip(_layers(out, kind), _layers(model, kind)):
            shift = 2.0 ** torch.rand(getattr(dense_parent, leaf).weight.shape[0], generator=gen)
            layer, w = getattr(parent, leaf), getattr(dense_parent, leaf).weight.detach().float()
            if not isinstance(layer, fp8.Fp8Linear):  # excluded: kept dense
                continue
            scale = fp8.row_scales(w)[1] * shift
            q = (w / scale[:, None]).clamp(-fp8.FP8_MAX, fp8.FP8_MAX).to(fp8.FP8_DTYPE)
            layer.weight_bits.copy_(q.view(torch.uint8))
            layer.scale_bits.copy_(scale.view(torch.int32))
    return out


@torch.no_grad()
def gemm_budget(model, x: torch.Tensor, batch: int = 64) -> dict:
    """Per kind: operand and GEMM-output SQNRs (dB) against fp32 on the fp32 model's own inputs to each GEMM."""
    sums = {kind: {} for kind in KINDS}
    inputs = {}
    hooks = [getattr(parent, leaf).register_forward_pre_hook(
        lambda mod, args, key=(kind, i): inputs.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1])))
        for kind in KINDS for i, (parent, leaf) in enumerate(_layers(model, kind))]
    try:
        for chunk in x.split(batch):
            model.forward_features(chunk)
    finally:
        for h in hooks:
            h.remove()
    for (kind, i), chunks in inputs.items():
        parent, leaf = _layers(model, kind)[i]
        a, w = torch.cat(chunks).float(), getattr(parent, leaf).weight.detach().float()
        group = fp8.INPUT_GROUPS.get(kind, 0)
        aq, wq = _rows(a, group), _rows(w)
        da, dw = aq - a, wq - w
        y = a @ w.t()
        terms = {
            "a": a.pow(2).sum(), "a_noise": da.pow(2).sum(), "a_limit": (_rows_limit(a, group) - a).pow(2).sum(),
            "w": w.pow(2).sum(), "w_noise": dw.pow(2).sum(), "w_limit": (_rows_limit(w) - w).pow(2).sum(),
            "y": y.pow(2).sum(), "y_w": (a @ wq.t() - y).pow(2).sum(), "y_a": (aq @ w.t() - y).pow(2).sum(),
            "y_both": (aq @ wq.t() - y).pow(2).sum(),
            # independent rounding errors: E(sum_k a_k δw_k)² = sum_k a_k² δw_k² (column sums make it cheap)
            "pred_w": (a.pow(2).sum(0) * dw.pow(2).sum(0)).sum(), "pred_a": (da.pow(2).sum(0) * w.pow(2).sum(0)).sum(),
        }
        for name, value in terms.items():
            sums[kind][name] = sums[kind].get(name, 0.0) + value.double().item()
    out = {}
    for kind, s in sums.items():
        out[kind] = {
            "activation_sqnr_db": acc.db(s["a"], s["a_noise"]), "activation_limit_db": acc.db(s["a"], s["a_limit"]),
            "weight_sqnr_db": acc.db(s["w"], s["w_noise"]), "weight_limit_db": acc.db(s["w"], s["w_limit"]),
            "output_sqnr_db": {m: acc.db(s["y"], s[f"y_{m}"]) for m in MODES},
            "output_predicted_db": {"w": acc.db(s["y"], s["pred_w"]), "a": acc.db(s["y"], s["pred_a"]),
                                    "both": acc.db(s["y"], s["pred_w"] + s["pred_a"])},
        }
    return out


def _logits(model, x: torch.Tensor, batch: int) -> torch.Tensor:
    return acc.logits_and_embeddings(model, x, batch)[0]


def _draw_stats(rows: list) -> dict:
    n = len(rows)
    return {"draws": rows, **{f"mean_{k}": sum(r[k] for r in rows) / n for k in rows[0]},
            **{f"min_{k}": min(r[k] for r in rows) for k in rows[0]},
            **{f"max_{k}": max(r[k] for r in rows) for k in rows[0]}}


def logits_budget(model, x: torch.Tensor, batch: int = 64, draws: int = 0) -> dict:
    """Logits against fp32: each kind alone in FP8 per mode, all four per mode, all but one kind (that one excluded:
    `quantize(..., exclude=(kind,))`, what a user can choose), QKV's activation error on q, k or v alone, and
    `draws` weight rounding draws (of all four, and of each exclusion)."""
    ref = _logits(model, x, batch)
    out = {kind: {m: acc.agreement(_logits(with_fp8(model, (kind,), m), x, batch), ref) for m in MODES} for kind in KINDS}
    out["all"] = {m: acc.agreement(_logits(with_fp8(model, KINDS, m), x, batch), ref) for m in MODES}
    out["all_but"] = {kind: acc.agreement(_logits(with_fp8(model, [k for k in KINDS if k != kind]), x, batch), ref)
                      for kind in KINDS}
    out["qkv_activation_error_on"] = {name: acc.agreement(_logits(with_qkv_part(model, i), x, batch), ref)
                                      for i, name in enumerate("qkv")}
    if draws:
        out["weight_draws"] = _draw_stats([acc.agreement(_logits(with_weight_draw(model, seed), x, batch), ref)
                                           for seed in range(draws)])
        out["all_but_weight_draws"] = {
            kind: _draw_stats([acc.agreement(_logits(with_weight_draw(model, seed, (kind,)), x, batch), ref)
                               for seed in range(draws)]) for kind in KINDS}
    return out


OPERAND_IMAGES = 256  # images whose GEMM inputs the operand and GEMM-output budget sums over


def budget_row(name: str, outliers: bool, n_images: int = 2048, seed: int = 0, setting: str = "trained",
               draws: int = 8) -> dict:
    """One model of fp8_accuracy (the same model and images as its row for these arguments), taken apart."""
    model, _, x, _, _ = acc.model_and_images(name, outliers, n_images, seed, setting)
    return {"model": name, "setting": setting, "outliers": outliers, "images": n_images,
            "gemms": gemm_budget(model, x[:OPERAND_IMAGES]), "logits": logits_budget(model, x, draws=draws),
            "attention": attention_sharpness(model, x[:OPERAND_IMAGES])}


def markdown_table(row: dict) -> str:
    """One model's budget: a line per GEMM kind."""
    lines = ["| GEMM | operand SQNR act / weight (format limit) | GEMM output SQNR w / a / both (predicted both) | "
             "logits with only this GEMM FP8: w / a / both (dB, top-1 %) |", "|---|---|---|---|"]
    f = "{:.1f}".format
    for kind, g in row["gemms"].items():
        o, p = g["output_sqnr_db"], g["output_predicted_db"]
        lg = row["logits"][kind]
        lines.append(f"| {kind} | {f(g['activation_sqnr_db'])} ({f(g['activation_limit_db'])}) / "
                     f"{f(g['weight_sqnr_db'])} ({f(g['weight_limit_db'])}) | {f(o['w'])} / {f(o['a'])} / "
                     f"{f(o['both'])} ({f(p['both'])}) | "
                     + " / ".join(f"{f(lg[m]['sqnr_db'])}, {100 * lg[m]['top1_agree']:.2f}" for m in MODES) + " |")
    lg = row["logits"]["all"]
    lines.append("| all four | | | " + " / ".join(f"{f(lg[m]['sqnr_db'])}, {100 * lg[m]['top1_agree']:.2f}"
                                                  for m in MODES) + " |")
    parts = row["logits"]["qkv_activation_error_on"]
    lines.append("\nQKV activation error kept on one of q / k / v only: "
                 + " / ".join(f"{p}: {f(v['sqnr_db'])} dB, {100 * v['top1_agree']:.2f} %" for p, v in parts.items()))
    if "attention" in row:
        lines.append("attention per block (score std over keys, mean max probability): " + ", ".join(
            f"{a['score_std']:.1f}, {a['max_probability']:.2f}" for a in row["attention"]))
    return "\n".join(lines)


def summary_table(data: dict) -> str:
    """The README's table: a line per model of a budget JSON (all four GEMM kinds in FP8 against fp32)."""
    lines = ["| model | logits vs fp32, all four GEMMs FP8: SQNR / top-1 | weights only | activations only | "
             "share of the logits noise per GEMM (qkv / proj / fc1 / fc2) | GEMM output SQNR measured vs predicted "
             "by independent rounding | top-1 over weight rounding draws: mean (range) | top-1 with one GEMM kind "
             "kept unquantized, mean over the draws: qkv / proj / fc1 / fc2 | sharpest attention "
             "(mean max probability) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        lg = row["logits"]
        cell = lambda v: f"{v['sqnr_db']:.1f} dB / {100 * v['top1_agree']:.2f} %"  # noqa: E731
        noise = {k: 10 ** (-lg[k]["both"]["sqnr_db"] / 10) for k in KINDS}
        share = " / ".join(f"{100 * v / sum(noise.values()):.0f} %" for v in noise.values())
        gaps = [g["output_sqnr_db"]["both"] - g["output_predicted_db"]["both"] for g in row["gemms"].values()]
        draws = lg.get("weight_draws")
        spread = (f"{100 * draws['mean_top1_agree']:.2f} % ({100 * draws['min_top1_agree']:.2f}-"
                  f"{100 * draws['max_top1_agree']:.2f})" if draws else "—")
        kept = lg.get("all_but_weight_draws")
        kept = " / ".join(f"{100 * kept[k]['mean_top1_agree']:.2f} %" for k in KINDS) if kept else "—"
        sharp = max(a["max_probability"] for a in row["attention"]) if row.get("attention") else float("nan")
        lines.append(f"| {row['model']}{' (outliers)' if row['outliers'] else ''} | {cell(lg['all']['both'])} | "
                     f"{cell(lg['all']['w'])} | {cell(lg['all']['a'])} | {share} | "
                     f"{min(gaps):+.1f} to {max(gaps):+.1f} dB | {spread} | {kept} | {sharp:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_fast.fp8_budget", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny_avgpool", help="comma-separated: " + ", ".join(acc.MODELS))
    parser.add_argument("--setting", default="trained", help="trained or random (as fp8_accuracy)")
    parser.add_argument("--no-outliers", action="store_true", help="the models without outlier channels")
    parser.add_argument("--images", type=int, default=2048, help="fresh images per model (fp8_accuracy's default)")
    parser.add_argument("--draws", type=int, default=8, help="weight rounding draws (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    bad = [m for m in names if m not in acc.MODELS]
    if bad or not names or args.setting not in acc.SETTINGS or args.images < 1 or args.draws < 0:
        print(f"error: expected --models from {', '.join(acc.MODELS)}, --setting from {', '.join(acc.SETTINGS)}, "
              f"--images >= 1 and --draws >= 0, got models={names} setting={args.setting!r} images={args.images} "
              f"draws={args.draws}", file=sys.stderr)
        return 2
    start, commit = time.time(), source_commit()  # the source measured
    rows = []
    for name in names:
        row = budget_row(name, not args.no_outliers, args.images, args.seed, args.setting, args.draws)
        rows.append(row)
        print(f"\n{name} ({args.setting}, outliers={'no' if args.no_outliers else 'yes'}, {args.images} images)")
        print(markdown_table(row))
        if "weight_draws" in row["logits"]:
            d = row["logits"]["weight_draws"]
            print(f"weight rounding draws ({args.draws}): logits {d['min_sqnr_db']:.1f}..{d['max_sqnr_db']:.1f} dB, "
                  f"top-1 agreement {100 * d['min_top1_agree']:.2f}..{100 * d['max_top1_agree']:.2f} % "
                  f"(mean {100 * d['mean_top1_agree']:.2f} %)", flush=True)
    print("\n" + summary_table({"rows": rows}))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"what": "per-GEMM FP8 error budget against the e4m3 limit (see vit_fast/fp8_budget.py)",
                "setting": args.setting, "outliers": not args.no_outliers, "images": args.images,
                "draws": args.draws, "seed": args.seed, "commit": commit, "torch": torch.__version__,
                "python": platform.python_version(), "threads": torch.get_num_threads(),
                "seconds": round(time.time() - start, 1)}
        out.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
