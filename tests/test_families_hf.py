"""Model families against Hugging Face modules with random weights: CLIP vision (with and without projection),
DINOv2 (SwiGLU, registers, classifier), SigLIP vision (attention-pool head), DeiT (distilled, [CLS]'s head only,
plain) — live modules and `save_pretrained` directories, at non-native, non-square resolutions, on every backend; the
`hf_outputs=True` drop-in; `forward_intermediates`; position-embedding resampling bit for bit; presets'
parameter counts; the errors."""
import json
import logging

import pytest
import torch

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, MODEL_TOL, rel_err

transformers = pytest.importorskip("transformers")
T = transformers


def _kw(hidden, layers, heads, image, patch):
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, image_size=image,
                patch_size=patch)


# name -> (builder(hidden, layers, heads) , HF's primary output, HF forward kwargs). Image 28/32, patch 14/16/8.
FAMILIES = {
    "clip_proj": (lambda d, n, h: T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(
        **_kw(d, n, h, 28, 14), intermediate_size=2 * d, projection_dim=24)), "image_embeds", True),
    "clip": (lambda d, n, h: T.CLIPVisionModel(T.CLIPVisionConfig(
        **_kw(d, n, h, 32, 16), intermediate_size=96)), "pooler_output", True),
    "dinov2_cls_swiglu": (lambda d, n, h: T.Dinov2ForImageClassification(T.Dinov2Config(
        **_kw(d, n, h, 28, 14), mlp_ratio=2, num_labels=5, use_swiglu_ffn=True)), "logits", False),
    "dinov2": (lambda d, n, h: T.Dinov2Model(T.Dinov2Config(
        **_kw(d, n, h, 28, 14), mlp_ratio=3)), "pooler_output", False),
    "dinov2_reg": (lambda d, n, h: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
        **_kw(d, n, h, 28, 14), mlp_ratio=2, num_register_tokens=3)), "pooler_output", False),
    # the classifier pools [CLS] + the mean of the patch tokens only (registers left out)
    "dinov2_reg_cls": (lambda d, n, h: T.Dinov2WithRegistersForImageClassification(T.Dinov2WithRegistersConfig(
        **_kw(d, n, h, 28, 14), mlp_ratio=3, num_register_tokens=2, num_labels=4)), "logits", False),
    "siglip": (lambda d, n, h: T.SiglipVisionModel(T.SiglipVisionConfig(
        **_kw(d, n, h, 32, 16), intermediate_size=96)), "pooler_output", True),
    "deit_distilled": (lambda d, n, h: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(
        **_kw(d, n, h, 32, 16), intermediate_size=64, num_labels=3)), "logits", True),
    # the distillation token without its head: logits from [CLS] alone
    "deit_cls": (lambda d, n, h: T.DeiTForImageClassification(T.DeiTConfig(
        **_kw(d, n, h, 32, 16), intermediate_size=64, num_labels=4)), "logits", True),
    # num_labels 0: identity heads; [CLS] alone, and the mean of [CLS] and the distillation token with the teacher
    "deit_cls_headless": (lambda d, n, h: T.DeiTForImageClassification(T.DeiTConfig(
        **_kw(d, n, h, 32, 16), intermediate_size=64, num_labels=0)), "logits", True),
    "deit_distilled_headless": (lambda d, n, h: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(
        **_kw(d, n, h, 32, 16), intermediate_size=64, num_labels=0)), "logits", True),
    "deit_model": (lambda d, n, h: T.DeiTModel(T.DeiTConfig(
        **_kw(d, n, h, 32, 16), intermediate_size=64)), "pooler_output", True),
}
# non-native and non-square: 3x4 / 2x3 patch grids
SIZES = {14: (42, 56), 16: (32, 48), 8: (24, 40)}


def _hf(family, hidden=160, layers=2, heads=2):
    build, _, _ = FAMILIES[family]
    return randomize_(build(hidden, layers, heads)).eval()


