"""The `engine` fixture: runs a GEMM op test once per engine (VITFAST_GEMM_ENGINE). The TMA engine runs under the
interpreter too (forced), so its numerics are checked on a machine without a GPU; on CUDA it needs sm_90."""
import pytest
import torch

from vit_fast.kernels.gemm_tma import ENGINE_ENV


@pytest.fixture(params=["pointer", "tma"])
def engine(request, monkeypatch):
    if request.param == "tma" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engine needs an sm_90 GPU")
    monkeypatch.setenv(ENGINE_ENV, request.param)
    return request.param
