"""Where the time of one forward goes: CUDA time per kernel of a ViT-B/16 batch-256 bf16 forward (torch.profiler),
grouped into the parts of a layer (QKV, attention, out-proj, FC1, FC2, LayerNorm, other), for vit_fast and for
torch.compile, with the static roofline prediction of each part beside it.

Grouping, in this order:
  vit_fast  the `vitfast::*` custom op that launched the kernel: ln_qkv -> QKV, attention -> attention,
            linear_residual -> out-proj when its input has D features, FC2 when it has mlp, ln_linear -> FC1,
            layer_norm -> LayerNorm, anything else (patch_embed) -> other;
  generic   (compile, eager) attention by kernel/op names (flash, fmha, sdpa, softmax, bmm); LayerNorm by
            `layer_norm` in the kernel or op name; a GEMM (aten mm/addmm/linear, an Inductor template kernel, a
            cuBLAS/CUTLASS kernel) by its weight's shape: (3D, D) -> QKV, (D, D) -> out-proj, (mlp, D) -> FC1 or
            FC2 (FC1 when the name says gelu/erf or the input has D features, FC2 when the input has mlp features;
            else the order within a layer: the first after out-proj is FC1); a GEMM without shapes follows the
            QKV -> out-proj -> FC1 -> FC2 order; the rest -> other.
compile is profiled in "max-autotune-no-cudagraphs" mode (same kernels as max-autotune, launched one by one, so the
profiler sees their shapes). The prediction uses the fused traffic model of benchmarks/roofline.py, part by part:
max(FLOPs / peak, bytes / bandwidth) with the peak measured in this run.

`python -m benchmarks.breakdown --out DIR` writes DIR/breakdown.json and DIR/breakdown.md; `--tiny` profiles a
shrunken model on the CPU (CPU op time instead of CUDA time) to exercise the same code. `--dtype float8` profiles
the FP8 model (vit_fast only; images and activations in bf16), beside the same bf16 prediction: where an FP8 forward
loses against bf16 is the part whose time does not shrink.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

GROUPS = ("QKV", "attention", "out-proj", "FC1", "FC2", "LayerNorm", "other")
GEMM_ORDER = ("QKV", "out-proj", "FC1", "FC2")
VITFAST_OPS = {"vitfast::ln_qkv": "QKV", "vitfast::attention": "attention", "vitfast::ln_linear": "FC1",
               "vitfast::layer_norm": "LayerNorm",
               # the FP8 model's variants of the same ops
               "vitfast::ln_qkv_fp8": "QKV", "vitfast::attention_fp8": "attention",
               "vitfast::ln_linear_fp8": "FC1", "vitfast::ln_linear_fp8_groups": "FC1",
               "vitfast::quantize_fp8_groups": "FC2"}  # FC2's input, after a dense FC1
ATTENTION_WORDS = ("flash", "fmha", "attention", "attn", "sdpa", "softmax")
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::linear", "aten::_scaled_mm", "aten::matmul")
GEMM_WORDS = ("gemm", "nvjet", "xmma", "cutlass", "_tem_", "cublas", "wgmma")
TINY = dict(depth=1, embed_dim=64, num_heads=2, mlp_dim=128)


@dataclass
class Kernel:
    name: str
    us: float  # device time (CPU self time where no device ran)
    start: float = 0.0
    stack: list = field(default_factory=list)  # [(op name, input shapes)], innermost first


@dataclass
class Dims:
    d: int  # width
    mlp: int
    rows: int  # tokens over the batch (M of every GEMM)


def _gemm_shape(stack):
    """(K, N, weight dims) of the innermost GEMM op on the stack whose shapes are known, else None."""
    for name, shapes in stack:
        shapes = [list(s) for s in (shapes or []) if isinstance(s, (list, tuple))]
        if name in ("aten::addmm",) and len(shapes) >= 3 and len(shapes[2]) == 2:
            k, n = shapes[2]
            return k, n, shapes[1]
        if name in ("aten::mm", "aten::_scaled_mm") and len(shapes) >= 2 and len(shapes[1]) == 2:
            k, n = shapes[1]
            return k, n, shapes[0]
        if name == "aten::linear" and len(shapes) >= 2 and len(shapes[1]) == 2:
            n, k = shapes[1]
            return k, n, shapes[0]
    return None


def _weight_dims(stack, dims: Dims):
    """Unordered weight shape {a, b} among the innermost op's 2-D arguments (Inductor template kernels pass the
    raw (N, K) weight), and the feature counts of its activation-like arguments (M rows)."""
    if not stack:
        return None, set()
    name, shapes = stack[0]
    features = {dims.d, 3 * dims.d, dims.mlp}
    weight, acts = None, set()
    for s in shapes or []:
        if not isinstance(s, (list, tuple)) or len(s) < 2:
            continue
        if len(s) == 2 and s[0] in features and s[1] in features and s[0] != dims.rows:
            weight = weight or tuple(sorted(s))
        elif s[0] == dims.rows or (len(s) == 3 and s[0] * s[1] == dims.rows):
            acts.add(s[-1])
    return weight, acts


def _names(k: Kernel):
    return [k.name.lower()] + [name.lower() for name, _ in k.stack]


def classify_generic(k: Kernel, dims: Dims, previous_gemm):
    """Group of one kernel of an unfused / compiled model; `previous_gemm` is the group of the last GEMM seen."""
    names = _names(k)
    if any(w in n for n in names for w in ATTENTION_WORDS) or any(
            n in ("aten::bmm", "aten::baddbmm") for n in names[1:2]):
        return "attention"
    if any("layer_norm" in n for n in names):
        return "LayerNorm"
    d, mlp = dims.d, dims.mlp
    shape = _gemm_shape(k.stack)
    if shape:
        kk, n, act = shape
        if len(act) > 2 and act[0] != 1 and kk not in (d, mlp):  # batched product that is not a projection
            return "attention"
        pair = tuple(sorted((kk, n)))
        if pair == tuple(sorted((d, 3 * d))):
            return "QKV"
        if pair == (d, d):
            return "out-proj"
        if pair == tuple(sorted((d, mlp))):
            return "FC1" if n == mlp else "FC2"
        return "other"
    is_gemm = any(n in GEMM_OPS for n in names[1:]) or any(w in names[0] for w in GEMM_WORDS) or (
        k.stack and any(w in k.stack[0][0].lower() for w in GEMM_WORDS))
    weight, acts = _weight_dims(k.stack, dims)
    if weight:
        if weight == tuple(sorted((d, 3 * d))):
            return "QKV"
        if weight == (d, d):
            return "out-proj"
        if weight == tuple(sorted((d, mlp))):
            if any(w in n for n in names for w in ("gelu", "erf")):
                return "FC1"
            if acts == {d} or previous_gemm == "out-proj":
                return "FC1"
            if acts == {mlp} or previous_gemm == "FC1":
                return "FC2"
            return "FC1" if previous_gemm != "FC1" else "FC2"
    if is_gemm:
        if previous_gemm in GEMM_ORDER:
            return GEMM_ORDER[(GEMM_ORDER.index(previous_gemm) + 1) % len(GEMM_ORDER)]
        return "QKV"
    return "other"


def classify_vit_fast(k: Kernel, dims: Dims):
    """Group from the `vitfast::*` op that launched the kernel, or None when no such op is on the stack."""
    for name, shapes in k.stack:
        if not name.startswith("vitfast::"):
            continue
        if name in ("vitfast::linear_residual", "vitfast::linear_residual_stats"):
            x = shapes[0] if shapes and isinstance(shapes[0], (list, tuple)) and shapes[0] else None
            if x and x[-1] == dims.mlp:
                return "FC2"
            return "out-proj" if x and x[-1] == dims.d else "other"
        return VITFAST_OPS.get(name, "other")
    return None


def group(kernels: list, dims: Dims) -> list:
    """[(kernel, group)] in start order; vitfast:: parents first, the generic rules otherwise."""
    out, previous = [], None
    for k in sorted(kernels, key=lambda k: k.start):
        g = classify_vit_fast(k, dims)
        if g is None:
            g = classify_generic(k, dims, previous)
        if g in GEMM_ORDER:
            previous = g
        out.append((k, g))
    return out


def kernels_from_profile(prof) -> list:
    """Device kernels with the CPU op stack that launched each; without device events (a CPU run) every CPU op with
    its self time, so nested ops are counted once."""
    from torch.autograd import DeviceType

    events = list(prof.events())
    # PyTorch ops by their correlation id (runtime-API events carry a link to an op instead, and ids of their own)
    cpu = {e.id: e for e in events if e.device_type == DeviceType.CPU and not getattr(e, "linked_correlation_id", 0)}

    def stack_of(op):
        out = []
        while op is not None:
            out.append((op.name, [list(s) for s in (op.input_shapes or [])]))
            op = op.cpu_parent
        return out

    device = [e for e in events if e.device_type == DeviceType.CUDA]
    if device:
        kernels = [Kernel(e.name, e.time_range.elapsed_us(), e.time_range.start,
                          stack_of(cpu.get(getattr(e, "linked_correlation_id", -1)))) for e in device]
        if any(k.stack for k in kernels):
            return kernels
        # no kernel linked to its op (an older profiler): the kernels each CPU op lists, at the op's start time
        return [Kernel(k.name, k.duration, e.time_range.start, stack_of(e))
                for e in cpu.values() for k in getattr(e, "kernels", [])]
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith(("aten::", "vitfast::"))]
    return [Kernel(e.name, e.self_cpu_time_total, e.time_range.start, stack_of(e)) for e in ops]


def predicted_ms(cfg, batch: int, peak_tflops: float, bandwidth_tbs: float, elem: int = 2) -> dict:
    """Roofline time of each part (whole model, ms): benchmarks/roofline.py's fused traffic, part by part."""
    from .flops import vit_tokens

    n, d, mlp, depth = vit_tokens(cfg), cfg.embed_dim, cfg.mlp_dim, cfg.depth
    m = batch * n
    hd = d // cfg.num_heads
    parts = {  # (FLOPs, elements moved) per layer
        "QKV": (2 * m * d * 3 * d, m * d + 3 * d * d + 3 * m * d),
        "attention": (4 * batch * cfg.num_heads * n * n * hd, 4 * m * d),
        "out-proj": (2 * m * d * d, 3 * m * d + d * d),
        "FC1": (2 * m * d * mlp, m * d + mlp * d + m * mlp),
        "FC2": (2 * m * mlp * d, m * mlp + mlp * d + 2 * m * d),
    }
    out = {g: depth * max(f / (peak_tflops * 1e12), e * elem / (bandwidth_tbs * 1e12)) * 1e3
           for g, (f, e) in parts.items()}
    out["LayerNorm"] = 2 * m * d * elem / (bandwidth_tbs * 1e12) * 1e3  # the final norm (the others are fused)
    return out