def _reference(hf, family, x):
    _, primary, interpolate = FAMILIES[family]
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True, **({"interpolate_pos_encoding": True} if interpolate else {}))
    return getattr(ref, primary), getattr(ref, "last_hidden_state", None), ref


def _x(hf, batch=3):
    return torch.randn(batch, 3, *SIZES[hf.config.patch_size])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_live_module(family):
    """Head dim 80 (160 / 2 heads), batch 3, a non-native non-square resolution; torch and sdpa backends."""
    hf = _hf(family)
    model = vit_fast.from_hf(hf, backend="torch")
    x = _x(hf)
    primary, last_hidden, _ = _reference(hf, family, x)
    for backend in ("torch", "sdpa"):
        model.set_backend(backend)
        with torch.no_grad():
            out, tokens = model(x), model.forward_features(x)
        assert out.shape == primary.shape
        assert rel_err(out, primary) <= LOADER_REL_ERR, backend
        if last_hidden is not None:
            assert rel_err(tokens, last_hidden) <= LOADER_REL_ERR, backend


# family -> width of its tiny triton config (160 / 2 heads: head dim 80; 64: head dim 32); plain DINOv2 and DeiTModel
# share every triton code path with the families here (checked on torch/sdpa above)
TRITON_WIDTH = {"clip_proj": 160, "clip": 64, "dinov2_cls_swiglu": 64, "dinov2_reg": 64, "dinov2_reg_cls": 64,
                "siglip": 160, "deit_distilled": 160, "deit_cls": 64}


@pytest.mark.parametrize("family", sorted(TRITON_WIDTH))
def test_triton_backend(family):
    """The fused kernels (the interpreter on CPU) on a tiny config of each family, 1 layer, batch 3, a
    non-native grid. model(x) runs the pruned last block for [CLS]-pooled models, the full path otherwise."""
    hf = _hf(family, hidden=TRITON_WIDTH[family], layers=1, heads=2)
    model = vit_fast.from_hf(hf, backend="triton")
    p = hf.config.patch_size
    x = torch.randn(3, 3, 2 * p, 3 * p)
    primary, last_hidden, _ = _reference(hf, family, x)
    atol, rtol = MODEL_TOL[torch.float32]
    with torch.no_grad():
        torch.testing.assert_close(model(x), primary, atol=atol, rtol=rtol)
        if family in ("clip", "deit_distilled"):  # forward_features beside the pruned path
            torch.testing.assert_close(model.forward_features(x), last_hidden if last_hidden is not None
                                       else model.norm(_reference(hf, family, x)[2].hidden_states[-1]),
                                       atol=atol, rtol=rtol)


