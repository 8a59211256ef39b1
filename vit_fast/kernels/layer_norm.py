"""Row LayerNorm with fp32 statistics: the final `norm` (and fc_norm) of the model; the per-block norms are fused
into the following GEMMs (ln_linear, ln_qkv). A whole row lives in registers, BLOCK_M rows per program."""
import torch
import triton
import triton.language as tl

from ._common import (
    FLOAT_DTYPES, TL_SIG, check, check_device, check_dtype, check_out, check_vector,
    is_interpreting, jit_fn, m_bucket, rows_view,
)
from .autotune import autotuned

OP = "layer_norm"
MAX_FEATURES = 16384
# (BLOCK_M, num_warps): bandwidth-bound, so one table serves every GPU family; pruned by row width.
LN_CONFIGS = [(1, 4), (1, 8), (1, 16), (2, 4), (4, 4), (4, 8), (8, 4), (8, 8), (16, 8)]
INTERPRETER_LN = (8, 4)


def _configs():
    rows = [INTERPRETER_LN] if is_interpreting() else LN_CONFIGS
    return [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=1) for bm, w in rows]


def _elements_per_thread(c, block_n):
    return c.kwargs["BLOCK_M"] * block_n / (32 * c.num_warps)


def prune_ln_configs(configs, named_args, **kwargs):
    """Keep 4..32 row elements per thread, and no more rows per program than the (bucketed) row count."""
    if len(configs) <= 1:
        return configs
    block_n = kwargs["BLOCK_N"]
    kept = [c for c in configs if 4 <= _elements_per_thread(c, block_n) <= 32
            and c.kwargs["BLOCK_M"] <= named_args["M_BUCKET"]]
    return kept or [min(configs, key=lambda c: abs(_elements_per_thread(c, block_n) - 16))]


@autotuned(_configs(), ["M_BUCKET", "N"], prune_ln_configs)
@triton.jit(do_not_specialize=["M"])  # rows vary with the batch: one compile for every batch size
def layer_norm_kernel(
    x_ptr,  # (M, N) input, any strides
    w_ptr,  # (N,) weight
    b_ptr,  # (N,) bias
    out_ptr,  # (M, N) output, any strides
    M,  # rows
    N,  # features
    stride_xm,  # input row stride
    stride_xn,  # input column stride
    stride_om,  # output row stride
    stride_on,  # output column stride
    eps,  # epsilon added to the variance
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    BLOCK_N: tl.constexpr,  # next power of two of N (whole row per program)
    BLOCK_M: tl.constexpr,  # rows per program
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    mask_n = rn < N
    mask = (rm < M)[:, None] & mask_n[None, :]
    rm64 = rm.to(tl.int64)
    x = tl.load(x_ptr + rm64[:, None] * stride_xm + rn[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    d = tl.where(mask_n[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps)
    w = tl.load(w_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(out_ptr + rm64[:, None] * stride_om + rn[None, :] * stride_on, y.to(out_ptr.dtype.element_ty), mask=mask)


def _check(x, weight, bias, runnable=True):
    check_dtype(OP, "x", x, FLOAT_DTYPES)
    check(x.dim() >= 1 and 0 < x.shape[-1] <= MAX_FEATURES, f"{OP}: x.shape", f"(..., N) with 0 < N <= {MAX_FEATURES}",
          tuple(x.shape))
    check_vector(OP, "weight", weight, x.shape[-1], x.dtype)
    check_vector(OP, "bias", bias, x.shape[-1], x.dtype)
    check_device(OP, dict(x=x, weight=weight, bias=bias), runnable)


def layer_norm_launch(x, weight, bias, eps, out=None):
    """Plain launcher; `out` (optional, x's shape and dtype) lets tests hand in a poisoned buffer."""
    _check(x, weight, bias)
    if out is None:
        out = x.new_empty(x.shape)
    out2d = check_out(OP, out, x.shape, x.dtype)
    if out.numel() == 0:
        return out
    x2d = rows_view(OP, "x", x if x.dim() >= 2 else x.unsqueeze(0))
    m, n = x2d.shape
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)  # noqa: E731
    layer_norm_kernel[grid](
        x2d, weight, bias, out2d, m, n, x2d.stride(0), x2d.stride(1), out2d.stride(0), out2d.stride(1), float(eps),
        m_bucket(m), BLOCK_N=triton.next_power_of_2(n),
    )
    return out


@torch.library.custom_op("vitfast::layer_norm", mutates_args=())
def _layer_norm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return layer_norm_launch(x, weight, bias, eps)


@_layer_norm_op.register_fake
def _(x, weight, bias, eps):
    _check(x, weight, bias, runnable=False)
    return x.new_empty(x.shape)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim of x (any strides) with fp32 statistics; returns a new tensor in x.dtype."""
    return _layer_norm_op(x, weight, bias, float(eps))


def aot_variants(exhaustive: bool = False):
    """Row widths of the ViT family (192..1280 -> blocks 256..2048) and MAX_FEATURES, unit column strides as constexpr
    1. exhaustive=True: every dtype x width x config the prune keeps. Default (keeps the CI check short): every
    dtype at block 1024, and bf16 at every width, each with the first config the prune keeps."""
    out = []
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        widths = (256, 512, 1024, 2048, MAX_FEATURES) if exhaustive or dtype == torch.bfloat16 else (1024,)
        for block_n in widths:
            configs = prune_ln_configs(_configs_for_aot(), {"M_BUCKET": 1 << 16}, BLOCK_N=block_n)
            for c in configs if exhaustive else configs[:1]:
                p = "*" + TL_SIG[dtype]
                sig = {"x_ptr": p, "w_ptr": p, "b_ptr": p, "out_ptr": p, "M": "i32", "N": "i32",
                       "stride_xm": "i32", "stride_xn": "constexpr", "stride_om": "i32", "stride_on": "constexpr",
                       "eps": "fp32", "M_BUCKET": "i32", "BLOCK_N": "constexpr", "BLOCK_M": "constexpr"}
                constexprs = {"stride_xn": 1, "stride_on": 1, "BLOCK_N": block_n, "BLOCK_M": c.kwargs["BLOCK_M"]}
                out.append({"fn": jit_fn(layer_norm_kernel), "signature": sig, "constexprs": constexprs,
                            "num_warps": c.num_warps, "num_stages": c.num_stages, "op": OP, "main_loop": None,
                            "divisible": ("N", "stride_xm", "stride_om", "M_BUCKET"),
                            "tables": ("hopper", "ampere", "fallback"), "vit": _vit_launches(dtype, block_n, c)})
    return out


def _vit_launches(dtype, block_n, config):
    """The contract's `vit` callable: the final norm over every token, where the prune keeps this config."""
    def launches(cfg, batch):
        m = batch * ((cfg.img_size[0] // cfg.patch_size) * (cfg.img_size[1] // cfg.patch_size) + 1)
        if triton.next_power_of_2(cfg.embed_dim) != block_n:
            return []
        kept = prune_ln_configs(_configs_for_aot(), {"M_BUCKET": m_bucket(m)}, BLOCK_N=block_n)
        if all((c.kwargs["BLOCK_M"], c.num_warps) != (config.kwargs["BLOCK_M"], config.num_warps) for c in kept):
            return []
        programs = -(-m // config.kwargs["BLOCK_M"])
        return [{"name": "norm", "flops": 0, "useful_flops": 0, "programs": programs,
                 "bytes": 2 * m * cfg.embed_dim * torch.empty((), dtype=dtype).element_size()}]
    return launches


def _configs_for_aot():
    return [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=1) for bm, w in LN_CONFIGS]
