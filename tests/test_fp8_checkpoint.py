"""FP8 checkpoints: `vit_fast.save` of an FP8 model and `vit_fast.load` (and `vit-fast convert --dtype fp8`) give the
same model back bit for bit; files whose tensors disagree with their quantization record are refused in one line."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vit_fast
from tests.helpers import randomize_
from vit_fast.cli import main

TINY = dict(img_size=(32, 48), patch_size=16, embed_dim=64, num_heads=2, mlp_dim=96, depth=2, num_classes=7)
LAYERS = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


def _fp8(dtype=torch.bfloat16):
    model = randomize_(vit_fast.create("vit_ti_16", backend="torch", **TINY))
    return model.to(dtype).to_fp8()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_round_trip_is_bit_identical(dtype, tmp_path):
    model = _fp8(dtype)
    ckpt = vit_fast.save(model, tmp_path / "ckpt")
    record = json.loads((ckpt / "vit_fast.json").read_text())["quantization"]
    assert record["scheme"] == "fp8" and record["layers"] == LAYERS and record["dtype"] == str(dtype)[6:]
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:  # the file a user ships
        assert f.get_tensor("blocks.1.mlp.fc2.weight").dtype == torch.float8_e4m3fn
        assert f.get_tensor("blocks.1.mlp.fc2.weight_scale").shape == (64,)
        assert not any("_bits" in k for k in f.keys())
    x = torch.randn(3, 3, 32, 48, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    for source in (ckpt, ckpt / "model.safetensors"):  # the directory, and the weight file alone (metadata)
        loaded = vit_fast.load(source, backend="torch")
        assert loaded.is_fp8 and loaded.pos_embed.dtype == dtype
        state, saved = loaded.state_dict(), model.state_dict()
        assert state.keys() == saved.keys()
        for k, v in saved.items():
            assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)


def test_fp8_state_dict_names_the_weights_as_files_do():
    """An FP8 model's state dict holds each FP8 layer's `weight` (float8_e4m3fn) and `weight_scale` (float32), not
    the integer buffers behind them, and loads into another FP8 model of that mix bit for bit."""
    model = _fp8()
    state = model.state_dict()
    assert not any("_bits" in k for k in state)
    assert state["blocks.0.attn.qkv.weight"].dtype == torch.float8_e4m3fn
    assert state["blocks.0.attn.qkv.weight_scale"].dtype == torch.float32
    assert list(state)[list(state).index("blocks.0.attn.qkv.weight"):][:3] == [
        "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.weight_scale", "blocks.0.attn.qkv.bias"]
    other = randomize_(vit_fast.create("vit_ti_16", backend="torch", **TINY)).to(torch.bfloat16).to_fp8()
    other.load_state_dict(state)
    x = torch.randn(2, 3, 32, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
    # an FP8 state for a model of another mix, or a dense one, is refused and leaves those layers as they were
    dense = randomize_(vit_fast.create("vit_ti_16", backend="torch", **TINY)).to(torch.bfloat16)
    kept = dense.blocks[0].attn.qkv.weight.clone()
    with pytest.raises(RuntimeError, match="blocks.0.attn.qkv.weight: a float8 weight for blocks.0.attn.qkv, which "
                                           "is not FP8 in this model"):
        dense.load_state_dict(state, strict=False)
    assert torch.equal(dense.blocks[0].attn.qkv.weight, kept)
    mixed = randomize_(vit_fast.create("vit_ti_16", backend="torch", **TINY)).to(torch.bfloat16).to_fp8(exclude="fc2")
    with pytest.raises(RuntimeError, match="blocks.0.mlp.fc2.weight: an FP8 layer takes torch.float8_e4m3fn, got "
                                           "torch.bfloat16"):
        model.load_state_dict(mixed.state_dict())
    # the converters to timm / Hugging Face models (benchmark baselines, export) take float weights only
    from vit_fast.loading.state_dict import float_state

    with pytest.raises(ValueError, match="cannot convert an FP8 model to timm: its float weights are gone"):
        float_state(model, "timm")


def test_convert_dtype_fp8(tmp_path, capsys):
    """`vit-fast convert SRC DST --dtype fp8` quantizes once; loading DST equals quantizing SRC after loading."""
    src = vit_fast.save(randomize_(vit_fast.create("vit_ti_16", backend="torch", **TINY)), tmp_path / "src")
    assert main(["convert", str(src), str(tmp_path / "dst"), "--dtype", "fp8"]) == 0
    assert "FP8 GEMM weights" in capsys.readouterr().out
    loaded = vit_fast.load(tmp_path / "dst", backend="torch")
    reference = vit_fast.load(src, backend="torch").to_fp8()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert loaded.is_fp8 and torch.equal(loaded(x), reference(x))
    assert main(["convert", str(tmp_path / "dst"), str(tmp_path / "copy")]) == 0  # an FP8 checkpoint stays FP8
    assert vit_fast.load(tmp_path / "copy").is_fp8
    assert main(["convert", str(tmp_path / "dst"), str(tmp_path / "f32"), "--dtype", "float32"]) == 2
    assert "is an FP8 model: its float32 weights are gone" in capsys.readouterr().err
    # another mix from an FP8 checkpoint: the command-line line predict, serve and infer give
    assert main(["convert", str(tmp_path / "dst"), str(tmp_path / "mix"), "--dtype", "fp8",
                 "--fp8-exclude", "qkv"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'dst'} is an FP8 model that keeps 0 GEMM layer(s) out of FP8 (none), not what " \
           "--fp8-exclude qkv asks" in err and not (tmp_path / "mix").exists()


def test_excluded_layers_round_trip(tmp_path, capsys):
    """A model quantized with `exclude` saves its kept layers in its dtype and loads back the same mix, bit for
    bit; `convert --fp8-exclude` writes the same file; a record naming a layer vit_fast does not quantize is refused."""
    dense = randomize_(vit_fast.create("vit_ti_16", backend="torch", **TINY))
    model = vit_fast.quantize(dense, "fp8", exclude=("fc2", "blocks.0.*"))
    fp8_layers = ["blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc1"]
    ckpt = vit_fast.save(model, tmp_path / "ckpt")
    assert json.loads((ckpt / "vit_fast.json").read_text())["quantization"]["layers"] == fp8_layers
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("blocks.0.mlp.fc2.weight").dtype == torch.float32
    loaded = vit_fast.load(ckpt, backend="torch")
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert loaded.is_fp8 and torch.equal(loaded(x), model(x))
    assert [n for n, m in loaded.named_modules() if type(m).__name__ == "Fp8Linear"] == fp8_layers
    from vit_fast.predictor import Predictor

    served = Predictor(loaded, device="cpu", max_batch_size=2, warmup=False).model  # kept layers stay kept
    assert [n for n, m in served.named_modules() if type(m).__name__ == "Fp8Linear"] == fp8_layers

    src = vit_fast.save(randomize_(vit_fast.create("vit_ti_16", backend="torch", **TINY)), tmp_path / "src")
    assert main(["convert", str(src), str(tmp_path / "dst"), "--dtype", "fp8", "--fp8-exclude", "fc2,blocks.0.*"]) == 0
    assert "FP8 GEMM weights (3 of 8 GEMM layers)" in capsys.readouterr().out
    with torch.no_grad():
        assert torch.equal(vit_fast.load(tmp_path / "dst")(x),
                           vit_fast.load(src).to_fp8(exclude="fc2,blocks.0.*")(x))
    assert main(["convert", str(src), str(tmp_path / "bad"), "--fp8-exclude", "fc2"]) == 2
    assert "--fp8-exclude applies to --dtype fp8 only" in capsys.readouterr().err

    def fp8_head(state):
        state["head.weight"] = state["head.weight"].to(torch.float8_e4m3fn)
        state["head.weight_scale"] = torch.ones(state["head.weight"].shape[0])

    _rewrite(ckpt, fp8_head, lambda c: c["quantization"]["layers"].append("head"))
    with pytest.raises(ValueError, match=r"the recorded FP8 layers are not layers vit_fast quantizes \(\['head'\]"):
        vit_fast.load(ckpt)


def _rewrite(ckpt, edit_state=None, edit_config=None):
    """Change the weight file and/or vit_fast.json of a saved checkpoint, as a damaged or hand-made file would."""
    weights = ckpt / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(weights))
    if edit_state:
        edit_state(state)
        save_file(state, str(weights), metadata=metadata)
    if edit_config:
        config = json.loads((ckpt / "vit_fast.json").read_text())
        edit_config(config)
        (ckpt / "vit_fast.json").write_text(json.dumps(config))


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


@pytest.mark.parametrize("edit_state,edit_config,match", [
    (lambda s: s.pop("blocks.1.attn.proj.weight_scale"), None,
     r"the FP8 checkpoint lacks \['blocks.1.attn.proj.weight_scale'\]"),
    (None, lambda c: c.pop("quantization"),
     r"holds FP8 weights \['blocks.0.attn.proj.weight', .* but its config records no quantization"),
    (None, lambda c: c["quantization"].__setitem__("scheme", "int4"), "unknown quantization scheme 'int4'"),
    (None, lambda c: c["quantization"].__setitem__("dtype", "float64"), "quantization 'dtype' expects one of"),
    (None, lambda c: c["quantization"]["layers"].pop(), r"float8 tensors \['blocks.1.mlp.fc2.weight'\] are not in"),
    (lambda s: s["blocks.0.mlp.fc1.weight_scale"].__setitem__(3, -1.0), None,
     "blocks.0.mlp.fc1.weight_scale holds scales that are not positive and finite"),
    (lambda s: s.__setitem__("blocks.0.attn.qkv.weight_scale", torch.ones(5)), None,
     r"blocks.0.attn.qkv.weight_scale is torch.float32 \(5,\); expected float32 \(192,\)"),
    (lambda s: s.__setitem__("blocks.0.mlp.fc2.weight", torch.zeros(64, 96)), None,
     r"blocks.0.mlp.fc2.weight is torch.float32 \(64, 96\); an FP8 layer expects a 2-D float8_e4m3fn weight"),
    (lambda s: s.__setitem__("blocks.0.mlp.fc2.weight", torch.zeros(64, 95).to(torch.float8_e4m3fn)), None,
     r"blocks.0.mlp.fc2.weight: checkpoint \(64, 95\) vs model \(64, 96\)"),
], ids=["no-scale", "no-record", "scheme", "dtype", "unlisted", "negative-scale", "scale-shape", "not-float8",
        "weight-shape"])
def test_bad_fp8_checkpoints_are_one_line(edit_state, edit_config, match, tmp_path, capsys):
    ckpt = vit_fast.save(_fp8(), tmp_path / "ckpt")
    _rewrite(ckpt, edit_state, edit_config)
    with pytest.raises(ValueError, match=match):
        vit_fast.load(ckpt)
    assert main(["convert", str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vit-fast: error:"), err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_fp8_record_in_the_weight_file_alone(tmp_path):
    """The weight file's metadata carries the record too: a damaged one is named as such."""
    ckpt = vit_fast.save(_fp8(), tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(str(weights)), str(weights), metadata={**metadata, "vit_fast_quantization": "{oops"})
    with pytest.raises(ValueError, match="the quantization record is not valid JSON"):
        vit_fast.load(weights)


