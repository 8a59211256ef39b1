"""Triton's CPU interpreter rounding fp32 -> bf16 as the GPU does.

The interpreter (TRITON_INTERPRET=1) converts fp32 to bf16 by truncation; a GPU rounds to nearest even
(`cvt.rn.bf16.f32`). One truncation is at most one bf16 ulp off, but it always shrinks magnitudes, so the error
does not average out: through a deep model's residual stream a correct Triton path drifted well past PyTorch's own
bf16 error on the CPU, and `vit-fast validate` failed kernels that are right
(tests/kernels/test_interpreter_rounding.py).

With `round_bf16_like_gpu()` applied (kernels/_common.py does it on import under the interpreter, for the whole
process: a user's own kernels too) every bf16 the kernels store or cast is the value the GPU would produce from the
same fp32 (NaNs stay NaNs, their payloads may differ), so CPU checks judge the kernels' arithmetic and not the
interpreter's. Nothing changes on a GPU: the patch touches only the interpreter's builder.
"""
import numpy as np


def _rtne_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 values -> bf16 bit patterns (uint16), rounded to nearest even; NaNs stay (quiet) NaNs."""
    x = np.asarray(x, dtype=np.float32)
    bits = np.ascontiguousarray(x).reshape(-1).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(x.reshape(-1))
    if nan.any():  # the carry would turn a NaN payload into inf or zero
        rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return rounded.reshape(x.shape)


def round_bf16_like_gpu() -> bool:
    """Make the interpreter's fp32 -> bf16 casts round to nearest even. Idempotent; False when this Triton's
    interpreter is not built as expected (its casts then stay truncating, and tests/kernels test for that)."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    builder = getattr(interpreter, "InterpreterBuilder", None)
    handle = getattr(interpreter, "TensorHandle", None)
    original = getattr(builder, "cast_impl", None)
    if original is None or handle is None:
        return False
    if getattr(original, "_vit_fast_rtne", False):
        return True

    def cast_impl(self, src, dst_type, *args, **kwargs):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return handle(_rtne_bf16(src.data), dst_type.scalar)
        return original(self, src, dst_type, *args, **kwargs)  # fp64 -> bf16 is still the interpreter's own

    cast_impl._vit_fast_rtne = True
    builder.cast_impl = cast_impl
    return True
