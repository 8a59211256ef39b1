"""The `engine` and `fp8_engine` fixtures: run a GEMM op test once per engine (VITFAST_GEMM_ENGINE for the 16-bit and
fp32 GEMMs, VITFAST_FP8_ENGINE for the FP8 ones). The TMA engines run under the interpreter too (forced), so their
numerics are checked on a machine without a GPU; on CUDA they need sm_90."""
import pytest
import torch

from vit_fast.kernels._common import ENGINE_ENV, FP8_ENGINE_ENV


def _engine_fixture(name: str, switch: str):
    @pytest.fixture(params=["pointer", "tma"], name=name)
    def fixture(request, monkeypatch):
        if request.param == "tma" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9:
            pytest.skip(f"the TMA engines need an sm_90 GPU ({switch}=tma)")
        monkeypatch.setenv(switch, request.param)
        return request.param

    return fixture


engine = _engine_fixture("engine", ENGINE_ENV)
fp8_engine = _engine_fixture("fp8_engine", FP8_ENGINE_ENV)
