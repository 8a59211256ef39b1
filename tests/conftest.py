"""Test set-up shared by the whole suite.

Without a CUDA device the Triton kernels run under the interpreter, which must be switched on before any
kernel module is imported (`@triton.jit` reads TRITON_INTERPRET when it decorates), so it is set here, first.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"

# fp32 references mean fp32: no TF32 in matmuls or cuDNN convolutions on the GPU
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Fresh random inputs each run: seed from the OS, printed on failure so a failing draw can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    yield seed


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None and "_fresh_seed" in item.funcargs:
        item.add_report_section("call", "seed", f"torch.manual_seed({item.funcargs['_fresh_seed']})")
