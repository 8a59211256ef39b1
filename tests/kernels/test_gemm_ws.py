"""The warp-specialized 16-bit engine (kernels/gemm_ws.py) on an sm_90 GPU, through the ops with
VITFAST_GEMM_ENGINE=ws: FC1 (the folded LayerNorm merging the residual GEMM's partial statistics, or on row_stats'
rows; exact, tanh and quick GELU) against the TMA engine pinned to the same tile and K step (the same wgmma chain and
the same epilogue arithmetic, so at most one rounding step apart) and against eager fp32, outputs poisoned first;
the launches it leaves to the TMA engine (no activation, too few tiles). Gluon kernels do not run under the
interpreter: on a CPU only the dispatch is tested (tests/kernels/test_gemm_tma.py), and these skip."""
import pytest
import torch

from tests.helpers import ulps
from tests.tolerances import assert_close, poison

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability()[0] != 9,
                                reason="Gluon's warp-specialized engine needs an sm_90 GPU (no interpreter)")

# (M, K, N), each with at least one 128x128 tile per SM: B/16's FC1 at batch 8 (197-token rows); ragged M, K and N
# (the last K step, slot and column tile partly past the tensor; K = 9 slots of 128, the last half full); H/14's
# FC1 at 257-token rows (head dim 80)
SHAPES = [(8 * 197, 768, 3072), (4096 + 37, 1024 + 64, 2048 + 48), (2 * 257, 1280, 5120)]
DTYPES = [torch.bfloat16, torch.float16]


def _inputs(m, k, n, dtype, device):
    from vit_fast.kernels import fold_layer_norm, ln_fold
    from vit_fast.kernels.linear_residual import linear_residual_launch

    g = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    # x is a residual GEMM's output, so its partial statistics come with it (written once, on the TMA engine)
    x = poison(torch.empty(m, k, device=device, dtype=dtype))
    parts = poison(ln_fold.new_partials(x))
    w0 = (g(k, k) / k**0.5).to(dtype)
    linear_residual_launch(g(m, k).to(dtype), w0, g(k).to(dtype), (2 + 3 * g(m, k)).to(dtype), out=x,
                           stats_out=parts)
    ln_w, ln_b = (1 + 0.5 * g(k)).to(dtype), g(k).to(dtype)
    w, bias = (g(n, k) / k**0.5).to(dtype), g(n).to(dtype)
    return dict(x=x, parts=parts, ln_w=ln_w, ln_b=ln_b, w=w, bias=bias, folded=fold_layer_norm(ln_w, ln_b, w, bias),
                residual=g(m, n).to(dtype), w_res=(g(n, k) / k**0.5).to(dtype))


def _runs(m, k, n, dtype, device):
    """name -> (run: the op's output, its fp32 reference): FC1's launches, then two without an activation."""
    from vit_fast.kernels import ln_fold
    from vit_fast.kernels.linear_residual import linear_residual_launch
    from vit_fast.kernels.ln_linear import ln_linear_launch

    t = _inputs(m, k, n, dtype, device)
    x, f = t["x"], t["folded"]
    ln = torch.nn.functional.layer_norm(x.float(), (k,), t["ln_w"].float(), t["ln_b"].float(), 1e-6)
    pre = torch.nn.functional.linear(ln, t["w"].float(), t["bias"].float())
    gelu = torch.nn.functional.gelu

    def ln_linear(activation, partials=t["parts"]):
        out = poison(torch.empty(m, n, device=device, dtype=dtype))
        return ln_linear_launch(x, 1e-6, f.weight, f.colsum, f.bias, activation, out=out, partials=partials)

    def residual():
        out = poison(torch.empty(m, n, device=device, dtype=dtype))
        return linear_residual_launch(x, t["w_res"], t["bias"], t["residual"], out=out,
                                      stats_out=poison(ln_fold.new_partials(out)))

    res_ref = torch.nn.functional.linear(x.float(), t["w_res"].float(), t["bias"].float()) + t["residual"].float()
    fc1 = {"gelu": (lambda: ln_linear("gelu"), gelu(pre)),
           "gelu on row_stats' rows": (lambda: ln_linear("gelu", None), gelu(pre)),
           "gelu_tanh": (lambda: ln_linear("gelu_tanh"), gelu(pre, approximate="tanh")),
           "quick_gelu": (lambda: ln_linear("quick_gelu"), pre * torch.sigmoid(1.702 * pre))}
    others = {"no activation": (lambda: ln_linear("none"), pre), "residual": (residual, res_ref)}
    return fc1, others


def _engines(run, monkeypatch, ran):
    outs = {}
    for engine in ("tma", "ws"):
        monkeypatch.setenv("VITFAST_GEMM_ENGINE", engine)
        ran.clear()
        outs[engine] = run()
        outs[engine + " ran"] = bool(ran)
    return outs


def _recording(monkeypatch):
    from vit_fast.kernels import gemm_ws

    ran = []
    launch = gemm_ws.launch_ws_gemm
    monkeypatch.setattr(gemm_ws, "launch_ws_gemm", lambda *a, **k: (ran.append(1), launch(*a, **k))[1])
    return ran


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ws_engine_matches_the_tma_engine_and_eager(shape, dtype, monkeypatch, device):
    from vit_fast.kernels import gemm_tma

    from tests.kernels.test_gemm_tma import _pin

    # the TMA engine on the same tile and K step (8 warps: two 64-row wgmma chains, as the math warpgroups run)
    _pin(monkeypatch, gemm_tma.tma_gemm_kernel, (128, 128, 64, 8, 4, 1), 1)
    ran = _recording(monkeypatch)
    fc1, others = _runs(*shape, dtype, device)
    for name, (run, ref) in fc1.items():
        outs = _engines(run, monkeypatch, ran)
        assert outs["ws ran"] and not outs["tma ran"], name
        assert ulps(outs["ws"], outs["tma"]) <= 1, f"{shape} {name}: more than one step from the TMA engine's"
        assert_close(outs["ws"], ref, dtype)
    for name, (run, ref) in others.items():  # light epilogues: the TMA engine's 128x256 tiles run them
        outs = _engines(run, monkeypatch, ran)
        assert not outs["ws ran"] and torch.equal(outs["ws"], outs["tma"]), name


@pytest.mark.parametrize("shape", [(197, 768, 3072), (4 * 197, 768, 768)], ids=["b1", "b4"])
def test_ws_engine_leaves_launches_that_do_not_fill_the_sms_to_the_tma_engine(shape, monkeypatch, device):
    """Fewer 128x128 tiles than SMs (B/16's FC1 at batch 1: 2 x 24 tiles; a 768-wide GELU GEMM at batch 4): the TMA
    engine (its split-K) runs them, with the same result as when it is chosen itself."""
    ran = _recording(monkeypatch)
    fc1, _ = _runs(*shape, torch.bfloat16, device)
    for name, (run, ref) in fc1.items():
        outs = _engines(run, monkeypatch, ran)
        assert not outs["ws ran"] and torch.equal(outs["ws"], outs["tma"]), name
