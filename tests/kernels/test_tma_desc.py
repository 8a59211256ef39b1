"""Host-side TMA descriptors (kernels/tma_desc.py) against the device-side build they replace, on both TMA engines:
what each launch hands the kernel, the same bits either way, the AOT signatures as the JIT specializes the launches'
descriptors, and the switch's error. The op tests check the engines' numerics (host descriptors, the default) against
eager."""
import re

import pytest
import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from tests.tolerances import poison
from vit_fast.kernels import gemm_fp8_tma, gemm_tma, tma_desc
from vit_fast.kernels._common import AUTOTUNE_ENV, DESC_ENV, ENGINE_ENV, FP8_ENGINE_ENV, SPLIT_ENV, TL_SIG

CUDA = torch.cuda.is_available()
OPERANDS = ("a", "w", "res", "out")


@pytest.fixture(autouse=True)
def _sm90():
    if CUDA and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engines need an sm_90 GPU")


class _Recorder:
    """Stands in for an engine kernel's jit function under its heuristics: records the operands and the config
    of each launch, then launches."""

    def __init__(self, fn):
        self.fn, self.launches = fn, []

    def run(self, *args, **kwargs):
        self.launches.append({**{n: kwargs[n] for n in OPERANDS},
                              **{k: kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "EPI_SPLIT", "HOST_DESC")}})
        return self.fn.run(*args, **kwargs)


def _launches(monkeypatch, kernel, setting, run):
    """run() under VITFAST_TMA_DESC=setting -> (its output as float, the recorded launches)."""
    monkeypatch.setenv(DESC_ENV, setting)
    recorder = _Recorder(kernel.fn.fn)
    monkeypatch.setattr(kernel.fn, "fn", recorder)
    out = run()
    monkeypatch.setattr(kernel.fn, "fn", recorder.fn)
    return out.float(), recorder.launches


def _specialize():
    """The JIT's own type string for an argument (triton.runtime.jit.native_specialize_impl, in 3.6 and 3.9)."""
    from triton.runtime import jit

    specialize = getattr(jit, "native_specialize_impl", None)
    if specialize is None:
        pytest.skip("this triton has no native_specialize_impl to compare against")
    return lambda arg: specialize(None, arg, False, True, True)[0]


def _check_operands(launch, host, tensors):
    """Host: each operand a descriptor of its tensor (None: no residual) with the config's box, of the type the AOT
    variants declare (tma_desc.operand_signature) as the JIT specializes it; device: the tensor itself."""
    assert launch["HOST_DESC"] is host
    epi_n = launch["BLOCK_N"] // launch["EPI_SPLIT"]
    boxes = {"a": [launch["BLOCK_M"], launch["BLOCK_K"]], "w": [launch["BLOCK_N"], launch["BLOCK_K"]],
             "res": [launch["BLOCK_M"], epi_n], "out": [launch["BLOCK_M"], epi_n]}
    for name in OPERANDS:
        arg, want = launch[name], tensors[name]
        if want is None:
            assert arg is None, name
        elif host:
            assert isinstance(arg, TensorDescriptor), name
            assert arg.block_shape == boxes[name], (name, arg.block_shape)
            assert arg.base.data_ptr() == want.data_ptr() and list(arg.shape) == list(want.shape), name
            declared = tma_desc.operand_signature(name, TL_SIG[want.dtype], launch, True)
            assert _specialize()(arg) == declared, (name, declared)
        else:
            assert isinstance(arg, torch.Tensor) and arg.data_ptr() == want.data_ptr(), name


def _cases(device):
    """(name, engine switch, kernel, run(out) -> out, out, operand tensors but out; "a" None: the engine's own
    e4m3 rows) of the launch kinds that matter: FC1 with the folded LayerNorm and GELU, FC2 with a residual in forced
    split-K, SwiGLU's packed weight, and FP8's FC1 writing codes per 128 columns and FC2 on bf16 rows."""
    from vit_fast import fp8 as fp8_ref
    from vit_fast.kernels import fold_layer_norm
    from vit_fast.kernels.linear_residual import linear_residual_launch
    from vit_fast.kernels.ln_linear import ln_linear_fp8_launch, ln_linear_launch
    from vit_fast.kernels.quant_fp8 import new_group_scales

    m, k, n = 197, 144, 160  # the batch-1 row count; K not a multiple of the interpreter's BLOCK_K (32), FP8 rows 16 B
    x = torch.randn(m, k, device=device).bfloat16()
    g, b = torch.randn(k, device=device).bfloat16(), torch.randn(k, device=device).bfloat16()
    bias = torch.randn(n, device=device).bfloat16()
    folded = fold_layer_norm(g, b, torch.randn(n, k, device=device).bfloat16(), bias)
    swiglu = fold_layer_norm(g, b, torch.randn(2 * n, k, device=device).bfloat16(),
                             torch.randn(2 * n, device=device).bfloat16())
    w2, b2 = torch.randn(k, n, device=device).bfloat16(), torch.randn(k, device=device).bfloat16()
    h, residual = torch.randn(m, n, device=device).bfloat16(), torch.randn(m, k, device=device).bfloat16()
    wq1, ws1 = fp8_ref.quantize_rows(torch.randn(n, k, device=device))
    wq2, ws2 = fp8_ref.quantize_rows(torch.randn(k, n, device=device))
    codes = torch.empty(m, n, device=device, dtype=torch.float8_e4m3fn)
    scales = new_group_scales(m, n, device)

    def fc1_codes(out):
        ln_linear_fp8_launch(x, g, b, 1e-6, wq1, ws1, bias, "gelu", out=out, out_scale=poison(scales))
        return torch.cat([out.float(), scales.float()], dim=1)  # the codes and their scales

    cases = [
        ("fc1", ENGINE_ENV, gemm_tma.tma_gemm_kernel,
         lambda out: ln_linear_launch(x, 1e-6, folded.weight, folded.colsum, folded.bias, "gelu", out=out),
         torch.empty(m, n, device=device, dtype=torch.bfloat16), dict(a=x, w=folded.weight, res=None)),
        ("fc2_split", ENGINE_ENV, gemm_tma.tma_gemm_kernel,
         lambda out: linear_residual_launch(h, w2, b2, residual, out=out),
         torch.empty(m, k, device=device, dtype=torch.bfloat16), dict(a=h, w=w2, res=residual)),
        ("swiglu", ENGINE_ENV, gemm_tma.tma_gemm_kernel,
         lambda out: ln_linear_launch(x, 1e-6, swiglu.weight, swiglu.colsum, swiglu.bias, "swiglu", out=out),
         torch.empty(m, n, device=device, dtype=torch.bfloat16), dict(a=x, w=swiglu.weight, res=None)),
        ("fp8_fc1_codes", FP8_ENGINE_ENV, gemm_fp8_tma.fp8_tma_gemm_kernel, fc1_codes, codes,
         dict(a=None, w=wq1, res=None)),
        ("fp8_fc2", FP8_ENGINE_ENV, gemm_fp8_tma.fp8_tma_gemm_kernel,
         lambda out: linear_residual_launch(h, wq2, b2, residual, weight_scale=ws2, out=out),
         torch.empty(m, k, device=device, dtype=torch.bfloat16), dict(a=None, w=wq2, res=residual)),
    ]
    return cases


