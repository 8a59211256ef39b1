"""The plain PyTorch model: presets, parameter counts, backends, inputs and their errors."""

import pytest
import torch

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err

TINY = dict(img_size=32, depth=2, num_classes=10)


def test_list_models_and_unknown_name():
    names = vit_fast.list_models()
    for size in ("ti", "s", "b", "l", "h"):
        for patch in (14, 16, 32):
            assert f"vit_{size}_{patch}" in names
    with pytest.raises(ValueError, match="unknown model 'vit_x_16'.*vit_b_16"):
        vit_fast.create("vit_x_16")


@pytest.mark.parametrize(
    "name,params",
    [("vit_b_16", 86_567_656), ("vit_ti_16", 5_717_416), ("vit_s_16", 22_050_664), ("vit_b_32", 88_224_232)],
)
def test_parameter_counts_equal_timm(name, params):
    with torch.device("meta"):
        model = vit_fast.VisionTransformer(vit_fast.get_config(name), backend="sdpa")
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name,layers,width,mlp,heads", [("vit_l_16", 24, 1024, 4096, 16), ("vit_h_14", 32, 1280, 5120, 16)])
def test_large_presets_follow_the_paper(name, layers, width, mlp, heads):
    cfg = vit_fast.get_config(name)
    assert (cfg.depth, cfg.embed_dim, cfg.mlp_dim, cfg.num_heads) == (layers, width, mlp, heads)


def test_config_errors():
    with pytest.raises(ValueError, match=r"img_size \(224, 8\) must be at least patch_size 16 on each side"):
        vit_fast.get_config("vit_b_16", img_size=(224, 8))
    assert vit_fast.get_config("vit_b_16", img_size=(224, 200)).grid_size == (14, 12)  # 8 columns never seen
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        vit_fast.get_config("vit_b_16", num_heads=7)
    with pytest.raises(ValueError, match="unknown ViTConfig fields"):
        vit_fast.ViTConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="global_pool"):
        vit_fast.get_config("vit_b_16", global_pool="max")


def test_config_roundtrip():
    cfg = vit_fast.get_config("vit_ti_16", img_size=(32, 48), labels=["a", "b"], num_classes=2)
    assert vit_fast.ViTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_backends_agree_and_switch_without_reloading(pool):
    model = randomize_(vit_fast.create("vit_ti_16", backend="torch", global_pool=pool, representation_size=48, **TINY))
    x = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        ref = model(x)
        weight = model.blocks[0].attn.qkv.weight.data_ptr()
        model.set_backend("sdpa")
        assert model.backend == "sdpa" and model.blocks[0].attn.qkv.weight.data_ptr() == weight
        assert rel_err(model(x), ref) <= LOADER_REL_ERR
        model.set_backend("auto")  # sdpa on the CPU
        assert rel_err(model(x), ref) <= LOADER_REL_ERR
    assert model(x).shape == (3, 10)


def test_forward_features_and_head_shapes():
    model = vit_fast.create("vit_ti_16", representation_size=48, **TINY)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 1 + 2 * 4, 192)
        assert model.forward_head(tokens, pre_logits=True).shape == (2, 48)
        assert torch.equal(model.forward_head(tokens), model(x))
    features_only = vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=0)
    assert features_only(torch.randn(1, 3, 32, 32)).shape == (1, 192)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'cuda'.*torch, sdpa, triton, auto"):
        vit_fast.create("vit_ti_16", backend="cuda", **TINY)


def test_triton_without_gpu_or_interpreter_says_so(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: triton can run")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = vit_fast.create("vit_ti_16", **TINY)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*TRITON_INTERPRET"):
        model.set_backend("triton")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        vit_fast.create("vit_ti_16", backend="triton", **TINY)
    assert "triton" not in vit_fast.available_backends("cpu")


def test_dtypes_run():
    model = vit_fast.create("vit_ti_16", backend="sdpa", **TINY)
    ref = model(torch.randn(1, 3, 32, 32))
    model.to(torch.bfloat16)
    out = model(torch.randn(2, 3, 32, 32))  # float32 input is cast to the model dtype
    assert out.dtype == torch.bfloat16 and ref.dtype == torch.float32


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: torch.randn(3, 32, 32), r"expected a \(B, 3, H, W\).*shape \(3, 32, 32\)"),
        (lambda: torch.randn(1, 4, 32, 32), r"4 channels"),
        (lambda: torch.randn(1, 32, 32, 3), r"got shape \(1, 32, 32, 3\)"),
        (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.int64), r"got dtype torch.int64"),
        (lambda: torch.randn(1, 3, 32, 40), r"multiples of the patch size 16 \(or the model's 32x32\); got 32x40"),
        (lambda: torch.zeros(1, 30, 32, 3, dtype=torch.uint8),
         r"multiples of the patch size 16 \(or the model's 32x32\); got 30x32"),
        (lambda: [[1.0]], r"got list"),
    ],
)
def test_bad_inputs(make, match):
    model = vit_fast.create("vit_ti_16", **TINY)
    with pytest.raises(ValueError, match=match):
        model(make())


