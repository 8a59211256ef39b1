"""vit-fast -> Hugging Face for the model families (vit_fast.loading.hf_export, which the benchmark's HF rows use):
the exported HF module computes what the vit-fast model computes (primary output and last_hidden_state, at the
native and at another resolution), `from_hf` of it gives back the same weights bit for bit, and a model the HF
class cannot express, or a class the installed transformers lacks, is one clear line."""
import pytest
import torch

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err

T = pytest.importorskip("transformers")
from vit_fast.loading.hf_export import family_of_preset, to_hf  # noqa: E402

# head dim 80 (160 / 2 heads), 2 layers, a 3x3 grid; mlp_dim a whole multiple of the width (transformers 5's
# DINOv2 config takes an integer mlp_ratio); SwiGLU 216 = HF's width for mlp_ratio 2 at 160
TINY = dict(depth=2, embed_dim=160, num_heads=2, mlp_dim=320)
# case -> (preset, overrides, HF class, primary output field)
CASES = {
    "clip_proj": ("clip_b_16", dict(num_classes=24), "CLIPVisionModelWithProjection", "image_embeds"),
    "clip": ("clip_l_14", dict(num_classes=0, embedding_head=False), "CLIPVisionModel", "pooler_output"),
    "dinov2": ("dinov2_s_14", {}, "Dinov2Model", "pooler_output"),
    "dinov2_swiglu_cls": ("dinov2_g_14", dict(mlp_dim=216, num_classes=5, global_pool="cls_avg"),
                          "Dinov2ForImageClassification", "logits"),
    "dinov2_reg": ("dinov2_b_14_reg4", {}, "Dinov2WithRegistersModel", "pooler_output"),
    "dinov2_reg_cls": ("dinov2_b_14_reg4", dict(num_classes=3, global_pool="cls_avg"),
                       "Dinov2WithRegistersForImageClassification", "logits"),
    "siglip": ("siglip_b_16", {}, "SiglipVisionModel", "pooler_output"),
    "deit_distilled": ("deit_b_16_distilled", dict(num_classes=7), "DeiTForImageClassificationWithTeacher", "logits"),
}


def _model(preset, **overrides):
    patch = vit_fast.get_config(preset).patch_size
    kw = {**TINY, "img_size": 3 * patch, **overrides}
    return randomize_(vit_fast.create(preset, backend="torch", **kw))


def _outputs(hf, x, field, **kw):
    out = hf(pixel_values=x, **kw)
    return getattr(out, field), getattr(out, "last_hidden_state", None)


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_computes_the_same_and_round_trips(case):
    preset, overrides, hf_class, field = CASES[case]
    model = _model(preset, **overrides)
    hf, primary = to_hf(model, family_of_preset(preset))
    assert type(hf).__name__ == hf_class and primary == field
    p = model.config.patch_size
    resample = {} if preset.startswith("dinov2") else {"interpolate_pos_encoding": True}  # DINOv2 always does
    for size in ((3 * p, 3 * p), (2 * p, 4 * p)):  # native; another, non-square grid
        x = torch.randn(3, 3, *size)
        with torch.no_grad():
            out, tokens = _outputs(hf, x, field, **resample)
            assert rel_err(out, model(x)) <= LOADER_REL_ERR, size
            if tokens is not None:
                assert rel_err(tokens, model.forward_features(x)) <= LOADER_REL_ERR, size
    back = vit_fast.from_hf(hf, backend="torch")
    for name in ("embed_dim", "depth", "num_classes", "reg_tokens", "dist_token", "global_pool", "act_layer",
                 "mlp_type", "pre_norm", "patch_bias", "class_token", "pos_embed_antialias"):
        assert getattr(back.config, name) == getattr(model.config, name), name
    ours, again = model.state_dict(), back.state_dict()
    assert ours.keys() == again.keys()
    for key in ours:  # LayerScale went out as ones, the registers' [CLS] position as a zero row: exact both ways
        assert torch.equal(ours[key], again[key]), key


def test_export_of_a_randomized_hf_module_matches_the_loader():
    """The other direction: HF module -> from_hf -> export -> the HF module's own weights (LayerScale aside,
    which the loader folds in; the HF module here has LayerScale ones, as the export writes)."""
    hf = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=28, patch_size=14,
        num_register_tokens=2))
    randomize_(hf)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lambda1" in name:
                p.fill_(1.0)
            if name.endswith("position_embeddings"):
                p[:, 0].zero_()  # the [CLS] row: folded into the class token at load
    model = vit_fast.from_hf(hf, backend="torch")
    exported, _ = to_hf(model, "dinov2")
    theirs, mine = hf.state_dict(), exported.state_dict()
    for key in theirs:
        if not key.endswith("mask_token"):  # training-only: the export keeps the new module's own
            assert torch.equal(theirs[key], mine[key]), key


