"""The epilogue activations every GEMM engine shares (kernels/gemm.py `apply_activation`), element by element in
fp32 against float64, on the GPU or under the interpreter.

The exact GELU is computed as x * Phi(x) from a fitted erfc (benchmarks/gelu_fit.py), not from libdevice's erf, so
it must be at least as accurate as PyTorch's own fp32 GELU everywhere it matters, keep +inf, NaN and -0, and stay
tiny (not garbage) past the fit's range. An epilogue storing bf16 uses a shorter fit, whose error must stay far
enough under bf16's rounding that the stored values are the exact ones rounded but for near-ties."""
import importlib
import inspect
import math
import re

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from tolerances import assert_close, poison

from vit_fast import fp8, kernels
from vit_fast.kernels._common import ACTIVATIONS, FP8_DTYPE, GELU_ENV, GELU_LIBDEVICE, fp8_unsupported_reason
from vit_fast.kernels.gemm import apply_activation, gelu_erf

BLOCK = 1024


@triton.jit
def _activation_kernel(x_ptr, y_ptr, n,
                       ACTIVATION: tl.constexpr,  # a code of _common.ACTIVATIONS (SwiGLU has two inputs: not here)
                       OUT_TY: tl.constexpr,  # the element type a GEMM would store the result in (the GELU's fit)
                       BLOCK: tl.constexpr):  # elements per program
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(y_ptr + offs, apply_activation(x, ACTIVATION, OUT_TY), mask=offs < n)


# the GELU's fit per stored precision (kernels/gemm.py gelu_erf): torch dtype, Triton type, and the bound on its
# relative error over the fit's range: bf16's 1/32 of its smallest relative half step; fp16 and e4m3 share fp32's
# degree-9 fit, whose bounds are test_exact_gelu_matches_float64_and_beats_torch_fp32's
FITS = {"float32": (torch.float32, tl.float32, 5e-6), "float16": (torch.float16, tl.float16, 5e-6),
        "bfloat16": (torch.bfloat16, tl.bfloat16, 2.0**-14), "float8_e4m3fn": (FP8_DTYPE, tl.float8e4nv, 5e-6)}


def run(x: torch.Tensor, activation: str, stored: str = "float32") -> torch.Tensor:
    """The fp32 result of the activation an epilogue storing `stored` computes (before that cast)."""
    y = poison(torch.empty_like(x))
    _activation_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, x.numel(), ACTIVATIONS[activation],
                                                          FITS[stored][1], BLOCK)
    return y


def gelu64(x: torch.Tensor) -> torch.Tensor:
    """x * Phi(x) in float64, through erfc: no cancellation for negative x."""
    x = x.double()
    return x * 0.5 * torch.special.erfc(-x / 2**0.5)


def inputs(device) -> torch.Tensor:
    """A dense grid over [-10, 10] (odd length), fresh normal draws of three spreads, and values near zero."""
    grid = torch.linspace(-10, 10, 40_001)
    draws = torch.cat([torch.randn(30_001) * s for s in (0.5, 2.0, 4.0)])
    small = torch.tensor([1e-30, -1e-30, 1e-7, -1e-7, 1e-3, -1e-3, 6.0, -6.0, 6.0001, -6.0001])
    return torch.cat([grid, draws, small]).float().to(device)


def rel_err(out, ref):
    return ((out.double() - ref).abs() / ref.abs().clamp_min(1e-300))


def test_exact_gelu_matches_float64_and_beats_torch_fp32(device):
    x = inputs(device)
    out, ref = run(x, "gelu"), gelu64(x)
    torch_err = rel_err(torch.nn.functional.gelu(x), ref)
    err = rel_err(out, ref)
    # the fit's range: near fp32 rounding (1.0e-6 at worst over every fp32 in [-3, 6], emulated; the GPU's ex2 adds
    # up to 2.4e-7); for -6 < x < -3 the exponent falls to -30 and its own fp32 rounding is ~1e-6 of the result
    # (3.0e-6 at worst)
    core, tail = (x >= -3) & (x <= 6), (x > -6) & (x < -3)
    assert err[core].max() < 2e-6, (x[core][err[core].argmax()].item(), err[core].max().item())
    # ...where PyTorch's own fp32 GELU loses the tail to 1 + erf(x) cancellation (2e-4 near -3, all of it by -6)
    assert err[tail].max() < 5e-6 < torch_err[tail].max()
    # past the range Phi(-|x|) is clamped to Phi(-6) = 1e-9: x >= 6 rounds to x, x <= -6 stays within |x| * 1e-9
    assert torch.equal(out[x >= 6], x[x >= 6])
    beyond = x < -6
    assert ((out[beyond].double() - ref[beyond]).abs() <= x[beyond].abs().double() * 1.1e-9).all()
    assert (out[beyond] <= 0).all()


