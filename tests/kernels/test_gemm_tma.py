"""The GEMM engine choice (kernels.gemm_tma.select_engine): what `auto` picks, what forcing does, and the one-line
errors. The TMA engine's numerics are covered by the op tests through their `engine` fixture."""
import pytest
import torch

from vit_fast.kernels.gemm_tma import ENGINE_ENV, INTERPRETER_SMS, select_engine

CUDA = torch.cuda.is_available()


def operands(dtype, device, k=64, offset=0):
    a = torch.randn(37, k + offset, device=device).to(dtype)[:, offset:]
    w = torch.randn(48, k, device=device).to(dtype)
    return a, w, torch.empty(37, 48, device=device, dtype=dtype)


@pytest.mark.skipif(CUDA, reason="interpreter rule")
def test_auto_is_pointer_under_interpreter(monkeypatch, device):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert select_engine(*operands(torch.float16, device)) == "pointer"
    monkeypatch.setenv(ENGINE_ENV, "tma")
    assert select_engine(*operands(torch.float16, device)) == "tma"
    assert INTERPRETER_SMS < 4  # the op tests' shapes have more tiles than programs: the persistent loop runs


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
def test_auto_on_gpu(monkeypatch, device):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    sm90 = torch.cuda.get_device_capability()[0] == 9
    assert select_engine(*operands(torch.bfloat16, device)) == ("tma" if sm90 else "pointer")
    assert select_engine(*operands(torch.float32, device)) == "pointer"  # fp32 dots are FMA: no TMA gain
    assert select_engine(*operands(torch.bfloat16, device, offset=1)) == "pointer"  # misaligned rows


def test_forced_tma_rejects_what_tma_cannot_address(monkeypatch, device):
    monkeypatch.setenv(ENGINE_ENV, "tma")
    with pytest.raises(ValueError, match=f"{ENGINE_ENV}=tma: operands.*'a'"):
        select_engine(*operands(torch.float16, device, k=63, offset=1))  # rows of 63 halves: not 16-byte aligned
    a, w, out = operands(torch.float16, device)
    with pytest.raises(ValueError, match="'weight'"):
        select_engine(a, w.t().contiguous().t(), out)  # column-major weight: last stride is not 1


def test_bad_engine_name(monkeypatch, device):
    monkeypatch.setenv(ENGINE_ENV, "cublas")
    with pytest.raises(ValueError, match="auto | tma | pointer"):
        select_engine(*operands(torch.float16, device))
    monkeypatch.setenv(ENGINE_ENV, "pointer")
    assert select_engine(*operands(torch.float16, device)) == "pointer"


def test_whole_model_on_tma_engine_and_fold_cache(monkeypatch, device):
    """A tiny ViT on the triton backend with the TMA engine forced (fp16) matches the fp32 torch reference; the folded
    LayerNorm weights are derived and cached: parameters untouched, refreshed after an in-place weight update."""
    import vit_fast
    from tests.helpers import randomize_
    from tests.tolerances import MODEL_TOL, assert_close

    if CUDA and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engine needs an sm_90 GPU")
    monkeypatch.setenv(ENGINE_ENV, "tma")
    ref = randomize_(vit_fast.create("vit_ti_16", backend="torch", img_size=32, embed_dim=64, num_heads=2,
                                     mlp_dim=128, depth=1, num_classes=5)).to(device).eval()
    fast = vit_fast.VisionTransformer(ref.config, backend="triton").to(device).eval()
    fast.load_state_dict(ref.state_dict())
    fast = fast.half()
    params = {k: v.clone() for k, v in fast.state_dict().items()}
    x = torch.randn(2, 3, 32, 32, device=device)
    with torch.no_grad():
        assert_close(fast(x.half()), ref(x), torch.float16, MODEL_TOL)
        assert all(torch.equal(v, params[k]) for k, v in fast.state_dict().items())
        for model in (ref, fast):
            model.blocks[0].norm2.weight.mul_(1.5)  # in place: the cached fold must be rebuilt
        assert_close(fast(x.half()), ref(x), torch.float16, MODEL_TOL)


def _pin(monkeypatch, kernel, row, programs):
    """The autotuned `kernel` runs only `row` (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, EPI_SPLIT) with PER_SM =
    `programs`: with one config Triton's autotuner launches it without pruning or timing."""
    import triton

    bm, bn, bk, warps, stages, epi = row
    monkeypatch.setattr(kernel, "configs", [triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPI_SPLIT": epi, "PER_SM": programs},
        num_warps=warps, num_stages=stages)])


