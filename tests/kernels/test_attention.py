"""kernels.attention against softmax(q k^T * scale) v.

The kernel's error against a float64 reference must stay within 2x the error of PyTorch's own composition in the
same dtype (plus a tiny absolute floor), and inside KERNEL_TOL. q/k/v are strided views of one qkv buffer, as the
model passes them (the head-major (3, B, H, N, d) buffer and a row-major (B, N, 3, H, d) one); outputs are poisoned
with NaN so unwritten elements fail. Head dims 48, 80, 96 take the kernel's two-column-block path (64 + 16 ...), 72
and 112 one 128-column block with masked columns.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton
from tolerances import assert_close, kernel_budget, poison

from vit_fast.kernels._common import gpu_family, is_interpreting
from vit_fast.kernels.attention import (ATTN_TABLES, FP32_ATTN, _attention_fwd, aot_variants, attention, fits_registers,
                               head_dim_blocks)

CUDA = torch.cuda.is_available()
INTERPRET = is_interpreting()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, H, N, d): ViT-B/16, ViT-H/14, ViT-B/32, ViT-L/16 at 448 px. Each new (length bucket, d, dtype) autotunes on
# CUDA, so the autotuned tests keep to a few; the others run one fixed tile of the device's table.
SHAPES = [(8, 12, 197, 64), (4, 16, 257, 80), (16, 12, 50, 64), (1, 16, 1025, 64)] if CUDA else \
         [(2, 3, 197, 64), (1, 2, 257, 80), (1, 2, 50, 80)]


def fixed_tile(dtype):
    """None (the autotuner) under the interpreter, where it has a single config; on CUDA the family's first tile."""
    if not CUDA:
        return None
    return FP32_ATTN[0] if dtype == torch.float32 else ATTN_TABLES[gpu_family(torch.cuda.current_device())][0]


def make_qkv(B, H, N, d, dtype, device, layout="qkv", q_scale=1.0):
    """q, k, v as views of one buffer: 'qkv' is the (3, B, H, N, d) tensor ln_qkv writes, 'timm' the permuted
    (B, N, 3, H, d) layout of an unfused qkv projection (row strides of 3*H*d, head strides of d)."""
    if layout == "qkv":
        buf = torch.randn(3, B, H, N, d, device=device).to(dtype)
        q, k, v = buf.unbind(0)
    else:
        buf = torch.randn(B, N, 3, H, d, device=device).to(dtype)
        q, k, v = buf.permute(2, 0, 3, 1, 4).unbind(0)
    if q_scale != 1.0:
        q = (q.float() * q_scale).to(dtype)
    return q, k, v


