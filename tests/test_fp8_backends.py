"""Where an FP8 model runs: FP8 kernels need sm_89 / sm_90. On an older GPU (an A100 here, by monkeypatching what
torch reports; no GPU is needed) backend "auto" falls back to the torch emulation with a one-line warning, and
`--backend triton --dtype fp8` is refused in one line before any model is built and before Ray starts."""
import socket
import warnings

import pytest
import torch
from PIL import Image

import vit_fast
from vit_fast import backends, predictor
from vit_fast.cli import main
from vit_fast.serving import cli as serving_cli

CUDA = torch.device("cuda")


def _gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU sm_{capability[0]}{capability[1]}")


@pytest.fixture
def a100(monkeypatch):
    _gpu(monkeypatch, (8, 0))


@pytest.fixture
def no_model_work(monkeypatch):
    """Building or loading a model, or starting Ray, fails the test: the refusal must come first."""
    def fail(*a, **k):
        raise AssertionError("model work or Ray started before the FP8 check")

    for name in ("create", "load"):
        monkeypatch.setattr(vit_fast, name, fail)
    monkeypatch.setattr(serving_cli, "_start_ray", fail)


def test_resolve_auto_falls_back_on_a_gpu_without_fp8(a100):
    with pytest.warns(UserWarning, match=r"backend 'auto' runs this FP8 model with the torch emulation .*sm_80"):
        assert backends.resolve("auto", CUDA, torch.bfloat16, fp8=True) == "sdpa"
    with warnings.catch_warnings():  # asking (Predictor.backend, /health) is not running: the same answer, silently
        warnings.simplefilter("error")
        assert backends.resolve("auto", CUDA, torch.bfloat16, fp8=True, warn=False) == "sdpa"
    assert backends.resolve("auto", CUDA, torch.bfloat16) == "triton"  # bf16 models keep the kernels there
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run this FP8 model: FP8 GEMMs need compute "
                                           r"capability 8.9 or 9.0 \(Ada, Hopper\); cuda \(GPU sm_80\) is sm_80"):
        backends.resolve("triton", CUDA, torch.bfloat16, fp8=True)


@pytest.mark.parametrize("capability", [(8, 9), (9, 0)])
def test_resolve_auto_keeps_the_fp8_kernels_on_ada_and_hopper(capability, monkeypatch):
    _gpu(monkeypatch, capability)
    assert backends.resolve("auto", CUDA, torch.bfloat16, fp8=True) == "triton"
    assert backends.fp8_cli_check("triton", "cuda", "fp8") == (None, None)
    assert backends.fp8_cli_check("auto", "cuda", "fp8") == (None, None)


def test_the_model_tells_resolve_it_is_fp8(monkeypatch):
    seen = []
    real = backends.resolve
    monkeypatch.setattr(backends, "resolve", lambda *a, **k: seen.append(k.get("fp8")) or real(*a, **k))
    model = vit_fast.create("vit_ti_16", backend="auto", img_size=32, depth=1, num_classes=3)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        model.to_fp8()(x)  # quantize clears the cached flag
    assert seen == [False, True]


def test_predictor_refuses_triton_but_not_auto(a100):
    with pytest.raises(ValueError, match="dtype 'fp8' with backend 'triton': FP8 GEMMs need compute capability 8.9"):
        predictor._check_fp8_device(CUDA, "triton")
    predictor._check_fp8_device(CUDA, "auto")  # auto: resolve() falls back to the emulation


def test_predictor_names_an_fp8_model_it_refuses(a100):
    """No dtype="fp8" asked for, but the model is FP8 (e.g. loaded from an FP8 checkpoint): the line says so."""
    model = vit_fast.create("vit_ti_16", backend="triton", img_size=32, depth=1, num_classes=3).to_fp8()
    with pytest.raises(ValueError, match="^an FP8 model with backend 'triton': FP8 GEMMs need compute capability"):
        vit_fast.Predictor(model, device="cuda")


def _image(tmp_path):
    path = tmp_path / "imgs" / "a.png"
    path.parent.mkdir()
    Image.new("RGB", (20, 20)).save(path)
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["predict", "serve", "infer"])
def test_cli_refuses_triton_fp8_before_model_work(command, a100, no_model_work, tmp_path, capsys):
    image = _image(tmp_path)
    argv = {"predict": ["predict", str(image)],
            "serve": ["serve", "--port", str(_free_port())],
            "infer": ["infer", str(image.parent), "--out", str(tmp_path / "p.parquet")]}[command]
    code = main([*argv, "--model", "vit_ti_16", "--backend", "triton", "--dtype", "fp8", "--device", "cuda"])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "RANDOM weights" not in line]
    assert code == 2 and len(lines) == 1, lines
    assert "--backend triton cannot run --dtype fp8: FP8 GEMMs need compute capability 8.9 or 9.0" in lines[0]
    assert "sm_80" in lines[0] and "no FP8 tensor cores" in lines[0]


def test_serve_auto_fp8_warns_before_ray(a100, monkeypatch, capsys):
    """`serve --dtype fp8` (backend auto) on an A100: one warning line, then Ray starts (stubbed here)."""
    started = []

    def start(args):
        started.append(args.backend)
        raise KeyboardInterrupt  # serve returns 0 on Ctrl-C

    monkeypatch.setattr(serving_cli, "_start_ray", start)
    assert main(["serve", "--model", "vit_ti_16", "--dtype", "fp8", "--port", str(_free_port())]) == 0
    err = capsys.readouterr().err
    assert started == ["auto"]
    assert "vit-fast: warning: --dtype fp8 with --backend auto runs the torch emulation (slow)" in err


def test_serve_refuses_an_fp8_checkpoint_with_triton(a100, monkeypatch, tmp_path, capsys):
    """No --dtype fp8, but the checkpoint is an FP8 model: the same check."""
    ckpt = vit_fast.save(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=3).to_fp8(), tmp_path / "c")
    monkeypatch.setattr(serving_cli, "_start_ray", lambda args: pytest.fail("Ray was started"))
    code = main(["serve", "--checkpoint", str(ckpt), "--backend", "triton", "--device", "cuda",
                 "--port", str(_free_port())])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"--backend triton cannot run --checkpoint {ckpt} (an FP8 model): FP8 GEMMs need" in lines[0]
    assert "--dtype" not in lines[0]  # not passed: not named
