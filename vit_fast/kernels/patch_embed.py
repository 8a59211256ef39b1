"""Patch embedding as one implicit-im2col GEMM: patches are gathered from the image through its strides (NCHW, an
NHWC view, any slicing; uint8 or float) with no unfolded copy; bias and position embedding are added in the epilogue
and the [CLS] row (cls_token + pos_embed[0]) is written by the same launch."""
import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (
    FLOAT_DTYPES, GEMM_TABLES, SWITCH_TILE, TL_SIG, check, check_device, check_dtype, check_vector,
    gemm_configs, gemm_families, gemm_rows_for, gemm_vit_launches, is_interpreting, jit_fn, m_bucket,
    prune_gemm_configs,
)
from .autotune import autotuned
from .gemm import grouped_tile

OP = "patch_embed"
IMAGE_DTYPES = FLOAT_DTYPES + (torch.uint8,)


@autotuned(gemm_configs(), ["M_BUCKET", "N", "K", "HAS_BIAS"],
           functools.partial(prune_gemm_configs, a_name="x_ptr", dot_dtype_name="out_ptr", kind="patch"))
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit(do_not_specialize=["M"])  # M = B·patches: one compile for every batch size
def patch_embed_kernel(
    x_ptr,  # (B, C, H, W) image, any strides, float or uint8
    w_ptr,  # (D, C*P*P) weight (the conv weight viewed flat)
    bias_ptr,  # (D,) bias; read only when HAS_BIAS
    pos_ptr,  # (NP, D) position embedding of the patch rows; its dtype is the output and dot dtype
    cls_ptr,  # (D,) cls_token + pos_embed[0]
    out_ptr,  # (B, 1 + NP, D) contiguous output
    M,  # B * NP patch rows
    N,  # D, embedding width
    K,  # C * P * P
    NP,  # patches per image
    GRID_W,  # patches per image row (W // P)
    stride_xb,  # image batch stride
    stride_xc,  # image channel stride
    stride_xh,  # image row stride
    stride_xw,  # image column stride
    stride_wd,  # weight row stride
    stride_wk,  # weight column stride
    stride_pn,  # pos_embed row stride
    stride_pd,  # pos_embed column stride
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    PATCH: tl.constexpr,  # patch size P (constexpr so the im2col index math folds and contiguous runs vectorize)
    HAS_BIAS: tl.constexpr,  # add bias in the epilogue
    UPCAST: tl.constexpr,  # dot in fp32 (interpreter with bf16, whose bf16 arithmetic is wrong)
    BLOCK_M: tl.constexpr,  # patch rows per tile
    BLOCK_N: tl.constexpr,  # embedding features per tile
    BLOCK_K: tl.constexpr,  # reduction step over (c, py, px)
    GROUP_M: tl.constexpr,  # row tiles per L2 group
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no K masks
):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # Row m is patch p = m % NP of image b = m // NP, at grid cell (p // GRID_W, p % GRID_W); wrapped for loads.
    rm_load = (rm % M).to(tl.int64)
    b_load = rm_load // NP
    p_load = rm_load % NP
    row_off = b_load * stride_xb + (p_load // GRID_W) * (PATCH * stride_xh) + (p_load % GRID_W) * (PATCH * stride_xw)
    rn_load = rn % N
    w_ptrs = w_ptr + rn_load[None, :] * stride_wd + rk[:, None] * stride_wk
    dot_dtype = pos_ptr.dtype.element_ty

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk  # k = (c * P + py) * P + px, the conv weight's flat order
        c = k // (PATCH * PATCH)
        py = (k // PATCH) % PATCH
        px = k % PATCH
        col_off = c * stride_xc + py * stride_xh + px * stride_xw
        a_ptrs = x_ptr + row_off[:, None] + col_off[None, :]
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = k < K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        else:
            a = a.to(dot_dtype)
            w = w.to(dot_dtype)
        acc = tl.dot(a, w, acc, input_precision="ieee")
        w_ptrs += BLOCK_K * stride_wk

    mask_m = rm < M
    mask_n = rn < N
    mask = mask_m[:, None] & mask_n[None, :]
    rm64 = rm.to(tl.int64)
    b_idx = rm64 // NP
    p_idx = rm64 % NP
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    pos = tl.load(pos_ptr + p_idx[:, None] * stride_pn + rn[None, :] * stride_pd, mask=mask, other=0.0)
    acc += pos.to(tl.float32)
    image_row = b_idx * (NP + 1) * N  # first ([CLS]) row of image b in the output
    tl.store(out_ptr + (image_row + (p_idx + 1) * N)[:, None] + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask)
    # The tile holding an image's first patch also writes that image's [CLS] row.
    cls = tl.load(cls_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
    cls_tile = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32) + cls[None, :]
    tl.store(out_ptr + image_row[:, None] + rn[None, :], cls_tile.to(out_ptr.dtype.element_ty),
             mask=mask & (p_idx == 0)[:, None])


def _check(x, weight, bias, pos_embed, cls_pos, runnable=True):
    check_dtype(OP, "x", x, IMAGE_DTYPES)
    check(x.dim() == 4, f"{OP}: x.shape", "(B, C, H, W) (an NHWC image as a permuted view)", tuple(x.shape))
    check(weight.dim() == 4 and weight.shape[2] == weight.shape[3] and weight.shape[1] == x.shape[1],
          f"{OP}: weight.shape", f"(D, {x.shape[1]}, P, P)", tuple(weight.shape))
    d, c, p, _ = weight.shape
    _, _, h, w = x.shape
    check(h % p == 0 and w % p == 0 and h > 0 and w > 0, f"{OP}: image size", f"H, W positive multiples of P={p}",
          (h, w))
    check_dtype(OP, "weight", weight, FLOAT_DTYPES)
    try:
        weight.view(d, c * p * p)
    except RuntimeError:
        raise ValueError(f"{OP}: weight: expected (C, P, P) dims that flatten without a copy, got strides "
                         f"{weight.stride()}")
    n = (h // p) * (w // p)
    check_dtype(OP, "pos_embed", pos_embed, FLOAT_DTYPES)
    check(tuple(pos_embed.shape) == (n, d), f"{OP}: pos_embed.shape", f"({n}, {d}) (patch rows only)",
          tuple(pos_embed.shape))
    if x.dtype != torch.uint8:
        check(x.dtype == pos_embed.dtype, f"{OP}: x.dtype", f"{pos_embed.dtype} (the model dtype) or uint8", x.dtype)
    check_vector(OP, "cls_pos", cls_pos, d, pos_embed.dtype)
    if bias is not None:
        check_vector(OP, "bias", bias, d, weight.dtype)
    check_device(OP, dict(x=x, weight=weight, bias=bias, pos_embed=pos_embed, cls_pos=cls_pos), runnable)


def _out_shape(x, weight, pos_embed):
    return (x.shape[0], 1 + pos_embed.shape[0], weight.shape[0])


def patch_embed_launch(x, weight, bias, pos_embed, cls_pos, out=None):
    """Plain launcher; `out` (optional, contiguous (B, 1+N, D) in pos_embed.dtype) lets tests pass a poisoned buffer."""
    _check(x, weight, bias, pos_embed, cls_pos)
    shape = _out_shape(x, weight, pos_embed)
    if out is None:
        out = pos_embed.new_empty(shape)
    check(tuple(out.shape) == shape and out.dtype == pos_embed.dtype and out.is_contiguous(), f"{OP}: out",
          f"contiguous {shape} {pos_embed.dtype}", (tuple(out.shape), out.dtype, out.stride()))
    if out.numel() == 0:
        return out
    d, c, p, _ = weight.shape
    w2d = weight.view(d, c * p * p)
    m = x.shape[0] * pos_embed.shape[0]
    upcast = is_interpreting() and torch.bfloat16 in (x.dtype, weight.dtype, pos_embed.dtype)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(d, meta["BLOCK_N"]),)  # noqa: E731
    patch_embed_kernel[grid](
        x, w2d, bias if bias is not None else cls_pos, pos_embed, cls_pos, out,
        m, d, c * p * p, pos_embed.shape[0], x.shape[3] // p,
        *x.stride(), *w2d.stride(), *pos_embed.stride(), m_bucket(m),
        PATCH=p, HAS_BIAS=bias is not None, UPCAST=upcast,
    )  # fmt: skip
    return out


@torch.library.custom_op("vitfast::patch_embed", mutates_args=())
def _patch_embed_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pos_embed: torch.Tensor,
                    cls_pos: torch.Tensor) -> torch.Tensor:
    return patch_embed_launch(x, weight, bias, pos_embed, cls_pos)


@_patch_embed_op.register_fake
def _(x, weight, bias, pos_embed, cls_pos):
    _check(x, weight, bias, pos_embed, cls_pos, runnable=False)
    return pos_embed.new_empty(_out_shape(x, weight, pos_embed))


def patch_embed(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pos_embed: torch.Tensor,
                cls_pos: torch.Tensor) -> torch.Tensor:
    """Tokens (B, 1+N, D) in pos_embed.dtype: row 0 = cls_pos, rows 1..N = patch @ weight^T + bias + pos_embed.
    x (B, C, H, W) with any strides, float in pos_embed's dtype or uint8 (then weight/bias are the
    normalization-folded fp32 ones); weight (D, C, P, P); bias (D,) or None; pos_embed (N, D); cls_pos (D,)."""
    return _patch_embed_op(x, weight, bias, pos_embed, cls_pos)


def aot_variants(exhaustive: bool = False):
    """Images: float NCHW in the model dtype, or uint8 NCHW / NHWC (a permuted view) with fp32 folded weight/bias;
    patch sizes 14, 16, 32 (3 channels, so EVEN_K follows from P and BLOCK_K); unit strides as constexpr 1 (the JIT's
    stride-1 specialization). Every dtype at every tile row a family table can pick (float NCHW, P=16, bias), bf16 at
    the Hopper rows for P=14 and P=32 too; the switches at SWITCH_TILE. exhaustive=True: the switches' full product
    over the model dtypes. Default: bf16 and fp32 vary one switch at a time from the base, fp16 compiles the base."""
    base = (False, False, 16, True)  # uint8 image, NHWC, patch, has_bias
    if exhaustive:
        combos = [(False, False, p, b) for p in (14, 16, 32) for b in (True, False)]
        combos += [(True, nhwc, p, True) for p in (14, 16, 32) for nhwc in (False, True)]
    else:
        combos = [base, (False, False, 14, True), (False, False, 32, True), (False, False, 16, False),
                  (True, False, 16, True), (True, True, 16, True)]
    out = []
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        elem = torch.empty((), dtype=dtype).element_size()
        for row in gemm_rows_for(elem):
            patches = (16, 14, 32) if dtype == torch.bfloat16 and row in GEMM_TABLES["hopper"] else (16,)
            out.extend(_variant(dtype, dtype, dtype, p, True, False, row) for p in patches)
        for combo in (combos if exhaustive or dtype != torch.float16 else [base]):
            if combo != base:
                uint8, nhwc, patch, has_bias = combo
                image, weight = (torch.uint8, torch.float32) if uint8 else (dtype, dtype)
                out.append(_variant(image, weight, dtype, patch, has_bias, nhwc, SWITCH_TILE))
    return out


def _variant(image, weight, dtype, patch, has_bias, nhwc, tile):
    bm, bn, bk, warps, stages = tile
    xp, wp, op = ("*" + TL_SIG[t] for t in (image, weight, dtype))
    unit_stride = "stride_xc" if nhwc else "stride_xw"  # NHWC arrives as a permuted view: channels are unit-stride
    sig = {
        "x_ptr": xp, "w_ptr": wp, "bias_ptr": wp, "pos_ptr": op, "cls_ptr": op, "out_ptr": op,
        "M": "i32", "N": "i32", "K": "i32", "NP": "i32", "GRID_W": "i32",
        "stride_xb": "i32", "stride_xc": "i32", "stride_xh": "i32", "stride_xw": "i32",
        "stride_wd": "i32", "stride_wk": "constexpr", "stride_pn": "i32", "stride_pd": "constexpr", "M_BUCKET": "i32",
    }  # fmt: skip
    sig[unit_stride] = "constexpr"
    k = 3 * patch * patch
    constexprs = {
        unit_stride: 1, "stride_wk": 1, "stride_pd": 1,
        "PATCH": patch, "HAS_BIAS": has_bias, "UPCAST": False,
        "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EVEN_K": k % bk == 0,
    }  # fmt: skip
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    # 224-px presets: image strides 3·H·W, H·W, W (or 3·W for NHWC) and D are multiples of 16; K = 3·P² is for
    # P = 16 and 32, not 14 (588); NP and GRID_W are not.
    divisible = ["N", "stride_xb", "stride_xh", "stride_pn", "M_BUCKET"] + ([] if nhwc else ["stride_xc"])
    divisible += ["K", "stride_wd"] if k % 16 == 0 else []
    elem = torch.empty((), dtype=dtype).element_size()
    return {"fn": jit_fn(patch_embed_kernel), "signature": sig, "constexprs": constexprs,
            "num_warps": warps, "num_stages": stages, "divisible": tuple(divisible), "op": OP, "main_loop": "gemm",
            "tables": gemm_families(tile, elem, "patch"),
            # Known limitation (open item, static report): K = 3·14² = 588 is not a multiple of 16, so the masked
            # gather loads of P=14 are neither vectorized nor pipelined (no cp.async) on sm_90.
            "ungated": None if k % bk == 0 else "P=14: K=588 not a multiple of 16, masked gather without cp.async "
                                                "(0.6 % of the FLOPs; open item: pad K in the kernel)",
            "vit": gemm_vit_launches(OP, tile, elem, when=lambda cfg: cfg.patch_size == patch and has_bias
                                     and image != torch.uint8)}