def test_native_size_that_is_not_a_multiple_of_the_patch():
    """SigLIP so400m/14 at 384 px has 27x27 patches and never sees the last 6 rows and columns of pixels (HF's and
    timm's stride-14 convolution drops them). In small: a 30 px native size with patch 14 (2x2 patches, 2 px
    dropped), head dim 80, against HF at that size on every backend, the dropped pixels NaN (never read); uint8
    NHWC pixels through the same crop; other sizes that are not multiples are refused."""
    hf = randomize_(T.SiglipVisionModel(T.SiglipVisionConfig(**_kw(160, 1, 2, 30, 14), intermediate_size=96))).eval()
    model = vit_fast.from_hf(hf, backend="torch")
    assert model.config.img_size == (30, 30) and model.config.grid_size == (2, 2)
    x = torch.randn(3, 3, 30, 30)
    with torch.no_grad():
        ref = hf(x)
    poisoned = x.clone()
    poisoned[..., 28:, :] = float("nan")
    poisoned[..., :, 28:] = float("nan")
    pixels = torch.randint(0, 256, (2, 30, 30, 3), dtype=torch.uint8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.config.image_mean, model.config.image_std))
    normalized = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
    atol, rtol = MODEL_TOL[torch.float32]
    for backend in ("torch", "sdpa", "triton"):
        model.set_backend(backend)
        with torch.no_grad():
            out, tokens = model(poisoned), model.forward_features(poisoned)
            from_pixels, from_floats = model(pixels), model(normalized)
        for ours, theirs in ((out, ref.pooler_output), (tokens, ref.last_hidden_state), (from_pixels, from_floats)):
            assert torch.isfinite(ours).all(), backend
            torch.testing.assert_close(ours, theirs, atol=atol, rtol=rtol)
        if backend != "triton":
            assert rel_err(out, ref.pooler_output) <= LOADER_REL_ERR, backend
    maps = model.forward_intermediates(poisoned, indices=1, intermediates_only=True)
    assert maps[0].shape == (3, 160, 2, 2) and torch.isfinite(maps[0]).all()
    with pytest.raises(ValueError, match=r"multiples of the patch size 14 \(or the model's 30x30\); got 30x31"):
        model(torch.randn(1, 3, 30, 31))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hf_outputs_drop_in(family, tmp_path):
    """`hf_outputs=True`: HF's output class, every field, hidden_states and attentions included (against HF's
    eager attention, which forms them); from the live module and from its `save_pretrained` directory (which also
    checks the directory loader)."""
    hf = _hf(family, hidden=64, layers=2, heads=2)
    hf.save_pretrained(tmp_path)
    source_config = hf.config.to_dict()
    x = _x(hf)
    interpolate = {"interpolate_pos_encoding": True} if FAMILIES[family][2] else {}
    _, _, ref = _reference(hf, family, x)
    hf.set_attn_implementation("eager")
    with torch.no_grad():
        ref_attn = hf(x, output_hidden_states=True, output_attentions=True, **interpolate)
    hf.set_attn_implementation("sdpa")
    for source in (hf, tmp_path):
        wrapper = vit_fast.from_hf(source, backend="sdpa", hf_outputs=True)
        for asked, want in (({}, ref), ({"output_attentions": True}, ref_attn)):
            with torch.no_grad():
                out = wrapper(pixel_values=x, output_hidden_states=True, **asked, **interpolate)
            assert type(out) is type(want)
            assert set(out.keys()) == set(want.keys())
            for key in want.keys():
                if key in ("hidden_states", "attentions"):
                    assert len(out[key]) == len(want[key]) == hf.config.num_hidden_layers + (key == "hidden_states")
                    for mine, theirs in zip(out[key], want[key]):
                        assert mine.shape == theirs.shape and rel_err(mine, theirs) <= LOADER_REL_ERR, key
                else:
                    assert rel_err(out[key], want[key]) <= LOADER_REL_ERR, key
        if source is hf:  # the wrapper holds its own config: transformers' init writes attention fields into it
            assert wrapper.config is not hf.config and wrapper.config.to_dict() == source_config
    assert hf.config.to_dict() == source_config


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_drop_in_save_pretrained_writes_the_source_class(family, tmp_path):
    """`save_pretrained` on the drop-in writes the source class's checkpoint: transformers' from_pretrained of that
    class gives the source's outputs, and vit_fast.load the fast model's."""
    hf = _hf(family, hidden=64, layers=2, heads=2)
    x = _x(hf)
    interpolate = {"interpolate_pos_encoding": True} if FAMILIES[family][2] else {}
    wrapper = vit_fast.from_hf(hf, backend="sdpa", hf_outputs=True)
    wrapper.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [type(hf).__name__]
    kwargs = {"add_pooling_layer": hf.pooler is not None} if type(hf).__name__ == "DeiTModel" else {}
    back = type(hf).from_pretrained(tmp_path, **kwargs).eval()
    with torch.no_grad():
        want, got = hf(x, **interpolate), back(x, **interpolate)
        for key in want.keys():
            assert rel_err(got[key], want[key]) <= LOADER_REL_ERR, key
        assert rel_err(vit_fast.load(tmp_path)(x), wrapper.vit_fast(x)) <= LOADER_REL_ERR


