"""Bad checkpoints, bad configs and bad options get one line on stderr that says what was expected and what came,
and a non-zero exit; nothing is written. The CLI runs in-process through `main(argv)` (fast); two cases go
through the real entry point in a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vit_fast
from tests.helpers import randomize_
from vit_fast.cli import main

REPO = Path(__file__).resolve().parent.parent
HF_CONFIG = {"model_type": "vit", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 128, "image_size": 32, "patch_size": 16, "num_channels": 3}


def _tiny(**kw):
    return randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=3, **kw))


def _run(argv, capsys):
    capsys.readouterr()  # drop what set-up printed
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0, err
    assert len(lines) == 1, err  # one line, no traceback
    assert lines[0].startswith("vit-fast: error: "), err
    return lines[0]


# ------------------------------------------------------------------ corrupt checkpoints

def _garbage(n: int) -> bytes:
    """n random-looking bytes, the same every run (the fuzz test below covers many draws)."""
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.uint8).numpy().tobytes()


def _corrupt(data: bytes, how: str) -> bytes:
    return {"empty": b"", "truncated": data[: len(data) // 2], "header-cut": data[:6],
            "garbage": _garbage(4096)}[how]


def _native(tmp_path, how):
    path = vit_fast.save(_tiny(), tmp_path / "ckpt")
    weights = path / "model.safetensors"
    weights.write_bytes(_corrupt(weights.read_bytes(), how))
    return path, weights, "expected a safetensors file"


def _hf(tmp_path, how, name):
    path = tmp_path / "hf"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(HF_CONFIG))
    weights = path / name
    if name.endswith(".bin"):
        torch.save({"vit.embeddings.cls_token": torch.zeros(1, 1, 64)}, weights)
    else:
        save_file({"vit.embeddings.cls_token": torch.zeros(1, 1, 64)}, str(weights))
    weights.write_bytes(_corrupt(weights.read_bytes(), how))
    expected = "expected a PyTorch checkpoint" if name.endswith(".bin") else "expected a safetensors file"
    return path, weights, expected


def _timm(tmp_path, how, suffix):
    weights = tmp_path / f"timm{suffix}"
    state = {k: v.contiguous() for k, v in _tiny().state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(weights))
    else:
        torch.save(state, weights)
    weights.write_bytes(_corrupt(weights.read_bytes(), how))
    expected = "expected a PyTorch checkpoint" if suffix == ".pth" else "expected a safetensors file"
    return weights, weights, expected


CORRUPT = [("native", how) for how in ("empty", "truncated", "header-cut", "garbage")] + \
    [("hf-safetensors", how) for how in ("empty", "truncated", "garbage")] + \
    [("hf-bin", how) for how in ("empty", "truncated", "garbage")] + \
    [("timm-safetensors", "garbage"), ("timm-pth", "garbage"), ("timm-pth", "truncated")]


@pytest.mark.parametrize("layout, how", CORRUPT, ids=[f"{a}-{b}" for a, b in CORRUPT])
def test_corrupt_checkpoint_is_one_line(tmp_path, capsys, layout, how):
    src, weights, expected = {
        "native": lambda: _native(tmp_path, how),
        "hf-safetensors": lambda: _hf(tmp_path, how, "model.safetensors"),
        "hf-bin": lambda: _hf(tmp_path, how, "pytorch_model.bin"),
        "timm-safetensors": lambda: _timm(tmp_path, how, ".safetensors"),
        "timm-pth": lambda: _timm(tmp_path, how, ".pth"),
    }[layout]()
    line = _run(["convert", src, tmp_path / "out"], capsys)
    assert str(weights) in line and expected in line, line
    size = weights.stat().st_size
    assert ("an empty file" if size == 0 else f"{size:,} bytes") in line  # what came
    assert not (tmp_path / "out").exists()  # nothing written
    # the Python API raises the same message as a ValueError
    with pytest.raises(ValueError, match=expected):
        vit_fast.load(src)


def test_any_garbage_pickle_is_a_value_error(tmp_path):
    """The weights-only unpickler fails on random bytes in many ways (UnpicklingError, IndexError, KeyError,
    UnicodeDecodeError, ...): every one must become the same one-line ValueError. 400 blobs from a fixed seed cover
    each kind (a single random blob per run once made CI flaky)."""
    from vit_fast.loading.state_dict import read_weights

    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "w.pth"
    for _ in range(400):
        path.write_bytes(torch.randint(0, 256, (512,), generator=gen, dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(ValueError, match="expected a PyTorch checkpoint"):
            read_weights(path)


# ------------------------------------------------------------------ bad configs

def _hf_dir_with(tmp_path, text):
    path = tmp_path / "hf"
    path.mkdir()
    (path / "config.json").write_text(text)
    save_file({"vit.embeddings.cls_token": torch.zeros(1, 1, 64)}, str(path / "model.safetensors"))
    return path, path / "config.json"


def _native_with(tmp_path, edit):
    path = vit_fast.save(_tiny(), tmp_path / "ckpt")
    cfg = json.loads((path / "vit_fast.json").read_text())
    (path / "vit_fast.json").write_text(edit(cfg))
    return path, path / "vit_fast.json"


BAD_CONFIGS = {
    "hf-hidden_size-string": (lambda p: _hf_dir_with(p, json.dumps({**HF_CONFIG, "hidden_size": "abc"})),
                              'hidden_size must be an integer, got "abc"'),
    "hf-layers-null": (lambda p: _hf_dir_with(p, json.dumps({**HF_CONFIG, "num_hidden_layers": None})),
                       "num_hidden_layers must be an integer, got null"),
    "hf-eps-bool": (lambda p: _hf_dir_with(p, json.dumps({**HF_CONFIG, "layer_norm_eps": True})),
                    "layer_norm_eps must be a number, got true"),
    "hf-list": (lambda p: _hf_dir_with(p, json.dumps([HF_CONFIG])), "expected a JSON object {...}, got a JSON list"),
    "hf-not-json": (lambda p: _hf_dir_with(p, '{"hidden_size": 64,'), "expected a JSON object, but the file is not"),
    "native-not-json": (lambda p: _native_with(p, lambda c: json.dumps(c)[:-5]), "not valid JSON"),
    "native-list": (lambda p: _native_with(p, lambda c: "[1, 2]"), "got a JSON list"),
    "native-depth-string": (lambda p: _native_with(p, lambda c: json.dumps({**c, "depth": "two"})),
                            "depth must be an integer, got 'two'"),
    "native-img_size-null": (lambda p: _native_with(p, lambda c: json.dumps({**c, "img_size": None})),
                             "img_size must not be null"),
    "native-unknown-field": (lambda p: _native_with(p, lambda c: json.dumps({**c, "dropout": 0.1})),
                             "unknown ViTConfig fields ['dropout']"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_naming_the_file(tmp_path, capsys, case):
    make, fragment = BAD_CONFIGS[case]
    src, config_file = make(tmp_path)
    line = _run(["convert", src, tmp_path / "out"], capsys)
    assert str(config_file) in line and fragment in line, line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ bad options

@pytest.fixture
def sources(tmp_path):
    hf = _hf_dir_with(tmp_path, json.dumps({**HF_CONFIG, "num_labels": 3}))[0]  # the config is refused first
    native = vit_fast.save(_tiny(), tmp_path / "native")
    timm = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny().state_dict().items()}, str(timm))
    return {"hf": hf, "native": native, "timm": timm}


@pytest.mark.parametrize("kind", ["hf", "native", "timm", "preset"])
@pytest.mark.parametrize("setting, fragment", [("foo=1", "unknown ViTConfig fields ['foo']"),
                                               ("depth=abc", "depth must be an integer, got 'abc'"),
                                               ("qkv_bias=2", "qkv_bias must be true or false, got 2")])
def test_bad_set_is_one_line_for_every_source(tmp_path, capsys, sources, kind, setting, fragment):
    from vit_fast.cli import SAMPLE_IMAGES

    if kind == "preset":
        argv = ["predict", SAMPLE_IMAGES[0], "--model", "vit_ti_16", "--set", setting]
    else:
        argv = ["convert", sources[kind], tmp_path / "out", "--set", setting]
    assert fragment in _run(argv, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(capsys):
    from vit_fast.cli import SAMPLE_IMAGES

    line = _run(["predict", SAMPLE_IMAGES[0], "--model", "vit_ti_16", "--set", "depth=1", "--device", "cuda"], capsys)
    assert "device 'cuda' requested, but CUDA is not available" in line and "--device cpu" in line


def test_timm_heads_hint_names_the_cli_and_python_spellings(tmp_path, capsys):
    model = randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=3, embed_dim=96,
                                       num_heads=2))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    line = _run(["convert", path, tmp_path / "out"], capsys)
    assert "--set num_heads=N" in line and "width 96" in line
    with pytest.raises(ValueError, match=r"pass num_heads=N"):
        vit_fast.from_timm(path)
    assert main(["convert", str(path), str(tmp_path / "out"), "--set", "num_heads=2"]) == 0


def _entry_point():
    script = Path(sys.executable).with_name("vit-fast")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vit_fast"]


def test_real_entry_point(tmp_path):
    """The installed command: a garbage weight file gives one line on stderr and exit code 2."""
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(_garbage(1000))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(_entry_point() + ["convert", str(bad), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "expected a safetensors file" in lines[0], done.stderr
    # a warning is one line too (timm files do not record the normalization or the number of heads)
    good = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny().state_dict().items()}, str(good))
    done = subprocess.run(_entry_point() + ["convert", str(good), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 2, done.stderr
    assert lines[0].startswith("vit-fast: warning: timm weights do not record the input normalization")
    assert lines[1].startswith("vit-fast: warning: timm weights do not record the number of heads")
