"""kernels.linear_residual against residual + F.linear in fp32, on both GEMM engines."""
import pytest
import torch
import torch.nn.functional as F
from gemm_engine import engine  # noqa: F401 (fixture)
from tolerances import assert_close, poison

from vit_fast import kernels
from vit_fast.kernels.linear_residual import linear_residual_launch

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (leading dims, K, N): the out-projection and fc2 shapes of ViT-B on CUDA; ragged K=80 and 197 rows on CPU.
SHAPES = [((4, 197), 768, 768), ((4, 197), 3072, 768)] if CUDA else [((2, 13), 80, 48), ((1, 197), 64, 48)]


def make(lead, k, n, dtype, device, bias=True):
    x = torch.randn(*lead, k, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    bb = (0.5 * torch.randn(n, device=device)).to(dtype) if bias else None
    res = (3 * torch.randn(*lead, n, device=device)).to(dtype)
    return x, w, bb, res


def reference(x, w, bb, res):
    return res.float() + F.linear(x.float(), w.float(), None if bb is None else bb.float())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_eager(dtype, bias, engine, device):
    for lead, k, n in SHAPES:
        x, w, bb, res = make(lead, k, n, dtype, device, bias)
        out = poison(torch.empty(*lead, n, dtype=dtype, device=device))
        linear_residual_launch(x, w, bb, res, out=out)
        assert_close(out, reference(x, w, bb, res), dtype)


@pytest.mark.parametrize("tokens", [197, 257, 50, 1])
def test_ragged_rows(tokens, engine, device):
    """Row counts of ViT token grids, fp16, K not a multiple of the block; output inside a poisoned larger buffer."""
    lead, k, n = ((3, tokens), 768, 768) if CUDA else ((2, tokens), 40, 32)
    x, w, bb, res = make(lead, k, n, torch.float16, device)
    buf = poison(torch.empty(2 * x[..., :1].numel() * n, dtype=torch.float16, device=device))
    out = buf[: res.numel()].view(res.shape)
    linear_residual_launch(x, w, bb, res, out=out)
    assert_close(out, reference(x, w, bb, res), torch.float16)
    assert buf[res.numel():].isnan().all(), "wrote past the output"


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_op_strided(dtype, device):
    """x and residual read through their strides (a column slice and a transposed-batch view); inputs untouched."""
    lead, k, n = SHAPES[0]
    x, w, bb, _ = make(lead, k + 8, n, dtype, device)
    x, w = x[..., 8:], w[:, 8:]
    res = (3 * torch.randn(lead[1], lead[0], n, device=device)).to(dtype).transpose(0, 1)
    res_before = res.clone()
    out = kernels.linear_residual(x, w, bb, res)
    assert out.shape == res.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(res, res_before)
    assert_close(out, reference(x, w, bb, res), dtype)


def test_registered_op(device):
    x, w, bb, res = make((2, 5), 48, 32, torch.float32, device)
    torch.library.opcheck(torch.ops.vitfast.linear_residual.default, (x, w, bb, res),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs(device):
    x, w, bb, res = make((2, 5), 48, 32, torch.float32, device)
    with pytest.raises(ValueError, match="residual.shape"):
        kernels.linear_residual(x, w, bb, res[:, :4])
    with pytest.raises(ValueError, match="residual.dtype"):
        kernels.linear_residual(x, w, bb, res.half())
    with pytest.raises(ValueError, match="weight.shape"):
        kernels.linear_residual(x, w.t(), bb, res)
    with pytest.raises(ValueError, match="bias.shape"):
        kernels.linear_residual(x, w, bb[None], res)
    with pytest.raises(ValueError, match="out.dtype"):
        linear_residual_launch(x, w, bb, res, out=torch.empty(2, 5, 32, dtype=torch.float16, device=device))
