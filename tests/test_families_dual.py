"""Full CLIP and SigLIP models (`CLIPModel`, `SiglipModel`: image and text towers, as `openai/clip-vit-*` and
`google/siglip-*` are published) load as their image tower: equal to HF's `get_image_features` and to the vision
model's `last_hidden_state`, live and from `save_pretrained` directories (whole and sharded), at the native size and
at a non-native non-square one; the `hf_outputs=True` drop-in answers as the tower's class; a config.json from an
older transformers that leaves vision values at their defaults; the strict loader still names stray keys. Sharded
checkpoints (`*.index.json`) of every family, and their errors."""
import json

import pytest
import torch

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err

transformers = pytest.importorskip("transformers")
T = transformers

# vision: width 160 / 2 heads = head dim 80, 2 layers, 28 px at patch 14 (2x2 patches); a tiny text tower
_VISION = dict(hidden_size=160, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, image_size=28,
               patch_size=14)
_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _full(family: str):
    if family == "clip":
        config = T.CLIPConfig(text_config=_TEXT, vision_config=dict(_VISION, hidden_act="quick_gelu"),
                              projection_dim=24)
        return randomize_(T.CLIPModel(config)).eval()
    config = T.SiglipConfig(text_config=dict(_TEXT, vocab_size=100), vision_config=_VISION)
    return randomize_(T.SiglipModel(config)).eval()


def _image_features(hf, x, interpolate: bool) -> torch.Tensor:
    with torch.no_grad():
        out = hf.get_image_features(pixel_values=x, interpolate_pos_encoding=interpolate)
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object


def _check_tower(model, hf, backends=("torch", "sdpa")):
    """model(x) == get_image_features, forward_features == the vision model's last_hidden_state, at 28x28 (native)
    and 42x56 (3x4 patches, resampled position embeddings); fresh inputs each time."""
    for size, interpolate in (((28, 28), False), ((42, 56), True)):
        x = torch.randn(3, 3, *size)
        ref = _image_features(hf, x, interpolate)
        with torch.no_grad():
            tokens_ref = hf.vision_model(pixel_values=x, interpolate_pos_encoding=interpolate).last_hidden_state
        for backend in backends:
            model.set_backend(backend)
            with torch.no_grad():
                out, tokens = model(x), model.forward_features(x)
            assert out.shape == ref.shape and tokens.shape == tokens_ref.shape
            assert rel_err(out, ref) <= LOADER_REL_ERR, (backend, size)
            assert rel_err(tokens, tokens_ref) <= LOADER_REL_ERR, (backend, size)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_full_model_live_and_saved(family, tmp_path):
    hf = _full(family)
    _check_tower(vit_fast.from_hf(hf), hf)
    hf.save_pretrained(tmp_path / "whole")
    _check_tower(vit_fast.load(tmp_path / "whole"), hf, backends=("sdpa",))
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    model = vit_fast.from_hf(tmp_path / "sharded")
    _check_tower(model, hf, backends=("sdpa",))
    if family == "clip":
        assert model.config.embedding_head and model.config.num_classes == 24 and model.config.act_layer == "quick_gelu"
    else:
        assert model.config.global_pool == "map" and model.config.act_layer == "gelu_tanh"


@pytest.mark.parametrize("family,field", [("clip", "image_embeds"), ("siglip", "pooler_output")])
def test_drop_in_answers_as_the_image_tower(family, field, tmp_path):
    hf = _full(family)
    hf.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 28, 28)
    ref = _image_features(hf, x, False)
    for source in (hf, tmp_path):
        drop_in = vit_fast.from_hf(source, hf_outputs=True)
        assert drop_in.config.model_type == f"{family}_vision_model"
        with torch.no_grad():
            out = drop_in(pixel_values=x)
        assert rel_err(getattr(out, field), ref) <= LOADER_REL_ERR
        with pytest.raises(ValueError, match=r"input image size \(42\*56\) doesn't match model \(28\*28\)"):
            drop_in(pixel_values=torch.randn(1, 3, 42, 56))


@pytest.mark.parametrize("family,cls", [("clip", "CLIPVisionConfig"), ("siglip", "SiglipVisionConfig")])
def test_vision_defaults_are_transformers_own(family, cls):
    """An older config.json may store only the vision values that differ from the defaults; vit-fast fills them in
    from its own table, which must be transformers' class defaults."""
    from vit_fast.loading.hf_dual import _VISION_DEFAULTS

    defaults = getattr(T, cls)()
    table = _VISION_DEFAULTS[f"{family}_vision_model"]
    absent = {k for k in table if not hasattr(defaults, k)}
    assert absent <= {"vision_use_head"}  # transformers 5.17 has no such attribute; its SigLIP reads it as True
    present = [k for k in table if k not in absent]
    assert {k: getattr(defaults, k) for k in present} == {k: table[k] for k in present}


