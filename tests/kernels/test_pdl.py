"""Programmatic dependent launch (kernels/pdl.py, VITFAST_PDL=1): which launches take it and with what, when the
switch applies, its error, and on an sm_90 GPU a whole model with every TMA GEMM and attention launched that way,
eagerly and replayed from a CUDA graph many times, against the same model without it: the same bits every time (the
kernels are deterministic, so a race between a kernel and its predecessor would show as a difference). The static
gate checks that each PDL kernel waits before its first global memory access (benchmarks/sass.pdl_wait_first)."""
import importlib
import re

import pytest
import torch

from vit_fast.kernels import gemm_tma, pdl
from vit_fast.kernels._common import AUTOTUNE_ENV, ENGINE_ENV, PDL_ENV, is_interpreting

CUDA = torch.cuda.is_available()
SM90 = CUDA and torch.cuda.get_device_capability()[0] == 9
attention = importlib.import_module("vit_fast.kernels.attention")  # the package exports the op under that name


class _Recorder:
    """Stands in for a kernel's jit function under its heuristics: records (PDL, launch_pdl), then launches, except a
    PDL launch under the interpreter (which cannot run griddepcontrol)."""

    def __init__(self, fn):
        self.fn, self.launches = fn, []

    def run(self, *args, **kwargs):
        self.launches.append((kwargs["PDL"], kwargs.get("launch_pdl", False)))
        if kwargs["PDL"] and is_interpreting():
            return None
        return self.fn.run(*args, **kwargs)


KERNELS = (("gemm", gemm_tma.tma_gemm_kernel), ("attention", attention._attn_fwd_kernel))


def _record(monkeypatch):
    recorders = {}
    for name, kernel in KERNELS:
        recorders[name] = _Recorder(kernel.fn.fn)
        monkeypatch.setattr(kernel.fn, "fn", recorders[name])
    return recorders


def _launch_both(device, codes=False):
    """One TMA GEMM (B/16's batch-1 rows, a residual) and one attention launch (with `codes`, the FP8 model's)."""
    from vit_fast.kernels.linear_residual import linear_residual_launch

    x, w = torch.randn(197, 64, device=device).bfloat16(), torch.randn(96, 64, device=device).bfloat16()
    b, res = torch.randn(96, device=device).bfloat16(), torch.randn(197, 96, device=device).bfloat16()
    linear_residual_launch(x, w, b, res)
    q = torch.randn(1, 2, 197, 32, device=device).bfloat16()
    if codes:
        attention.attention_fp8(q, q, q, 32 ** -0.5, torch.full((1, 197), 0.01, device=device),
                                torch.tensor([1.0, 0.0], device=device))
    else:
        attention.attention(q, q, q, 32 ** -0.5)


@pytest.mark.parametrize("setting", ["0", "1"])
def test_launches_take_pdl_where_it_can_run(setting, monkeypatch, device):
    """The TMA GEMM and attention pass PDL (the kernel's wait) and launch_pdl (the launch attribute) together: both
    True exactly under VITFAST_PDL=1 on an sm_90 GPU, never under the interpreter. (On a GPU, triton 3.6 times even
    a single pruned config, so a launch may be recorded several times.)"""
    if CUDA and not SM90:
        pytest.skip("the TMA engine needs an sm_90 GPU")
    monkeypatch.setenv(PDL_ENV, setting)
    monkeypatch.setenv(ENGINE_ENV, "tma")
    monkeypatch.setenv(AUTOTUNE_ENV, "first")
    want = setting == "1" and CUDA and not is_interpreting()
    recorders = _record(monkeypatch)
    _launch_both(device)
    for name, recorder in recorders.items():
        assert recorder.launches and set(recorder.launches) == {(want, want)}, (name, recorder.launches)


def test_launchers_wire_pdl_when_it_applies(monkeypatch, device):
    """With PDL applying (pdl_launch patched to True in both launchers, as on an sm_90 GPU under VITFAST_PDL=1), the
    TMA GEMM and attention launch with the kernel's wait and the launch attribute together; attention storing the FP8
    model's codes launches with neither."""
    if CUDA and not SM90:
        pytest.skip("the TMA engine needs an sm_90 GPU")
    monkeypatch.setenv(ENGINE_ENV, "tma")
    monkeypatch.setenv(AUTOTUNE_ENV, "first")
    for module in (gemm_tma, attention):
        monkeypatch.setattr(module, "pdl_launch", lambda device: True)
    recorders = _record(monkeypatch)
    _launch_both(device)
    for name, recorder in recorders.items():
        assert recorder.launches and set(recorder.launches) == {(True, True)}, (name, recorder.launches)
    recorders = _record(monkeypatch)
    _launch_both(device, codes=True)
    assert set(recorders["attention"].launches) == {(False, False)}, recorders["attention"].launches


def test_pdl_applies_only_on_sm90_with_the_switch(monkeypatch):
    """pdl_launch: VITFAST_PDL=1 and a CUDA device of compute capability 9.x, outside the interpreter."""
    monkeypatch.setattr(pdl, "is_interpreting", lambda: False)
    cuda = torch.device("cuda", 0)
    for setting, sm90, want in (("1", True, True), ("1", False, False), ("0", True, False)):
        monkeypatch.setenv(PDL_ENV, setting)
        monkeypatch.setattr(pdl, "is_sm90", lambda index, sm90=sm90: sm90)
        assert pdl.pdl_launch(cuda) is want, (setting, sm90)
    monkeypatch.setenv(PDL_ENV, "1")
    monkeypatch.setattr(pdl, "is_interpreting", lambda: True)
    assert not pdl.pdl_launch(cuda)


def test_bad_setting(monkeypatch):
    monkeypatch.setenv(PDL_ENV, "yes")
    with pytest.raises(ValueError, match=re.escape("VITFAST_PDL: expected 0 | 1, got 'yes'")):
        pdl.pdl_launch(torch.device("cpu"))
    monkeypatch.setenv(PDL_ENV, "1")
    assert not pdl.pdl_launch(torch.device("cpu"))  # a CPU tensor never launches on a GPU


@pytest.mark.skipif(not SM90, reason="programmatic dependent launch on the TMA engine needs an sm_90 GPU")
def test_model_with_pdl_is_bitwise_the_model_without(monkeypatch):
    """A two-block ViT at B/16's width and 197 tokens, batch 1 (split-K launches) and 4, bf16: with VITFAST_PDL=1
    eagerly and from a CUDA graph replayed 50 times on fresh inputs, the same bits as without it; the GEMMs and
    attention did launch with PDL."""
    import vit_fast
    from tests.helpers import randomize_

    recorders = _record(monkeypatch)
    model = randomize_(vit_fast.create("vit_b_16", backend="triton", depth=2)).cuda().to(torch.bfloat16).eval()
    for batch in (1, 4):
        xs = [torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.bfloat16) for _ in range(50)]
        with torch.no_grad():
            monkeypatch.setenv(PDL_ENV, "0")
            want = [model(x) for x in xs]
            monkeypatch.setenv(PDL_ENV, "1")
            assert all(torch.equal(model(x), w) for x, w in zip(xs[:5], want)), "eager"
            static = xs[0].clone()
            model(static)  # compile the PDL variants outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = model(static)
            for x, w in zip(xs, want):
                static.copy_(x)
                graph.replay()
                assert torch.equal(out, w), f"graph replay at batch {batch}"
    for name, recorder in recorders.items():
        assert (True, True) in recorder.launches and (False, False) in recorder.launches, name