def test_hf_outputs_size_check_and_tuple():
    hf = _hf("clip", hidden=64, layers=1, heads=2)
    wrapper = vit_fast.from_hf(hf, backend="torch", hf_outputs=True)
    with pytest.raises(ValueError, match=r"input image size \(32\*48\) doesn't match model \(32\*32\)"):
        wrapper(pixel_values=torch.randn(1, 3, 32, 48))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = wrapper(pixel_values=x, return_dict=False)
        assert isinstance(out, tuple) and rel_err(out[1], hf(x).pooler_output) <= LOADER_REL_ERR
    with torch.no_grad():  # attentions last in the tuple, as HF's
        pooled, attentions = wrapper(pixel_values=x, output_attentions=True, return_dict=False)[1:]
    assert rel_err(pooled, hf(x).pooler_output) <= LOADER_REL_ERR and attentions[0].shape == (2, 2, 5, 5)
    with pytest.raises(ValueError, match="labels"):
        wrapper(pixel_values=x, labels=torch.zeros(2, dtype=torch.long))
    with torch.no_grad():  # HF's optional arguments left at None are taken, as HF's forward takes them
        assert rel_err(wrapper(pixel_values=x, head_mask=None, bool_masked_pos=None).pooler_output,
                       hf(x).pooler_output) <= LOADER_REL_ERR
    with pytest.raises(ValueError, match=r"unexpected arguments \['head_mask'\]: the drop-in takes pixel_values"):
        wrapper(pixel_values=x, head_mask=torch.ones(2))
    wrapper.config.output_hidden_states = True  # a flag left unset in the call follows the config
    with torch.no_grad():
        assert len(wrapper(pixel_values=x).hidden_states) == 2 and wrapper(x, False).hidden_states is None


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_pipeline_image_classification(monkeypatch):
    """transformers.pipeline runs on the drop-in and ranks the labels as the source model does, without logging
    that the model is not supported (HFDropIn is registered with AutoModelForImageClassification; taken out of
    that registry, the pipeline logs the line, which shows that the check below sees it)."""
    from PIL import Image

    from vit_fast.hf_compat import HFDropInConfig

    hf = _hf("dinov2_cls_swiglu", hidden=64, layers=1, heads=2)
    hf.config.id2label = {i: f"class{i}" for i in range(5)}
    processor = getattr(T, "BitImageProcessorPil", T.BitImageProcessor)(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28})
    image = Image.open(vit_fast.__path__[0] + "/assets/cat.jpg")
    wrapper = vit_fast.from_hf(hf, backend="sdpa", hf_outputs=True)
    records = _Records()
    logging.getLogger("transformers.pipelines.base").addHandler(records)
    try:
        ours = T.pipeline("image-classification", model=wrapper, image_processor=processor)(image, top_k=5)
        assert not [m for m in records.messages if "not supported" in m]
        theirs = T.pipeline("image-classification", model=hf, image_processor=processor)(image, top_k=5)
        assert [r["label"] for r in ours] == [r["label"] for r in theirs]
        assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(ours, theirs))
        monkeypatch.delitem(T.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING._extra_content, HFDropInConfig)
        T.pipeline("image-classification", model=wrapper, image_processor=processor)
        assert any("The model 'HFDropIn' is not supported for image-classification" in m for m in records.messages)
    finally:
        logging.getLogger("transformers.pipelines.base").removeHandler(records)


