"""vit-fast's own checkpoints, timm-format files, format detection, and loading errors."""
import json

import pytest
import torch
from safetensors.torch import save_file

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err

TINY = dict(img_size=(32, 48), depth=2, num_classes=5, labels=list("abcde"))


def _model(**kw):
    return randomize_(vit_fast.create("vit_ti_16", backend="sdpa", **{**TINY, **kw}))


def _same(a, b):
    x = torch.randn(2, 3, *a.config.img_size)
    with torch.no_grad():
        assert rel_err(b(x), a(x)) <= LOADER_REL_ERR


def test_save_load_roundtrip(tmp_path):
    model = _model(global_pool="avg", representation_size=40, layer_norm_eps=1e-12)
    vit_fast.save(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.safetensors", "vit_fast.json"]
    loaded = vit_fast.load(tmp_path / "ckpt", backend="torch")
    assert loaded.config == model.config and loaded.backend == "torch"
    _same(model, loaded)
    # the weight file alone carries its config too
    _same(model, vit_fast.load(tmp_path / "ckpt" / "model.safetensors"))


def test_timm_format_files(tmp_path):
    model = _model()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "timm.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "timm.pth")  # nested, as training checkpoints are
    for path in (tmp_path / "timm.safetensors", tmp_path / "timm.pth"):
        loaded = vit_fast.load(path, img_size=(32, 48))  # a non-square training size is not in the file
        assert loaded.config.num_heads == 3 and loaded.config.depth == 2 and loaded.config.num_classes == 5
        assert loaded.config.pos_embed_antialias  # timm resamples with antialiasing
        _same(model, loaded)
    with pytest.raises(ValueError, match=r"do not form a square grid; pass img_size"):
        vit_fast.load(tmp_path / "timm.pth")


def test_timm_heads_cannot_be_guessed_for_unknown_width():
    model = _model(embed_dim=96, num_heads=2)
    with pytest.raises(ValueError, match="pass num_heads"):
        vit_fast.from_timm(model.state_dict(), img_size=(32, 48))
    loaded = vit_fast.from_timm(model.state_dict(), img_size=(32, 48), num_heads=2)
    _same(model.eval(), loaded)


def test_mismatched_shapes_are_listed(tmp_path):
    model = _model()
    vit_fast.save(model, tmp_path)
    cfg = json.loads((tmp_path / "vit_fast.json").read_text())
    cfg["mlp_dim"] = 512
    (tmp_path / "vit_fast.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"shapes that disagree with the config \['blocks.0.mlp.fc1.bias: checkpoint"):
        vit_fast.load(tmp_path)


def test_missing_and_unexpected_keys_are_listed():
    state = dict(_model().state_dict())
    del state["blocks.1.norm2.bias"]
    state["blocks.0.attn.q_norm.weight"] = torch.ones(64)  # timm qk-norm: not supported
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.norm2.bias'\]; unexpected keys \['blocks.0.attn.q_norm.weight'\]"):
        vit_fast.from_timm(state, img_size=(32, 48))


@pytest.mark.parametrize("key, bad, match", [
    ("blocks.0.attn.qkv.weight", lambda t: t.to(torch.int32),
     r"tensors of the wrong kind \['blocks.0.attn.qkv.weight: int32 where the model holds float32'\]"),
    ("head.weight", lambda t: t > 0, r"\['head.weight: bool where the model holds float32'\]"),
    ("blocks.1.mlp.fc2.bias", lambda t: t.index_fill(0, torch.tensor([3]), float("nan")),
     r"NaN or infinite values in \['blocks.1.mlp.fc2.bias'\]"),
    ("pos_embed", lambda t: t.half().index_fill(1, torch.tensor([0]), float("inf")),
     r"NaN or infinite values in \['pos_embed'\]"),
])
def test_wrongly_typed_or_non_finite_tensors_are_refused(tmp_path, key, bad, match):
    """An integer or boolean tensor would be cast into the float weight (int weights to zeros and ones), a NaN
    would reach every output: both are refused by name, and an fp16 tensor for an fp32 weight is fine."""
    state = {k: v.contiguous() for k, v in _model().state_dict().items()}
    save_file({**state, "head.bias": state["head.bias"].half()}, str(tmp_path / "fine.safetensors"))
    assert vit_fast.load(tmp_path / "fine.safetensors", img_size=(32, 48)).head.bias.dtype == torch.float32
    state[key] = bad(state[key]).contiguous()
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=match):
        vit_fast.load(tmp_path / "w.safetensors", img_size=(32, 48))


@pytest.mark.parametrize("field, value, match", [
    ("num_heads", 0, "num_heads 0: must be >= 1"), ("embed_dim", 0, "embed_dim 0: must be >= 1"),
    ("mlp_dim", -5, "mlp_dim -5: must be >= 1"), ("representation_size", -3, "representation_size -3: must be >= 1"),
    ("in_chans", 0, "in_chans 0: must be >= 1"),
    ("layer_norm_eps", 0.0, "layer_norm_eps must be > 0 and finite, got 0.0"),
    ("layer_norm_eps", -1, "layer_norm_eps must be > 0 and finite, got -1"),
    ("layer_norm_eps", float("inf"), "layer_norm_eps must be > 0 and finite, got inf"),  # LayerNorm's output: 0s
])
def test_config_sizes_are_checked_before_any_layer(field, value, match):
    """Zero or negative sizes would end in a ZeroDivisionError or a torch shape error naming no field."""
    with pytest.raises(ValueError, match=f"invalid ViTConfig: {match}"):
        vit_fast.get_config("vit_ti_16", **{field: value})


def test_nan_codes_in_an_fp8_checkpoint_are_refused(tmp_path):
    """float8 e4m3fn has NaN codes (0x7F, 0xFF) and no isfinite on the CPU: they are found by their bits."""
    from safetensors.torch import load_file

    vit_fast.save(_model().to_fp8(), tmp_path / "ckpt")
    assert vit_fast.load(tmp_path / "ckpt").is_fp8
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    state["blocks.1.mlp.fc1.weight"].view(torch.uint8)[7, 3] = 0xFF
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"NaN or infinite values in \['blocks.1.mlp.fc1.weight'\]"):
        vit_fast.load(tmp_path / "ckpt")


def test_load_refuses_what_is_not_a_path():
    with pytest.raises(TypeError, match="load expects a checkpoint path or a Hugging Face Hub name, got NoneType"):
        vit_fast.load(None)


@pytest.mark.parametrize(
    "setup,err,match",
    [
        (lambda p: p / "nothing", FileNotFoundError, "no checkpoint"),
        (lambda p: (p / "w.npz").write_bytes(b"x") and p / "w.npz", ValueError, "unknown weight file type '.npz'"),
        (lambda p: (p / "a.txt").write_text("x") and p, ValueError, "neither a vit-fast checkpoint"),
        (lambda p: (p / "config.json").write_text("{}") and p, FileNotFoundError, "no model.safetensors"),
    ],
)
def test_load_errors(tmp_path, setup, err, match):
    with pytest.raises(err, match=match):
        vit_fast.load(setup(tmp_path))


def test_hf_weights_given_as_a_file_get_a_hint(tmp_path):
    save_file({"vit.embeddings.patch_embeddings.projection.weight": torch.zeros(4, 3, 8, 8)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="Hugging Face weights"):
        vit_fast.load(tmp_path / "m.safetensors")


def test_loading_allocates_no_weights_it_overwrites(tmp_path, monkeypatch):
    """vit_fast.load builds the model on the meta device and takes the file's tensors: no random initialization
    (slow for ViT-L/H on a CPU, and a second copy of every weight), no tensor left unfilled, every value the file's."""
    model = _model()
    vit_fast.save(model, tmp_path / "ckpt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    fp8 = vit_fast.save(_model().to(torch.bfloat16).to_fp8(exclude="fc2"), tmp_path / "fp8")

    init, built = vit_fast.VisionTransformer._init_weights, []

    def init_on_meta(self):
        assert self.pos_embed.is_meta, "weights allocated and initialized while loading"
        built.append(self)
        init(self)

    monkeypatch.setattr(vit_fast.VisionTransformer, "_init_weights", init_on_meta)
    for source in (tmp_path / "ckpt", tmp_path / "timm.safetensors", fp8):
        timm = {"num_heads": 3, "img_size": (32, 48)} if source.name == "timm.safetensors" else {}
        loaded = vit_fast.load(source, backend="sdpa", **timm)
        tensors = [*loaded.parameters(), *loaded.buffers()]
        assert tensors and not any(t.is_meta for t in tensors), source
        assert all(t.is_contiguous() and t.data_ptr() % 64 == 0 for t in tensors) and built.pop() is loaded
    loaded = vit_fast.load(tmp_path / "ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    _same(model, loaded)
    # a state dict in memory is copied, not adopted: the caller's tensors stay the caller's
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.bias"] = state["head.bias"].double()  # any float width becomes the model's fp32
    taken = vit_fast.from_timm(state, num_heads=3, img_size=(32, 48))
    state["head.weight"].add_(1.0)
    assert torch.equal(taken.head.weight, model.head.weight) and taken.head.bias.dtype == torch.float32


def test_num_classes_zero_drops_the_head_of_every_checkpoint_kind(tmp_path):
    """A timm state dict and a vit-fast checkpoint with labels, loaded with num_classes=0: the pooled features the
    classifier's head would read, and no labels (they named the dropped head's classes). Passing the head's own
    class count changes nothing."""
    labels = [f"class {i}" for i in range(10)]
    model = randomize_(vit_fast.create("vit_ti_16", img_size=(32, 48), depth=2, embed_dim=160, num_heads=2,
                                       num_classes=10, labels=labels)).eval()
    vit_fast.save(model, tmp_path / "ckpt")
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
        for features in (vit_fast.from_timm(model.state_dict(), num_classes=0, img_size=(32, 48), num_heads=2),
                         vit_fast.load(tmp_path / "ckpt", num_classes=0)):
            assert features.config.num_classes == 0 and features.config.labels is None
            assert rel_err(features(x), ref) <= LOADER_REL_ERR
    assert vit_fast.load(tmp_path / "ckpt", num_classes=10).config.labels == labels
    with pytest.raises(ValueError, match="the checkpoint's head has 10 classes: num_classes=0 leaves it out"):
        vit_fast.load(tmp_path / "ckpt", num_classes=3)
