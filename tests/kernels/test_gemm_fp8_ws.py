"""The warp-specialized FP8 engine (kernels/gemm_fp8_ws.py) on an sm_90 GPU: QKV, FC1 (GELU; a bf16 output, and
e4m3 codes per 128 columns for FC2), the out-projection and FC2 on grouped codes (a bf16 residual, and FC2's with an
fp16 one: the epilogue loads a 16-bit residual before the tile is ready), through the ops with
VITFAST_FP8_ENGINE=ws, against the FP8 TMA engine pinned to the same tile (the same promotion every 128 of K and the
same epilogue order, so at most one rounding step apart) and the pointer engine, outputs poisoned first. Gluon
kernels do not run under the interpreter: on a CPU only the dispatch is tested (tests/kernels/test_fp8.py,
tests/test_fp8_model.py), and these skip."""
import pytest
import torch

from tests.helpers import fp8_gemm_operands, ulps
from tests.tolerances import poison

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability()[0] != 9,
                                reason="Gluon's warp-specialized FP8 engine needs an sm_90 GPU (no interpreter)")


# (M, K, N): B/16's QKV at batch 3 (197 rows a image, N = 3K: through ln_qkv), ragged K and N (the last K step and
# column tile partly past the tensor) with more tiles than programs (every program walks several), fewer tiles than
# SMs (B/16's out-projection at batch 1)
SHAPES = [(3 * 197, 768, 2304), (4096 + 37, 1024 + 64, 2048 + 48), (197, 768, 768)]


def _runs(m, k, n, device):
    from vit_fast.kernels.linear_residual import linear_residual_launch
    from vit_fast.kernels.ln_linear import ln_linear_fp8_launch
    from vit_fast.kernels.ln_qkv import ln_qkv_fp8_launch
    from vit_fast.kernels.quant_fp8 import new_group_scales

    ops = fp8_gemm_operands(m, k, n, device)
    x, g, b, bias, residual, wq, ws = ops.x, ops.g, ops.b, ops.bias, ops.residual, ops.wq, ops.ws

    def qkv():
        if n != 3 * k:  # not a QKV shape: the same launch (LayerNorm, no activation) through ln_linear
            out = poison(torch.empty(m, n, device=device, dtype=torch.bfloat16))
            return ln_linear_fp8_launch(x, g, b, 1e-6, wq, ws, bias, "none", out=out)
        heads = k // 64
        rows = poison(torch.empty(1, m, 3, heads, 64, device=device, dtype=torch.bfloat16))
        return ln_qkv_fp8_launch(x[None], g, b, 1e-6, wq, ws, bias, heads, out=rows.permute(2, 0, 3, 1, 4))[0]

    def with_residual(a, dtype=torch.bfloat16, **kw):
        res = residual.to(dtype)
        return linear_residual_launch(a, wq, bias.to(dtype), res, out=poison(torch.empty_like(res)), weight_scale=ws,
                                      **kw)

    def fc1():
        out = poison(torch.empty(m, n, device=device, dtype=torch.bfloat16))
        return ln_linear_fp8_launch(x, g, b, 1e-6, wq, ws, bias, "gelu", out=out)

    def fc1_codes():  # (codes, their scales)
        out = poison(torch.empty(m, n, device=device, dtype=torch.float8_e4m3fn))
        out_scale = poison(new_group_scales(m, n, device))
        ln_linear_fp8_launch(x, g, b, 1e-6, wq, ws, bias, "gelu", out=out, out_scale=out_scale)
        return out, out_scale

    return {"qkv": qkv, "fc1": fc1, "fc1 codes": fc1_codes, "out-proj": lambda: with_residual(x),
            "fc2": lambda: with_residual(ops.codes, x_scale=ops.scales),
            # an fp16 residual stream (the epilogue's 16-bit residual path in its other dtype)
            "fc2 fp16": lambda: with_residual(ops.codes, torch.float16, x_scale=ops.scales)}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ws_engine_matches_the_tma_and_pointer_engines(shape, monkeypatch, device):
    from vit_fast import fp8 as fp8_ref
    from vit_fast.kernels import gemm_fp8_tma, gemm_fp8_ws

    from tests.kernels.test_gemm_tma import _pin

    monkeypatch.setenv("VITFAST_FP8_PRECISE_ACC", "1")
    # the TMA engine on the same tile and K step (128 deep, promoted each step): the same arithmetic
    _pin(monkeypatch, gemm_fp8_tma.fp8_tma_gemm_kernel, (128, 128, 128, 8, 4, 1), 1)
    ran = []
    launch = gemm_fp8_ws.launch_fp8_ws_gemm
    monkeypatch.setattr(gemm_fp8_ws, "launch_fp8_ws_gemm", lambda *a, **k: (ran.append(1), launch(*a, **k))[1])
    for name, run in _runs(*shape, device).items():
        outs = {}
        for engine in ("pointer", "tma", "ws"):
            monkeypatch.setenv("VITFAST_FP8_ENGINE", engine)
            ran.clear()
            outs[engine] = run()
            assert bool(ran) == (engine == "ws"), (name, engine)
        if name == "fc1 codes":
            (q, s), (q_tma, s_tma) = outs["ws"], outs["tma"]
            torch.testing.assert_close(s, s_tma, rtol=1e-6, atol=0, msg=f"{shape} {name} scales")
            assert ulps(q, q_tma) <= 1, f"{shape} {name}: codes more than one step from the TMA engine's"
            outs = {e: fp8_ref.dequantize_input(*outs[e], 128) for e in outs}
        else:  # the TMA engine's arithmetic in the same order: at most one rounding apart
            assert ulps(outs["ws"], outs["tma"]) <= 1, f"{shape} {name}: more than one step from the TMA engine's"
        out, pointer = outs["ws"].float(), outs["pointer"].float()
        assert torch.isfinite(out).all(), name
        if name == "fc1 codes":  # a code flipped by the summation order moves its value by up to 1/8
            err = ((out - pointer).norm() / pointer.norm()).item()
            assert err < 2e-2, f"{shape} {name}: relative error {err:.3g} against the pointer engine"
        else:
            torch.testing.assert_close(out, pointer, rtol=2e-2, atol=2e-2, msg=f"{shape} {name} vs pointer")

