"""timm compatibility of `vit_fast.from_timm`: golden outputs of real timm models, and live timm where it imports.

The golden files (tests/data/timm_golden/, written by tests/make_timm_golden.py in a separate venv holding timm)
are what CI checks on the CPU-only machines, where timm cannot be installed. The live tests build timm models
directly and run wherever `import timm` works (the GPU machines).
"""
import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, MODEL_TOL, assert_close, rel_err

GOLDEN = Path(__file__).resolve().parent / "data" / "timm_golden"
HAS_CUDA = torch.cuda.is_available()


@lru_cache(maxsize=None)
def _cases() -> dict:
    return json.loads((GOLDEN / "cases.json").read_text())["cases"]


@lru_cache(maxsize=None)
def _golden() -> dict:
    return load_file(str(GOLDEN / "golden.safetensors"))


CASE_NAMES = sorted(json.loads((GOLDEN / "cases.json").read_text())["cases"])


def _outputs(model, x):
    with torch.no_grad():
        feats = model.forward_features(x)
        return dict(features=feats, pre_logits=model.forward_head(feats, pre_logits=True), logits=model(x))


def _check(model, x, expected: dict, bound: float = LOADER_REL_ERR):
    got = _outputs(model, x)
    for key, ref in expected.items():
        out = got[key].float().cpu()
        assert out.shape == ref.shape, f"{key}: shape {tuple(out.shape)}, timm {tuple(ref.shape)}"
        err = rel_err(out, ref.float().cpu())
        assert err <= bound, f"{key}: relative error {err:.2e} > {bound:.0e}"


# ---- golden: runs everywhere -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("case", CASE_NAMES)
def test_golden(case, backend, device):
    spec, golden = _cases()[case], _golden()
    model = vit_fast.from_timm(GOLDEN / spec["weights"], backend=backend, **spec["vit_fast_overrides"]).to(device)
    assert model.backend == backend
    x = golden[f"{case}.input"].to(device)
    _check(model, x, {k: golden[f"{case}.{k}"] for k in ("logits", "features", "pre_logits")})


@pytest.mark.parametrize("case", CASE_NAMES)
def test_golden_config_inferred(case):
    """Everything but the overrides (heads, a non-square size) comes from the timm state dict."""
    spec = _cases()[case]
    config = vit_fast.from_timm(GOLDEN / spec["weights"], backend="torch", **spec["vit_fast_overrides"]).config
    for field, want in spec["vit_fast_config"].items():
        got = getattr(config, field)
        assert (list(got) if isinstance(got, tuple) else got) == want, f"{field}: {got!r}, timm {want!r}"


@pytest.mark.parametrize("case", ["d_dynamic_up", "d_dynamic_down"])
def test_golden_resampling_is_discriminating(case):
    """Plain (non-antialiased) bicubic resampling must miss timm's output: the golden data can see the difference."""
    spec, golden = _cases()[case], _golden()
    model = vit_fast.from_timm(
        GOLDEN / spec["weights"], backend="torch", pos_embed_antialias=False, **spec["vit_fast_overrides"]
    )
    with torch.no_grad():
        out = model.forward_features(golden[f"{case}.input"])
    assert rel_err(out, golden[f"{case}.features"]) > 100 * LOADER_REL_ERR


def test_state_dict_keys_load_unchanged():
    """A loaded model's state dict has exactly timm's keys and values."""
    spec = _cases()["c_avg_fc_norm"]
    state = load_file(str(GOLDEN / spec["weights"]))
    model = vit_fast.from_timm(state, backend="torch", **spec["vit_fast_overrides"])
    mine = model.state_dict()
    assert sorted(mine) == sorted(state)
    for k, v in state.items():
        assert torch.equal(mine[k], v), k


def test_missing_hints_raise_clear_errors():
    a, b = _cases()["a_cls_square"], _cases()["b_nonsquare_hd80"]
    with pytest.raises(ValueError, match="num_heads"):  # width 64 is no preset: heads cannot be guessed
        vit_fast.from_timm(GOLDEN / a["weights"])
    with pytest.raises(ValueError, match="img_size"):  # 3x2 grid: the length of pos_embed cannot tell
        vit_fast.from_timm(GOLDEN / b["weights"], num_heads=2)
    with pytest.raises(ValueError):  # heads that do not divide the width
        vit_fast.from_timm(GOLDEN / a["weights"], num_heads=3)


