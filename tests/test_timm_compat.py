"""timm's names on the model (vit_fast/timm_compat.py): attributes, head methods, and a `pretrained_cfg` whose timm
eval transform prepares images as vit_fast.preprocess does."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err
from vit_fast.preprocess import preprocess


def _model(**kw):
    base = dict(img_size=(32, 48), depth=1, embed_dim=64, num_heads=2, mlp_dim=96, num_classes=5,
                labels=list("abcde"))
    return randomize_(vit_fast.create("vit_ti_16", backend="sdpa", **{**base, **kw})).eval()


def test_attributes_read_the_config():
    model = _model(reg_tokens=2, no_embed_class=True)
    assert (model.embed_dim, model.num_classes, model.num_prefix_tokens, model.has_class_token) == (64, 5, 3, True)
    assert model.no_embed_class and model.global_pool == "token" and model.get_classifier() is model.head
    pe = model.patch_embed
    assert (pe.patch_size, pe.img_size, pe.grid_size, pe.num_patches) == ((16, 16), (32, 48), (2, 3), 6)
    assert _model(global_pool="avg").global_pool == "avg"


@pytest.mark.parametrize("kw", [{}, {"dist_token": True}, {"embedding_head": True, "head_bias": False}])
def test_reset_classifier(kw):
    """reset_classifier(0): pooled features (the mean of both tokens for a distilled model), labels gone; a new
    class count: a new head of that size on the model's dtype, the rest of the model unchanged."""
    model = _model(**kw).to(torch.float64)
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.config.labels is None and not model.config.embedding_head
        assert rel_err(model(x), pooled) <= LOADER_REL_ERR
        model.reset_classifier(7)
        head = model.get_classifier()
        assert head.weight.shape == (7, 64) and head.weight.dtype == torch.float64 and model(x).shape == (2, 7)
    with pytest.raises(ValueError, match="reset_classifier expects num_classes >= 0, got -1"):
        model.reset_classifier(-1)
    with pytest.raises(ValueError, match="cannot change the pooling \\('token'\\) to 'avg'"):
        model.reset_classifier(0, global_pool="avg")


def _timm_eval(image: Image.Image, data: dict) -> torch.Tensor:
    """timm's eval transform (transforms_factory.transforms_imagenet_eval) for crop modes center and squash,
    without normalization, written out with Pillow: resize to floor(size / crop_pct) (the shortest side, or both
    sides for squash), then torchvision's center crop."""
    _, h, w = data["input_size"]
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[data["interpolation"]]
    if data["crop_mode"] == "squash":
        image = image.resize((math.floor(w / data["crop_pct"]), math.floor(h / data["crop_pct"])), resample)
    else:
        assert h == w
        s = math.floor(h / data["crop_pct"])
        iw, ih = image.size
        size = (s, int(s * ih / iw)) if iw <= ih else (int(s * iw / ih), s)
        image = image.resize(size, resample)
    iw, ih = image.size
    top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
    return torch.from_numpy(np.array(image.crop((left, top, left + w, top + h)))).permute(2, 0, 1)


@pytest.mark.parametrize("kw", [
    dict(img_size=224, crop_pct=0.9),  # timm's own arithmetic
    dict(img_size=224, crop_pct=0.875, interpolation="bilinear"),
    dict(img_size=224, resize_mode="squash"),  # HF's ViT and SigLIP processors
    dict(img_size=518, patch_size=14, input_size=224, resize_size=(256,)),  # HF's DINOv2 processor
    dict(img_size=224, resize_size=(400,)),  # a ratio whose plain quotient floors one pixel short
    dict(img_size=224, resize_mode="squash_crop", resize_size=(256, 256)),  # HF's DeiT processor
])
def test_pretrained_cfg_gives_timms_transform_vit_fasts_pixels(kw):
    """timm.data.resolve_model_data_config(model) reads pretrained_cfg: its eval transform, run on images whose
    crop offsets are whole, gives the pixels vit_fast.preprocess gives, and its normalization is the model's."""
    model = vit_fast.create("vit_ti_16", depth=1, **kw)
    data = model.pretrained_cfg
    assert data["mean"] == model.config.image_mean and data["std"] == model.config.image_std
    assert data["input_size"] == (3, *model.config.eval_size) and model.default_cfg == data
    for hw in ((300, 400), (400, 300), (256, 256)):
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8))
        ours, theirs = preprocess(image, model.config), _timm_eval(image, data)
        assert ours.shape == theirs.shape and (ours.int() - theirs.int()).abs().max() <= 1, (hw, kw)
        if model.config.crop_offset == "round":
            assert torch.equal(ours, theirs)


def test_pretrained_cfg_with_timms_data_config():
    """Where timm imports: resolve_model_data_config(model) returns the model's own settings, not timm's
    defaults (224 px, ImageNet statistics)."""
    data_mod = pytest.importorskip("timm.data")
    model = vit_fast.create("vit_ti_16", depth=1, img_size=64, crop_pct=0.875, image_mean=(0.1, 0.2, 0.3))
    resolved = data_mod.resolve_model_data_config(model)
    assert resolved["input_size"] == (3, 64, 64) and tuple(resolved["mean"]) == (0.1, 0.2, 0.3)
    assert resolved["crop_pct"] == 0.875
