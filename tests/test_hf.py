"""Equivalence with Hugging Face transformers ViT models built with random weights: live objects,
`save_pretrained` directories, interpolated position embeddings, pooler, uint8 inputs."""
import copy

import pytest
import torch

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err

transformers = pytest.importorskip("transformers")

# (hidden, layers, heads, intermediate, image_size, patch, batch): head dims 32/64/80, patches 8/14/16/32,
# square and non-square images, 1-3 layers, batch 1 and 3
CONFIGS = [
    (64, 1, 2, 128, 32, 8, 1),
    (128, 2, 2, 256, (48, 32), 16, 3),
    (160, 3, 2, 320, 28, 14, 3),
    (96, 2, 3, 192, (64, 96), 32, 1),
]


def _hf_classifier(hidden, layers, heads, inter, image_size, patch, num_labels=7, **kw):
    cfg = transformers.ViTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
        image_size=list(image_size) if isinstance(image_size, tuple) else image_size, patch_size=patch,
        num_labels=num_labels, **kw,
    )
    return randomize_(transformers.ViTForImageClassification(cfg)).eval()


def _size(image_size):
    return image_size if isinstance(image_size, tuple) else (image_size, image_size)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"d{c[0]}-L{c[1]}-h{c[2]}-p{c[5]}-img{c[4]}")
@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_live_classifier(cfg, backend):
    *model_cfg, batch = cfg
    hf = _hf_classifier(*model_cfg)
    model = vit_fast.from_hf(hf, backend=backend)
    x = torch.randn(batch, 3, *_size(cfg[4]))
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        tokens = model.forward_features(x)
        logits = model.forward_head(tokens)
    # last_hidden_state is the final LayerNorm applied to the last hidden state
    ref_tokens = hf.vit.layernorm(ref.hidden_states[-1])
    assert rel_err(tokens, ref_tokens) <= LOADER_REL_ERR
    assert rel_err(logits, ref.logits) <= LOADER_REL_ERR
    assert torch.equal(model(x), logits)


def test_save_pretrained_directory(tmp_path):
    hf = _hf_classifier(128, 2, 2, 256, (48, 32), 16, id2label={i: f"thing{i}" for i in range(7)},
                        layer_norm_eps=1e-5)
    hf.save_pretrained(tmp_path)
    model = vit_fast.load(tmp_path, backend="torch")
    assert model.config.labels == [f"thing{i}" for i in range(7)]
    assert model.config.layer_norm_eps == 1e-5 and model.config.img_size == (48, 32)
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        assert rel_err(model(x), hf(x).logits) <= LOADER_REL_ERR


def test_pytorch_model_bin_directory(tmp_path):
    import json

    hf = _hf_classifier(64, 1, 2, 128, 32, 8)
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = vit_fast.from_hf(tmp_path, backend="torch")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(model(x), hf(x).logits) <= LOADER_REL_ERR


def test_vit_model_with_pooler():
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=128, image_size=32, patch_size=8)
    hf = randomize_(transformers.ViTModel(cfg, add_pooling_layer=True)).eval()
    model = vit_fast.from_hf(hf, backend="sdpa")
    assert model.config.num_classes == 0 and model.config.representation_size == 64
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = hf(x)
        assert rel_err(model.forward_features(x), ref.last_hidden_state) <= LOADER_REL_ERR
        assert rel_err(model(x), ref.pooler_output) <= LOADER_REL_ERR


