"""kernels.attention against softmax(q k^T * scale) v.

The kernel's error against a float64 reference must stay within 2x the error of PyTorch's own composition in the
same dtype (plus a tiny absolute floor), and inside KERNEL_TOL. q/k/v are strided views of one qkv buffer, as the
model passes them; outputs are poisoned with NaN so unwritten elements fail.
"""
import pytest
import torch
from tolerances import assert_close, kernel_budget, poison

from kernels._common import gpu_family, is_interpreting
from kernels.attention import ATTN_TABLES, FP32_ATTN, _attention_fwd, attention

CUDA = torch.cuda.is_available()
INTERPRET = is_interpreting()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, H, N, d): ViT-B/16, ViT-H/14, ViT-B/32, ViT-L/16 at 448 px. Each new (length bucket, d, dtype) autotunes on
# CUDA, so the autotuned tests keep to a few; the others run one fixed tile of the device's table.
SHAPES = [(8, 12, 197, 64), (4, 16, 257, 80), (16, 12, 50, 64), (1, 16, 1025, 64)] if CUDA else \
         [(2, 3, 197, 64), (1, 2, 50, 80)]


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
    budget = kernel_budget(out, ref, torch_attention(q, k, v, scale, dtype), dtype, interpreted=INTERPRET)
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
    """Nq == 1 ([CLS]-only last layer) and a ragged Nq < Nk, queries sliced from the full q."""
    B, H, N, d = (8, 12, 197, 64) if CUDA else (2, 3, 197, 64)
    q, k, v = make_qkv(B, H, N, d, dtype, device)
    for n_q in (1, 5):
        qs = q[:, :, :n_q]
        check(run(qs, k, v, d**-0.5), qs, k, v, d**-0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 32, 64, 80, 96, 128])
def test_head_dims(dtype, d, device):
    B, H, N = (4, 8, 197) if CUDA else (1, 2, 50)
    q, k, v = make_qkv(B, H, N, d, dtype, device, layout="timm")
    check(run(q, k, v, d**-0.5, fixed_tile(dtype)), q, k, v, d**-0.5)


def _tilings(dtype):
    if not CUDA:  # the interpreter takes any tile: cover every EVEN_M x EVEN_N combination with several loops
        return [(16, 32, 4, 1), (32, 16, 4, 1), (16, 64, 4, 1)]
    return FP32_ATTN if dtype == torch.float32 else ATTN_TABLES[gpu_family(torch.cuda.current_device())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if not CUDA else DTYPES)
def test_every_tiling(dtype, device):
    """Each tile (on CUDA: every row of the device family's table, or of the fp32 table) with query and key lengths
    that are and aren't multiples of it."""
    tilings = _tilings(dtype)
    lengths = [(64, 64), (48, 50), (50, 64), (64, 50)] if not CUDA else [(256, 256), (197, 197), (1, 257)]
    for config in tilings:
        for n_q, n_k in lengths:
            q, k, v = make_qkv(1, 2, max(n_q, n_k), 64, dtype, device)
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
