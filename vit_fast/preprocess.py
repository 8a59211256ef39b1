"""Image decoding and resizing for inference, matching the preprocessing the checkpoints were trained with.

Serving code receives images in many shapes (file paths, uploaded bytes, PIL images, arrays); `load_image` turns
any of them into one RGB PIL image or raises `ImageError` saying what was wrong. `preprocess` then resizes and
crops it the way the checkpoint's own library does at evaluation time and returns a uint8 (3, H, W) tensor:

- resize_mode "shortest" (timm's eval transform): resize the shortest side to floor(size / crop_pct) with
  `config.interpolation`, then center-crop to `config.img_size` (torchvision's Resize + CenterCrop arithmetic);
- resize_mode "squash" (Hugging Face's ViTImageProcessor): resize to exactly `config.img_size`;
- resize_mode "squash_crop" (Hugging Face's DeiT processor): resize both sides, then center-crop.

A checkpoint whose processor says more (HF's preprocessor_config.json: the crop size, the resize before it, the
crop offset) carries it in `input_size`, `resize_size` and `crop_offset`.

Two choices differ between the libraries and are the checkpoint's (`config.transparency`, `config.exif_transpose`):
an alpha channel is dropped (timm) or composited onto white (HF's CLIP, SigLIP and DINOv2 processors), and photos
are turned upright by their EXIF orientation (transformers' pipelines) or not (timm, HF's processors).

16-bit grayscale images (PNG/TIFF) are scaled to 8 bits (x * 255 / 65535, rounded) before the RGB conversion;
32-bit float ones (TIFF mode "F") are refused: their range ([0, 1] or [0, 255]) is not recorded.

Mean/std normalization is deliberately not done here: the model folds it into its patch embedding and takes
uint8 pixels directly, which also keeps host-to-device copies four times smaller than float32.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["ImageError", "load_image", "preprocess"]

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class ImageError(ValueError):
    """An input could not be turned into an RGB image (undecodable bytes, unsupported type, mode or shape)."""


def _decode(source, what: str) -> Image.Image:
    try:
        img = Image.open(source)
        img.load()  # Image.open is lazy: force the decode here so truncated files fail now, not later
    except Image.UnidentifiedImageError as e:
        raise ImageError(f"cannot decode {what}: not a recognized image format") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what} is too large to decode safely: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot decode {what} as an image: {e}") from e
    return img


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG, TIFF: Pillow mode I;16*) -> 8-bit L, scaled by 255/65535 and rounded.
    Pillow's own convert clips such pixels at 255, which turns most of an image white. Mode "I" (32-bit ints)
    is scaled the same way when its values exceed 8 bits (16-bit data opened as "I"), else kept."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "I":
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(f"a 32-bit integer image with values in [{arr.min():.0f}, {arr.max():.0f}] has no "
                             "defined 8-bit scale; expected 8- or 16-bit pixels")
        if arr.max() <= 255:
            return Image.fromarray(arr.astype(np.uint8), mode="L")
    return Image.fromarray(np.rint(arr / 257.0).astype(np.uint8), mode="L")


def _has_alpha(img: Image.Image) -> bool:
    """An alpha band (RGBA, LA, PA) or a transparent colour (a palette or PNG tRNS entry)."""
    return "A" in img.getbands() or img.info.get("transparency") is not None


def _on_white(img: Image.Image) -> Image.Image:
    """Composite onto an opaque white background (transformers' convert_to_rgb)."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _to_rgb(img: Image.Image, what: str, transparency: str = "drop", exif_transpose: bool = False) -> Image.Image:
    if transparency not in ("drop", "white"):
        raise ValueError(f"transparency must be 'drop' or 'white', got {transparency!r}")
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)
        except (OSError, ValueError, SyntaxError) as e:  # a malformed EXIF block
            raise ImageError(f"cannot read the EXIF orientation of {what}: {e}") from e
    if transparency == "white" and img.mode not in _SIXTEEN_BIT + ("I", "F") and _has_alpha(img):
        try:
            return _on_white(img)
        except (OSError, ValueError) as e:
            raise ImageError(f"cannot composite {what} (mode {img.mode!r}) onto white: {e}") from e
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        img = _high_depth_to_l(img)
    elif img.mode == "F":  # Pillow would truncate each value to an integer: [0, 1] data turns black
        raise ImageError(f"{what} holds 32-bit float pixels (mode 'F'), which have no defined 8-bit scale; expected "
                         "8- or 16-bit pixels (save it as an 8-bit image, or pass a uint8 array)")
    try:
        return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot convert {what} from mode {img.mode!r} to RGB: {e}") from e