@pytest.mark.parametrize("size", [(64, 48), (48, 48), (32, 56)])
def test_higher_resolution_matches_hf_interpolation(size):
    hf = _hf_classifier(64, 2, 2, 128, 32, 8)
    model = vit_fast.from_hf(hf, backend="torch")
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(x, interpolate_pos_encoding=True).logits
        assert rel_err(model(x), ref) <= LOADER_REL_ERR
        # cached per size: the second call reuses the resampled table
        pos = model.pos_embed_for((size[0] // 8, size[1] // 8))
        assert model.pos_embed_for((size[0] // 8, size[1] // 8)) is pos


def test_uint8_inputs_equal_normalized_floats():
    hf = _hf_classifier(64, 1, 2, 128, (32, 48), 16)
    model = vit_fast.from_hf(hf, backend="sdpa", image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    pixels = torch.randint(0, 256, (3, 32, 48, 3), dtype=torch.uint8)
    mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
    normalized = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        ref = hf(normalized).logits
        assert rel_err(model(pixels), ref) <= LOADER_REL_ERR  # NHWC
        assert rel_err(model(pixels.permute(0, 3, 1, 2).contiguous()), ref) <= LOADER_REL_ERR  # NCHW


def test_preprocessor_config_sets_normalization(tmp_path):
    import json

    hf = _hf_classifier(64, 1, 2, 128, 32, 8)
    hf.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                  "image_std": [0.4, 0.5, 0.6]}))
    model = vit_fast.load(tmp_path)
    assert model.config.image_mean == (0.1, 0.2, 0.3) and model.config.image_std == (0.4, 0.5, 0.6)


def test_preprocessor_config_one_number_for_every_channel(tmp_path):
    """transformers takes image_mean/image_std as one number too; anything else is refused naming the file."""
    import json

    _hf_classifier(64, 1, 2, 128, 32, 8).save_pretrained(tmp_path)
    pre = tmp_path / "preprocessor_config.json"
    pre.write_text(json.dumps({"image_mean": 0.25, "image_std": [0.4, 0.5, 0.6]}))
    assert vit_fast.load(tmp_path).config.image_mean == (0.25, 0.25, 0.25)
    pre.write_text(json.dumps({"image_mean": "0.5", "image_std": 0.5}))
    with pytest.raises(ValueError, match=f"{pre}: image_mean must be a number or a list of numbers, got '0.5'"):
        vit_fast.load(tmp_path)


def test_id2label_of_another_size_warns(tmp_path):
    """A label per class or none: a hand-edited id2label of another size is not used, and the load says so (the
    LABEL_0, LABEL_1 that transformers fills in for a config without labels are not worth a warning)."""
    import json
    import warnings

    hf = _hf_classifier(64, 1, 2, 128, 32, 8)  # 7 classes
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "id2label": {"0": "cat", "1": "dog"},
                                                      "label2id": {"cat": 0, "dog": 1}}))
    with pytest.warns(UserWarning, match="id2label has 2 labels for the head's 7 classes: they are not used"):
        assert vit_fast.load(tmp_path).config.labels is None
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
                                                      "label2id": {"LABEL_0": 0, "LABEL_1": 1}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        vit_fast.load(tmp_path)


