"""The warp-specialized 16-bit engine (kernels/gemm_ws.py), VITFAST_GEMM_ENGINE=ws.

On an sm_90 GPU, each GEMM of a block through its op against the TMA engine pinned to the same tile and K step (the
same wgmma chain and the same epilogue arithmetic, so at most one rounding step apart) and against eager fp32, outputs
poisoned first: FC1 (the folded LayerNorm merging the residual GEMM's partial statistics, or on row_stats' rows;
exact, tanh and quick GELU), QKV's (no activation), and the residual GEMMs' (bias, residual, the output rows' partial
statistics, against float64 statistics of the stored rows); the launches it leaves to the TMA engine (too few tiles).
Gluon kernels do not run under the interpreter, so on a CPU only the dispatch runs: the one-line refusal, and the
routing with the TMA engine standing in for the Gluon kernel."""
import pytest
import torch

from tests.helpers import ulps
from tests.tolerances import MODEL_TOL, assert_close, poison
from vit_fast.kernels._common import ENGINE_ENV

CUDA = torch.cuda.is_available()
SM90 = CUDA and torch.cuda.get_device_capability()[0] == 9
gpu = pytest.mark.skipif(not SM90, reason="Gluon's warp-specialized engine needs an sm_90 GPU (no interpreter)")
cpu_or_sm90 = pytest.mark.skipif(CUDA and not SM90, reason="the warp-specialized engine needs an sm_90 GPU")

# (M, K, N), each with at least 8 waves of 128x256 tiles on an H100 or H200 (1,056 tiles; gemm_ws.takes asks for 4
# nearly full ones): B/16's FC1 at batch 64 (197-token rows); ragged M, K and N (the last K step, slot and column
# tile partly past the tensor: K = 35.5 steps of 32, 8.875 slots of 128; N = 16.375 slots); H/14's FC1 at batch 32
# (257-token rows, head dim 80)
SHAPES = [(64 * 197, 768, 3072), (16384 + 37, 1136, 2048 + 48), (32 * 257, 1280, 5120)]


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


