"""Changing `img_size` at load (`--set img_size=[H,W]` in convert/predict, `vit_fast.load(..., img_size=...)`):
the position table is resampled once, in fp32, with the function forward uses, and stored; the result equals the
original model run at the new size (which resamples on the fly), for HF (no antialias), timm (antialias) and
vit-fast checkpoints with a non-square training size."""
import pytest
import torch
from safetensors.torch import save_file

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err
from vit_fast.cli import main

transformers = pytest.importorskip("transformers")


def _hf_dir(tmp_path):
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                                 image_size=64, patch_size=16, num_labels=5)
    hf = randomize_(transformers.ViTForImageClassification(cfg)).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf, tmp_path / "hf"


def _timm_file(tmp_path):
    model = randomize_(vit_fast.create("vit_ti_16", img_size=64, depth=1, num_classes=5, backend="sdpa"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    return tmp_path / "timm.safetensors"


def _native_dir(tmp_path):
    model = randomize_(vit_fast.create("vit_ti_16", img_size=(32, 48), depth=1, num_classes=5, backend="sdpa"))
    return vit_fast.save(model, tmp_path / "native")


@pytest.mark.parametrize("kind, new_size", [("hf", (384, 384)), ("timm", (96, 80)), ("native", (64, 96))])
def test_convert_with_new_img_size_equals_original_at_that_size(tmp_path, capsys, kind, new_size):
    src = {"hf": lambda: _hf_dir(tmp_path)[1], "timm": lambda: _timm_file(tmp_path),
           "native": lambda: _native_dir(tmp_path)}[kind]()
    original = vit_fast.load(src, backend="sdpa")
    assert original.config.img_size != new_size
    dst = tmp_path / "resized"
    assert main(["convert", str(src), str(dst), "--set", f"img_size=[{new_size[0]},{new_size[1]}]"]) == 0, \
        capsys.readouterr().err
    resized = vit_fast.load(dst, backend="sdpa")
    grid = (new_size[0] // 16, new_size[1] // 16)
    assert resized.config.img_size == new_size and resized.config.grid_size == grid
    assert resized.pos_embed.shape == (1, 1 + grid[0] * grid[1], original.config.embed_dim)
    assert resized.pos_embed.dtype == torch.float32
    # the stored table is exactly what forward computes on the fly, antialias flag included
    assert resized.config.pos_embed_antialias == (kind == "timm")
    assert torch.equal(resized.pos_embed.detach(), original.pos_embed_for(grid).detach())
    x = torch.randn(2, 3, *new_size)
    with torch.no_grad():
        assert rel_err(resized(x), original(x)) <= LOADER_REL_ERR
        assert resized.pos_embed_for(grid) is resized.pos_embed  # the new size is native now: no resampling


def test_hf_img_size_override_equals_hf_interpolate_pos_encoding(tmp_path):
    hf, path = _hf_dir(tmp_path)
    model = vit_fast.load(path, img_size=(96, 80), backend="sdpa")
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        assert rel_err(model(x), hf(x, interpolate_pos_encoding=True).logits) <= LOADER_REL_ERR


def test_predict_with_img_size_override(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray(torch.randint(0, 256, (50, 70, 3), dtype=torch.uint8).numpy()).save(image)
    path = _native_dir(tmp_path)
    assert main(["predict", str(image), "--checkpoint", str(path), "--set", "img_size=[64,64]", "--top-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_non_square_table_without_training_size_is_a_clear_error():
    model = randomize_(vit_fast.create("vit_ti_16", img_size=(32, 48), depth=1, num_classes=5))
    with pytest.raises(ValueError, match=r"do not form a square grid.*--set 'img_size=\[H,W\]'"):
        vit_fast.from_timm(model.state_dict(), img_size=(64, 64))