def test_transformers5_module_names_on_disk(tmp_path):
    """Files written with transformers-5 module names (vit.layers.N.attention.q_proj...) load too."""
    from safetensors.torch import save_file

    hf = _hf_classifier(64, 2, 2, 128, 32, 8)
    classic = {k: v.contiguous() for k, v in hf.state_dict().items()}
    renamed = {}
    for k, v in classic.items():
        k = k.replace("encoder.layer.", "layers.")
        for old, new in [("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
                         ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"),
                         ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")]:
            k = k.replace(old, new)
        renamed[k] = v
    assert any(".q_proj." in k for k in renamed) and not any("encoder.layer" in k for k in renamed)
    hf.config.to_json_file(tmp_path / "config.json")
    save_file(renamed, str(tmp_path / "model.safetensors"))
    model = vit_fast.load(tmp_path, backend="torch")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(model(x), hf(x).logits) <= LOADER_REL_ERR


def test_incomplete_checkpoint_is_rejected(tmp_path):
    from safetensors.torch import save_file

    hf = _hf_classifier(64, 2, 2, 128, 32, 8)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    hf.config.to_json_file(tmp_path / "config.json")
    del state["vit.layernorm.weight"]
    state["vit.extra.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['norm.weight'\].*unexpected keys \['vit.extra.weight'\]"):
        vit_fast.load(tmp_path)


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu"])
def test_gelu_variants_of_the_classic_vit_and_deit(act, tmp_path):
    """transformers' tanh GELUs and quick GELU run as the tanh / quick GELU epilogues, the classic ViT's and DeiT's
    as the families' do, live and saved; an activation vit-fast has not is refused naming the ones it has."""
    T = transformers
    sources = [(_hf_classifier(64, 1, 2, 128, 32, 8, hidden_act=act), "logits"),
               (randomize_(T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(
                   hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96, image_size=32,
                   patch_size=16, num_labels=3, hidden_act=act))).eval(), "logits"),
               (randomize_(T.Dinov2Model(T.Dinov2Config(
                   hidden_size=64, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=32,
                   patch_size=16, hidden_act=act))).eval(), "pooler_output")]
    x = torch.randn(2, 3, 32, 32)
    for i, (hf, field) in enumerate(sources):
        hf.save_pretrained(tmp_path / str(i))
        for source in (hf, tmp_path / str(i)):
            model = vit_fast.from_hf(source)
            assert model.config.act_layer == ("quick_gelu" if act == "quick_gelu" else "gelu_tanh")
            with torch.no_grad():
                assert rel_err(model(x), getattr(hf(x), field)) <= LOADER_REL_ERR, type(hf).__name__
    with pytest.raises(ValueError, match=r"vit: hidden_act 'relu' is not supported; expected one of \['gelu', "):
        vit_fast.from_hf(_hf_classifier(64, 1, 2, 128, 32, 8, hidden_act="relu"))


def test_processor_fields_edge_cases():
    """A crop_size without do_center_crop crops (HF's cropping processors default it to true); an old integer
    size and a shortest edge without a crop leave the family's defaults; every HF processor floors the offset."""
    from vit_fast.loading.hf_common import processor_fields

    floor = {"crop_offset": "floor", "transparency": "drop"}
    assert processor_fields({"size": {"height": 256, "width": 256}, "crop_size": {"height": 224, "width": 224}}) \
        == {**floor, "resize_mode": "squash_crop", "resize_size": (256, 256), "input_size": (224, 224)}
    assert processor_fields({"size": 224, "resample": 2}) == {**floor, "interpolation": "bilinear"}
    assert processor_fields({"size": {"shortest_edge": 224}, "do_center_crop": False}) == floor
    assert processor_fields(None) == floor
    with pytest.raises(ValueError, match=r"input_size \(30, 30\) must be multiples of patch_size 8"):
        vit_fast.get_config("vit_ti_16", patch_size=8, img_size=32, input_size=30)


@pytest.mark.parametrize("preprocessor, family, expect", [
    (None, False, "drop"), (None, True, "white"),  # no file: the family's processor (ViT/DeiT, CLIP/SigLIP/DINOv2)
    ({"do_convert_rgb": False}, True, "drop"), ({"do_convert_rgb": True}, False, "white"),  # the file's own word
    ({"image_processor_type": "CLIPImageProcessor"}, False, "white"),  # else its class's default (transformers 5)
    ({"image_processor_type": "BitImageProcessorFast"}, False, "white"),
    ({"image_processor_type": "SiglipImageProcessor"}, False, "white"),
    ({"image_processor_type": "ViTImageProcessor"}, True, "drop"),
    ({"image_mean": [0.5] * 3}, True, "white"),  # a file that names no class: the family's
])
def test_processor_transparency(preprocessor, family, expect):
    from vit_fast.loading.hf_common import processor_fields

    assert processor_fields(preprocessor, family)["transparency"] == expect


def _pil_processor(name, **kw):
    """transformers' PIL image processor (transformers 5 names it ...Pil; earlier ones have only that one)."""
    return (getattr(transformers, f"{name}Pil", None) or getattr(transformers, name))(**kw)


def _images():
    """Sizes whose crop offset falls on .5 and rounds up (the floor is HF's), odd and extreme aspect ratios."""
    import numpy as np
    from PIL import Image

    gen = np.random.default_rng(0)
    return [Image.fromarray(gen.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in ((227, 301), (227, 303), (300, 200), (97, 640), (225, 225), (40, 31))]


def _transparent_images():
    """A PNG-like RGBA image (clear, opaque and partial alpha over non-white colour) and a palette one."""
    import numpy as np
    from PIL import Image

    rgba = np.random.default_rng(1).integers(0, 256, (230, 301, 4), dtype=np.uint8)
    rgba[:, :60, 3] = 0
    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette.info["transparency"] = 5
    return [Image.fromarray(rgba, "RGBA"), palette]


@pytest.mark.parametrize("kind", ["dinov2", "deit", "clip", "siglip", "vit"])
def test_preprocessing_equals_the_checkpoints_processor(tmp_path, kind):
    """A directory's preprocessor_config.json decides the preprocessing: HF's DINOv2 processor (shortest edge 256,
    crop 224, for a 518 px model), DeiT's (256 x 256, crop 224), CLIP's (shortest edge, crop), ViT's and SigLIP's
    (squash); the crop at HF's floored offset; transparency onto white where the processor converts to RGB (CLIP,
    SigLIP, DINOv2's). vit_fast.preprocess gives the processor's pixels exactly, and the Predictor's embedding
    equals the HF model's on them. The live module loaded from that directory finds the same processor."""
    from vit_fast.preprocess import preprocess

    T = transformers
    if kind == "dinov2":
        hf = T.Dinov2Model(T.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                          image_size=518, patch_size=14))
        proc = _pil_processor("BitImageProcessor", size={"shortest_edge": 256},
                              crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3)
        expect = dict(input_size=(224, 224), resize_size=(256,), resize_mode="shortest")
    elif kind == "deit":
        hf = T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=224,
            patch_size=16, num_labels=3))
        proc = _pil_processor("DeiTImageProcessor")
        expect = dict(input_size=None, resize_size=(256, 256), resize_mode="squash_crop")
    elif kind == "clip":
        hf = T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=16, projection_dim=8))
        proc = _pil_processor("CLIPImageProcessor", size={"shortest_edge": 64},
                              crop_size={"height": 64, "width": 64})
        expect = dict(input_size=None, resize_size=(64,), resize_mode="shortest")
    elif kind == "siglip":
        hf = T.SiglipVisionModel(T.SiglipVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                      intermediate_size=64, image_size=64, patch_size=16))
        proc = _pil_processor("SiglipImageProcessor", size={"height": 64, "width": 64})
        expect = dict(input_size=None, resize_size=None, resize_mode="squash")
    else:
        hf = _hf_classifier(32, 1, 2, 64, 48, 16)
        proc = _pil_processor("ViTImageProcessor", size={"height": 48, "width": 48}, resample=2)
        expect = dict(input_size=None, resize_size=None, resize_mode="squash", interpolation="bilinear")
    randomize_(hf).eval().save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    model = vit_fast.load(tmp_path, backend="torch")
    cfg = model.config
    white = kind in ("dinov2", "clip", "siglip")
    expect["transparency"] = "white" if white else "drop"
    assert cfg.crop_offset == "floor" and {k: getattr(cfg, k) for k in expect} == expect
    assert vit_fast.from_hf(type(hf).from_pretrained(tmp_path)).config == cfg
    predictor = vit_fast.Predictor(model, device="cpu", dtype=torch.float32, cuda_graphs=False)
    for image in _images() + (_transparent_images() if white else []):  # HF's ViT and DeiT refuse transparency
        theirs = proc(image, do_rescale=False, do_normalize=False, return_tensors="pt").pixel_values[0]
        ours = preprocess(image, cfg)
        assert ours.shape == theirs.shape and torch.equal(ours.float(), theirs.float()), (image.size, kind)
    if kind == "dinov2":  # at 224 px through the resampled table, as HF runs it
        image = _images()[0]
        with torch.no_grad():
            ref = hf(pixel_values=proc(image, return_tensors="pt").pixel_values).pooler_output[0]
        (got,) = predictor.predict([image], return_embeddings=True)
        assert rel_err(torch.tensor(got["embedding"]), ref) <= 1e-5
    if kind != "vit":  # a resolution asked for replaces the processor's sizes (its crop was for the checkpoint's)
        resized = vit_fast.load(tmp_path, img_size=(96, 96)).config
        assert resized.input_size is None and resized.resize_size is None and resized.crop_offset == "floor"
        same = vit_fast.load(tmp_path, img_size=cfg.img_size).config  # the checkpoint's own size: nothing stale
        assert (same.input_size, same.resize_size) == (cfg.input_size, cfg.resize_size)
        vit_fast.save(model, tmp_path / "converted")  # a converted checkpoint keeps them, and drops them the same
        assert vit_fast.load(tmp_path / "converted").config == cfg
        again = vit_fast.load(tmp_path / "converted", img_size=(96, 96)).config
        assert (again.input_size, again.resize_size, again.img_size) == (None, None, (96, 96))
        squashed = vit_fast.load(tmp_path, resize_mode="squash").config  # the caller's resize, not the processor's
        assert squashed.resize_mode == "squash" and squashed.resize_size is None