def torch_attention(q, k, v, scale, dtype):
    """The unfused composition in `dtype` (float64 gives the reference), returned as (B, Nq, H*d)."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v
    B, H, n_q, d = out.shape
    return out.transpose(1, 2).reshape(B, n_q, H * d)


def run(q, k, v, scale, config=None):
    """The launcher writing into a NaN-poisoned buffer that sits inside a larger poisoned one: unwritten elements
    and writes past the end both fail."""
    B, H, n_q, d = q.shape
    numel = B * n_q * H * d
    buf = poison(torch.empty(numel + 4096, dtype=q.dtype, device=q.device))
    out = _attention_fwd(q, k, v, scale, out=buf[:numel].view(B, n_q, H * d), config=config)
    assert torch.isnan(buf[numel:]).all(), "kernel wrote past the end of its output"
    return out


def check(out, q, k, v, scale):
    dtype = q.dtype
    ref = torch_attention(q, k, v, scale, torch.float64)
    assert out.shape == ref.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all(), "non-finite values (unwritten or poisoned elements?)"
    budget = kernel_budget(out, ref, torch_attention(q, k, v, scale, dtype), dtype)
    assert budget.passed, f"kernel {budget}"
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["qkv", "timm"])
def test_matches_torch(dtype, layout, device):
    for B, H, N, d in SHAPES:
        q, k, v = make_qkv(B, H, N, d, dtype, device, layout)
        check(run(q, k, v, d**-0.5), q, k, v, d**-0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_peaked_softmax(dtype, device):
    """Large logits: the running max must be rescaled correctly across blocks (and never overflow exp2)."""
    B, H, N, d = (4, 12, 197, 64) if CUDA else (1, 2, 197, 64)
    q, k, v = make_qkv(B, H, N, d, dtype, device, q_scale=12.0)
    check(run(q, k, v, d**-0.5, fixed_tile(dtype)), q, k, v, d**-0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_short_sequences(dtype, device):
    """N = 1..17 with the default tile and a 16x16 tile (N = 16 is then the unmasked fast path, 17 a 2-block loop)."""
    for config in (fixed_tile(dtype), (16, 16, 4, 1)):
        for n in range(1, 18):
            q, k, v = make_qkv(1, 2, n, 32, dtype, device)
            check(run(q, k, v, 0.2, config), q, k, v, 0.2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fewer_queries_than_keys(dtype, device):
    """Nq == 1 ([CLS]-only last layer) and a ragged Nq < Nk, queries sliced from the full q, in both layouts
    (ViT-B/16: 197 tokens, d = 64; ViT-H/14: 257 tokens, d = 80)."""
    for (B, H, N, d), layout in (((8, 12, 197, 64) if CUDA else (2, 3, 197, 64), "qkv"),
                                 ((4, 16, 257, 80) if CUDA else (1, 2, 257, 80), "timm")):
        q, k, v = make_qkv(B, H, N, d, dtype, device, layout)
        for n_q in (1, 5):
            qs = q[:, :, :n_q]
            check(run(qs, k, v, d**-0.5), qs, k, v, d**-0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 32, 48, 64, 72, 80, 96, 112, 128])
def test_head_dims(dtype, d, device):
    """One and two column blocks, exact (64, 80 = 64 + 16, 96 = 64 + 32) and with masked columns (72, 112 in 128)."""
    B, H, N = (4, 8, 197) if CUDA else (1, 2, 50)
    q, k, v = make_qkv(B, H, N, d, dtype, device, layout="timm" if d % 32 else "qkv")
    check(run(q, k, v, d**-0.5, fixed_tile(dtype)), q, k, v, d**-0.5)


def _tilings(dtype):
    if not CUDA:  # the interpreter takes any tile: cover every EVEN_M x EVEN_N combination with several loops
        return [(16, 32, 4, 1), (32, 16, 4, 1), (16, 64, 4, 1)]
    return FP32_ATTN if dtype == torch.float32 else ATTN_TABLES[gpu_family(torch.cuda.current_device())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if not CUDA else DTYPES)
def test_every_tiling(dtype, device):
    """Each tile (on CUDA: every row of the device family's table, or of the fp32 table) with query and key lengths
    that are and aren't multiples of it (every EVEN_M x EVEN_N), at head dim 80 (two column blocks)."""
    tilings = _tilings(dtype)
    lengths = [(64, 64), (48, 50), (50, 64), (64, 50)] if not CUDA else [(256, 256), (197, 197), (1, 257)]
    for config in tilings:
        for n_q, n_k in lengths:
            q, k, v = make_qkv(1, 2, max(n_q, n_k), 80, dtype, device)
            q = q[:, :, :n_q]
            k, v = k[:, :, :n_k], v[:, :, :n_k]
            try:
                out = run(q, k, v, 0.125, config)
            except Exception as exc:  # a tile too big for this GPU's shared memory is the autotuner's to skip
                if "OutOfResources" in type(exc).__name__ or "out of resource" in str(exc):
                    continue
                raise
            check(out, q, k, v, 0.125)


def test_public_op(device):
    q, k, v = make_qkv(2, 3, 50, 64, torch.float16, device)
    out = attention(q, k, v, 0.125)
    check(out, q, k, v, 0.125)
    torch.library.opcheck(torch.ops.vitfast.attention.default, (q, k, v, 0.125),
                          test_utils=("test_schema", "test_faketensor"))


def run_codes(q, k, v, scale, in_scale, bound, config=None):
    """attention_fp8's launcher: codes and row scales NaN-poisoned, each inside a larger poisoned buffer so that
    writes past the end fail."""
    B, H, n_q, d = q.shape
    numel = B * n_q * H * d
    buf = poison(torch.empty(numel + 4096, dtype=torch.float8_e4m3fn, device=q.device))
    sbuf = poison(torch.empty(B * n_q + 64, dtype=torch.float32, device=q.device))
    out_scale = sbuf[:B * n_q].view(B, n_q)
    out = _attention_fwd(q, k, v, scale, out=buf[:numel].view(B, n_q, H * d), config=config,
                         codes=(in_scale, bound, out_scale))
    assert torch.isnan(buf[numel:].float()).all(), "kernel wrote past the end of its codes"
    assert torch.isnan(sbuf[B * n_q:]).all(), "kernel wrote past the end of the row scales"
    return out, out_scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_codes_are_the_output_quantized_at_the_images_bound(dtype, device):
    """CODES_OUT (attention_fp8, the FP8 out-projection's input): e4m3 codes of the output at one scale per image,
    bound / 448 with bound = max_t in_scale[b, t] · c + b (vit_fast.fp8.attention_output_bound). The scales of
    every row are written (by one head's programs) and equal the rule's; each code is the reference output rounded
    to e4m3 at that scale, up to the kernel's own rounding in its dtype (fp32: almost every code exact). Ragged
    token counts, sliced queries (the pruned last block), head dims 80 (two column blocks) and 72 (masked columns),
    both layouts, images whose bounds differ 100-fold, and a bound below the output's maximum (codes clamp at
    ±448)."""
    from vit_fast import fp8

    cases = [((2, 3, 197, 64), "qkv", None, None), ((1, 2, 257, 80), "timm", 1, None),
             ((2, 2, 50, 72), "qkv", 5, None), ((1, 3, 48, 80), "qkv", None, (16, 32, 4, 1))] if not CUDA else \
            [((8, 12, 197, 64), "qkv", None, None), ((4, 16, 257, 80), "timm", None, None),
             ((4, 16, 257, 80), "timm", 1, None), ((2, 4, 50, 72), "qkv", 5, None)]
    for (B, H, N, d), layout, n_q, config in cases:
        q, k, v = make_qkv(B, H, N, d, dtype, device, layout)
        if n_q is not None:
            q = q[:, :, :n_q]
        ref = torch_attention(q, k, v, d**-0.5, torch.float64).float()
        in_scale = torch.rand(B, N, device=device) * 0.01 + 1e-3
        in_scale[0, -1] = 0.1  # image 0's bound set by its last token (the scan's last 128-token chunk)
        in_scale[-1] *= 100.0  # the last image's bound 100x the others'
        for c, b, clamps in ((50.0, 0.25, False), (0.0, 0.5 * ref.abs().max().item(), True)):
            bound = torch.tensor([c, b], device=device)
            out, out_scale = run_codes(q, k, v, d**-0.5, in_scale, bound, config)
            amax = fp8.attention_output_bound(in_scale, bound)
            torch.testing.assert_close(out_scale, (amax / 448.0)[:, None].expand_as(out_scale), rtol=1e-6, atol=0)
            want, _ = fp8.quantize_bounded(ref, amax)
            got = fp8.dequantize(out, out_scale)
            assert torch.isfinite(got).all()
            # one e4m3 step is 2^-3 of the value (normal codes), 2^-9 of the scale (subnormal): the kernel's own
            # rounding (bf16 P in the PV dot) may move a value across a rounding boundary, never two steps
            step = 2.0 ** -3 * ref.abs() + 2.0 ** -9 * out_scale[..., None]
            assert ((got - fp8.dequantize(want, out_scale)).abs() <= step * 1.001).all()
            if dtype == torch.float32:
                assert (out.float() == want.float()).float().mean() > 0.999
            if clamps:  # values past the bound store ±448, i.e. ±amax
                over = ref.abs() > amax[:, None, None] * 1.07  # past the bound by more than half an e4m3 step
                assert over.any() and (out.float().abs()[over] == 448).all()


def test_attention_fp8_public_op(device):
    """attention_fp8 is a registered op with a fake implementation (torch.compile, CUDA graphs); its extra operands
    are checked with one line each."""
    from vit_fast.kernels import attention_fp8

    q, k, v = make_qkv(1, 2, 19, 32, torch.float32, device)
    in_scale, bound = torch.full((1, 19), 0.01, device=device), torch.tensor([10.0, 0.1], device=device)
    codes, scale = attention_fp8(q, k, v, 0.2, in_scale, bound)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == (1, 19, 64) and scale.shape == (1, 19)
    torch.library.opcheck(torch.ops.vitfast.attention_fp8.default, (q, k, v, 0.2, in_scale, bound),
                          test_utils=("test_schema", "test_faketensor"))
    for name, bad_scale, bad_bound, shape in (
            ("in_scale", torch.zeros(1, 18, device=device), bound, r"\(1, 19\)"),
            ("in_scale", in_scale.double(), bound, r"\(1, 19\)"),
            ("in_scale", torch.zeros(1, 38, device=device)[:, ::2], bound, r"\(1, 19\)"),
            ("bound", in_scale, torch.zeros(3, device=device), r"\(2,\)")):
        with pytest.raises(ValueError, match=rf"attention_fp8: {name}: expected a contiguous float32 tensor of "
                                             rf"shape {shape}"):
            attention_fp8(q, k, v, 0.2, bad_scale, bad_bound)


def test_bad_inputs(device):
    q, k, v = make_qkv(2, 3, 10, 32, torch.float32, device)

    def spaced(t):  # same shape and values, last-dim stride 2
        return torch.stack([t, t], dim=-1)[..., 0]

    cases = [
        ((q[0], k, v, 0.1), "q.dim"),
        ((q, k.half(), v, 0.1), "dtypes"),
        ((q.to(torch.int32), k, v, 0.1), "q.dtype"),
        ((q, k, v[:, :, :5], 0.1), "v.shape"),
        ((q, k[:1], v[:1], 0.1), r"\(B, H\)"),
        ((q[..., :16], k, v, 0.1), "head dim"),
        ((q[..., :8], k[..., :8], v[..., :8], 0.1), "head dim"),
        ((q, k[..., ::2], v[..., ::2], 0.1), "head dim"),
        ((spaced(q), k, v, 0.1), r"q.stride\(-1\)"),
        ((q, k, spaced(v), 0.1), r"v.stride\(-1\)"),
        ((q, k, v, -1.0), "scale"),
        ((q, k, v, float("nan")), "scale"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            attention(*args)
    with pytest.raises(ValueError, match="devices"):
        _attention_fwd(q, k.to("meta"), v, 0.1)
    with pytest.raises(ValueError, match="out"):
        _attention_fwd(q, k, v, 0.1, out=torch.empty(2, 10, 95, device=device))


def test_head_dim_blocks():
    """The column blocks cover the head dim; the ViT head dims (64, 80 for ViT-H/14, 96) are covered exactly, so no
    tensor-core work is spent on padding; blocks are powers of two >= 16 (tl.dot's minimum)."""
    for d in range(16, 129):
        d0, d1 = head_dim_blocks(d)
        assert d0 + d1 >= d and d0 >= 16 and d0 & (d0 - 1) == 0
        assert d1 == 0 or (d1 >= 16 and d1 & (d1 - 1) == 0 and d0 < d)
        assert d0 + d1 <= triton.next_power_of_2(d) or d0 + d1 == 16
    for d, blocks in {16: (16, 0), 32: (32, 0), 48: (32, 16), 64: (64, 0), 80: (64, 16), 96: (64, 32),
                      128: (128, 0)}.items():
        assert head_dim_blocks(d) == blocks


_LIST_VARIANTS = """
import json, importlib
A = importlib.import_module("vit_fast.kernels.attention")
def keys(variants):
    return [[v["signature"]["Q"], v["constexprs"]["HEAD_DIM"], v["constexprs"]["BLOCK_M"], v["constexprs"]["BLOCK_N"],
             v["num_warps"], v["num_stages"], v["constexprs"]["EVEN_M"], v["constexprs"]["EVEN_N"]] for v in variants]
listed = A.aot_variants()
print(json.dumps({"listed": keys(listed), "every": keys(A.aot_variants(exhaustive=True)),
                  "divisible": sorted({n for v in listed for n in v["divisible"]}),
                  "args": sorted({n for v in listed for n in v["fn"].arg_names})}))
"""


def test_aot_variants_cover_the_tables():
    """aot_variants() lists every tile of every table x dtype x EVEN_M x EVEN_N for head dims 64 and 80, every
    head-dim block layout at least once (all tiles with exhaustive=True), and names the integer arguments the JIT
    sees as multiples of 16. (A subprocess without the interpreter: aot_variants() needs the real JIT function.)"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _LIST_VARIANTS], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    listed, every = ({tuple(k) for k in got[name]} for name in ("listed", "every"))
    tiles16 = {t for table in ATTN_TABLES.values() for t in table}
    flags = [(m, n) for m in (True, False) for n in (True, False)]
    for ty, tiles, elem in (("*fp16", tiles16, 2), ("*bf16", tiles16, 2), ("*fp32", FP32_ATTN, 4)):
        for d in (64, 80):
            assert {(ty, d, *t, *f) for t in tiles for f in flags} <= listed
        for d in (16, 32, 48, 72, 96, 112, 128):
            assert {k[6:] for k in listed if k[:2] == (ty, d)} == set(flags)
            fitting = [t for t in tiles if fits_registers(t, sum(head_dim_blocks(d)), elem)]
            assert len(fitting) >= 2 and {(ty, d, *t, *f) for t in fitting for f in flags} <= every
    assert set(got["divisible"]) <= set(got["args"])
    assert not {"N_Q", "N_K", "H"} & set(got["divisible"])  # 197 tokens, 12 heads: not multiples of 16


@pytest.mark.parametrize("family", ["hopper", "ampere"])
def test_pruner(family, monkeypatch):
    """What the autotuner may try, per ViT shape: only the 16-row tiles for the [CLS] query, no 128-row tile for 50
    queries, no K/V block wider than 64 for 50 keys, and never a tile that spills at the head dim."""
    attn = sys.modules["vit_fast.kernels.attention"]  # the package re-exports the function under the module's name
    monkeypatch.setattr(attn, "gpu_family", lambda index: family)
    monkeypatch.setattr(attn, "shared_memory_bytes", lambda index: 232448 if family == "hopper" else 166912)
    rows = list(dict.fromkeys(r for t in (*ATTN_TABLES.values(), FP32_ATTN) for r in t))
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in rows]

    def kept(n_q, n_k, d, dtype=torch.bfloat16):
        q = SimpleNamespace(device=torch.device("cuda", 0), element_size=lambda: dtype.itemsize)  # what it reads
        named = {"Q": q, "N_Q_BUCKET": max(16, triton.next_power_of_2(n_q)),
                 "N_K_BUCKET": max(16, triton.next_power_of_2(n_k))}
        d0, d1 = head_dim_blocks(d)
        out = attn._prune_configs(configs, named, BLOCK_D0=d0, BLOCK_D1=d1)
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in out}

    table = ATTN_TABLES[family]
    for d in (64, 80, 128):
        assert kept(197, 197, d) == {t for t in table if t[0] > 16 and fits_registers(t, sum(head_dim_blocks(d)), 2,
                                                                                      family)}
        assert kept(1, 257, d) == {t for t in table if t[0] == 16}
        assert all(t[0] <= 64 and t[1] <= 64 for t in kept(50, 50, d))
    assert not any(t[1] == 128 for t in kept(257, 257, 128))
    assert kept(197, 197, 80, torch.float32) <= set(FP32_ATTN) and kept(197, 197, 80, torch.float32)
