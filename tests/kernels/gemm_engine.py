"""The `engine` fixture: runs a GEMM op test once per engine (VITFAST_GEMM_ENGINE). The TMA engine runs under the
interpreter too (forced), so its numerics are checked on a machine without a GPU; on CUDA it needs sm_90."""
import pytest
import torch

from vit_fast.kernels._common import FP8_ENGINE_ENV
from vit_fast.kernels.gemm_tma import ENGINE_ENV


@pytest.fixture(params=["pointer", "tma"])
def engine(request, monkeypatch):
    if request.param == "tma" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engine needs an sm_90 GPU")
    monkeypatch.setenv(ENGINE_ENV, request.param)
    return request.param


@pytest.fixture(params=["pointer", "tma"])
def fp8_engine(request, monkeypatch):
    """The same for the FP8 GEMM engines (VITFAST_FP8_ENGINE): gemm_fp8.py and the FP8 TMA engine, gemm_fp8_tma.py."""
    if request.param == "tma" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the FP8 TMA engine needs an sm_90 GPU")
    monkeypatch.setenv(FP8_ENGINE_ENV, request.param)
    return request.param