@pytest.mark.parametrize("kind", ["vit", "deit_distilled", "clip_proj"])
def test_num_classes_zero_loads_the_features_of_a_classifier(tmp_path, kind):
    """timm's `create_model(..., pretrained=True, num_classes=0)`: a classifier's checkpoint loads without its head
    (and DeiT's distillation head, CLIP's projection), returning the pooled features HF's base model gives: [CLS]
    after the final norm, the mean of [CLS] and the distillation token, CLIP's pooler_output. A vit-fast checkpoint
    of it does the same; another class count says what the head holds."""
    T = transformers
    if kind == "vit":
        hf = _hf_classifier(64, 2, 2, 96, (32, 48), 16)
        want = lambda out: out.hidden_states[-1] is not None and hf.vit.layernorm(out.hidden_states[-1])[:, 0]  # noqa
    elif kind == "deit_distilled":
        hf = randomize_(T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, image_size=[32, 48],
            patch_size=16, num_labels=5))).eval()
        want = lambda out: hf.deit.layernorm(out.hidden_states[-1])[:, :2].mean(1)  # noqa: E731
    else:
        hf = randomize_(T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, image_size=32,
            patch_size=16, projection_dim=24))).eval()
        want = lambda out: hf.vision_model.post_layernorm(out.last_hidden_state[:, 0])  # noqa: E731
    hf.save_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, *(_size((32, 48)) if kind != "clip_proj" else (32, 32)))
    with torch.no_grad():
        ref = want(hf(x, output_hidden_states=True))
        for source in (tmp_path / "hf", hf):
            features = vit_fast.from_hf(source, num_classes=0)
            assert features.config.num_classes == 0 and features.head_dist is None or kind == "deit_distilled"
            assert rel_err(features(x), ref) <= LOADER_REL_ERR, source
        vit_fast.save(vit_fast.from_hf(hf), tmp_path / "ours")
        assert rel_err(vit_fast.load(tmp_path / "ours", num_classes=0)(x), ref) <= LOADER_REL_ERR
    if kind == "vit":
        with pytest.raises(ValueError, match="the checkpoint's head has 7 classes: num_classes=0 leaves it out"):
            vit_fast.from_hf(tmp_path / "hf", num_classes=3)


