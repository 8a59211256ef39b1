"""kernels.patch_embed against F.conv2d patchify -> flatten -> + pos, with the [CLS] row prepended, in fp32."""
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close, poison

from vit_fast import kernels
from vit_fast.kernels.patch_embed import patch_embed_launch

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, C, grid_h, grid_w, P, D): non-square grids; P=14 gives the ragged K = 588.
SHAPES = [(4, 3, 14, 14, 16, 768), (2, 3, 16, 12, 14, 1024)] if CUDA else [(2, 3, 3, 5, 8, 48)]
IMAGES = ["float_nchw", "float_strided", "uint8_nchw", "uint8_nhwc"]


def make_image(kind, b, c, h, w, dtype, device):
    if kind.startswith("uint8"):
        img = torch.randint(0, 256, (b, h, w, c), dtype=torch.uint8, device=device)
        return img.permute(0, 3, 1, 2) if kind == "uint8_nhwc" else img.permute(0, 3, 1, 2).contiguous()
    if kind == "float_strided":  # every other column of a wider, channel-interleaved image: no unit stride anywhere
        return torch.randn(b, h, c, 2 * w, device=device).to(dtype).permute(0, 2, 1, 3)[..., ::2]
    return torch.randn(b, c, h, w, device=device).to(dtype)


def make(kind, shape, dtype, device, bias=True):
    b, c, gh, gw, p, d = shape
    x = make_image(kind, b, c, gh * p, gw * p, dtype, device)
    param = torch.float32 if kind.startswith("uint8") else dtype  # uint8 images come with fp32 folded weights
    scale = 1 / 255 if kind.startswith("uint8") else 1.0
    w = (torch.randn(d, c, p, p, device=device) * scale / (c * p * p) ** 0.5).to(param)
    bb = (0.5 * torch.randn(d, device=device)).to(param) if bias else None
    pos = (0.5 * torch.randn(gh * gw, d, device=device)).to(dtype)
    cls = torch.randn(d, device=device).to(dtype)
    return x, w, bb, pos, cls


def reference(x, w, bb, pos, cls):
    p = w.shape[-1]
    y = F.conv2d(x.float(), w.float(), None if bb is None else bb.float(), stride=p).flatten(2).transpose(1, 2)
    y = y + pos.float()
    return torch.cat([cls.float().expand(x.shape[0], 1, -1), y], dim=1)


@pytest.mark.parametrize("kind", IMAGES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_eager(dtype, kind, device):
    for shape in SHAPES:
        x, w, bb, pos, cls = make(kind, shape, dtype, device)
        assert x.is_contiguous() == kind.endswith("nchw")
        out = poison(torch.empty(x.shape[0], 1 + pos.shape[0], pos.shape[1], dtype=dtype, device=device))
        patch_embed_launch(x, w, bb, pos, cls, out=out)
        assert_close(out, reference(x, w, bb, pos, cls), dtype)


def test_public_op_no_bias(device):
    x, w, _, pos, cls = make("float_nchw", SHAPES[0], torch.float32, device)
    out = kernels.patch_embed(x, w, None, pos, cls)
    assert out.shape == (x.shape[0], 1 + pos.shape[0], pos.shape[1]) and out.is_contiguous()
    assert_close(out, reference(x, w, None, pos, cls), torch.float32)


def test_registered_op(device):
    x, w, bb, pos, cls = make("uint8_nhwc", (2, 3, 2, 3, 4, 32), torch.float32, device)
    torch.library.opcheck(torch.ops.vitfast.patch_embed.default, (x, w, bb, pos, cls),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs(device):
    x, w, bb, pos, cls = make("float_nchw", (2, 3, 2, 3, 4, 32), torch.float32, device)
    with pytest.raises(ValueError, match="image size"):
        kernels.patch_embed(x[..., :-1], w, bb, pos, cls)
    with pytest.raises(ValueError, match="weight.shape"):
        kernels.patch_embed(x, w[:, :2], bb, pos, cls)
    with pytest.raises(ValueError, match="pos_embed.shape"):
        kernels.patch_embed(x, w, bb, pos[1:], cls)
    with pytest.raises(ValueError, match="x.dtype"):
        kernels.patch_embed(x.half(), w, bb, pos, cls)
    with pytest.raises(ValueError, match="x.dtype"):
        kernels.patch_embed(x.to(torch.int32), w, bb, pos, cls)
    with pytest.raises(ValueError, match="x.shape"):
        kernels.patch_embed(x[0], w, bb, pos, cls)
    with pytest.raises(ValueError, match="cls_pos.shape"):
        kernels.patch_embed(x, w, bb, pos, cls[:-1])
    with pytest.raises(ValueError, match="weight: expected"):
        kernels.patch_embed(x, w.transpose(2, 3), bb, pos, cls)