@pytest.mark.parametrize("stored", ["bfloat16", "float8_e4m3fn", "float16"])
def test_exact_gelu_fit_follows_the_stored_precision(stored, device):
    """An epilogue that stores bf16 computes the GELU from a shorter fit (degree 5: four FMAs an element fewer),
    within 1/32 of bf16's half step of the exact value, so the stored result is the exact value rounded, but for the
    few that lie that close to a tie (at most one step off, in at most 1/32 of them); fp16 and FC1's e4m3 codes keep
    fp32's fit, bit for bit."""
    dtype, _, bound = FITS[stored]
    x = inputs(device)
    out, ref = run(x, "gelu", stored), gelu64(x)
    err = rel_err(out, ref)
    fit = x > -6  # past the fit's range the clamp's behaviour is the fp32 test's
    assert err[fit].max() < bound, (x[fit][err[fit].argmax()].item(), err[fit].max().item())
    if stored != "bfloat16":  # fp32's degree-9 fit
        assert torch.equal(out, run(x, "gelu"))
    else:  # the shorter fit is the one that ran
        assert err[fit].max() > 4 * FITS["float32"][2]
    assert torch.equal(out[x >= 6], x[x >= 6])
    beyond = x < -6
    assert ((out[beyond].double() - ref[beyond]).abs() <= x[beyond].abs().double() * 1.1e-9).all()
    # what the epilogue stores: the cast of out, against the exact value's own rounding to that format
    stored_out, stored_ref = out[fit].to(dtype).double(), ref[fit].to(dtype).double()
    off = stored_out != stored_ref
    assert off.float().mean() <= 1 / 32, off.float().mean().item()
    smaller = torch.minimum(stored_out.abs(), stored_ref.abs())[off]
    assert ((stored_out - stored_ref).abs()[off] <= one_step(smaller, dtype)).all()
    # and the same special values as fp32's fit
    special = torch.tensor([float("inf"), float("nan"), -0.0, 0.0, 3e38, -3e38], device=device)
    y = run(special, "gelu", stored)
    assert y[0] == float("inf") and y[1].isnan() and torch.signbit(y[2]) and y[2] == 0 and y[3] == 0
    assert y[4] == special[4] and y[5] <= 0 and y[5].isfinite()


def test_gelu_constants_are_the_fits():
    """gelu_erf's two Horner chains hold benchmarks/gelu_fit.py's fits, in the order of its branches (bf16, then the
    rest), as float32 literals."""
    from benchmarks.gelu_fit import DEGREES, fit
    source = inspect.getsource(gelu_erf.fn)
    body = re.sub(r"#.*", "", source[source.index("tl.minimum(tl.abs(x)"):source.index("tail = ")])
    literals = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", body)][1:]  # after the clamp's 6.0
    expected = []
    for bits, degree in sorted(DEGREES.values()):
        expected += [float(np.float32(c)) for c in fit(degree)[0][::-1]]
    assert literals == expected