def _array_to_image(arr: np.ndarray, what: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ImageError(f"{what} must have dtype uint8 (pixels in [0, 255]), got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        hwc = arr
    elif arr.ndim == 3 and arr.shape[0] == 3:
        hwc = arr.transpose(1, 2, 0)
    else:
        raise ImageError(f"{what} must have shape (H, W, 3) or (3, H, W), got {tuple(arr.shape)}")
    if hwc.shape[0] == 0 or hwc.shape[1] == 0:
        raise ImageError(f"{what} is empty: shape {tuple(arr.shape)}")
    return Image.fromarray(np.ascontiguousarray(hwc))


def load_image(obj, transparency: str = "drop", exif_transpose: bool = False) -> Image.Image:
    """Return `obj` as an RGB PIL image.

    Accepts a PIL image (any mode Pillow can convert to RGB), a file path (str or Path), encoded bytes
    (bytes/bytearray/memoryview of JPEG, PNG, ...) or a binary file object holding them (read from where it is), or a
    uint8 numpy array / torch tensor shaped (H, W, 3) or (3, H, W) (a (3, H, 3) array is read as (H, W, 3)).
    Raises `ImageError` (a ValueError) for undecodable data, a wrong dtype/shape or an unsupported type,
    and FileNotFoundError for a missing path.

    `transparency`: "drop" the alpha channel (Pillow's convert("RGB"), as timm) or composite onto "white" (as
    transformers' convert_to_rgb). `exif_transpose`: turn the image by its EXIF orientation first (as transformers'
    load_image). Arrays and tensors have neither.
    """
    choices = dict(transparency=transparency, exif_transpose=exif_transpose)
    if isinstance(obj, Image.Image):
        return _to_rgb(obj, "the PIL image", **choices)
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {str(obj)!r}")
        with open(path, "rb") as f:
            return _to_rgb(_decode(f, f"file {str(obj)!r}"), f"file {str(obj)!r}", **choices)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        if len(obj) == 0:
            raise ImageError("cannot decode an empty byte string as an image")
        return _to_rgb(_decode(io.BytesIO(obj), f"{len(obj)} bytes"), "the decoded bytes", **choices)
    if hasattr(obj, "read") and callable(obj.read):  # a binary file object: BytesIO, an upload's .file, open(..., "rb")
        try:
            data = obj.read()
        except UnicodeDecodeError:  # a file opened in text mode
            data = ""
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"expected a binary file object (opened with 'rb'), got one that reads "
                             f"{type(data).__name__}")
        return load_image(bytes(data), transparency, exif_transpose)
    if isinstance(obj, torch.Tensor):
        if obj.dtype != torch.uint8:
            raise ImageError(f"the image tensor must have dtype torch.uint8 (pixels in [0, 255]), got {obj.dtype}")
        return _array_to_image(obj.detach().cpu().numpy(), "the image tensor")
    if isinstance(obj, np.ndarray):
        return _array_to_image(obj, "the image array")
    raise ImageError(
        "expected a PIL image, a path, encoded bytes or a binary file object, or a uint8 array/tensor of shape "
        "(H, W, 3) or (3, H, W), "
        f"got {type(obj).__name__}"
    )


def _target_size(config) -> tuple[int, int]:
    size = getattr(config, "input_size", None) or config.img_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(h), int(w)


def _scale(config, size: tuple[int, int], sides: int) -> tuple[int, int]:
    """The resize before the crop: the processor's own `resize_size`, else timm's floor(size / crop_pct)."""
    given = getattr(config, "resize_size", None)
    if given:
        return (given[0], given[0]) if sides == 1 else tuple(given)
    crop_pct = config.crop_pct if config.crop_pct is not None else 1.0
    if not crop_pct > 0:
        raise ValueError(f"config.crop_pct must be positive, got {crop_pct!r}")
    return math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct)