def test_config_with_defaults_left_out(tmp_path):
    """A CLIP config.json whose vision_config holds only what differs from CLIPVisionConfig's defaults (and no
    projection_dim at the top: the default 512)."""
    config = T.CLIPConfig(text_config=_TEXT, vision_config=dict(_VISION, patch_size=32, image_size=64, hidden_size=768,
                                                                num_attention_heads=12, num_hidden_layers=1),
                          projection_dim=512)
    hf = randomize_(T.CLIPModel(config)).eval()
    hf.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    stored.pop("projection_dim")
    stored["vision_config"] = {"num_hidden_layers": 1, "image_size": 64, "intermediate_size": 96}
    (tmp_path / "config.json").write_text(json.dumps(stored))
    model = vit_fast.from_hf(tmp_path)
    assert (model.config.embed_dim, model.config.num_heads, model.config.patch_size) == (768, 12, 32)
    x = torch.randn(2, 3, 64, 64)
    assert rel_err(model(x), _image_features(hf, x, False)) <= LOADER_REL_ERR


def test_siglip_config_with_defaults_left_out(tmp_path):
    """A SigLIP config.json whose vision_config holds only num_hidden_layers and image_size: width 768, 12 heads,
    patch 16, tanh GELU and the attention-pool head come from SiglipVisionConfig's defaults."""
    config = T.SiglipConfig(text_config=dict(_TEXT, vocab_size=100),
                            vision_config=dict(num_hidden_layers=1, image_size=32, intermediate_size=96))
    hf = randomize_(T.SiglipModel(config)).eval()
    hf.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    stored["vision_config"] = {"num_hidden_layers": 1, "image_size": 32, "intermediate_size": 96}
    (tmp_path / "config.json").write_text(json.dumps(stored))
    model = vit_fast.from_hf(tmp_path)
    cfg = model.config
    assert (cfg.embed_dim, cfg.num_heads, cfg.patch_size, cfg.act_layer, cfg.global_pool) == \
        (768, 12, 16, "gelu_tanh", "map")
    x = torch.randn(2, 3, 32, 32)
    assert rel_err(model(x), _image_features(hf, x, False)) <= LOADER_REL_ERR


def test_stray_keys_still_named(tmp_path):
    """Only the text tower and the logit scale/bias are dropped; anything else unknown is reported."""
    hf = _full("siglip")
    state = dict(hf.state_dict())
    state["vision_model.extra.weight"] = torch.zeros(3)
    del state["vision_model.post_layernorm.bias"]
    hf.save_pretrained(tmp_path)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['norm\.bias'\]; unexpected keys "
                                         r"\['vision_model\.extra\.weight'\]"):
        vit_fast.from_hf(tmp_path)


def test_bad_vision_config(tmp_path):
    hf = _full("clip")
    hf.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    stored["vision_config"] = [1, 2]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"expected \"vision_config\" to be an object, got list"):
        vit_fast.from_hf(tmp_path)


# ---- sharded checkpoints, any family ----------------------------------------------------------------------------


def _sharded_vit(tmp_path):
    hf = randomize_(T.ViTForImageClassification(T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                              intermediate_size=96, image_size=32, patch_size=16,
                                                              num_labels=5))).eval()
    hf.save_pretrained(tmp_path, max_shard_size="50KB")
    return hf


def test_sharded_vit_and_vit_fast_load(tmp_path):
    hf = _sharded_vit(tmp_path / "hf")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(x).logits
    for model in (vit_fast.from_hf(tmp_path / "hf"), vit_fast.load(tmp_path / "hf")):
        assert rel_err(model(x), ref) <= LOADER_REL_ERR


def test_sharded_errors(tmp_path):
    _sharded_vit(tmp_path)
    index_file = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / shard).rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match=f"lists the shard {shard}, which is not in"):
        vit_fast.from_hf(tmp_path)
    (tmp_path / "elsewhere.safetensors").rename(tmp_path / shard)
    key = next(k for k, v in index["weight_map"].items() if v == shard)
    index_file.write_text(json.dumps({**index, "weight_map": {**index["weight_map"],
                                                              key: sorted(set(index["weight_map"].values()))[0]}}))
    with pytest.raises(ValueError, match=r"1 tensors are not in the shards it names them in"):
        vit_fast.from_hf(tmp_path)
    for bad in ({"weight_map": []}, {"weight_map": {key: "../outside.safetensors"}}, {},
                {"weight_map": {key: "model.safetensors.index.json"}}):  # itself: never read in a loop
        index_file.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=r"expected a \"weight_map\" object naming the shard file"):
            vit_fast.from_hf(tmp_path)
    index_file.unlink()
    for file in tmp_path.glob("model-*.safetensors"):
        file.unlink()
    with pytest.raises(FileNotFoundError, match=r"has config\.json but no model\.safetensors or pytorch_model\.bin "
                                                r"\(nor the index of a sharded checkpoint"):
        vit_fast.from_hf(tmp_path)


def test_sharded_safetensors_before_a_whole_pickle(tmp_path):
    """transformers' order: model.safetensors, its sharded index, then pytorch_model.bin (here garbage: never read)."""
    hf = _sharded_vit(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(vit_fast.from_hf(tmp_path)(x), hf(x).logits) <= LOADER_REL_ERR


def test_unsupported_model_type(tmp_path):
    _sharded_vit(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**stored, "model_type": "swin"}))
    with pytest.raises(ValueError, match=r"unsupported Hugging Face model_type 'swin'; supported: vit, "
                                         r"clip_vision_model.*, clip, siglip$"):
        vit_fast.from_hf(tmp_path)
