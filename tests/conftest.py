"""Test set-up shared by the whole suite.

Without a CUDA device the Triton kernels run under the interpreter, which must be switched on before any
kernel module is imported (`@triton.jit` reads TRITON_INTERPRET when it decorates), so it is set here, first.
torch.compile's on-disk cache is per run: its keys do not cover a custom op's fake (shape/stride) function, so a
graph compiled against an older version of an op could otherwise be reused and fail (or pass) for the wrong reason.
"""
import atexit
import os
import shutil
import tempfile

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # set once by the first process (pytest-xdist workers inherit it)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="vitfast-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

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


# ---- GPU session support (benchmarks/gpu_steps.sh tests) ------------------------------------------------------------
# VITFAST_TEST_DEADLINE (epoch seconds): tests not started by then are skipped, and with VITFAST_TEST_HARD_END a test
# still running then times out, so pytest ends by itself inside a device command's limit and writes its junit file. VITFAST_TEST_LOG (path): one JSON line per test outcome,
# appended as each test finishes, so a run that is killed still leaves every result it reached.
import json  # noqa: E402
import time  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if not HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="ahead-of-time compile check runs in CPU CI; on a GPU the JIT compiles for real")
    for item in items:
        if item.path.name == "test_static_gate.py":
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """With VITFAST_TEST_HARD_END (epoch seconds) and pytest-timeout, a test still running then fails as a timeout,
    so the session ends and writes its junit file before the device command's limit."""
    end = os.environ.get("VITFAST_TEST_HARD_END")
    if end and item.config.pluginmanager.hasplugin("timeout"):
        left = max(1.0, float(end) - time.time())
        marker = item.get_closest_marker("timeout")
        current = (marker.args[0] if marker and marker.args else None) or item.config.getoption("timeout", None)
        if not current or float(current) > left:
            item.add_marker(pytest.mark.timeout(left))
    yield


def pytest_runtest_setup(item):
    deadline = os.environ.get("VITFAST_TEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("not run: the GPU session's test time budget (VITFAST_TEST_DEADLINE) was used up")


def pytest_runtest_logreport(report):
    path = os.environ.get("VITFAST_TEST_LOG")
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):  # under xdist the controller writes every line
        return
    if report.when == "call" or report.outcome != "passed":  # one line per test: its call, or a setup failure/skip
        line = {"nodeid": report.nodeid, "outcome": report.outcome, "when": report.when,
                "seconds": round(report.duration, 3)}
        if report.outcome == "failed":
            line["message"] = report.longreprtext[-2000:]
        elif report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            line["message"] = str(report.longrepr[2])
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