@pytest.mark.parametrize("family,antialias", [("dinov2", False), ("dinov2_reg", True)])
@pytest.mark.parametrize("size", [(42, 56), (70, 28), (14, 14)])
def test_dinov2_pos_embed_resampling_bit_exact(family, antialias, size):
    """DINOv2 resamples on every call (HF: plain bicubic; with registers: antialiased): the same table, bit for
    bit, whatever the grid."""
    hf = _hf(family, hidden=64, layers=1, heads=2)
    model = vit_fast.from_hf(hf, backend="torch")
    assert model.config.pos_embed_antialias is antialias
    grid = (size[0] // 14, size[1] // 14)
    emb = hf.embeddings
    with torch.no_grad():
        theirs = emb.interpolate_pos_encoding(torch.zeros(1, 1 + grid[0] * grid[1], 64), *size)
        ours = model.pos_embed_for(grid)
    assert torch.equal(ours[0, -grid[0] * grid[1]:], theirs[0, 1:])


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_forward_intermediates(backend):
    """timm's meaning: block outputs (optionally through the final norm), prefix tokens split off, NCHW maps."""
    layers = 3 if backend == "sdpa" else 2
    hf = _hf("dinov2_reg", hidden=64, layers=layers, heads=2)
    model = vit_fast.from_hf(hf, backend=backend)
    x = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        final, maps = model.forward_intermediates(x, indices=[0, -1], norm=True)
        raw = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True,
                                          return_prefix_tokens=True)
    tol = LOADER_REL_ERR if backend == "sdpa" else 1e-4
    assert rel_err(final, ref.last_hidden_state) <= tol
    assert [tuple(m.shape) for m in maps] == [(2, 64, 3, 4)] * 2
    for i, m in zip([1, layers], maps):
        expected = hf.layernorm(ref.hidden_states[i])[:, 4:].reshape(2, 3, 4, 64).permute(0, 3, 1, 2)
        assert rel_err(m, expected) <= tol
    (patches, prefix), = raw
    assert rel_err(patches, ref.hidden_states[-1][:, 4:]) <= tol
    assert rel_err(prefix, ref.hidden_states[-1][:, :4]) <= tol
    # stop_early (timm's): no block after the last one taken runs, the final features are that block's, normed
    ran = []
    hook = model.blocks[-1].register_forward_hook(lambda *a: ran.append(1))
    with torch.no_grad():
        early, (first,) = model.forward_intermediates(x, indices=[0], stop_early=True, output_fmt="NLC")
    hook.remove()
    assert rel_err(early, hf.layernorm(ref.hidden_states[1])) <= tol
    assert rel_err(first, ref.hidden_states[1][:, 4:]) <= tol and not ran


def test_forward_intermediates_norm_of_an_hf_clip_tower():
    """HF's CLIP applies post_layernorm to the pooled [CLS] only (vit-fast's fc_norm); timm's CLIP holds the same
    weights as its final norm, which norm=True applies to every token: the same maps from the HF-loaded model as
    timm's would give, and the final features through it too."""
    hf = _hf("clip", hidden=64, layers=2, heads=2)
    model = vit_fast.from_hf(hf, backend="sdpa")
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True, interpolate_pos_encoding=True)
        final, (last,) = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NLC")
        plain = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", intermediates_only=True)[0]
    normed = hf.post_layernorm(ref.hidden_states[-1])
    assert rel_err(last, normed[:, 1:]) <= LOADER_REL_ERR and rel_err(final, normed) <= LOADER_REL_ERR
    assert rel_err(plain, ref.hidden_states[-1][:, 1:]) <= LOADER_REL_ERR


def test_forward_intermediates_without_prefix_tokens_returns_maps():
    """SigLIP has no prefix token: return_prefix_tokens gives the maps alone, as timm does."""
    model = vit_fast.from_hf(_hf("siglip", hidden=64, layers=2, heads=2), backend="sdpa")
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(2, 3, 32, 48), indices=2, return_prefix_tokens=True,
                                           intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 2, 3)] * 2


