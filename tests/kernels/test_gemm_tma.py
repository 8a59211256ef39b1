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