def partials_of(y: torch.Tensor, slot: int) -> torch.Tensor:
    """ln_fold's (M, 3, cdiv(N, slot)) partial statistics (count, mean, centred sum of squares per slot) of the
    stored rows y (M, N), in float64."""
    m, n = y.shape
    slots = -(-n // slot)
    padded = torch.zeros(m, slots * slot, dtype=torch.float64, device=y.device)
    padded[:, :n] = y.double()
    valid = (torch.arange(slots * slot, device=y.device) < n).view(slots, slot)
    padded = padded.view(m, slots, slot)
    count = valid.sum(1).double()
    mean = padded.sum(2) / count.clamp(min=1)
    m2 = torch.where(valid, padded - mean[..., None], 0.0).square().sum(2)
    return torch.stack([count.expand(m, slots), mean, m2], 1)


def _runs(m, k, n, dtype, device):
    """({name: (run: the op's output, its fp32 reference)} of FC1's launches, the same of the launches without an
    activation: QKV's, and the residual GEMMs' (whose run returns the output and its partial statistics))."""
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

    def residual(stats=True):
        out = poison(torch.empty(m, n, device=device, dtype=dtype))
        parts = poison(ln_fold.new_partials(out)) if stats else None
        return linear_residual_launch(x, t["w_res"], t["bias"], t["residual"], out=out, stats_out=parts), parts

    res_ref = torch.nn.functional.linear(x.float(), t["w_res"].float(), t["bias"].float()) + t["residual"].float()
    fc1 = {"gelu": (lambda: ln_linear("gelu"), gelu(pre)),
           "gelu on row_stats' rows": (lambda: ln_linear("gelu", None), gelu(pre)),
           "gelu_tanh": (lambda: ln_linear("gelu_tanh"), gelu(pre, approximate="tanh")),
           "quick_gelu": (lambda: ln_linear("quick_gelu"), pre * torch.sigmoid(1.702 * pre))}
    # the first block's QKV reads row_stats' rows; the last block's FC2 writes no statistics (nothing follows it)
    others = {"no activation (QKV)": (lambda: ln_linear("none"), pre),
              "no activation on row_stats' rows": (lambda: ln_linear("none", None), pre),
              "residual": (residual, res_ref), "residual without statistics": (lambda: residual(False), res_ref)}
    return fc1, others


def _engines(run, monkeypatch, ran):
    """{engine: output, engine + " ran": whether the warp-specialized kernel ran} under =tma, then =ws."""
    outs = {}
    for engine in ("tma", "ws"):
        monkeypatch.setenv(ENGINE_ENV, engine)
        ran.clear()
        outs[engine] = run()
        outs[engine + " ran"] = bool(ran)
    return outs


def _recording(monkeypatch, sms=None):
    """Record each launch that reaches the warp-specialized kernel (`sms`: the SMs gemm_ws counts, fewer than the
    device's so that one program walks many tiles). Under the interpreter, where Gluon cannot run, the select_engine
    refusal is lifted and the TMA engine stands in for the kernel."""
    from vit_fast.kernels import gemm_tma, gemm_ws

    ran = []
    if sms is not None:
        monkeypatch.setattr(gemm_ws, "num_sms", lambda device: sms)
    launch = gemm_ws.launch_ws_gemm
    if not CUDA:
        monkeypatch.setattr(gemm_tma, "gluon_runs", lambda: True)
        launch = gemm_tma.launch_tma_gemm
    monkeypatch.setattr(gemm_ws, "launch_ws_gemm", lambda *a, **k: (ran.append(_kind(k)), launch(*a, **k))[1])
    return ran


def _kind(launch_kwargs) -> str:
    """Which of a block's GEMMs a launch is: "residual" (out-projection, FC2), or its activation code (0: QKV)."""
    return "residual" if launch_kwargs.get("residual") is not None else launch_kwargs.get("activation", 0)


@gpu
@pytest.mark.parametrize("shape,dtype", [(s, torch.bfloat16) for s in SHAPES] + [(SHAPES[0], torch.float16)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_ws_engine_matches_the_tma_engine_and_eager(shape, dtype, monkeypatch, device):
    from vit_fast.kernels import gemm_tma, ln_fold

    from tests.kernels.test_gemm_tma import _pin

    # the TMA engine on the same tile and K step (8 warps: two 64x256 wgmma chains, as the math warpgroups run)
    _pin(monkeypatch, gemm_tma.tma_gemm_kernel, (128, 256, 32, 8, 4, 2), 1)
    ran = _recording(monkeypatch)
    fc1, others = _runs(*shape, dtype, device)
    launches = {**fc1, **others}
    if dtype == torch.float16:  # one launch of each epilogue family: each new variant is a Gluon compile in the lease
        launches = {name: launches[name] for name in ("gelu", "residual")}
    for name, (run, ref) in launches.items():
        outs = _engines(run, monkeypatch, ran)
        assert outs["ws ran"] and not outs["tma ran"], name
        ws, tma = outs["ws"], outs["tma"]
        if name.startswith("residual"):
            (ws, parts), (tma, _) = ws, tma
            if parts is not None:  # every slot written, the (count, mean, M2) of the stored values, slot by slot
                slot = ln_fold.stats_slot(ws.numel() // ws.shape[-1], ws.shape[-1])
                torch.testing.assert_close(parts.double(), partials_of(ws, slot), rtol=1e-5, atol=1e-4)
        assert ulps(ws, tma) <= 1, f"{shape} {name}: more than one step from the TMA engine's"
        assert_close(ws, ref, dtype)


@gpu
@pytest.mark.parametrize("shape", [(197, 768, 3072), (8 * 197, 768, 3072)], ids=["b1", "b8"])
def test_ws_engine_leaves_launches_of_few_tiles_to_the_tma_engine(shape, monkeypatch, device):
    """Under MIN_WAVES waves of tiles (B/16's FC1 at batch 1 and 8: 24 and 156 tiles of 128x256): the TMA engine
    (its smaller tiles, split-K) runs them, with the same result as when it is chosen itself."""
    ran = _recording(monkeypatch)
    fc1, others = _runs(*shape, torch.bfloat16, device)
    for name, (run, ref) in {**fc1, **others}.items():
        outs = _engines(run, monkeypatch, ran)
        ws, tma = (outs["ws"], outs["tma"]) if not name.startswith("residual") else (outs["ws"][0], outs["tma"][0])
        assert not outs["ws ran"] and torch.equal(ws, tma), name
        assert_close(ws, ref, torch.bfloat16)


@pytest.mark.parametrize("rows,n,takes", [
    (256 * 197, 768, True),  # B/16 b256's out-projection and FC2: 1,182 tiles, 8.95 waves
    (64 * 257, 1280, True),  # H/14 b64's: 645 tiles, 4.89 waves (2.3 % of the slots idle)
    (64 * 197, 768, False),  # B/16 b64's: 297 tiles, 2.25 waves
    (64 * 197, 2304, True),  # B/16 b64's QKV: 891 tiles, 6.75 waves (3.6 % idle)
    (4 * 128 * 33 + 1, 1024, False),  # 532 tiles: 4.03 waves, most of the fifth idle
    (4 * 128 * 33, 1024, True),  # 528: 4 full waves
    (99 * 128, 1024, False),  # 396: 3 full waves, under MIN_WAVES
    (587 * 128, 256, True),  # 587: 5 waves, 73 of 660 slots idle (MAX_IDLE: 73.3)
    (586 * 128, 256, False),  # 586: 74 idle
])
def test_ws_takes_launches_of_enough_nearly_full_waves(rows, n, takes, monkeypatch):
    """gemm_ws.takes on a 132-SM GPU: at least MIN_WAVES waves of 128x256 tiles, the last one nearly full."""
    from vit_fast.kernels import gemm_ws

    monkeypatch.setattr(gemm_ws, "num_sms", lambda device: 132)
    a = torch.empty(rows, 64, dtype=torch.bfloat16, device="meta")
    assert gemm_ws.takes(a, n, 0) == takes
    assert gemm_ws.takes(a.float(), n, 0) is False and gemm_ws.takes(a, n, 4) is False  # fp32, SwiGLU: never


@pytest.mark.skipif(CUDA, reason="interpreter rule")
def test_ws_switch_refuses_under_the_interpreter(monkeypatch, device):
    """VITFAST_GEMM_ENGINE=ws (gemm_ws.py, Gluon) cannot run under the interpreter: one line saying so."""
    from vit_fast.kernels.gemm_tma import select_engine

    monkeypatch.setenv(ENGINE_ENV, "ws")
    a = torch.randn(37, 64, device=device).bfloat16()
    with pytest.raises(ValueError, match=rf"^{ENGINE_ENV}=ws: device: expected an sm_90 GPU \(Gluon kernels do not "
                       r"run under the interpreter\), got TRITON_INTERPRET=1$"):
        select_engine(a, torch.randn(48, 64, device=device).bfloat16(), a.new_empty(37, 48))


@cpu_or_sm90
def test_ws_switch_takes_launches_of_enough_tiles(monkeypatch, device):
    """=ws gives the warp-specialized engine the 16-bit launches of at least MIN_WAVES 128x256 tiles per SM (one SM
    counted here): with a GELU (FC1), with none (QKV), with a residual and the output rows' partial statistics (the
    out-projection, FC2); SwiGLU and smaller launches run on the TMA engine, fp32 and misaligned operands on the
    pointer engine (as auto). Each output against eager fp32."""
    from vit_fast.kernels import gemm_ws, ln_fold
    from vit_fast.kernels.gemm_tma import gemm_launcher, select_engine

    ran = _recording(monkeypatch, sms=1)
    monkeypatch.setenv(ENGINE_ENV, "ws")
    a = torch.randn(512, 64, device=device)
    w, b = torch.randn(1024, 64, device=device) / 8, torch.randn(1024, device=device)
    for dtype in (torch.bfloat16, torch.float16):
        assert select_engine(a.to(dtype), w.to(dtype), a.new_empty(512, 1024, dtype=dtype)) == "ws"
    assert select_engine(a, w, a.new_empty(512, 1024)) == "pointer"
    assert select_engine(a.bfloat16()[:, 1:], w[:, 1:].bfloat16(), a.new_empty(512, 1024).bfloat16()) == "pointer"
    pre = torch.nn.functional.linear(a.bfloat16().float(), w.bfloat16().float(), b.bfloat16().float())
    gate, up = pre[:, :512], pre[:, 512:]  # SwiGLU's packed weight: gate rows, then up rows
    residual = torch.randn(512, 512, device=device).bfloat16()
    refs = {0: gate, 1: torch.nn.functional.gelu(gate), 3: gate * torch.sigmoid(1.702 * gate),
            4: torch.nn.functional.silu(gate) * up, "residual": gate + residual.float()}
    # 512 rows: 4 x 2 tiles, 8 waves of the one SM; 128 rows: 2, under MIN_WAVES
    assert gemm_ws.TILE[:2] == (128, 256) and gemm_ws.MIN_WAVES == 4
    # codes: gemm.apply_activation's (1 exact GELU, 3 quick GELU, 4 SwiGLU)
    for m, kind, reaches in ((512, 1, True), (512, 3, True), (512, 0, True), (512, "residual", True),
                             (128, 1, False), (128, "residual", False), (512, 4, False)):
        ran.clear()
        out = poison(torch.empty(m, 512, device=device, dtype=torch.bfloat16))
        weight = w if kind == 4 else w[:512]
        extra = {"activation": kind} if kind != "residual" else {
            "residual": residual[:m], "stats_out": poison(ln_fold.new_partials(out))}
        gemm_launcher("ws")(a[:m].bfloat16(), weight.bfloat16(), b[:weight.shape[0]].bfloat16(), out, **extra)
        assert ran == ([kind] if reaches else []), (m, kind)
        torch.testing.assert_close(out.float(), refs[kind][:m], atol=5e-2, rtol=2e-2)
        if kind == "residual":  # merged: under the interpreter the stand-in's slices span two slots (its first
            # slot takes both: ln_fold.store_partials), so only the merge is the same
            rows = out.double()
            exact = torch.stack([rows.mean(1), (rows.var(1, unbiased=False) + 1e-6).rsqrt()], 1)
            torch.testing.assert_close(ln_fold.merge_partials(extra["stats_out"], 1e-6).double(), exact, rtol=2e-5,
                                       atol=1e-5)


@cpu_or_sm90
@pytest.mark.parametrize("min_waves,reached", [(8, [1]), (1, [0, "residual", 1, "residual"])],
                         ids=["fc1 only", "every launch"])
def test_whole_model_with_the_ws_switch(min_waves, reached, monkeypatch, device):
    """A tiny bf16 ViT on the triton backend with VITFAST_GEMM_ENGINE=ws, one SM counted: with MIN_WAVES 8 only FC1
    (8 tiles of 256 columns) reaches the warp-specialized engine; with 1, QKV, the out-projection, FC1 and FC2 do, in
    that order. The features are the TMA engine's (exactly under the interpreter, where it stands in; on a GPU to
    the model tolerance, as the TMA engine splits K for this tiny model and so sums in another order)."""
    import vit_fast
    from tests.helpers import randomize_
    from vit_fast.kernels import gemm_ws

    model = randomize_(vit_fast.create("vit_ti_16", backend="triton", img_size=32, embed_dim=128, num_heads=2,
                                       mlp_dim=2048, depth=1, num_classes=5)).to(device).bfloat16().eval()
    x = torch.randn(3, 3, 32, 32, device=device).bfloat16()
    with torch.no_grad():
        monkeypatch.setenv(ENGINE_ENV, "tma")
        tma = model.forward_features(x)
        ran = _recording(monkeypatch, sms=1)
        monkeypatch.setattr(gemm_ws, "MIN_WAVES", min_waves)
        monkeypatch.setenv(ENGINE_ENV, "ws")
        out = model.forward_features(x)
    assert ran == reached, ran
    if CUDA:
        assert_close(out, tma, torch.bfloat16, MODEL_TOL)
    else:
        assert torch.equal(out, tma)
