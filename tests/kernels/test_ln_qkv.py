"""kernels.ln_qkv against F.layer_norm -> F.linear -> the (3, B, H, N, d) head split, on both GEMM engines."""
import pytest
import torch
import torch.nn.functional as F
from gemm_engine import engine  # noqa: F401 (fixture)
from tolerances import assert_close, poison

from vit_fast import kernels
from vit_fast.kernels.ln_qkv import ln_qkv_launch

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, N, H, d): head dim 80 (ViT-H/14), 197 tokens.
SHAPES = [(4, 197, 12, 64), (2, 257, 16, 80)] if CUDA else [(2, 13, 2, 40)]


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


def poisoned_out(b, n, h, d, dtype, device):
    return poison(torch.empty(b, n, 3, h, d, dtype=dtype, device=device)).permute(2, 0, 3, 1, 4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_eager(dtype, bias, engine, device):
    for b, n, h, d in SHAPES:
        x, g, lb, w, bb = make(b, n, h, d, dtype, device, bias)
        out = poisoned_out(b, n, h, d, dtype, device)
        ln_qkv_launch(x, 1e-6, *kernels.fold_layer_norm(g, lb, w, bb), h, out=out)
        assert_close(out, reference(x, g, lb, 1e-6, w, bb, h), dtype)


@pytest.mark.parametrize("tokens", [197, 257, 50, 1])
def test_ragged_rows(tokens, engine, device):
    """Row counts of ViT token grids (B·N not a multiple of any tile), fp16."""
    b, h, d = (3, 12, 64) if CUDA else (2, 2, 8)  # CPU: K = 16 < BLOCK_K
    x, g, lb, w, bb = make(b, tokens, h, d, torch.float16, device)
    out = poisoned_out(b, tokens, h, d, torch.float16, device)
    ln_qkv_launch(x, 1e-6, *kernels.fold_layer_norm(g, lb, w, bb), h, out=out)
    assert_close(out, reference(x, g, lb, 1e-6, w, bb, h), torch.float16)


def test_public_op_layout_and_odd_tokens(device):
    """197 tokens (ragged row tiles), a strided x; q, k, v are (B, H, N, d) views of one (B, N, 3, H, d) buffer."""
    b, n, h, d = (2, 197, 12, 64) if CUDA else (1, 197, 2, 32)
    x, g, lb, w, bb = make(b, n + 3, h, d, torch.float32, device)
    x = x[:, 3:]
    out = kernels.ln_qkv(x, g, lb, 1e-6, w, bb, h)
    assert out.shape == (3, b, h, n, d) and out.dtype == torch.float32
    assert out.permute(1, 3, 0, 2, 4).is_contiguous() and out.stride(-1) == 1
    assert_close(out, reference(x, g, lb, 1e-6, w, bb, h), torch.float32)


def test_registered_op(device):
    x, g, lb, w, bb = make(2, 5, 2, 16, torch.float32, device)
    torch.library.opcheck(torch.ops.vitfast.ln_qkv.default, (x, 1e-6, *kernels.fold_layer_norm(g, lb, w, bb), 2),
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
    folded = kernels.fold_layer_norm(g, lb, w, bb)
    with pytest.raises(ValueError, match="colsum.dtype"):
        kernels.ln_qkv_folded(x, 1e-6, folded._replace(colsum=folded.colsum.half()), 2)
    with pytest.raises(ValueError, match="out"):  # contiguous (3, B, H, N, d) is not the row layout the GEMM writes
        ln_qkv_launch(x, 1e-6, *folded, 2, out=torch.empty(3, 2, 2, 5, 16, device=device))