def test_two_programs_per_sm_rows(monkeypatch, device):
    """The 16-bit engine's PER_SM rows, pinned (the GPU test step's VITFAST_AUTOTUNE=first never reaches them), over
    more tiles than programs (on a GPU 4,096 x 2,304 rows: 576 tiles for 2 x #SMs programs; under the interpreter 2
    programs), against the pointer engine: ragged M, K not a multiple of BLOCK_K, LayerNorm + GELU epilogue. The FP8
    engine's: test_fp8_two_programs_rows_every_launch."""
    from vit_fast.kernels import fold_layer_norm, gemm_tma
    from vit_fast.kernels.ln_linear import ln_linear_launch

    if CUDA and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engines need an sm_90 GPU")
    m, n, k = (4096 + 37, 2304, 768 + 32) if CUDA else (300, 256, 160)
    x = torch.randn(m, k, device=device).bfloat16()
    g, b = torch.randn(k, device=device).bfloat16(), torch.randn(k, device=device).bfloat16()
    bias = torch.randn(n, device=device).bfloat16()
    folded = fold_layer_norm(g, b, torch.randn(n, k, device=device).bfloat16(), bias)
    run = lambda: ln_linear_launch(x, 1e-6, folded.weight, folded.colsum, folded.bias, "gelu")  # noqa: E731
    assert gemm_tma.PER_SM
    for row, programs in gemm_tma.PER_SM.items():
        monkeypatch.setenv(ENGINE_ENV, "pointer")
        ref = run().float()
        monkeypatch.setenv(ENGINE_ENV, "tma")
        _pin(monkeypatch, gemm_tma.tma_gemm_kernel, row, programs)
        out = run().float()
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)  # one bf16 rounding of each, summation order


@pytest.mark.parametrize("precise", ["1", "0"], ids=["promoted", "fast"])
def test_fp8_two_programs_rows_every_launch(precise, monkeypatch, device):
    """Each FP8 two-programs row, pinned, on every launch its prune gives it: FC1 with a bf16 output, FC1 writing
    e4m3 codes per 128 columns, the out-projection (bf16 A, residual) and FC2 on grouped codes (residual), against
    the pointer engine on the same inputs, outputs poisoned first. On a GPU more tiles than 2 x #SMs programs, ragged
    M and K; under the interpreter 2 programs over 6-9 tiles."""
    from vit_fast import fp8 as fp8_ref
    from vit_fast.kernels import gemm_fp8_tma
    from vit_fast.kernels.linear_residual import linear_residual_launch
    from vit_fast.kernels.ln_linear import ln_linear_fp8_launch
    from vit_fast.kernels.quant_fp8 import new_group_scales

    from tests.helpers import fp8_gemm_operands
    from tests.tolerances import poison

    if CUDA and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engines need an sm_90 GPU")
    if CUDA and precise == "0":
        pytest.skip("on a GPU the default (promoted) only: the test step's minutes")
    monkeypatch.setenv("VITFAST_FP8_PRECISE_ACC", precise)
    # GPU: 1,040 tiles of 64x128 and 528 of 128x128 for 2 x 132 programs: every program loops, and both rows wait
    # (stagger.py: at least two tiles a program)
    m, k, n = (4096 + 37, 1024 + 64, 2048) if CUDA else (150, 320, 384)
    ops = fp8_gemm_operands(m, k, n, device)
    x, g, b, bias, residual, wq, ws = ops.x, ops.g, ops.b, ops.bias, ops.residual, ops.wq, ops.ws
    codes_in, scales_in = ops.codes, ops.scales

    def codes_out():
        codes = poison(torch.empty(m, n, device=device, dtype=torch.float8_e4m3fn))
        scales = poison(new_group_scales(m, n, device))
        ln_linear_fp8_launch(x, g, b, 1e-6, wq, ws, bias, "gelu", out=codes, out_scale=scales)
        return fp8_ref.dequantize_input(codes, scales, 128)

    def with_residual(a, **scales):
        out = poison(torch.empty_like(residual))
        return linear_residual_launch(a, wq, bias, residual, out=out, weight_scale=ws, **scales)

    def bf16_out():
        out = poison(torch.empty(m, n, device=device, dtype=torch.bfloat16))
        return ln_linear_fp8_launch(x, g, b, 1e-6, wq, ws, bias, "gelu", out=out)

    # name -> (launch, has_residual, out_bytes, a_grouped, group_out)
    launches = {"fc1": (bf16_out, False, 2, False, False),
                "fc1 codes": (codes_out, False, 1, False, True),
                "out-proj": (lambda: with_residual(x), True, 2, False, False),
                "fc2": (lambda: with_residual(codes_in, x_scale=scales_in), True, 2, True, False)}
    ran = set()
    for row, programs in gemm_fp8_tma.PER_SM.items():
        for name, (run, residual_buffer, out_bytes, a_grouped, group_out) in launches.items():
            if not gemm_fp8_tma.tile_allowed(row, 232448, residual_buffer, precise == "1", out_bytes,
                                             a_grouped=a_grouped, group_out=group_out):
                continue
            monkeypatch.setenv("VITFAST_FP8_ENGINE", "pointer")
            ref = run().float()
            monkeypatch.setenv("VITFAST_FP8_ENGINE", "tma")
            _pin(monkeypatch, gemm_fp8_tma.fp8_tma_gemm_kernel, row, programs)
            out = run().float()
            picked = gemm_fp8_tma.fp8_tma_gemm_kernel.best_config.kwargs
            assert (picked["BLOCK_M"], picked["BLOCK_N"], picked["PER_SM"]) == (row[0], row[1], programs), name
            assert torch.isfinite(out).all(), (row, name)
            if group_out:  # a code flipped by the summation order moves its value by up to 1/16
                err = ((out - ref).norm() / ref.norm()).item()
                assert err < 2e-2, f"{row} {name}: relative error {err:.3g}"
            else:  # one bf16 rounding of each, summation order
                torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2, msg=f"{row} {name}")
            ran.add((row, name))
    assert {((64, 128, 128, 4, 3, 1), name) for name in launches} <= ran  # the 64x128 row takes all four
