"""kernels.ln_qkv against F.layer_norm -> F.linear -> reshape/permute to (3, B, H, N, d), in fp32."""
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close, poison

import kernels
from kernels.ln_qkv import ln_qkv_launch

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, N, H, d): head dim 80 (ViT-H/14), 197 tokens.
SHAPES = [(4, 197, 12, 64), (2, 257, 16, 80)] if CUDA else [(2, 13, 2, 80)]


def make(b, n, h, d, dtype, device, bias=True):
    dim = h * d
    x = (torch.randn(b, n, dim, device=device) * 2 + 1).to(dtype)
    g = (1 + 0.5 * torch.randn(dim, device=device)).to(dtype)
    lb = (0.5 * torch.randn(dim, device=device)).to(dtype)
    w = (torch.randn(3 * dim, dim, device=device) / dim**0.5).to(dtype)
    bb = (0.5 * torch.randn(3 * dim, device=device)).to(dtype) if bias else None
    return x, g, lb, w, bb


def reference(x, g, lb, eps, w, bb, h):
    b, n, dim = x.shape
    y = F.linear(F.layer_norm(x.float(), (dim,), g.float(), lb.float(), eps), w.float(),
                 None if bb is None else bb.float())
    return y.view(b, n, 3, h, dim // h).permute(2, 0, 3, 1, 4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_eager(dtype, bias, device):
    for b, n, h, d in SHAPES:
        x, g, lb, w, bb = make(b, n, h, d, dtype, device, bias)
        out = poison(torch.empty(3, b, h, n, d, dtype=dtype, device=device))
        ln_qkv_launch(x, g, lb, 1e-6, w, bb, h, out=out)
        assert_close(out, reference(x, g, lb, 1e-6, w, bb, h), dtype)


def test_public_op_layout_and_odd_tokens(device):
    """197 tokens (ragged row tiles), a strided x; q, k, v are plain views of one contiguous tensor."""
    b, n, h, d = (2, 197, 12, 64) if CUDA else (1, 197, 2, 32)
    x, g, lb, w, bb = make(b, n + 3, h, d, torch.float32, device)
    x = x[:, 3:]
    out = kernels.ln_qkv(x, g, lb, 1e-6, w, bb, h)
    assert out.shape == (3, b, h, n, d) and out.is_contiguous() and out.dtype == torch.float32
    assert_close(out, reference(x, g, lb, 1e-6, w, bb, h), torch.float32)


def test_registered_op(device):
    x, g, lb, w, bb = make(2, 5, 2, 16, torch.float32, device)
    torch.library.opcheck(torch.ops.vitfast.ln_qkv.default, (x, g, lb, 1e-6, w, bb, 2),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs(device):
    x, g, lb, w, bb = make(2, 5, 2, 16, torch.float32, device)
    with pytest.raises(ValueError, match="num_heads"):
        kernels.ln_qkv(x, g, lb, 1e-6, w, bb, 5)
    with pytest.raises(ValueError, match="x.shape"):
        kernels.ln_qkv(x[0], g, lb, 1e-6, w, bb, 2)
    with pytest.raises(ValueError, match="weight.shape"):
        kernels.ln_qkv(x, g, lb, 1e-6, w[:64], bb, 2)
    with pytest.raises(ValueError, match="bias.dtype"):
        kernels.ln_qkv(x, g, lb, 1e-6, w, bb.half(), 2)
    with pytest.raises(ValueError, match="out"):
        ln_qkv_launch(x, g, lb, 1e-6, w, bb, 2, out=torch.empty(3, 2, 5, 2, 16, device=device).transpose(2, 3))
