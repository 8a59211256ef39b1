"""kernels.ln_linear against F.layer_norm -> F.linear -> F.gelu computed in fp32 from the same rounded inputs, on
both GEMM engines."""
import pytest
import torch
import torch.nn.functional as F
from gemm_engine import engine  # noqa: F401 (fixture)
from tolerances import assert_close, poison

from vit_fast import kernels
from vit_fast.kernels.ln_linear import ln_linear_launch

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (leading dims, K, N): K=80 exercises the ragged-K path, 197 tokens the ragged-M path.
# on CUDA N = 1040 is no multiple of a tile, and SwiGLU's 520-wide output keeps rows of whole 16 bytes, which the TMA
# engine needs when it is forced (1000 gave 500: refused)
SHAPES = [((4, 197), 768, 3072), ((3, 50), 1024, 1040)] if CUDA else [((2, 13), 80, 96), ((1, 197), 64, 48)]


def make(lead, k, n, dtype, device, offset=1.0, bias=True):
    x = (torch.randn(*lead, k, device=device) * 2 + offset).to(dtype)
    g = (1 + 0.5 * torch.randn(k, device=device)).to(dtype)
    b = (0.5 * torch.randn(k, device=device)).to(dtype)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    bb = (0.5 * torch.randn(n, device=device)).to(dtype) if bias else None
    return x, g, b, w, bb


def reference(x, g, b, eps, w, bb, activation):
    y = F.layer_norm(x.float(), x.shape[-1:], g.float(), b.float(), eps)
    y = F.linear(y, w.float(), None if bb is None else bb.float())
    if activation == "swiglu":  # packed (2H, K) weight: gate rows, then up rows
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    elif activation == "quick_gelu":
        y = y * torch.sigmoid(1.702 * y)
    elif activation != "none":
        y = F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y


# swiglu: the (2H, K) packed weight of SHAPES' N gives H = 48 and 24 (not multiples of the interpreter's BLOCK_N)
@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh", "quick_gelu", "swiglu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_eager(dtype, activation, engine, device):
    for lead, k, n in SHAPES:
        x, g, b, w, bb = make(lead, k, n, dtype, device)
        out = poison(torch.empty(*lead, n // 2 if activation == "swiglu" else n, dtype=dtype, device=device))
        ln_linear_launch(x, 1e-6, *kernels.fold_layer_norm(g, b, w, bb), activation, out=out)
        assert_close(out, reference(x, g, b, 1e-6, w, bb, activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_op_strided_inputs_no_bias(dtype, device):
    (lead, k, n) = SHAPES[0]
    x, g, b, w, _ = make(lead, k + 16, n, dtype, device)
    x = x[..., 16:]  # row stride k + 16: read through strides, no copy
    w = torch.randn(k, n, device=device).div(k**0.5).to(dtype).t()  # transposed weight (column-major)
    g, b = g[16:], b[16:]
    out = kernels.ln_linear(x, g, b, 1e-5, w, None, "gelu")
    assert out.shape == (*lead, n) and out.dtype == dtype and out.is_contiguous()
    assert_close(out, reference(x, g, b, 1e-5, w, None, "gelu"), dtype)


def test_cls_slice_and_large_mean(device):
    """Last-layer [CLS]-only input (a strided slice) and rows whose mean dwarfs their spread (stable statistics)."""
    (lead, k, n) = SHAPES[0]
    x, g, b, w, bb = make(lead, k, n, torch.float32, device, offset=50.0)
    x = x[:, :1]
    out = kernels.ln_linear(x, g, b, 1e-6, w, bb)
    assert_close(out, reference(x, g, b, 1e-6, w, bb, "none"), torch.float32)


@pytest.mark.parametrize("activation", ["gelu_tanh", "swiglu"])  # swiglu: the fake returns (..., N / 2)
def test_registered_op(activation, device):
    x, g, b, w, bb = make((2, 5), 48, 32, torch.float32, device)
    torch.library.opcheck(torch.ops.vitfast.ln_linear.default, (x, 1e-6, *kernels.fold_layer_norm(g, b, w, bb),
                                                                activation),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs(device):
    x, g, b, w, bb = make((2, 5), 48, 32, torch.float32, device)
    with pytest.raises(ValueError, match="weight.shape"):
        kernels.ln_linear(x, g, b, 1e-6, w[:, :40], bb, "none")
    with pytest.raises(ValueError, match="weight.dtype"):
        kernels.ln_linear(x, g, b, 1e-6, w.half(), bb, "none")
    with pytest.raises(ValueError, match="x.dtype"):
        kernels.ln_linear(x.long(), g, b, 1e-6, w, bb, "none")
    with pytest.raises(ValueError, match="activation"):
        kernels.ln_linear(x, g, b, 1e-6, w, bb, "relu")
    with pytest.raises(ValueError, match=r"weight.shape\[0\] with activation 'swiglu': expected an even row count .*"
                                         r"got 31"):
        kernels.ln_linear(x, g, b, 1e-6, w[:31], bb[:31], "swiglu")
    with pytest.raises(ValueError, match="ln_weight.stride"):
        kernels.ln_linear(x, torch.randn(96, device=device)[::2], b, 1e-6, w, bb, "none")
    with pytest.raises(ValueError, match="bias.shape"):
        kernels.ln_linear(x, g, b, 1e-6, w, bb[:31], "none")
    with pytest.raises(ValueError, match="out.shape"):
        ln_linear_launch(x, 1e-6, *kernels.fold_layer_norm(g, b, w, bb), out=torch.empty(2, 5, 31, device=device))
    with pytest.raises(ValueError, match="bias.dtype"):  # folded bias is fp32
        ln_linear_launch(x, 1e-6, w, torch.zeros(32, device=device), bb.half())
