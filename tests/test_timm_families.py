"""`vit_fast.from_timm` on the model families, against golden outputs of real timm models (CLIP quick-GELU,
DINOv2, DINOv2 giant-style with registers and SwiGLU, SigLIP with attention pooling and head dim 80, distilled
DeiT), made by `tests/make_timm_golden.py --families` in a separate venv holding timm. Each case evaluates at a
size other than the training one except DeiT (timm's DeiT has no dynamic size)."""
import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vit_fast
from tests.tolerances import LOADER_REL_ERR, MODEL_TOL, rel_err

GOLDEN = Path(__file__).resolve().parent / "data" / "timm_golden" / "families"
CASES = json.loads((GOLDEN / "cases.json").read_text())["cases"]


@lru_cache(maxsize=None)
def _golden() -> dict:
    return load_file(str(GOLDEN / "golden.safetensors"))


def _load(case, backend):
    spec = CASES[case]
    return vit_fast.from_timm(GOLDEN / spec["weights"], backend=backend, **spec["vit_fast_overrides"])


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_family_golden(case, backend):
    golden = _golden()
    model = _load(case, backend)
    x = golden[f"{case}.input"]
    with torch.no_grad():
        feats = model.forward_features(x)
        got = dict(features=feats, pre_logits=model.forward_head(feats, pre_logits=True), logits=model(x),
                   intermediate0=model.forward_intermediates(x, indices=[0], norm=True, intermediates_only=True)[0])
    for key, out in got.items():
        ref = golden[f"{case}.{key}"]
        assert out.shape == ref.shape, f"{key}: {tuple(out.shape)} vs timm {tuple(ref.shape)}"
        assert rel_err(out, ref) <= LOADER_REL_ERR, f"{key}: {rel_err(out, ref):.2e}"


@pytest.mark.parametrize("case", ["siglip_hd80", "dinov2_reg_swiglu"])
def test_family_golden_triton(case):
    """The fused kernels (interpreter on CPU): SigLIP (no class token, tanh GELU, map head, head dim 80) and
    DINOv2 with registers and SwiGLU (LayerScale folded)."""
    golden = _golden()
    model = _load(case, "triton")
    x = golden[f"{case}.input"]
    atol, rtol = MODEL_TOL[torch.float32]
    with torch.no_grad():
        torch.testing.assert_close(model(x), golden[f"{case}.logits"], atol=atol, rtol=rtol)


def test_family_configs_inferred():
    """What the state dicts tell: tokens, pooling, norms, biases, MLP type, LayerScale folded away."""
    cfg = {case: _load(case, "torch").config for case in CASES}
    assert cfg["clip_quickgelu"].pre_norm and not cfg["clip_quickgelu"].patch_bias
    assert cfg["clip_quickgelu"].num_classes == 24 and cfg["clip_quickgelu"].act_layer == "quick_gelu"
    assert cfg["dinov2"].patch_size == 14 and cfg["dinov2"].img_size == (28, 28) and cfg["dinov2"].pos_embed_antialias
    reg = cfg["dinov2_reg_swiglu"]
    assert (reg.reg_tokens, reg.no_embed_class, reg.mlp_type) == (4, True, "swiglu")
    sig = cfg["siglip_hd80"]
    assert (sig.class_token, sig.global_pool, sig.head_dim) == (False, "map", 80)
    assert cfg["deit_distilled"].dist_token and cfg["deit_distilled"].num_prefix_tokens == 2
    assert not any(".ls1." in k for k in _load("dinov2", "torch").state_dict())


def test_layer_scale_of_wrong_shape_rejected():
    from safetensors.torch import load_file as load

    state = load(str(GOLDEN / CASES["dinov2"]["weights"]))
    state["blocks.0.ls1.gamma"] = state["blocks.0.ls1.gamma"][:10]
    with pytest.raises(ValueError, match=r"blocks\.0\.ls1\.gamma has shape \(10,\); expected \(64,\)"):
        vit_fast.from_timm(state, num_heads=2)


LIVE = [
    ("vit_base_patch16_clip_quickgelu_224", dict(img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=24,
                                                 dynamic_img_size=True), (48, 32)),
    ("vit_small_patch14_reg4_dinov2", dict(img_size=28, embed_dim=64, depth=2, num_heads=2, dynamic_img_size=True),
     (42, 56)),
    ("vit_base_patch16_siglip_224", dict(img_size=32, embed_dim=160, depth=1, num_heads=2, dynamic_img_size=True),
     (32, 48)),
    ("deit_base_distilled_patch16_224", dict(img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=7),
     (32, 32)),
    # so400m/14 at 384 in small: a native size that is not a multiple of the patch (2x2 patches of 30x30 px)
    ("vit_so400m_patch14_siglip_384", dict(img_size=30, embed_dim=160, depth=1, num_heads=2), (30, 30)),
    # attention pooling with registers: the probe attends over the patch tokens only (timm's pool_include_prefix)
    ("vit_so150m_patch16_reg4_map_256", dict(img_size=32, embed_dim=64, depth=1, num_heads=2), (32, 32)),
]


@pytest.mark.parametrize("name,kwargs,size", LIVE, ids=[c[0] for c in LIVE])
def test_live_timm_family(name, kwargs, size):
    """Live timm models where timm imports (not in CI): everything read from the module, nothing passed."""
    timm = pytest.importorskip("timm")
    from tests.helpers import randomize_

    ref = randomize_(timm.create_model(name, pretrained=False, **kwargs)).eval()
    model = vit_fast.from_timm(ref, backend="sdpa")
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= LOADER_REL_ERR
        theirs = ref.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        ours = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        assert rel_err(ours[0], theirs[0]) <= LOADER_REL_ERR


REFUSED = [  # timm models whose structure differs from the plain ViT's, some with the plain ViT's key names
    ("vit_base_patch16_rpn_224", dict(embed_dim=64, depth=1, num_heads=2), "blocks ResPostBlock"),
    ("vit_small_patch16_18x2_224", dict(embed_dim=64, depth=1, num_heads=2), "blocks ParallelThingsBlock"),
    ("vit_base_patch16_xp_224", dict(embed_dim=64, depth=1, num_heads=2), "blocks ParallelScalingBlock"),
    ("vit_tiny_r_s16_p8_224", {}, "patch embedding HybridEmbed"),
    ("vit_pe_core_tiny_patch16_384", {}, "got timm.models.eva.Eva"),
    ("test_vit3", {}, "'map' pooling over the prefix tokens too"),
    # the plain ViT's classes with a feature switched off or swapped: named, not a list of missing keys
    ("vit_tiny_patch16_224", dict(depth=1, img_size=32, norm_layer="rmsnorm"), r"RmsNorm layers \(vit-fast runs"),
    ("vit_tiny_patch16_224", dict(depth=1, img_size=32, pos_embed="none"), r"no absolute position embedding"),
    ("vit_tiny_patch16_224", dict(depth=1, img_size=32, proj_bias=False),
     r"attention out-projections without bias \(proj_bias=False\), MLP layers without bias"),
]


@pytest.mark.parametrize("name,kwargs,match", REFUSED, ids=[c[0] for c in REFUSED])
def test_other_timm_structures_refused_in_one_line(name, kwargs, match):
    """A live timm model that is not the plain pre-norm ViT is refused, naming what differs (before, a post-norm
    model loaded and ran wrong, and parallel blocks raised AttributeError)."""
    timm = pytest.importorskip("timm")
    ref = timm.create_model(name, pretrained=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        vit_fast.from_timm(ref)
