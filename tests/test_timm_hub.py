"""timm's checkpoint directories (config.json naming the architecture + model.safetensors, as timm's Hub repositories
hold them) and the settings a bare timm weight file cannot show. Without timm (as in CI) the directory's
preprocessing is read and a warning says the rest follows the key names; where timm imports, the architecture is
built on the meta device and the load equals timm's model (a post-norm model, which keeps the plain key names, is
refused instead of running wrong)."""
import json
import sys
import warnings

import pytest
import torch
from safetensors.torch import save_file

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err

MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _source(**overrides):
    config = dict(img_size=(32, 48), embed_dim=192, depth=2, num_heads=3, mlp_dim=160, num_classes=7)
    config.update(overrides)
    return randomize_(vit_fast.create("vit_ti_16", backend="sdpa", **config))


def _hub_dir(path, model, architecture="vit_tiny_patch16_224", **pretrained):
    """A directory as timm's save_for_hf writes it, for a vit-fast model (its keys are timm's)."""
    path.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    cfg = dict(input_size=[3, *model.config.img_size], mean=MEAN, std=STD, crop_pct=1.0, interpolation="bilinear",
               num_classes=model.config.num_classes)
    cfg.update(pretrained)
    (path / "config.json").write_text(json.dumps({"architecture": architecture, "num_classes": cfg["num_classes"],
                                                  "num_features": model.config.embed_dim, "pretrained_cfg": cfg}))
    return path


@pytest.fixture
def no_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError, installed or not


def _same(model, source, x):
    with torch.no_grad():
        assert rel_err(model(x), source(x)) < LOADER_REL_ERR


@pytest.mark.parametrize("entry", ["load_dir", "from_timm_dir", "from_timm_file"])
def test_hub_dir_without_timm_reads_its_preprocessing(tmp_path, no_timm, entry):
    source = _source()
    hub = _hub_dir(tmp_path / "hub", source)
    load = {"load_dir": lambda: vit_fast.load(hub, backend="sdpa"),
            "from_timm_dir": lambda: vit_fast.from_timm(hub, backend="sdpa"),
            "from_timm_file": lambda: vit_fast.from_timm(hub / "model.safetensors", backend="sdpa")}[entry]
    with pytest.warns(UserWarning, match="timm is not installed, so the definition of 'vit_tiny_patch16_224' cannot"):
        model = load()
    cfg = model.config
    assert cfg.img_size == (32, 48)  # a non-square size, which the weights alone do not show
    assert cfg.image_mean == pytest.approx(MEAN) and cfg.image_std == pytest.approx(STD)
    assert (cfg.crop_pct, cfg.interpolation, cfg.num_heads) == (1.0, "bilinear", 3)
    _same(model, source, torch.randn(2, 3, 32, 48))


def test_hub_dir_where_timm_fails_to_import(tmp_path, monkeypatch):
    """timm installed beside a torchvision that does not match torch raises at import: the same as no timm."""
    import builtins

    real_import = builtins.__import__

    def broken(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "timm" and level == 0:  # not vit_fast.loading's own `.timm`
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", broken)
    source = _source()
    hub = _hub_dir(tmp_path / "hub", source)
    with pytest.warns(UserWarning, match=r"timm does not import here \(RuntimeError: operator torchvision::nms does "
                                         r"not exist\), so the definition of 'vit_tiny_patch16_224' cannot be read"):
        model = vit_fast.load(hub, backend="sdpa")
    _same(model, source, torch.randn(2, 3, 32, 48))


def test_bare_file_beside_no_config_is_read_from_its_keys(tmp_path):
    source = _source()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match="pass img_size|number of heads"):
        model = vit_fast.from_timm(tmp_path / "model.safetensors", backend="sdpa", img_size=(32, 48))
    assert model.config.image_mean == (0.5, 0.5, 0.5)  # nothing read beside it
    _same(model, source, torch.randn(2, 3, 32, 48))


def test_pre_norm_weights_get_clip_eps_and_a_warning_on_the_activation(tmp_path):
    """timm's pre-norm ViTs (its CLIP models) use LayerNorm eps 1e-5; the activation (GELU or quick GELU) is not in
    the weights, so a bare file warns unless it is given."""
    source = _source(pre_norm=True, patch_bias=False, layer_norm_eps=1e-5, act_layer="quick_gelu", img_size=32)
    file = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(file))
    with pytest.warns(UserWarning, match="do not record the MLP activation: assuming GELU"):
        assumed = vit_fast.from_timm(file, backend="sdpa", num_heads=3)
    assert (assumed.config.layer_norm_eps, assumed.config.act_layer) == (1e-5, "gelu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = vit_fast.from_timm(file, backend="sdpa", num_heads=3, act_layer="quick_gelu",
                                   image_mean=source.config.image_mean, image_std=source.config.image_std)
    _same(model, source, torch.randn(2, 3, 32, 32))
    with pytest.warns(UserWarning, match=r"do not record the input normalization: assuming mean and std \(0.5"):
        vit_fast.from_timm(file, backend="sdpa", num_heads=3, act_layer="quick_gelu")