def test_export_refuses_what_the_hf_class_cannot_express():
    with pytest.raises(ValueError, match=r"^Hugging Face's CLIPVisionModelWithProjection cannot express this "
                                         r"model: qkv_bias=False \(HF: True\)$"):
        to_hf(_model("clip_b_16", qkv_bias=False), "clip")
    with pytest.raises(ValueError, match=r"^Hugging Face's Dinov2Model cannot express this model: "
                                         r"img_size=\(28, 42\) \(HF: \(28, 28\)\)$"):
        to_hf(_model("dinov2_s_14", img_size=(28, 42)), "dinov2")
    with pytest.raises(ValueError, match=r"global_pool='cls' \(HF: 'cls_avg'\)"):
        to_hf(_model("dinov2_s_14", num_classes=3), "dinov2")
    with pytest.raises(ValueError, match=r"^Hugging Face's DeiTForImageClassificationWithTeacher: no place for "
                                         r"vit-fast's \['pre_logits\.fc\.bias', 'pre_logits\.fc\.weight'\]$"):
        to_hf(_model("deit_b_16_distilled", representation_size=160, num_classes=0), "deit")
    with pytest.raises(ValueError, match=r"unknown model family 'vit'; expected one of clip, dinov2, siglip, deit"):
        to_hf(_model("dinov2_s_14"), "vit")


def test_rename_back_errors():
    """The key-table inverse names the HF key and what is wrong with it."""
    from vit_fast.loading import hf_dinov2
    from vit_fast.loading.hf_common import rename_back

    table, z = hf_dinov2._TABLE, torch.zeros
    with pytest.raises(ValueError, match=r"^embeddings\.cls_token has shape \(1, 1, 8\), vit-fast's \(1, 1, 4\)$"):
        rename_back({"embeddings.cls_token": z(1, 1, 8)}, {"cls_token": z(1, 1, 4)}, table)
    with pytest.raises(ValueError, match=r"^no vit-fast parameter corresponds to Hugging Face key 'pooler\.x'$"):
        rename_back({"pooler.x": z(1)}, {}, table)
    with pytest.raises(ValueError, match=r"^Hugging Face key 'encoder\.layer\.0\.attention\.q_proj\.bias' needs "
                                         r"vit-fast's 'blocks\.0\.attn\.q\.bias', which this model does not have$"):
        rename_back({"encoder.layer.0.attention.q_proj.bias": z(4)}, {"blocks.0.attn.qkv.weight": z(12, 4)}, table)
    q = rename_back({"encoder.layer.0.attention.v_proj.weight": z(4, 4)}, {"blocks.0.attn.qkv.weight":
                                                                            torch.arange(48.0).reshape(12, 4)}, table)
    assert torch.equal(q["encoder.layer.0.attention.v_proj.weight"], torch.arange(32.0, 48.0).reshape(4, 4))


def test_export_dinov2_mlp_width_hf_cannot_build():
    """HF's DINOv2 derives the MLP width from an integer mlp_ratio (transformers 5); 200 is not int(160 * r)."""
    model = _model("dinov2_s_14", mlp_dim=200)
    if int(T.__version__.split(".")[0]) >= 5:
        with pytest.raises(ValueError, match=r"^transformers \S+'s Dinov2Config cannot express this model: "
                                             r".*mlp_ratio"):
            to_hf(model, "dinov2")
    else:  # transformers 4 takes the float ratio 1.25
        hf, field = to_hf(model, "dinov2")
        x = torch.randn(2, 3, 42, 42)
        with torch.no_grad():
            assert rel_err(getattr(hf(pixel_values=x), field), model(x)) <= LOADER_REL_ERR


def test_export_names_a_class_missing_from_transformers(monkeypatch):
    import sys

    T.SiglipVisionModel  # noqa: B018 - the lazy import may put a new module object into sys.modules
    # as if this transformers predated SigLIP
    monkeypatch.setattr(sys.modules["transformers"], "SiglipVisionModel", None)
    with pytest.raises(ValueError, match=rf"^transformers {T.__version__} has no SiglipVisionModel \(the siglip "
                                         r"family's Hugging Face class\)$"):
        to_hf(_model("siglip_b_16"), "siglip")


def test_family_of_preset():
    assert [family_of_preset(n) for n in ("clip_l_14", "dinov2_b_14_reg4", "siglip_so400m_14",
                                          "deit_b_16_distilled", "vit_b_16")] == ["clip", "dinov2", "siglip",
                                                                                  "deit", None]
    assert all(family_of_preset(n) in (None, "clip", "dinov2", "siglip", "deit") for n in vit_fast.list_models())