def test_foreign_state_dict_rejected():
    spec = _cases()["a_cls_square"]
    state = load_file(str(GOLDEN / spec["weights"]))
    state["blocks.0.attn.unexpected"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected"):
        vit_fast.from_timm(state, num_heads=2)
    with pytest.raises(ValueError, match="timm"):
        vit_fast.from_timm({"embeddings.patch_embeddings.projection.weight": torch.zeros(8, 3, 4, 4)})


# ---- live timm: runs where timm imports ----------------------------------------------------------------------

try:
    import timm  # noqa: F401
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    TIMM_REASON = None
except Exception:  # ImportError, or torchvision failing to load its ops
    TIMM_REASON = "timm not importable (no torchvision CPU build on this machine)"
needs_timm = pytest.mark.skipif(TIMM_REASON is not None, reason=TIMM_REASON or "")

if HAS_CUDA:  # realistic sizes: 197 tokens, head dims 64 and 80, a dynamic model at 256x320
    LIVE = {
        "cls": (dict(img_size=224, patch_size=16, embed_dim=384, depth=2, num_heads=6), (224, 224)),
        "avg_hd80": (dict(img_size=(224, 168), patch_size=14, embed_dim=320, depth=2, num_heads=4,
                          global_pool="avg", qkv_bias=False), (224, 168)),
        "dynamic": (dict(img_size=224, patch_size=16, embed_dim=384, depth=2, num_heads=6,
                         dynamic_img_size=True), (256, 320)),
        "no_head": (dict(img_size=224, patch_size=16, embed_dim=192, depth=1, num_heads=3, num_classes=0),
                    (224, 224)),
    }
    BATCH = 4
else:
    LIVE = {
        "cls": (dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2), (32, 32)),
        "avg_hd80": (dict(img_size=(28, 42), patch_size=14, embed_dim=160, depth=1, num_heads=2,
                          global_pool="avg", qkv_bias=False), (28, 42)),
        "dynamic": (dict(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2,
                         dynamic_img_size=True), (24, 40)),
        "no_head": (dict(img_size=(16, 24), patch_size=8, embed_dim=96, depth=1, num_heads=1, num_classes=0),
                    (16, 24)),
    }
    BATCH = 2


def _timm_model(name, device):
    kwargs, size = LIVE[name]
    kwargs = {"num_classes": 11, **kwargs}
    model = randomize_(TimmViT(**kwargs)).eval().to(device)
    x = torch.randn(BATCH, 3, *size, device=device)
    return model, x, _outputs(model, x)


def _file_overrides(model) -> dict:
    return dict(num_heads=model.blocks[0].attn.num_heads, img_size=tuple(model.patch_embed.img_size))


@needs_timm
@pytest.mark.parametrize("name", sorted(LIVE))
def test_live_model_object(name, device):
    """A timm model passed as it is: heads, size and eps are read from the live model."""
    timm_model, x, ref = _timm_model(name, device)
    for backend in ("torch", "sdpa"):
        _check(vit_fast.from_timm(timm_model, backend=backend).to(device), x, ref)


@needs_timm
@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth_wrapped"])
@pytest.mark.parametrize("name", ["avg_hd80", "dynamic"])
def test_live_weight_files(name, fmt, device, tmp_path):
    timm_model, x, ref = _timm_model(name, device)
    state = {k: v.detach().cpu().contiguous() for k, v in timm_model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "model.pth"
        torch.save({"state_dict": state, "epoch": 3} if fmt == "pth_wrapped" else state, path)
    model = vit_fast.from_timm(path, backend="sdpa", **_file_overrides(timm_model)).to(device)
    _check(model, x, ref)


@needs_timm
@pytest.mark.skipif(not HAS_CUDA, reason="the triton backend is checked against timm on CUDA only (slow interpreted)")
@pytest.mark.parametrize("name", sorted(LIVE))
def test_live_triton_backend(name, device):
    timm_model, x, ref = _timm_model(name, device)
    got = _outputs(vit_fast.from_timm(timm_model, backend="triton").to(device), x)
    for key in ref:
        assert_close(got[key], ref[key], torch.float32, MODEL_TOL)