@pytest.mark.parametrize("case", ["fc1", "fc2_split", "swiglu", "fp8_fc1_codes", "fp8_fc2"])
def test_host_descriptors_match_device_built(case, monkeypatch, device):
    """The same launch with host descriptors (the default) and with each program building its own: every operand
    arrives as the switch says (a descriptor of its tensor with the running config's box, or the tensor), and the
    outputs, poisoned before each launch, have the same bits (the same tile, pinned to the first the prune keeps, and
    the same arithmetic) and match the pointer engine (FP8 FC1's codes: test_fp8 compares them with the emulation)."""
    name, engine_env, kernel, run, out, given = next(c for c in _cases(device) if c[0] == case)
    monkeypatch.setenv(AUTOTUNE_ENV, "first")  # HOST_DESC is an autotune key: both settings take the same tile
    if case == "fc2_split":
        monkeypatch.setenv(SPLIT_ENV, "2")
    monkeypatch.setenv(engine_env, "pointer")
    if case == "fp8_fc1_codes":
        ref = None  # the pointer engine's codes can differ by a rounding at a group's edge (test_fp8 covers them)
    else:
        ref = run(poison(out)).float()
    monkeypatch.setenv(engine_env, "tma")
    results, tiles = {}, {}
    for setting in ("device", "host"):
        results[setting], launches = _launches(monkeypatch, kernel, setting, lambda: run(poison(out)))
        # one launch, or more where triton 3.6's autotuner times even a single pruned config on a GPU
        assert launches, f"{name}: the {engine_env}=tma kernel did not run"
        for launch in launches:
            tensors = {**given, "out": out}
            if given["a"] is None:  # the engine's own e4m3 rows (the row quantizer's or LayerNorm's): check them
                a = launch["a"].base if setting == "host" else launch["a"]
                assert a.dtype == torch.float8_e4m3fn and a.shape == (out.shape[0], tensors["w"].shape[1]), name
                tensors["a"] = a
            _check_operands(launch, setting == "host", tensors)
        tiles[setting] = {tuple(launch[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "EPI_SPLIT"))
                          for launch in launches}
    assert tiles["host"] == tiles["device"] and len(tiles["host"]) == 1, tiles
    assert torch.isfinite(results["host"]).all()
    assert torch.equal(results["host"], results["device"]), name
    if ref is not None:
        torch.testing.assert_close(results["host"], ref, rtol=2e-2, atol=2e-2)  # summation order, one rounding


def test_signature_is_the_jits():
    """The AOT signature of a host descriptor is the type the JIT specializes one to (so the static report compiles
    what a GPU runs), for each element type the engines pass, at a box of every dimension's role."""
    specialize = _specialize()
    box = {"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 128, "EPI_SPLIT": 2}
    for dtype, elem in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32"),
                        (torch.float8_e4m3fn, "fp8e4nv")):
        for name in OPERANDS:
            desc = TensorDescriptor.from_tensor(torch.empty(256, 256, dtype=dtype), tma_desc.block_shape(name, box))
            assert tma_desc.operand_signature(name, elem, box, True) == specialize(desc)
            assert tma_desc.operand_signature(name, elem, box, False) == "*" + elem


def test_batch1_row_is_a_table_row():
    """The row the AOT variants compare the two descriptor sources on is one the Hopper table launches."""
    assert gemm_tma.B1_SPLIT_ROW in gemm_tma.HOPPER_TMA and gemm_tma.splits(gemm_tma.B1_SPLIT_ROW)


def test_bad_setting(monkeypatch):
    monkeypatch.setenv(DESC_ENV, "both")
    with pytest.raises(ValueError, match=re.escape("VITFAST_TMA_DESC: expected host | device, got 'both'")):
        tma_desc.host_descriptors()
    monkeypatch.setenv(DESC_ENV, " Device ")
    assert not tma_desc.host_descriptors()
    monkeypatch.delenv(DESC_ENV)
    assert tma_desc.host_descriptors()
