"""Whole model on the "triton" backend against the "torch" reference and Hugging Face: tiny configs under the
interpreter on CPU, real ViT-B/16, L/16 and H/14 on a GPU."""
import pytest
import torch

import vit_fast
from tests.conftest import HAS_CUDA
from tests.helpers import randomize_
from tests.tolerances import MODEL_TOL, assert_close, rel_err

transformers = pytest.importorskip("transformers")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _pair(model, device, dtype):
    """The same weights under "torch" in fp32 (the reference) and under "triton" in `dtype`."""
    ref = model.to(device).eval()
    fast = vit_fast.VisionTransformer(model.config, backend="triton").to(device).eval()
    fast.load_state_dict(ref.state_dict())
    return ref.set_backend("torch"), fast.to(dtype)


# (overrides, image size): non-square grid, head dim 80, patch 8, avg pooling with fc_norm, pre-logits
CASES = [
    (dict(img_size=(32, 48), patch_size=16, embed_dim=64, num_heads=2, mlp_dim=128, depth=2), (32, 48)),
    (dict(img_size=32, patch_size=16, embed_dim=160, num_heads=2, mlp_dim=96, depth=1), (32, 32)),
    (dict(img_size=24, patch_size=8, embed_dim=96, num_heads=3, mlp_dim=128, depth=1, global_pool="avg",
          representation_size=40), (24, 24)),
    # DINOv2-g's packed SwiGLU MLP (the gate in FC1's epilogue), H = 40 not a multiple of the block
    (dict(img_size=(32, 48), patch_size=16, embed_dim=64, num_heads=2, mlp_dim=40, depth=1, mlp_type="swiglu"),
     (32, 48)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=["nonsquare", "headdim80", "avgpool", "swiglu"])
def test_triton_equals_torch(case, dtype, device):
    overrides, size = case
    model = randomize_(vit_fast.create("vit_ti_16", backend="torch", num_classes=7, **overrides))
    ref, fast = _pair(model, device, dtype)
    x = torch.randn(2, 3, *size, device=device)
    with torch.no_grad():
        expected_tokens = ref.forward_features(x)
        expected = ref.forward_head(expected_tokens)
        assert_close(fast.forward_features(x.to(dtype)), expected_tokens, dtype, MODEL_TOL)
        assert_close(fast(x.to(dtype)), expected, dtype, MODEL_TOL)  # last block pruned to [CLS] when cls-pooled


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_uint8_pixels_and_higher_resolution(dtype, device):
    model = randomize_(vit_fast.create("vit_ti_16", backend="torch", img_size=32, embed_dim=64, num_heads=2,
                                       mlp_dim=128, depth=1, num_classes=5,
                                       image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)))
    ref, fast = _pair(model, device, dtype)
    pixels = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8, device=device)  # NHWC, resampled grid 3x4
    with torch.no_grad():
        expected = ref(pixels)
        assert_close(fast(pixels), expected, dtype, MODEL_TOL)
        assert_close(fast(pixels.permute(0, 3, 1, 2).contiguous()), expected, dtype, MODEL_TOL)


def test_triton_equals_hf():
    cfg = transformers.ViTConfig(hidden_size=80, num_hidden_layers=2, num_attention_heads=1, intermediate_size=64,
                                 image_size=[32, 16], patch_size=16, num_labels=3)
    hf = randomize_(transformers.ViTForImageClassification(cfg)).eval()
    device = "cuda" if HAS_CUDA else "cpu"
    model = vit_fast.from_hf(hf, backend="triton").to(device)
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        expected = hf(x).logits
        assert rel_err(model(x.to(device)).cpu(), expected) <= MODEL_TOL[torch.float32][1]


@pytest.mark.skipif(not HAS_CUDA, reason="full-size models need a GPU")
@pytest.mark.parametrize("name,batch", [("vit_b_16", 8), ("vit_l_16", 4), ("vit_h_14", 2)])
def test_full_size_models_on_gpu(name, batch):
    model = vit_fast.create(name, backend="sdpa").cuda()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    with torch.no_grad():
        ref = model.set_backend("torch")(x)
        fast = model.set_backend("triton")(x)
        assert rel_err(fast, ref) <= 1e-3  # fp32 with ieee dots
        model.to(torch.bfloat16)
        low = model(x.bfloat16()).float()
        sdpa = model.set_backend("sdpa")(x.bfloat16()).float()
    # bf16 error against fp32 within 2x of PyTorch's own bf16 error
    assert rel_err(low, ref) <= 2 * rel_err(sdpa, ref) + 1e-3