def test_forward_intermediates_errors():
    model = vit_fast.create("vit_ti_16", depth=2, embed_dim=32, num_heads=2, mlp_dim=64, img_size=32)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="block index 2 out of range for a model with 2 blocks"):
        model.forward_intermediates(x, indices=[0, 2])
    with pytest.raises(ValueError, match=r"indices=3: an int asks for the last n blocks, 1 <= n <= 2"):
        model.forward_intermediates(x, indices=3)
    with pytest.raises(ValueError, match=r"output_fmt must be one of \('NCHW', 'NLC'\); got 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# preset -> (HF class, config kwargs, parameters HF holds that vit-fast does not need)
_HF_SOURCES = {
    "clip_b_16": ("CLIPVisionModelWithProjection", "CLIPVisionConfig", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16,
        projection_dim=512)),
    "clip_l_14": ("CLIPVisionModelWithProjection", "CLIPVisionConfig", dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=14,
        projection_dim=768)),
    "dinov2_s_14": ("Dinov2Model", "Dinov2Config", dict(hidden_size=384, num_attention_heads=6)),
    "dinov2_b_14": ("Dinov2Model", "Dinov2Config", dict(hidden_size=768, num_attention_heads=12)),
    "dinov2_l_14": ("Dinov2Model", "Dinov2Config", dict(hidden_size=1024, num_hidden_layers=24,
                                                        num_attention_heads=16)),
    "dinov2_g_14": ("Dinov2Model", "Dinov2Config", dict(hidden_size=1536, num_hidden_layers=40,
                                                        num_attention_heads=24, use_swiglu_ffn=True)),
    "dinov2_b_14_reg4": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", dict(
        hidden_size=768, num_attention_heads=12, num_register_tokens=4, patch_size=14)),
    "siglip_b_16": ("SiglipVisionModel", "SiglipVisionConfig", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16)),
    "siglip_so400m_14": ("SiglipVisionModel", "SiglipVisionConfig", dict(
        hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304, patch_size=14)),
    "siglip_so400m_14_384": ("SiglipVisionModel", "SiglipVisionConfig", dict(  # 729 patches of 378x378 px
        hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304, patch_size=14)),
    "deit_b_16_distilled": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", dict(num_labels=1000)),
}


@pytest.mark.parametrize("preset", sorted(_HF_SOURCES))
def test_preset_parameter_counts_equal_hf(preset):
    """Built on the meta device (no memory): the preset has exactly the source model's parameters, less those
    inference never reads (DINOv2's mask token) or that are folded at load (DINOv2's LayerScale vectors, into
    the out-projection and FC2; the registers model's [CLS] position embedding, into the class token)."""
    cls_name, cfg_name, kw = _HF_SOURCES[preset]
    config = vit_fast.get_config(preset)
    with torch.device("meta"):
        hf = getattr(T, cls_name)(getattr(T, cfg_name)(image_size=config.img_size[0], **kw))
        ours = vit_fast.VisionTransformer(config, backend="torch")
    unused = 0
    if preset.startswith("dinov2"):
        unused += config.embed_dim  # mask_token
        unused += 2 * config.embed_dim * config.depth  # LayerScale, folded
    if config.reg_tokens:
        unused += config.embed_dim  # [CLS] position embedding, folded into cls_token
    assert _count(ours) == _count(hf) - unused


@pytest.mark.parametrize("preset,expected", [
    ("deit_b_16_distilled", 87_338_192),  # timm deit_base_distilled_patch16_224
])
def test_preset_parameter_counts_equal_timm(preset, expected):
    with torch.device("meta"):
        model = vit_fast.VisionTransformer(vit_fast.get_config(preset), backend="torch")
    assert _count(model) == expected


# ---- errors -------------------------------------------------------------------------------------------------


def test_siglip_without_head_rejected():
    hf = T.SiglipVisionModel(T.SiglipVisionConfig(**_kw(32, 1, 2, 32, 16), intermediate_size=64,
                                                  vision_use_head=False))
    with pytest.raises(ValueError, match=r"SigLIP without its attention-pooling head \(vision_use_head=False\)"):
        vit_fast.from_hf(hf)