def _resample(config) -> Image.Resampling:
    name = getattr(config, "interpolation", "bicubic")
    if name not in _RESAMPLE:
        raise ValueError(f"config.interpolation must be one of {sorted(_RESAMPLE)}, got {name!r}")
    return _RESAMPLE[name]


MAX_RESIZED_PIXELS = 4096 * 4096  # the resize before the crop, at most (48 MB of RGB)


def _resize_shortest(img: Image.Image, scale: tuple[int, int], resample) -> Image.Image:
    w, h = img.size
    sh, sw = scale
    if sh == sw:
        # torchvision Resize(int): the short side becomes `sh`, the long side is truncated, not rounded
        if (w <= h and w == sw) or (h <= w and h == sh):
            return img
        if w <= h:
            new_w, new_h = sw, int(sw * h / w)
        else:
            new_h, new_w = sh, int(sh * w / h)
    else:
        # timm ResizeKeepRatio for a non-square target: cover the (sh, sw) box, keep the aspect ratio
        ratio = min(h / sh, w / sw)
        new_h, new_w = round(h / ratio), round(w / ratio)
    if new_w * new_h > MAX_RESIZED_PIXELS:  # a strip of a few bytes would take gigabytes before the crop
        raise ImageError(f"the image is {w}x{h} px: scaling its short side to {min(sh, sw)} px would make it "
                         f"{new_w}x{new_h} px before the crop; expected at most {MAX_RESIZED_PIXELS:,} pixels "
                         f"there (an aspect ratio under {MAX_RESIZED_PIXELS // max(sh, sw) ** 2}:1)")
    return img.resize((max(new_w, 1), max(new_h, 1)), resample=resample)


def _center_crop(img: Image.Image, size: tuple[int, int], offset: str = "round") -> Image.Image:
    """torchvision CenterCrop: zero-pad a too-small image symmetrically (extra pixel right/bottom), then crop at
    round(excess / 2) (half to even), or with offset "floor" at excess // 2 (HF's image processors)."""
    ch, cw = size
    w, h = img.size
    if w < cw or h < ch:
        pad_l, pad_t = max(cw - w, 0) // 2, max(ch - h, 0) // 2
        padded = Image.new("RGB", (max(w, cw), max(h, ch)))
        padded.paste(img, (pad_l, pad_t))
        img, (w, h) = padded, padded.size
    if offset == "floor":
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def preprocess(image, config) -> torch.Tensor:
    """Decode (via `load_image`), resize and crop `image` for `config`; return a uint8 tensor (3, H, W).

    `config` needs img_size (or input_size), resize_mode ("shortest" | "squash" | "squash_crop"), crop_pct or
    resize_size (for the cropping modes), crop_offset and interpolation; transparency and exif_transpose (see
    `load_image`) where it has them. The result is not normalized: feed it
    (stacked into a batch) straight to the model.
    """
    img = load_image(image, getattr(config, "transparency", "drop"), getattr(config, "exif_transpose", False))
    size = _target_size(config)
    resample = _resample(config)
    mode = getattr(config, "resize_mode", "shortest")
    offset = getattr(config, "crop_offset", "round")
    if mode == "squash":
        img = img.resize((size[1], size[0]), resample=resample)
    elif mode == "shortest":
        img = _center_crop(_resize_shortest(img, _scale(config, size, 1), resample), size, offset)
    elif mode == "squash_crop":
        sh, sw = _scale(config, size, 2)
        img = _center_crop(img.resize((sw, sh), resample=resample), size, offset)
    else:
        raise ValueError(f"config.resize_mode must be 'shortest', 'squash' or 'squash_crop', got {mode!r}")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
