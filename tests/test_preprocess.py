"""Image decoding and eval-time resizing: every accepted input kind, clear errors for bad ones, and the exact
resize/crop arithmetic of timm (torchvision Resize + CenterCrop) and Hugging Face (squash) preprocessing."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from vit_fast import ViTConfig
from vit_fast.preprocess import ImageError, load_image, preprocess


def _random_image(h, w, mode="RGB"):
    img = Image.fromarray(np.random.randint(0, 256, (h, w, 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def _encode(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _config(img_size, **kw):
    return ViTConfig(img_size=img_size, patch_size=8, embed_dim=64, depth=1, num_heads=2, mlp_dim=128, **kw)


def test_load_image_accepts_every_input_kind(tmp_path):
    img = _random_image(23, 31)
    ref = np.asarray(img)
    path = tmp_path / "a.png"
    img.save(path)
    hwc = ref.copy()
    for obj in (img, str(path), path, _encode(img), bytearray(_encode(img)), memoryview(_encode(img)), hwc,
                np.ascontiguousarray(hwc.transpose(2, 0, 1)), torch.from_numpy(hwc),
                torch.from_numpy(hwc).permute(2, 0, 1)):
        out = load_image(obj)
        assert out.mode == "RGB" and out.size == (31, 23), type(obj)
        np.testing.assert_array_equal(np.asarray(out), ref)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_load_image_converts_modes_to_rgb(mode):
    src = _random_image(9, 14, "L" if mode == "I;16" else mode)
    if mode == "I;16":
        src = src.convert("I").point(lambda v: v * 200).convert("I;16")
    out = load_image(_encode(src) if mode != "CMYK" else src)
    assert out.mode == "RGB" and out.size == (14, 9)
    if mode in ("L", "RGBA", "P"):
        np.testing.assert_array_equal(np.asarray(out), np.asarray(src.convert("RGB")))


def test_load_image_jpeg_and_grayscale_file(tmp_path):
    path = tmp_path / "g.jpg"
    _random_image(17, 12, "L").save(path, quality=90)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (12, 17)
    arr = np.asarray(out)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


@pytest.mark.parametrize(
    "obj, match",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a recognized image format"),
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 4), np.uint8), r"\(H, W, 3\) or \(3, H, W\)"),
        (np.zeros((8, 8), np.uint8), r"\(H, W, 3\) or \(3, H, W\)"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (torch.zeros(8, 8, 3), "torch.uint8"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), r"\(H, W, 3\) or \(3, H, W\)"),
        (12345, "expected a PIL image, a path"),
    ],
)
def test_load_image_rejects_bad_input(obj, match):
    with pytest.raises(ImageError, match=match):
        load_image(obj)


def test_load_image_truncated_and_missing_files(tmp_path):
    data = _encode(_random_image(64, 64), "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(data[: len(data) // 2])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageError, match="broken.png"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    assert issubclass(ImageError, ValueError)


def _shortest_ref(img, resize_to, crop_box, resample):
    """Explicit torchvision arithmetic, written out per case: resize to `resize_to` (w, h), crop `crop_box`."""
    resized = img.resize(resize_to, resample=resample) if resize_to != img.size else img
    arr = np.asarray(resized)
    left, top, right, bottom = crop_box
    return torch.from_numpy(arr[top:bottom, left:right].copy()).permute(2, 0, 1)


@pytest.mark.parametrize(
    "img_wh, img_size, crop_pct, resize_to, crop_box",
    [
        ((256, 256), 224, 0.875, (256, 256), (16, 16, 240, 240)),  # already at scale: pure center crop
        ((320, 256), 224, 0.875, (320, 256), (48, 16, 272, 240)),  # short side already 256: no resize
        ((300, 200), 64, 0.8, (120, 80), (28, 8, 92, 72)),  # long side truncated: int(80 * 300 / 200)
        ((500, 400), 224, 0.9, (310, 248), (43, 12, 267, 236)),  # floor(224 / 0.9) = 248, as timm
        ((97, 211), 48, 1.0, (48, 104), (0, 28, 48, 76)),  # portrait, odd sizes, round((104 - 48) / 2)
        ((100, 100), (32, 48), 1.0, (48, 48), (0, 8, 48, 40)),  # non-square target: cover the box, crop
    ],
)
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocess_shortest_matches_timm_arithmetic(img_wh, img_size, crop_pct, resize_to, crop_box,
                                                     interpolation):
    img = _random_image(img_wh[1], img_wh[0])
    cfg = _config(img_size, crop_pct=crop_pct, resize_mode="shortest", interpolation=interpolation)
    out = preprocess(img, cfg)
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interpolation]
    ref = _shortest_ref(img, resize_to, crop_box, resample)
    assert out.dtype == torch.uint8 and out.shape == (3, *cfg.img_size) and out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize("img_hw, img_size", [((50, 37), (24, 40)), ((224, 300), (224, 224)), ((13, 13), (32, 16))])
def test_preprocess_squash_matches_hugging_face(img_hw, img_size):
    transformers = pytest.importorskip("transformers")
    processor_cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    img = _random_image(*img_hw)
    cfg = _config(img_size, resize_mode="squash", interpolation="bilinear")
    processor = processor_cls(size={"height": img_size[0], "width": img_size[1]}, do_rescale=False,
                              do_normalize=False, resample=Image.Resampling.BILINEAR)
    ref = processor(images=img, return_tensors="np")["pixel_values"][0]
    out = preprocess(img, cfg)
    assert out.dtype == torch.uint8 and out.shape == (3, *img_size)
    np.testing.assert_array_equal(out.numpy(), np.asarray(ref).astype(np.uint8))


def test_preprocess_accepts_any_input_kind_and_checks_config():
    img = _random_image(40, 30)
    cfg = _config(16, crop_pct=0.9)
    ref = preprocess(img, cfg)
    for obj in (_encode(img), np.asarray(img), torch.from_numpy(np.array(img)).permute(2, 0, 1)):
        torch.testing.assert_close(preprocess(obj, cfg), ref, atol=0, rtol=0)
    cfg.resize_mode = "stretch"
    with pytest.raises(ValueError, match="resize_mode"):
        preprocess(img, cfg)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_grayscale_is_scaled_not_saturated(tmp_path, fmt):
    """A 16-bit grayscale gradient keeps its gradient: 8-bit value = round(v * 255 / 65535) in all three channels
    (Pillow's plain convert would clip everything above 255 to white)."""
    h, w = 37, 300
    offset = np.random.randint(0, 200)
    row = np.linspace(offset, 65535, w).round().astype(np.uint16)
    arr = np.tile(row, (h, 1))
    path = tmp_path / f"gradient.{fmt.lower()}"
    Image.fromarray(arr).save(path, format=fmt)
    assert Image.open(path).mode.startswith("I;16")  # really a 16-bit file
    want = np.rint(arr / 257.0).astype(np.uint8)
    for source in (path, path.read_bytes(), Image.open(path)):
        got = np.asarray(load_image(source))
        assert got.shape == (h, w, 3) and got.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(got[..., c], want)
    assert (want == 255).mean() < 0.01 and want[:, 0].max() <= 1 + offset // 257
    # through the whole preprocessing too: the mean brightness stays mid-grey, not white
    out = preprocess(path, _config(32, resize_mode="squash", interpolation="bilinear"))
    assert 100 < out.float().mean() < 155


def test_thirty_two_bit_integer_images():
    wide = Image.fromarray(np.full((4, 4), 65535 * 2, dtype=np.int32), mode="I")
    with pytest.raises(ImageError, match="no defined 8-bit scale"):
        load_image(wide)
    sixteen = Image.fromarray(np.full((4, 4), 32896, dtype=np.int32), mode="I")  # 16-bit data opened as "I"
    assert np.asarray(load_image(sixteen)).max() == 128
    eight = Image.fromarray(np.full((4, 4), 200, dtype=np.int32), mode="I")
    assert np.asarray(load_image(eight)).max() == 200


@pytest.mark.parametrize("value", [0.5, 200.0])
def test_float_images_are_refused_not_truncated(tmp_path, value):
    """A 32-bit float TIFF (mode F) has no recorded range: Pillow's conversion would truncate [0, 1] data to black."""
    path = tmp_path / "f.tif"
    Image.fromarray(np.full((6, 5), value, dtype=np.float32), mode="F").save(path)
    with pytest.raises(ImageError, match=r"32-bit float pixels \(mode 'F'\)"):
        load_image(str(path))