@pytest.mark.parametrize("shape", [(2, 5), (2, 5, 64), (5, 192)])
def test_forward_head_names_the_shape_it_takes(shape):
    model = vit_fast.create("vit_ti_16", **TINY)
    with pytest.raises(ValueError, match=r"forward_head expects tokens of shape \(B, tokens, 192\) as "
                                         rf"forward_features returns them, got \({', '.join(map(str, shape))},?\)"):
        model.forward_head(torch.randn(*shape))


def test_position_embedding_cache_follows_the_weights():
    model = vit_fast.create("vit_ti_16", backend="sdpa", **TINY)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        first = model(x)
        model.pos_embed.mul_(2.0)  # an in-place update must not serve the stale resampled table
        assert not torch.allclose(model(x), first)


def test_resampling_is_done_in_fp32():
    model = vit_fast.create("vit_ti_16", backend="sdpa", **TINY)
    ref = model.pos_embed_for((3, 5)).float()
    model.to(torch.bfloat16)
    low = model.pos_embed_for((3, 5))
    assert low.dtype == torch.bfloat16
    # resampled from the bf16 table in fp32 then cast once: within one bf16 rounding of the fp32 result
    assert (low.float() - ref).abs().max() <= 2 ** -7 * ref.abs().max() * 2


def test_attention_pool_reads_the_patch_tokens_only():
    """global_pool "map" with prefix tokens ([CLS] and registers): the probe attends over the patch tokens, as
    timm's default; NaN in the prefix tokens must not reach the pooled output."""
    model = vit_fast.create("vit_ti_16", img_size=32, depth=1, global_pool="map", reg_tokens=2, num_classes=5).eval()
    tokens = torch.randn(2, 3 + 4, model.config.embed_dim)
    with torch.no_grad():
        expected = model.head(model.attn_pool(tokens[:, 3:]))
        tokens[:, :3] = float("nan")
        out = model.forward_head(tokens)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)


def test_attention_maps_are_each_blocks_softmax_weights():
    """257 tokens (a 16 x 16 grid and [CLS]), head dim 80, a non-square grid too: one (B, heads, N, N) map a block,
    rows summing to 1; the same on every backend (always the eager path); `depth` keeps the first blocks; uint8
    pixels as the forward takes them. Each map, applied to that block's values, gives the block's attention output."""
    model = randomize_(vit_fast.create("vit_ti_16", img_size=256, embed_dim=160, num_heads=2, depth=3,
                                       backend="sdpa")).eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        maps = model.attention_maps(x)
        states = model.hidden_states(x)
        assert len(maps) == 3 and all(m.shape == (2, 2, 257, 257) for m in maps)
        assert torch.allclose(maps[1].sum(-1), torch.ones(2, 2, 257))
        for i, block in enumerate(model.blocks):  # the sdpa forward's attention output from the map
            h = block.norm1(states[i])
            v = block.attn.qkv(h).reshape(2, 257, 3, 2, 80)[:, :, 2].transpose(1, 2)
            ctx = (maps[i] @ v).transpose(1, 2).reshape(2, 257, 160)
            assert rel_err(states[i] + block.attn.proj(ctx), states[i + 1] - block.mlp(block.norm2(
                states[i] + block.attn.proj(ctx)))) <= LOADER_REL_ERR
        model.set_backend("torch")
        assert all(torch.equal(a, b) for a, b in zip(model.attention_maps(x, depth=2), maps[:2]))
        pixels = torch.randint(0, 256, (1, 3, 256, 192), dtype=torch.uint8)
        assert model.attention_maps(pixels)[0].shape == (1, 2, 193, 193)


def test_readme_python_api_block(tmp_path, monkeypatch):
    """The README's Python API block as written, its names standing for tiny random models: `timm_model` a timm
    state dict, `hf_model` an HF ViT classifier, "path" a vit-fast checkpoint; `.cuda()` is a no-op without CUDA.
    Each line runs, and the features line returns the pooled features of the checkpoint's classifier."""
    from pathlib import Path

    transformers = pytest.importorskip("transformers")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "vit_fast.load(\"path\", num_classes=0)" in code, "README lost its Python API example"
    monkeypatch.chdir(tmp_path)
    tiny = randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=5)).eval()
    vit_fast.save(tiny, "path")
    hf_model = randomize_(transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96, image_size=32,
        patch_size=16, num_labels=3))).eval()
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scope = {"timm_model": tiny.state_dict(), "hf_model": hf_model,
             "images": torch.randn(2, 3, 32, 32, device=device, dtype=torch.bfloat16),
             "pixels": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, device=device)}
    with torch.no_grad():
        exec(compile(code, "README.md (Python API)", "exec"), scope)
        x = torch.randn(2, 3, 32, 32)
        ref = tiny.forward_head(tiny.forward_features(x), pre_logits=True)
        assert rel_err(scope["features"](x), ref) <= LOADER_REL_ERR
    assert scope["logits"].shape == (2, 5) and scope["emb"].shape == (2, 192) and Path("ckpt/vit_fast.json").is_file()
