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


def _transparent_images():
    """Transparency as PNGs carry it: an alpha band (RGBA, LA), a palette entry, an RGB colour (tRNS). Alpha runs
    over 0 (clear), 255 (opaque) and the values between; the colour under clear pixels is not white."""
    gen = np.random.default_rng(1)
    rgba = gen.integers(0, 256, (21, 34, 4), dtype=np.uint8)
    rgba[:, :5, 3], rgba[:, 5:9, 3] = 0, 255
    rgb = gen.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    rgb[3:7, 3:7] = (10, 20, 30)
    trns = Image.fromarray(rgb)
    trns.info["transparency"] = (10, 20, 30)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    return {"RGBA": Image.fromarray(rgba, "RGBA"), "LA": Image.fromarray(rgba, "RGBA").convert("LA"),
            "P": palette, "RGB+tRNS": trns}


@pytest.mark.parametrize("kind", ["RGBA", "LA", "P", "RGB+tRNS"])
def test_transparency_drops_alpha_or_composites_onto_white(kind, tmp_path):
    """"drop" is Pillow's convert("RGB") (timm); "white" is transformers' convert_to_rgb, pixel for pixel, on the
    image and on its PNG file; opaque images are the same either way."""
    image = _transparent_images()[kind]
    dropped = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(image)), dropped)
    white = np.asarray(load_image(image, transparency="white"))
    rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
    over = rgba[..., 3:] / 255 * rgba[..., :3] + (1 - rgba[..., 3:] / 255) * 255  # alpha over white
    assert np.abs(white.astype(np.float64) - over).max() <= 1
    assert not np.array_equal(white, dropped) and (white[rgba[..., 3] == 0] == 255).all()
    try:
        from transformers.image_transforms import convert_to_rgb
    except ImportError:
        convert_to_rgb = None
    if convert_to_rgb is not None:
        np.testing.assert_array_equal(white, np.asarray(convert_to_rgb(image, return_numpy=True)))
    if kind != "RGB+tRNS":  # Pillow writes tRNS for RGB PNGs only from info it was given at save time
        image.save(tmp_path / "t.png")
        np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "t.png", transparency="white")), white)
    opaque = _random_image(9, 13)
    np.testing.assert_array_equal(np.asarray(load_image(opaque, transparency="white")), np.asarray(opaque))
    with pytest.raises(ValueError, match="transparency must be 'drop' or 'white', got 'black'"):
        load_image(image, transparency="black")


def test_preprocess_follows_the_configs_transparency():
    image = _transparent_images()["RGBA"]
    drop, white = (preprocess(image, _config(16, transparency=t, resize_mode="squash")) for t in ("drop", "white"))
    expect = torch.from_numpy(np.array(load_image(image, transparency="white").resize((16, 16), Image.BICUBIC)))
    assert torch.equal(white, expect.permute(2, 0, 1)) and not torch.equal(drop, white)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied_only_when_asked(orientation, tmp_path):
    """A JPEG stored 40 x 20 with orientation 6 or 8 shows 20 x 40: exif_transpose turns it as
    PIL.ImageOps.exif_transpose (transformers' load_image) does, on files, bytes and opened images alike."""
    from PIL import ImageOps

    stored = _random_image(20, 40)
    exif = stored.getexif()
    exif[0x0112] = orientation
    data = _encode_exif(stored, exif)
    (tmp_path / "p.jpg").write_bytes(data)
    opened = Image.open(io.BytesIO(data))
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    as_stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for obj in (data, tmp_path / "p.jpg", opened):
        np.testing.assert_array_equal(np.asarray(load_image(obj)), as_stored)
        np.testing.assert_array_equal(np.asarray(load_image(obj, exif_transpose=True)), upright)
    assert upright.shape[:2] == ((40, 20) if orientation in (6, 8) else (20, 40))
    cfg = _config(16, resize_mode="squash", exif_transpose=True)
    assert torch.equal(preprocess(data, cfg), preprocess(Image.fromarray(upright), cfg))


def _encode_exif(img, exif):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_an_extreme_strip_is_refused_before_its_resize():
    """A 100000 x 1 PNG is a few hundred bytes; scaled to a 248 px short side it would take gigabytes. It is one
    clear ImageError, found before any resize; a wide panorama still runs."""
    strip = _encode(Image.new("RGB", (100_000, 1)))
    assert len(strip) < 1000
    with pytest.raises(ImageError, match=r"the image is 100000x1 px: scaling its short side to 248 px would make "
                                         r"it 24800000x248 px before the crop; expected at most 16,777,216 pixels"):
        preprocess(strip, _config(224))
    assert preprocess(_random_image(1000, 8000), _config(224)).shape == (3, 224, 224)
