"""kernels.layer_norm against F.layer_norm in fp32."""
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close, poison

from vit_fast import kernels
from vit_fast.kernels.layer_norm import layer_norm_launch

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(4, 197, 768), (8, 1280), (3, 50, 1024)] if CUDA else [(2, 13, 80), (197, 48), (80,)]


def make(shape, dtype, device, offset=1.0):
    n = shape[-1]
    x = (torch.randn(*shape, device=device) * 2 + offset).to(dtype)
    w = (1 + 0.5 * torch.randn(n, device=device)).to(dtype)
    b = (0.5 * torch.randn(n, device=device)).to(dtype)
    return x, w, b


def reference(x, w, b, eps):
    return F.layer_norm(x.float(), x.shape[-1:], w.float(), b.float(), eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_eager(dtype, device):
    for shape in SHAPES:
        x, w, b = make(shape, dtype, device)
        out = poison(torch.empty(shape, dtype=dtype, device=device))
        layer_norm_launch(x, w, b, 1e-6, out=out)
        assert_close(out, reference(x, w, b, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_op_strided_and_large_mean(dtype, device):
    """A [CLS] token slice and an every-other-feature view (read through strides), a transposed view (leading dims
    that do not merge: copied), rows with |mean| >> std."""
    shape = SHAPES[0]
    x, w, b = make(shape, dtype, device, offset=30.0)
    for view in (x[:, :1], x.transpose(0, 1), x[..., ::2]):
        if view.shape[-1] != w.shape[0]:
            w, b = w[: view.shape[-1]], b[: view.shape[-1]]
        out = kernels.layer_norm(view, w, b, 1e-5)
        assert out.shape == view.shape and out.dtype == dtype and out.is_contiguous()
        assert_close(out, reference(view, w, b, 1e-5), dtype)


def test_registered_op(device):
    x, w, b = make((2, 5, 48), torch.float32, device)
    torch.library.opcheck(torch.ops.vitfast.layer_norm.default, (x, w, b, 1e-6),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs(device):
    x, w, b = make((2, 5, 48), torch.float32, device)
    with pytest.raises(ValueError, match="weight.shape"):
        kernels.layer_norm(x, w[:47], b, 1e-6)
    with pytest.raises(ValueError, match="bias.dtype"):
        kernels.layer_norm(x, w, b.double(), 1e-6)
    with pytest.raises(ValueError, match="x.dtype"):
        kernels.layer_norm(x.to(torch.int32), w, b, 1e-6)
    with pytest.raises(ValueError, match="x.shape"):
        kernels.layer_norm(torch.empty(2, 0, device=device), w[:0], b[:0], 1e-6)
    with pytest.raises(ValueError, match="out.shape"):
        layer_norm_launch(x, w, b, 1e-6, out=torch.empty(2, 48, device=device))