def test_unsupported_activation_rejected():
    hf = T.CLIPVisionModel(T.CLIPVisionConfig(**_kw(32, 1, 2, 32, 16), intermediate_size=64, hidden_act="relu"))
    with pytest.raises(ValueError, match=r"clip_vision_model: hidden_act 'relu' is not supported; expected one of"):
        vit_fast.from_hf(hf)
    hf = T.Dinov2Model(T.Dinov2Config(**_kw(32, 1, 2, 28, 14), hidden_act="relu"))
    with pytest.raises(ValueError, match=r"dinov2: hidden_act 'relu' is not supported; expected one of"):
        vit_fast.from_hf(hf)


def test_missing_fused_projection_rejected(tmp_path):
    from safetensors.torch import save_file

    hf = _hf("dinov2_cls_swiglu", hidden=32, layers=1, heads=2)
    hf.save_pretrained(tmp_path)
    state = {}
    for k, v in hf.state_dict().items():  # the gate projection without its up projection, in either HF layout
        if ".mlp.weights_in." in k:  # older transformers (5.17) save the two fused, gate rows first
            state[k.replace("weights_in", "gate_proj")] = v.chunk(2, dim=0)[0].contiguous()
        elif "up_proj" not in k:
            state[k] = v.contiguous()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.(weight|bias): the checkpoint holds only 1 of the 2 "
                                         r"projections fused there"):
        vit_fast.load(tmp_path)


def test_no_architectures_for_drop_in(tmp_path):
    import json

    hf = _hf("dinov2", hidden=32, layers=1, heads=2)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert vit_fast.from_hf(tmp_path).config.reg_tokens == 0  # the plain model does not need it
    with pytest.raises(ValueError, match="config.json names no architectures: cannot tell which outputs"):
        vit_fast.from_hf(tmp_path, hf_outputs=True)


