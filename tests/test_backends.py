"""`auto` picks the triton kernels only where they are the fast path: CUDA and a bf16/fp16 model."""
import pytest
import torch

from vit_fast import backends

CUDA = torch.device("cuda")


@pytest.fixture
def triton_runs(monkeypatch):
    """Pretend this machine has a GPU triton can run on (resolve asks only triton_unavailable_reason)."""
    monkeypatch.setattr(backends, "triton_unavailable_reason", lambda device=None: None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, None])
def test_auto_picks_triton_for_16bit_models_on_cuda(triton_runs, dtype):
    assert backends.resolve("auto", CUDA, dtype) == "triton"


def test_auto_sends_fp32_models_to_sdpa(triton_runs):
    assert backends.resolve("auto", CUDA, torch.float32) == "sdpa"
    assert backends.resolve("triton", CUDA, torch.float32) == "triton"  # asked for explicitly: honoured


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_auto_is_sdpa_on_cpu(triton_runs, dtype):
    assert backends.resolve("auto", torch.device("cpu"), dtype) == "sdpa"


def test_auto_without_a_usable_gpu_is_sdpa(monkeypatch):
    monkeypatch.setattr(backends, "triton_unavailable_reason", lambda device=None: "CUDA is not available")
    assert backends.resolve("auto", CUDA, torch.bfloat16) == "sdpa"
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run: CUDA is not available"):
        backends.resolve("triton", CUDA, torch.bfloat16)


def test_model_passes_its_dtype(triton_runs, monkeypatch):
    """The model resolves with its own dtype: an fp32 model on `auto` runs sdpa even where triton could run."""
    import vit_fast

    seen = []
    real = backends.resolve
    monkeypatch.setattr(backends, "resolve", lambda name, device, dtype=None, fp8=False, warn=True: seen.append(
        dtype) or real(name, torch.device("cpu"), dtype, fp8=fp8, warn=warn))
    cfg = vit_fast.get_config("vit_b_16")
    cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, cfg.img_size, cfg.num_classes = 1, 32, 2, 64, (32, 32), 5
    model = vit_fast.VisionTransformer(cfg, backend="auto").eval()
    with torch.inference_mode():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [torch.float32]