def one_step(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype`'s values at |v| >= 0 (float64): 2^(exponent - mantissa bits), subnormal below."""
    bits = {torch.float16: 10, torch.bfloat16: 7, FP8_DTYPE: 3}[dtype]
    lowest = int(math.log2(torch.finfo(dtype).smallest_normal))
    exponent = torch.where(v > 0, torch.frexp(v)[1] - 1, lowest).clamp_min(lowest)
    return torch.ldexp(torch.ones_like(v), exponent - bits)


def test_exact_gelu_special_values(device):
    x = torch.tensor([float("inf"), float("nan"), -0.0, 0.0, 3e38, -3e38], device=device)
    out = run(x, "gelu")
    assert out[0] == float("inf") and out[1].isnan()
    assert out[2] == 0 and torch.signbit(out[2]) and out[3] == 0 and not torch.signbit(out[3])
    assert out[4] == x[4] and out[5] <= 0 and out[5].isfinite()


@pytest.mark.parametrize("activation", ["gelu_tanh", "quick_gelu"])
def test_other_gelus_match_float64(activation, device):
    x = inputs(device)
    x64 = x.double()
    if activation == "gelu_tanh":
        ref = torch.nn.functional.gelu(x64, approximate="tanh")
    else:
        ref = x64 * torch.sigmoid(1.702 * x64)
    err = (run(x, activation).double() - ref).abs()
    # x * sigmoid(.) through exp and an approximate reciprocal: a few fp32 ulp of |x|
    assert (err <= 4e-7 * x64.abs() + 1e-30).all(), err.max().item()


def test_libdevice_gelu_kept_behind_the_switch(device):
    """VITFAST_GELU=libdevice (the code before the fitted erfc, to measure both) is still the exact GELU in fp32,
    with the 1 + erf(x) cancellation PyTorch's fp32 GELU has: a few fp32 ulp of |x| absolute, not relative."""
    x = inputs(device)
    y = poison(torch.empty_like(x))
    _activation_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, x.numel(), GELU_LIBDEVICE, tl.float32, BLOCK)
    ref = gelu64(x)
    err = (y.double() - ref).abs()
    assert (err <= 2e-7 * x.abs().double().clamp_min(1)).all(), err.max().item()
    # and it is libdevice's erf, not the fitted one: the tail's relative error shows the cancellation
    tail = (x > -6) & (x < -3)
    assert rel_err(y, ref)[tail].max() > 1e-4


def test_gelu_switch_reaches_every_fc1_launcher(monkeypatch, device):
    """The code the GEMM launchers receive from ln_linear, 16-bit and FP8: GELU_LIBDEVICE for "gelu" under
    VITFAST_GELU=libdevice, the plain codes otherwise; the launches still match eager."""
    op = importlib.import_module("vit_fast.kernels.ln_linear")  # the package exports the op's function
    seen = []
    def gemm_launcher(engine, _get=op.gemm_launcher):  # every 16-bit engine's launcher, as the op picks it
        return lambda *args, _launch=_get(engine), **kwargs: (seen.append(kwargs["activation"]),
                                                               _launch(*args, **kwargs))[1]
    monkeypatch.setattr(op, "gemm_launcher", gemm_launcher)

    def fp8_launcher(engine, _get=op.fp8_launcher):  # every FP8 engine's launcher, as the op picks it
        return lambda *args, _launch=_get(engine), **kwargs: (seen.append(kwargs["activation"]),
                                                               _launch(*args, **kwargs))[1]
    monkeypatch.setattr(op, "fp8_launcher", fp8_launcher)
    x = torch.randn(2, 13, 80, device=device) * 3
    w, b = torch.randn(96, 80, device=device) / 80**0.5, torch.randn(96, device=device)
    g, beta = 1 + 0.5 * torch.randn(80, device=device), torch.randn(80, device=device)
    y = torch.nn.functional.linear(torch.nn.functional.layer_norm(x, (80,), g, beta, 1e-6), w, b)
    fp8_ok = fp8_unsupported_reason(torch.device(device)) is None
    w8, w8_scale = fp8.quantize_rows(w)
    for setting, code in (("libdevice", GELU_LIBDEVICE), ("fitted", 1)):
        monkeypatch.setenv(GELU_ENV, setting)
        seen.clear()
        assert_close(kernels.ln_linear(x, g, beta, 1e-6, w, b, "gelu"), torch.nn.functional.gelu(y), torch.float32)
        kernels.ln_linear(x, g, beta, 1e-6, w, b, "quick_gelu")
        if fp8_ok:
            kernels.ln_linear(x, g, beta, 1e-6, w8, b, "gelu", weight_scale=w8_scale)
        assert seen == [code, ACTIVATIONS["quick_gelu"]] + [code] * fp8_ok, seen
    monkeypatch.setenv(GELU_ENV, "erf")
    with pytest.raises(ValueError, match=re.escape("VITFAST_GELU: expected fitted | libdevice, got 'erf'")):
        kernels.ln_linear(x, g, beta, 1e-6, w, b, "gelu")


def test_every_epilogue_passes_the_type_it_stores():
    """Each engine's epilogue hands the activation the element type it stores (out_ptr's, the output descriptor's, or
    the OUT_TY its caller passed down), so the GELU's fit follows the store: read from the kernels' source, since on
    this machine the bf16 epilogues do not run (the interpreter runs no bf16 dot)."""
    import ast
    from pathlib import Path

    import vit_fast.kernels as kernel_package

    takes_type = {"apply_activation": 2, "epilogue_math": 12, "gated_epilogue_math": 13, "_values": 11}
    stored = {"out_ptr.dtype.element_ty", "out_desc.dtype", "OUT_TY"}
    calls = 0
    for path in sorted(Path(kernel_package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in takes_type:
                index = takes_type[node.func.id]
                assert len(node.args) > index, f"{path.name}:{node.lineno}: {node.func.id} without the stored type"
                assert ast.unparse(node.args[index]) in stored, f"{path.name}:{node.lineno}: {ast.unparse(node)}"
                calls += 1
    assert calls >= 15  # every engine's epilogue (2026-12-05: 15 calls in 6 modules)
