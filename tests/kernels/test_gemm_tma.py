"""The GEMM engine choice (kernels.gemm_tma.select_engine): what `auto` picks, what forcing does, and the one-line
errors. The TMA engine's numerics are covered by the op tests through their `engine` fixture."""
import pytest
import torch

from kernels.gemm_tma import ENGINE_ENV, INTERPRETER_SMS, select_engine

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
