"""Under Triton's CPU interpreter the kernels' fp32 -> bf16 casts round to nearest even, as on the GPU
(vit_fast/kernels/_interpreter.py): bit for bit against torch's rounding, ties and overflow included; and the effect
that made it necessary, a deep model's residual stream drifting away in bf16 on the Triton path, is gone."""
import pytest
import torch
import triton
import triton.language as tl

import vit_fast
from vit_fast.kernels._common import is_interpreting
from vit_fast.kernels._interpreter import round_bf16_like_gpu
from tests.helpers import randomize_

pytestmark = pytest.mark.skipif(not is_interpreting(), reason="the interpreter's casts (a GPU rounds by itself)")


@triton.jit
def _store_as_bf16(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(y_ptr + offs, x, mask=mask)  # the implicit cast of a store
    tl.store(y_ptr + n + offs, x.to(tl.bfloat16), mask=mask)  # and an explicit one


def test_applied_on_import():
    """Importing the kernels (done above) patched this Triton's interpreter; False here means its builder changed."""
    from triton.runtime import interpreter

    assert getattr(interpreter.InterpreterBuilder.cast_impl, "_vit_fast_rtne", False)
    assert round_bf16_like_gpu()


def _bits(*patterns):
    return torch.tensor(patterns, dtype=torch.int64).to(torch.int32).view(torch.float32)


def test_casts_round_like_torch():
    ties = (torch.arange(1, 2049, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)  # halfway: to even
    ties = torch.cat([ties, ties * 2.0 ** 100])  # ties up to large magnitudes
    x = torch.cat([torch.randn(3000) * 10.0 ** torch.randint(-35, 35, (3000,)).float(), ties, -ties,
                   torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 3.3953e38, -3.3953e38, 1e-40, -1e-41]),
                   # halfway above bf16's max: to inf; just below it: to max; both signs
                   _bits(0x7F7F8000, 0x7F7F7FFF, 0xFF7F8000, 0xFF7F7FFF)])
    nans = _bits(0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFF800001, 0xFFFFFFFF)  # quiet, signaling, all-ones payloads
    x = torch.cat([x, nans])
    n = x.numel()
    y = torch.full((2 * n,), float("nan"), dtype=torch.bfloat16)
    _store_as_bf16[(1,)](x, y, n, BLOCK=triton.next_power_of_2(n))
    ref = x.to(torch.bfloat16).view(torch.int16)
    for half in y.view(torch.int16).split(n):
        out = half.view(torch.bfloat16)
        assert bool(torch.isnan(out).eq(torch.isnan(x)).all()), "a NaN became a number, or a number NaN"
        same = (half == ref) | torch.isnan(x)  # NaN payloads differ between torch's own code paths too
        assert bool(same.all()), f"{int((~same).sum())} of {n} differ from round-to-nearest-even"


def test_deep_bf16_model_drifts_no_more_than_pytorch():
    """8 blocks, width 64: relative error of every block's output against fp32, Triton bf16 vs PyTorch's sdpa in
    bf16. With truncating casts the Triton path drifted further with every block (3x sdpa's error at 12 blocks)."""
    torch.manual_seed(0)
    model = randomize_(vit_fast.create("vit_ti_16", embed_dim=64, num_heads=2, depth=8, mlp_dim=128, img_size=32,
                                       num_classes=5, backend="torch"), 0.5)
    x = torch.randn(4, 3, 32, 32)

    def drift(out, ref):
        return [((a.double() - b.double()).norm() / b.double().norm()).item() for a, b in zip(out, ref)]
    with torch.no_grad():
        ref = model.hidden_states(x)
        low = model.to(torch.bfloat16)
        low.set_backend("sdpa")
        sdpa = drift(low.hidden_states(x.bfloat16()), ref)
        low.set_backend("triton")
        ours = drift(low.hidden_states(x.bfloat16()), ref)
    assert ours[-1] <= 1.3 * sdpa[-1], (ours, sdpa)
    assert max(o / s for o, s in zip(ours, sdpa)) <= 1.5, (ours, sdpa)
