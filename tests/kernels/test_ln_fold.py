"""LayerNorm folded into the following GEMM (vit_fast/kernels/ln_fold.py): the statistics kernel, the folded
weights, and the numerics claim — in 16-bit, the folded path's error against fp32 is at most 2x PyTorch's own error
in that dtype, on rows whose mean is 10x their standard deviation."""
import pytest
import torch
import torch.nn.functional as F
from tolerances import rel_err

from vit_fast import kernels
from vit_fast.kernels.ln_fold import MAX_BLOCK_K, launch_row_stats

CUDA = torch.cuda.is_available()


def offset_rows(m, k, device, ratio=10.0):
    """Rows with mean ±ratio and standard deviation 1 (ViT residual streams carry such offsets)."""
    sign = torch.randint(0, 2, (m, 1), device=device) * 2 - 1
    return ratio * sign + torch.randn(m, k, device=device)


def ln_params(k, n, device):
    g = 1 + 0.5 * torch.randn(k, device=device)
    b = 0.5 * torch.randn(k, device=device)
    w = torch.randn(n, k, device=device) / k**0.5
    bb = 0.5 * torch.randn(n, device=device)
    return g, b, w, bb


@pytest.mark.parametrize("m,k", [(13, 80), (197, 48), (3, MAX_BLOCK_K + 40)])  # the last: the looped path
def test_row_stats(m, k, device):
    """(mean, rstd) per row against float64, ragged rows and K beyond one block; a strided (column-slice) input."""
    x = offset_rows(m, k + 8, device)[:, 8:]
    stats = launch_row_stats(x, 1e-6)
    x64 = x.double()
    mean, var = x64.mean(1), x64.var(1, unbiased=False)
    torch.testing.assert_close(stats[:, 0].double(), mean, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(stats[:, 1].double(), (var + 1e-6).rsqrt(), atol=0, rtol=1e-5)


def test_fold_leaves_parameters_alone(device):
    g, b, w, bb = (t.to(torch.bfloat16) for t in ln_params(32, 24, device))
    before = [t.clone() for t in (g, b, w, bb)]
    folded = kernels.fold_layer_norm(g, b, w, bb)
    assert all(torch.equal(t, u) for t, u in zip((g, b, w, bb), before))
    assert folded.weight.dtype == torch.bfloat16 and folded.colsum.dtype == folded.bias.dtype == torch.float32
    assert folded.weight.data_ptr() != w.data_ptr()
    torch.testing.assert_close(folded.colsum, folded.weight.float().sum(1))  # summed from the rounded weight


def errors(x, g, b, w, bb, dtype, folded_out):
    """(folded error, PyTorch's own error) against the fp32 composition on the same rounded inputs."""
    xr, gr, br, wr, bbr = (t.to(dtype) for t in (x, g, b, w, bb))
    k = x.shape[-1]
    ref = F.linear(F.layer_norm(xr.float(), (k,), gr.float(), br.float(), 1e-6), wr.float(), bbr.float())
    torch_out = F.linear(F.layer_norm(xr, (k,), gr, br, 1e-6), wr, bbr)
    return rel_err(folded_out(xr, gr, br, wr, bbr), ref), rel_err(torch_out, ref)


def emulate(x, g, b, w, bb):
    """The folded algorithm in plain PyTorch, as the kernels compute it: fp32 statistics and accumulation, one
    rounding at the store (round-to-nearest, as on the GPU; the interpreter truncates bf16 casts)."""
    f = kernels.fold_layer_norm(g, b, w, bb)
    x32 = x.float()
    mean = x32.mean(1, keepdim=True)
    rstd = ((x32 - mean).pow(2).mean(1, keepdim=True) + 1e-6).rsqrt()
    acc = x32 @ f.weight.float().t()
    return (rstd * (acc - mean * f.colsum) + f.bias).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_folded_algorithm_error_within_2x_torch(dtype, device):
    m, k, n = (394, 768, 768)
    x = offset_rows(m, k, device)
    folded_err, torch_err = errors(x, *ln_params(k, n, device), dtype, emulate)
    assert folded_err <= 2 * torch_err, (folded_err, torch_err)


# On CPU the interpreter's bf16 stores truncate, so the kernel's bf16 error is checked on the GPU only.
KERNEL_DTYPES = [torch.float16] + ([torch.bfloat16] if CUDA else [])


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_kernel_error_within_2x_torch(dtype, device):
    """The op itself (whichever engine the device gets) on rows with mean 10x std."""
    m, k, n = (394, 768, 768) if CUDA else (40, 64, 48)
    x = offset_rows(m, k, device)
    run = lambda xr, gr, br, wr, bbr: kernels.ln_linear(xr, gr, br, 1e-6, wr, bbr)  # noqa: E731
    folded_err, torch_err = errors(x, *ln_params(k, n, device), dtype, run)
    assert folded_err <= 2 * torch_err, (folded_err, torch_err)