def test_hf_loader_points_a_timm_directory_to_from_timm(tmp_path):
    hub = _hub_dir(tmp_path / "hub", _source())
    with pytest.raises(ValueError, match=r"is a timm checkpoint directory \(its config.json names the timm "
                                         r"architecture 'vit_tiny_patch16_224'\): load it with vit_fast.from_timm"):
        vit_fast.from_hf(hub)


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(architecture=5), r"expected \"architecture\" to name a timm model, got 5"),
    (lambda c: c["pretrained_cfg"].update(mean=[0.5, 0.5]), r"expected pretrained_cfg.mean in config.json to be 3 "
                                                            r"numbers, got \[0.5, 0.5\]"),
    (lambda c: c["pretrained_cfg"].update(input_size="224"), r"expected pretrained_cfg.input_size in config.json to "
                                                             r"be 3 numbers, got '224'"),
    (lambda c: c.update(pretrained_cfg=[1]), r"expected \"pretrained_cfg\" in config.json to be an object, got list"),
    (lambda c: c.update(model_args=[1]), r"expected \"model_args\" in config.json to be an object, got list"),
])
def test_bad_timm_config_is_one_line(tmp_path, no_timm, change, message):
    hub = _hub_dir(tmp_path / "hub", _source())
    cfg = json.loads((hub / "config.json").read_text())
    change(cfg)
    (hub / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message):
            vit_fast.load(hub)


def test_convert_a_timm_directory_from_the_command_line(tmp_path, no_timm, capsys):
    from vit_fast.cli import main

    source = _source()
    hub = _hub_dir(tmp_path / "hub", source)
    assert main(["convert", str(hub), str(tmp_path / "out")]) == 0
    converted = vit_fast.load(tmp_path / "out", backend="sdpa")
    assert converted.config.image_mean == pytest.approx(MEAN) and converted.config.img_size == (32, 48)
    _same(converted, source, torch.randn(2, 3, 32, 48))
    cfg = json.loads((hub / "config.json").read_text())
    cfg["pretrained_cfg"]["std"] = "wide"
    (hub / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["convert", str(hub), str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected pretrained_cfg.std in config.json to be 3 numbers, got 'wide'" in err[0], err
    assert not (tmp_path / "bad").exists()


def test_timm_directory_without_weights(tmp_path):
    hub = _hub_dir(tmp_path / "hub", _source())
    (hub / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has timm's config.json but no model.safetensors or "
                                                "pytorch_model.bin"):
        vit_fast.from_timm(hub)
    with pytest.raises(ValueError, match="is not a timm checkpoint directory"):
        vit_fast.from_timm(tmp_path)


# --- with timm: the architecture's own definition -------------------------------------------------------------

TIMM_CASES = {  # name: timm overrides that keep it small; each has a setting its weights do not show
    "vit_base_patch16_clip_quickgelu_224": dict(depth=2, img_size=64),  # quick GELU, eps 1e-5
    "vit_base_patch32_siglip_256": dict(depth=2, img_size=64),  # tanh GELU, attention pooling
    "vit_small_patch14_reg4_dinov2": dict(depth=2, img_size=(56, 42)),  # registers, layer scale, non-square
    "deit_tiny_distilled_patch16_224": dict(depth=2),
}


def _timm_hub(tmp_path, name, **kwargs):
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():  # move LayerNorm weights and biases off their 1 / 0 starts
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    save_for_hf(model, str(tmp_path / "hub"), safe_serialization=True, model_args=kwargs)
    return model, tmp_path / "hub"


@pytest.mark.parametrize("name", sorted(TIMM_CASES))
def test_timm_hub_dir_equals_timm(tmp_path, name):
    source, hub = _timm_hub(tmp_path, name, **TIMM_CASES[name])
    x = torch.randn(2, 3, *source.pretrained_cfg["input_size"][1:]) if "img_size" not in TIMM_CASES[name] else \
        torch.randn(2, 3, *source.patch_embed.img_size)
    for path in (hub, hub / "model.safetensors"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing assumed: heads, activation, eps and size come from timm
            model = vit_fast.load(path, backend="sdpa")
        with torch.no_grad():
            assert rel_err(model(x), source(x)) < LOADER_REL_ERR, path
        assert model.config.img_size == tuple(source.patch_embed.img_size)


def test_timm_hub_dir_of_a_post_norm_model_is_refused(tmp_path):
    _, hub = _timm_hub(tmp_path, "vit_base_patch16_rpn_224", depth=1)
    with pytest.raises(ValueError, match=r"\(vit_base_patch16_rpn_224\): this timm model's structure is not the "
                                         r"plain pre-norm ViT's: blocks ResPostBlock"):
        vit_fast.load(hub)


def test_timm_hub_dir_of_an_unknown_architecture(tmp_path):
    pytest.importorskip("timm")
    hub = _hub_dir(tmp_path / "hub", _source(), architecture="vit_from_the_future_224")
    with pytest.raises(ValueError, match=r"names the timm architecture 'vit_from_the_future_224', which timm "):
        vit_fast.load(hub)