def summarize(grouped: list, forwards: int) -> dict:
    groups = {g: 0.0 for g in GROUPS}
    per_kernel = {}
    for k, g in grouped:
        groups[g] += k.us / 1e3 / forwards
        entry = per_kernel.setdefault((k.name, g), {"name": k.name, "group": g, "ms": 0.0, "calls": 0})
        entry["ms"] += k.us / 1e3 / forwards
        entry["calls"] += 1
    top = sorted(per_kernel.values(), key=lambda e: -e["ms"])[:40]
    for e in top:
        e["calls"] = e["calls"] // forwards or e["calls"]
    return {"total_ms": sum(groups.values()), "groups": groups, "top_kernels": top}


def markdown(result: dict) -> str:
    names = list(result["backends"])
    head = " | ".join(f"{b} ms | {b} %" for b in names)
    lines = [f"# Per-kernel breakdown: {result['model']} batch {result['batch']} {result['dtype']} "
             f"({result['env']['gpu']}, {result['env']['date']})", "",
             f"Device time per forward, grouped by layer part ({result['time_kind']}); prediction: fused roofline at "
             f"{result['peak_tflops']:.0f} TFLOP/s (measured) and {result['bandwidth_tbs']:g} TB/s.", "",
             f"| part | {head} | predicted ms |", "|---|" + "---|---|" * len(names) + "---|"]
    for g in GROUPS:
        cells = []
        for b in names:
            r = result["backends"][b]
            if "error" in r:
                cells.append("— | —")
                continue
            ms, total = r["groups"][g], r["total_ms"] or 1.0
            cells.append(f"{ms:.3f} | {ms / total:.1%}")
        pred = result["predicted_ms"].get(g)
        lines.append(f"| {g} | {' | '.join(cells)} | {'—' if pred is None else format(pred, '.3f')} |")
    totals = " | ".join("—|—" if "error" in result["backends"][b] else
                        f"{result['backends'][b]['total_ms']:.3f} | 100%" for b in names)
    lines.append(f"| **total** | {totals} | {sum(result['predicted_ms'].values()):.3f} |")
    for b in names:
        r = result["backends"][b]
        lines += ["", f"## {b}", ""]
        if "error" in r:
            lines.append(f"not profiled: {r['error']}")
            continue
        lines.append(f"forward {r['forward_ms']:.3f} ms (events, outside the profiler); kernels sum "
                     f"{r['total_ms']:.3f} ms; {r['kernels_per_forward']} kernels per forward")
        lines += ["", "| kernel | part | ms | calls |", "|---|---|---|---|"]
        lines += [f"| `{e['name'][:90]}` | {e['group']} | {e['ms']:.3f} | {e['calls']} |" for e in r["top_kernels"][:15]]
    return "\n".join(lines) + "\n"


