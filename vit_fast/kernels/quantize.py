"""Per-token and per-group FP8 quantization as an op: x (..., K) -> float8 e4m3 codes and fp32 scales.

Why an op of its own: FC2's input is quantized per row and 128 columns (vit_fast.fp8.INPUT_GROUPS). An FP8 FC1
writes it that way in its epilogue (ln_linear's `fp8_groups`); when FC1 stays dense (`exclude=("fc1",)`) its bf16
rows go through this pass first. The engine is quant_fp8.py's row kernel (one read of x); this module checks the
input and is the registered `torch.ops.vitfast.quantize_fp8_groups` (torch.compile, CUDA graphs).
"""
import torch

from ._common import check, check_device, check_fp8_device, group_count, rows_view
from .quant_fp8 import launch_quant_rows, new_group_codes

OP = "quantize_fp8_groups"


def _check(x, runnable=True):
    check(x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"{OP}: x.dtype", "float32, float16 or bfloat16",
          x.dtype)
    check(x.dim() >= 2 and x.shape[-1] > 0, f"{OP}: x.shape", "(..., K) with K > 0", tuple(x.shape))
    if runnable:
        check_fp8_device(OP, x.device)
    check_device(OP, dict(x=x), runnable)


@torch.library.custom_op("vitfast::quantize_fp8_groups", mutates_args=())
def _quantize_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x)
    if x.numel() == 0:
        return new_group_codes(x.shape, x.device)
    q, scale = launch_quant_rows(rows_view(OP, "x", x), groups=True)
    return q.view(x.shape), scale.view(*x.shape[:-1], group_count(x.shape[-1]))


@_quantize_op.register_fake
def _(x):
    _check(x, runnable=False)
    return new_group_codes(x.shape, x.device)


def quantize_fp8_groups(x: torch.Tensor) -> tuple:
    """(codes float8_e4m3fn (..., K), scales fp32 (..., cdiv(K, 128))): x quantized per row and 128 columns with
    vit_fast.fp8.quantize_groups' arithmetic; linear_residual takes them as (x, x_scale)."""
    return _quantize_op(x)
