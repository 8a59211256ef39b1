"""Per-kernel microbenchmarks: each fused Triton op of `kernels` against the PyTorch ops it replaces, at the ViT-B/16,
L/16 and H/14 shapes (197/257 tokens, widths 768/1024/1280, bf16, batch 64).

Run with `pytest benchmarks/` (add --benchmark-json=FILE to keep the numbers). Batch 64 puts every GEMM in the same
autotune bucket (next power of two of the row count) as the model at batch 64, so with the autotune cache of a GPU
session (benchmarks/gpu_steps.sh: TRITON_CACHE_AUTOTUNING=1, one TRITON_CACHE_DIR) nothing is tuned again here,
and the first, autotuning call always happens before timing. Kernels are timed as CUDA-graph replays, never through
the Python launch path: the figure that counts is extra_info `ms`, the median of
triton.testing.do_bench_cudagraph; `tflops` / `gbps` derive from it with the minimum FLOPs and bytes of the op.
pytest-benchmark's own rounds time one replay of the same captured graph plus a synchronize (host clock).
Skips without CUDA.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed: kernel microbenchmarks skipped")
if not torch.cuda.is_available():
    pytest.skip("kernel microbenchmarks need a CUDA GPU; this machine has none", allow_module_level=True)

DEVICE = "cuda"
BATCH = 64  # the model's batch-64 autotune bucket (see the docstring)
DTYPE = torch.bfloat16
EPS = 1e-6
# name -> (width D, heads, tokens N incl. [CLS], patch P)
PRESETS = {"vit_b": (768, 12, 197, 16), "vit_l": (1024, 16, 197, 16), "vit_h": (1280, 16, 257, 14)}
IMPLS = ("vit_fast", "torch")


@pytest.fixture(autouse=True)
def _fresh_seed():
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))


def _rand(*shape, scale=1.0):
    return torch.randn(*shape, device=DEVICE, dtype=DTYPE) * scale


def _sync():
    torch.cuda.synchronize()


def _rel_err(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _run(benchmark, group, fns, impl, flop, nbytes):
    """Check the fused op against PyTorch, then time `fns[impl]`; results go to benchmark.extra_info."""
    import triton.testing

    out, ref = fns["vit_fast"](), fns["torch"]()
    _sync()
    assert torch.isfinite(out).all(), "the fused kernel wrote non-finite values"
    err = _rel_err(out.reshape(ref.shape), ref)
    assert err < 5e-2, f"fused op disagrees with PyTorch (rel err {err:.3g}); timing a wrong kernel is pointless"
    fn = fns[impl]
    fn()  # outside any capture: compiles and autotunes (or reads the autotune cache)
    _sync()
    ms = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, ms=ms, tflops=flop / ms / 1e9, gbps=nbytes / ms / 1e6, rel_err=err,
                                flop=flop, bytes=nbytes, timing="do_bench_cudagraph median")
    replay = _graphed(fn)

    def synced():
        replay()
        _sync()

    benchmark.pedantic(synced, rounds=20, iterations=1, warmup_rounds=3)


def _graphed(fn):
    """fn captured once in a CUDA graph (warmed up on a side stream first); returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _params(preset):
    d, h, n, p = PRESETS[preset]
    return d, h, n, p, BATCH * n


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", PRESETS)
def test_layer_norm(benchmark, preset, impl):
    from vit_fast import kernels

    d, _, n, _, m = _params(preset)
    x, w, b = _rand(BATCH, n, d), 1 + _rand(d, scale=0.1), _rand(d, scale=0.1)
    fns = {"vit_fast": lambda: kernels.layer_norm(x, w, b, EPS), "torch": lambda: F.layer_norm(x, (d,), w, b, EPS)}
    _run(benchmark, f"layer_norm {preset}", fns, impl, flop=8 * m * d, nbytes=(2 * m * d + 2 * d) * 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", PRESETS)
def test_ln_qkv(benchmark, preset, impl):
    from vit_fast import kernels

    d, h, n, _, m = _params(preset)
    x, lw, lb = _rand(BATCH, n, d), 1 + _rand(d, scale=0.1), _rand(d, scale=0.1)
    w, b = _rand(3 * d, d, scale=d**-0.5), _rand(3 * d, scale=0.02)

    def torch_ln_qkv():  # what timm runs: LN, one qkv linear, a head-split view
        y = F.linear(F.layer_norm(x, (d,), lw, lb, EPS), w, b)
        return y.reshape(BATCH, n, 3, h, d // h).permute(2, 0, 3, 1, 4)

    folded = kernels.fold_layer_norm(lw, lb, w, b)  # per weight, cached by the model: not part of the timed call
    fns = {"vit_fast": lambda: kernels.ln_qkv_folded(x, EPS, folded, h), "torch": torch_ln_qkv}
    _run(benchmark, f"ln_qkv {preset}", fns, impl, flop=2 * m * d * 3 * d,
         nbytes=(m * d + 3 * d * d + 3 * d + 2 * d + 3 * m * d) * 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", PRESETS)
def test_attention(benchmark, preset, impl):
    from vit_fast import kernels

    d, h, n, _, _ = _params(preset)
    hd = d // h
    qkv = _rand(BATCH, n, 3, h, hd).permute(2, 0, 3, 1, 4)  # the layout ln_qkv produces
    q, k, v = qkv.unbind(0)
    scale = hd**-0.5

    def torch_attention():
        return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(BATCH, n, d)

    fns = {"vit_fast": lambda: kernels.attention(q, k, v, scale), "torch": torch_attention}
    _run(benchmark, f"attention {preset}", fns, impl, flop=4 * BATCH * h * n * n * hd,
         nbytes=4 * BATCH * n * d * 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", PRESETS)
def test_ln_linear_gelu(benchmark, preset, impl):
    from vit_fast import kernels

    d, _, n, _, m = _params(preset)
    x, lw, lb = _rand(BATCH, n, d), 1 + _rand(d, scale=0.1), _rand(d, scale=0.1)
    w, b = _rand(4 * d, d, scale=d**-0.5), _rand(4 * d, scale=0.02)
    folded = kernels.fold_layer_norm(lw, lb, w, b)  # per weight, cached by the model: not part of the timed call
    fns = {
        "vit_fast": lambda: kernels.ln_linear_folded(x, EPS, folded, activation="gelu"),
        "torch": lambda: F.gelu(F.linear(F.layer_norm(x, (d,), lw, lb, EPS), w, b)),
    }
    _run(benchmark, f"ln_linear_gelu {preset}", fns, impl, flop=2 * m * d * 4 * d,
         nbytes=(m * d + 4 * d * d + 4 * d + 2 * d + 4 * m * d) * 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", PRESETS)
def test_linear_residual(benchmark, preset, impl):
    from vit_fast import kernels

    d, _, n, _, m = _params(preset)  # the MLP's second matmul: (M, 4D) @ (4D, D)^T + b + residual
    x, res = _rand(BATCH, n, 4 * d), _rand(BATCH, n, d)
    w, b = _rand(d, 4 * d, scale=(4 * d) ** -0.5), _rand(d, scale=0.02)
    fns = {"vit_fast": lambda: kernels.linear_residual(x, w, b, res), "torch": lambda: res + F.linear(x, w, b)}
    _run(benchmark, f"linear_residual {preset}", fns, impl, flop=2 * m * 4 * d * d,
         nbytes=(4 * m * d + 4 * d * d + d + 2 * m * d) * 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", PRESETS)
def test_patch_embed(benchmark, preset, impl):
    from vit_fast import kernels

    d, _, n, p, _ = _params(preset)
    side = int(round((n - 1) ** 0.5)) * p
    x = _rand(BATCH, 3, side, side)
    w, b = _rand(d, 3, p, p, scale=(3 * p * p) ** -0.5), _rand(d, scale=0.02)
    pos, cls_pos = _rand(n - 1, d, scale=0.02), _rand(d, scale=0.02)

    def torch_patch_embed():  # conv, flatten, add positions, prepend [CLS]
        t = F.conv2d(x, w, b, stride=p).flatten(2).transpose(1, 2) + pos
        return torch.cat([cls_pos.expand(BATCH, 1, d), t], dim=1)

    fns = {"vit_fast": lambda: kernels.patch_embed(x, w, b, pos, cls_pos), "torch": torch_patch_embed}
    _run(benchmark, f"patch_embed {preset}", fns, impl, flop=2 * BATCH * (n - 1) * 3 * p * p * d,
         nbytes=(x.numel() + w.numel() + d + pos.numel() + d + BATCH * n * d) * 2)