def test_readme_fp8_checkpoint_example(tmp_path, monkeypatch):
    """The README's save/load example as written, in a scratch directory."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- fp8-checkpoint-example -->")[1].split("<!-- /fp8-checkpoint-example -->")[0]
    code = block.split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md (FP8 checkpoint example)", "exec"), scope)
    assert (tmp_path / "vit_ti_16_fp8" / "model.safetensors").is_file() and scope["served"].is_fp8


def test_predict_serves_an_fp8_checkpoint(tmp_path, capsys):
    """`vit-fast predict --checkpoint FP8_DIR`: the predictor runs the FP8 model as saved (no --dtype needed), and
    keeps an explicit activation dtype."""
    from vit_fast.cli import SAMPLE_IMAGES

    model = randomize_(vit_fast.create("vit_ti_16", backend="torch", **{**TINY, "img_size": 32})).to_fp8()
    ckpt = vit_fast.save(model, tmp_path / "ckpt")
    assert main(["predict", SAMPLE_IMAGES[0], "--checkpoint", str(ckpt), "--device", "cpu", "--backend", "sdpa",
                 "--top-k", "2"]) == 0
    assert SAMPLE_IMAGES[0] in capsys.readouterr().out
    # --fp8-exclude against an FP8 checkpoint: its own mix runs; another is refused in command-line terms, as serve
    mixed = randomize_(vit_fast.create("vit_ti_16", backend="torch", **{**TINY, "img_size": 32})).to_fp8(exclude="fc2")
    mixed = vit_fast.save(mixed, tmp_path / "mixed")
    run = ["predict", SAMPLE_IMAGES[0], "--checkpoint", str(mixed), "--device", "cpu", "--backend", "sdpa",
           "--dtype", "fp8"]
    assert main([*run, "--fp8-exclude", "fc2"]) == 0
    capsys.readouterr()
    assert main([*run, "--fp8-exclude", "qkv"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--checkpoint {mixed} is an FP8 model that keeps " in err
    assert "not what --fp8-exclude qkv asks: leave out --fp8-exclude" in err
    predictor = vit_fast.Predictor(vit_fast.load(ckpt), device="cpu", dtype="bfloat16", cuda_graphs=False)
    assert predictor.fp8 and predictor.dtype == torch.bfloat16 and predictor.model.is_fp8
    assert "fp8 GEMMs" in repr(predictor)