def test_one_channel_models_say_what_to_pass():
    """An HF ViT of one channel without a processor: the 3-channel default statistics cannot apply, and the message
    says what to pass; with them it equals HF."""
    hf = _hf_classifier(32, 1, 2, 64, 32, 16, num_channels=1)
    with pytest.raises(ValueError, match=r"image_mean/image_std need 1 values each \(in_chans 1\), got 3 and 3: "
                                         r"pass image_mean=\[...\] and image_std=\[...\] with one value per channel"):
        vit_fast.from_hf(hf)
    model = vit_fast.from_hf(hf, image_mean=[0.5], image_std=[0.5])
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert rel_err(model(x), hf(x).logits) <= LOADER_REL_ERR


def test_a_live_module_gives_a_model_in_its_dtype():
    """from_hf of a bf16 (or fp64) module returns the model in that dtype, as the source was; loaded from its
    directory (no live weights to follow), fp32."""
    hf = _hf_classifier(32, 1, 2, 64, 32, 16)
    x = torch.randn(2, 3, 32, 32)
    for dtype in (torch.bfloat16, torch.float64):
        source = copy.deepcopy(hf).to(dtype)
        model = vit_fast.from_hf(source)
        assert model.patch_embed.proj.weight.dtype == dtype and model.head.weight.dtype == dtype
        with torch.no_grad():
            assert model(x.to(dtype)).dtype == dtype
    assert vit_fast.from_hf(hf).patch_embed.proj.weight.dtype == torch.float32