def profile_backend(backend: str, master, dtype, device, batch: int, resolution: int, forwards: int,
                    preset: str | None = None) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from . import builders, runner, timing

    mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else "default"
    built = builders.build(backend, master, dtype, device, mode, preset=preset)
    x = runner.make_inputs(batch, resolution, builders.input_dtype(dtype), device, seed=0, count=1)[0]
    with torch.inference_mode():
        t0 = time.monotonic()
        built.fn(x)  # compile / autotune
        timing.sync(device)
        first_s = time.monotonic() - t0
        times = timing.time_calls(built.fn, [x], 3, 10 if device.type == "cuda" else 2, device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(forwards):
                built.fn(x)
            timing.sync(device)
    kernels = kernels_from_profile(prof)
    del built, x
    runner._cleanup(device)
    return {"kernels": kernels, "forward_ms": timing.percentile(times, 50), "first_result_s": first_s,
            "compile_mode": mode if backend == "compile" else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="vit_b_16")
    p.add_argument("--batch", type=int, default=None, help="default 256 (2 with --tiny)")
    p.add_argument("--backends", default=None, help="default vit_fast,compile (eager,sdpa with --tiny on a CPU)")
    p.add_argument("--forwards", type=int, default=3, help="profiled forwards (times are per forward)")
    p.add_argument("--bandwidth-tbs", type=float, default=3.35, help="memory bandwidth for the prediction")
    p.add_argument("--device", default=None)
    p.add_argument("--tiny", action="store_true", help="shrunken model, small batch (smoke test)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float8"),
                   help="bfloat16, or float8: the FP8 model (vit_fast only)")
    args = p.parse_args(argv)

    import vit_fast

    from . import builders, cli, env as env_mod, runner, schema, timing

    env_mod.kernel_settings()  # a bad VITFAST_* value: one line before anything runs
    if args.model not in vit_fast.list_models():
        p.error(f"unknown model {args.model!r}; known: {', '.join(vit_fast.list_models())}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    backends = [b for b in (args.backends or ("vit_fast,compile" if gpu or not args.tiny else "eager,sdpa")).split(",")
                if b]
    bad = [b for b in backends if b not in schema.BACKENDS]
    if bad:
        p.error(f"unknown backends {bad}; expected some of {', '.join(schema.BACKENDS)}")
    batch = args.batch or (2 if args.tiny else 256)
    resolution = 112 if args.tiny else 224
    cli._set_precision()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    master = builders.build_master(args.model, resolution, 1, TINY if args.tiny else None)
    cfg = master.config
    dims = Dims(cfg.embed_dim, cfg.mlp_dim, batch * ((resolution // cfg.patch_size) ** 2 + 1))
    peak, how = timing.matmul_peak_tflops(device)
    dtype = builders.FP8 if args.dtype == "float8" else torch.bfloat16
    result = {"env": env_mod.collect(device), "model": args.model, "batch": batch, "dtype": args.dtype,
              "config": {"embed_dim": cfg.embed_dim, "mlp_dim": cfg.mlp_dim, "depth": cfg.depth,
                         "num_heads": cfg.num_heads},
              "time_kind": "CUDA kernel time" if gpu else "CPU self time of ops",
              "peak_tflops": peak, "peak": how, "bandwidth_tbs": args.bandwidth_tbs,
              "predicted_ms": predicted_ms(cfg, batch, peak, args.bandwidth_tbs), "backends": {}}

    def write():
        (out / "breakdown.json").write_text(json.dumps(result, indent=1))
        (out / "breakdown.md").write_text(markdown(result))

    for backend in backends:
        print(f"profiling {args.model} b{batch} {backend} ...", flush=True)
        reason = builders.static_skip_reason(backend, device)
        if dtype == builders.FP8:
            reason = reason or builders.fp8_skip_reason(backend, device)
        try:
            if reason:
                raise RuntimeError(reason)
            prof = profile_backend(backend, master, dtype, device, batch, resolution, args.forwards,
                                   preset=args.model)
            grouped = group(prof.pop("kernels"), dims)
            summary = summarize(grouped, args.forwards)
            summary["kernels_per_forward"] = len(grouped) // args.forwards
            result["backends"][backend] = {**prof, **summary}
        except Exception as e:  # noqa: BLE001 - the file says why; the other backend still runs
            result["backends"][backend] = {"error": runner._error_text(e)}
        write()
        print(markdown(result) if backend == backends[-1] else f"  {backend}: done", flush=True)
    print(f"wrote {out / 'breakdown.json'}, {out / 'breakdown.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