@pytest.mark.parametrize("overrides,message", [
    (dict(dist_token=True, class_token=False, global_pool="avg"), "dist_token needs class_token"),
    (dict(dist_token=True, global_pool="avg"), "dist_token needs global_pool 'cls', got 'avg'"),
    (dict(class_token=False), "global_pool 'cls' needs class_token"),
    (dict(act_layer="relu"), r"act_layer must be one of \('gelu', 'gelu_tanh', 'quick_gelu'\), got 'relu'"),
    (dict(mlp_type="glu"), r"mlp_type must be one of \('mlp', 'swiglu'\), got 'glu'"),
    (dict(reg_tokens=-1), "reg_tokens must be >= 0, got -1"),
    (dict(global_pool="map", representation_size=32), "global_pool 'map' does not combine with representation_size"),
    (dict(global_pool="cls_avg", fc_norm=True), "fc_norm does not combine with global_pool 'cls_avg'"),
    (dict(dist_token=True, representation_size=32), "dist_token with representation_size is HF's DeiTModel pooler"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        vit_fast.ViTConfig(**overrides)


# ---- serving embeddings ---------------------------------------------------------------------------------------


def test_predictor_clip_embeddings_normalized(tmp_path):
    """A CLIP tower with projection: the predictor's embedding is image_embeds (HF), unit-norm on request, and no
    labels are made up from the projection."""
    from PIL import Image

    hf = _hf("clip_proj", hidden=64, layers=1, heads=2)
    model = vit_fast.from_hf(hf, backend="sdpa", img_size=28)
    predictor = vit_fast.Predictor(model, device="cpu")
    image = Image.open(vit_fast.__path__[0] + "/assets/cat.jpg")
    raw, unit = (predictor.predict([image], return_embeddings=True, normalize_embeddings=n)[0] for n in (False, True))
    assert raw["labels"] == [] and raw["error"] is None
    pixels = predictor.prepare(image).unsqueeze(0)
    with torch.no_grad():
        ref = hf(model_normalize(pixels, model.config)).image_embeds[0]
    assert rel_err(torch.tensor(raw["embedding"]), ref) <= 1e-5
    assert rel_err(torch.tensor(unit["embedding"]), ref / ref.norm()) <= 1e-5


def model_normalize(pixels, config):
    mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def test_cli_predict_embeddings(tmp_path, capsys):
    import json

    from vit_fast.cli import main

    hf = _hf("dinov2", hidden=32, layers=1, heads=2)
    hf.save_pretrained(tmp_path)
    cat = vit_fast.__path__[0] + "/assets/cat.jpg"
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")  # an error record in its JSON line; a missing file: exit 2
    assert main(["predict", cat, str(tmp_path / "broken.jpg"), "--checkpoint", str(tmp_path), "--embeddings",
                 "--normalize", "--device", "cpu", "--backend", "sdpa"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines[0]["embedding"]) == 32 and abs(torch.tensor(lines[0]["embedding"]).norm() - 1) < 1e-5
    assert "error" in lines[1]
    assert main(["predict", cat, "--normalize"]) == 2
    assert "--normalize applies to embeddings: add --embeddings" in capsys.readouterr().err


def test_readme_model_families_example():
    """The README's model-family snippet, as written, on tiny random-weight HF models."""
    clip_vision_with_projection = _hf("clip_proj", hidden=32, layers=4, heads=2)
    dinov2_classifier = _hf("dinov2_cls_swiglu", hidden=32, layers=1, heads=2)
    images = torch.randn(2, 3, 28, 28)

    model = vit_fast.from_hf(clip_vision_with_projection)
    embeds = model(images)
    tokens = model.forward_features(images)
    final, maps = model.forward_intermediates(images, indices=[-4, -1], norm=True)

    hf_like = vit_fast.from_hf(dinov2_classifier, hf_outputs=True)
    out = hf_like(pixel_values=images, output_hidden_states=True)

    with torch.no_grad():
        ref = clip_vision_with_projection(images)
        assert rel_err(embeds, ref.image_embeds) <= LOADER_REL_ERR
        assert rel_err(tokens, ref.last_hidden_state) <= LOADER_REL_ERR
        assert [tuple(m.shape) for m in maps] == [(2, 32, 2, 2)] * 2  # final: through post_layernorm, as timm's
        assert rel_err(final, clip_vision_with_projection.vision_model.post_layernorm(tokens)) <= LOADER_REL_ERR
        assert rel_err(out.logits, dinov2_classifier(images).logits) <= LOADER_REL_ERR
        assert len(out.hidden_states) == 2


@pytest.mark.parametrize("family", ["siglip", "dinov2_reg", "deit_distilled"])
def test_vit_fast_checkpoint_roundtrip(family, tmp_path):
    """vit_fast.save / load keep every family switch (the config travels in vit_fast.json)."""
    model = vit_fast.from_hf(_hf(family, hidden=32, layers=1, heads=2), backend="sdpa")
    vit_fast.save(model, tmp_path / "ckpt")
    again = vit_fast.load(tmp_path / "ckpt", backend="sdpa")
    assert again.config == model.config
    x = torch.randn(2, 3, 28, 42) if model.config.patch_size == 14 else torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_infer_normalize_needs_embeddings(tmp_path, capsys):
    """Checked before Ray starts."""
    from vit_fast.cli import main
    from vit_fast.serving.batch import run_batch_inference

    assert main(["infer", str(tmp_path), "--normalize"]) == 2
    assert "--normalize applies to embeddings: add --embeddings" in capsys.readouterr().err
    with pytest.raises(ValueError, match="normalize_embeddings applies to embeddings: pass embeddings=True"):
        run_batch_inference(str(tmp_path), str(tmp_path / "out.parquet"), normalize_embeddings=True)
