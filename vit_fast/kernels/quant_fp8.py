"""Per-token FP8 quantization engine: rows of x (optionally LayerNorm-ed first) -> float8 e4m3 rows + one fp32 scale
per row (or, with GROUPS, per row and 128 columns), in one read of x. It feeds the FP8 GEMMs (gemm_fp8_tma.py on
sm_90, gemm_fp8.py): before QKV and FC1 it *is* the block's LayerNorm (the normalized row is quantized where it is
produced and never stored in bf16). The out-projection's input comes as codes from attention (attention.py, at a
bound rather than the rows' maxima) and FC2's per 128 columns from FC1's epilogue (`e4m3_codes` below, the same
rule); the GROUPS pass serves a dense FC1 (quantize.py), and the per-row pass linear_residual's callers that hand
over rows in the model dtype (an FP8 out-projection after a QKV kept out of FP8).

Scale rule (vit_fast.fp8.quantize_rows is the same arithmetic in torch): amax = max(|row|, 1e-12),
q = clamp(row · (448 / amax), ±448) cast to e4m3 (round to nearest even), scale = amax / 448; both divisions IEEE
(the kernels' `e4m3_codes` gets the same codes without the clamp, which cannot bind there).
The op modules (ln_qkv, ln_linear, linear_residual, quantize) check inputs and call `launch_quant_rows`.
"""
import torch
import triton
import triton.language as tl

from ._common import FP8_DTYPE, FP8_GROUP, TL_SIG, group_count, is_interpreting, jit_fn, m_bucket
from .autotune import autotuned
from .layer_norm import LN_CONFIGS, prune_ln_configs

AMAX_FLOOR = 1e-12  # an all-zero row gets scale 1e-12/448 (q = 0), never a division by zero
INTERPRETER_QUANT = (8, 4)


def _configs():
    rows = [INTERPRETER_QUANT] if is_interpreting() else LN_CONFIGS
    return [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=1) for bm, w in rows]


def _prune(configs, named_args, **kwargs):
    return prune_ln_configs(configs, named_args, BLOCK_N=kwargs["BLOCK_K"])


@triton.jit
def round_to_e4m3(y):
    """Round fp32 values (|y| <= 464, what rounds to 448 or less) to the nearest e4m3 value, ties to even, in fp32
    arithmetic: the spacing is 2^(E-3) for exponent E >= -6 and 2^-9 below (subnormals); y / spacing < 16, so adding
    and subtracting 1.5·2^23 rounds it to an integer. Used under the interpreter, whose fp32 -> fp8 cast does not
    carry a rounded-up mantissa into the exponent (124.3 -> 64 instead of 128); on the GPU the hardware cast
    (cvt.rn.satfinite) is exact and this is not compiled."""
    bits = y.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    step = (tl.maximum(e - 3, -9) + 127) << 23
    ulp = step.to(tl.float32, bitcast=True)
    inv_ulp = ((127 - tl.maximum(e - 3, -9)) << 23).to(tl.float32, bitcast=True)
    r = ((tl.abs(y) * inv_ulp + 12582912.0) - 12582912.0) * ulp
    # the sign bit of y (also of -0.0 and of values that round to zero, as the cast keeps it)
    return (r.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def e4m3_codes(y, amax, ROUND_IN_FP32: tl.constexpr):
    """y (BM, BN) fp32 and amax (BM,) its rows' (or groups') max |y| -> (e4m3 codes (BM, BN), scales (BM,)): the
    scale rule above, shared by this pass and the FP8 GEMM epilogues that write codes (GROUP_OUT)."""
    amax = tl.maximum(amax, 1e-12)
    inv = tl.div_rn(448.0, amax)  # scalars, not tl.full: Gluon (gemm_fp8_ws.py) calls this with its layouts
    # The rule's clamp to ±448 is left out (two min/max an element): |y| <= amax, so |y · inv| <= 448 (1 + 2^-23)^2,
    # which rounds to 448 as the clamped value does (e4m3's next step, 480, takes 464 or more); a NaN stays NaN
    q = y * inv[:, None]
    if ROUND_IN_FP32:
        q = round_to_e4m3(q)
    return q.to(tl.float8e4nv), tl.div_rn(amax, 448.0)


@triton.jit
def masked_row_amax(y, mask_n):
    """max |y| per row over the columns mask_n keeps (fp32)."""
    return tl.max(tl.where(mask_n[None, :], tl.abs(y), 0.0), axis=1)


@autotuned(_configs(), ["M_BUCKET", "K", "HAS_LN", "GROUPS"], _prune)
@triton.jit(do_not_specialize=["M"])  # M = B·tokens: one compile for every batch size
def quant_rows_fp8_kernel(
    x_ptr,  # (M, K) input rows, any strides
    ln_w_ptr,  # (K,) LayerNorm weight; read only when HAS_LN
    ln_b_ptr,  # (K,) LayerNorm bias; read only when HAS_LN
    q_ptr,  # (M, K) float8 e4m3 output, row stride stride_qm, unit column stride
    scale_ptr,  # (M,) fp32 output: the dequantization scale of each row; (G, M) with GROUPS, group stride stride_sg
    M,  # rows
    K,  # features
    stride_xm,  # input row stride
    stride_xk,  # input column stride
    stride_qm,  # output row stride
    stride_sg,  # scale group stride (GROUPS only)
    eps,  # LayerNorm epsilon
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    HAS_LN: tl.constexpr,  # LayerNorm the row (fp32 statistics) before quantizing
    GROUPS: tl.constexpr,  # 0: one scale per row; else per row and FP8_GROUP columns, GROUPS = BLOCK_K / FP8_GROUP
    ROUND_IN_FP32: tl.constexpr,  # round to e4m3 in fp32 before the cast (the interpreter's cast is wrong)
    BLOCK_K: tl.constexpr,  # next power of two of K (whole row per program)
    BLOCK_M: tl.constexpr,  # rows per program
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    mask_k = rk < K
    mask_m = rm < M
    mask = mask_m[:, None] & mask_k[None, :]
    rm64 = rm.to(tl.int64)
    y = tl.load(x_ptr + rm64[:, None] * stride_xm + rk[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
    if HAS_LN:
        mean = tl.sum(y, axis=1) / K
        d = tl.where(mask_k[None, :], y - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / K + eps)
        g = tl.load(ln_w_ptr + rk, mask=mask_k, other=0.0).to(tl.float32)
        b = tl.load(ln_b_ptr + rk, mask=mask_k, other=0.0).to(tl.float32)
        y = d * rstd[:, None] * g[None, :] + b[None, :]  # masked columns: 0 * .. * 0 + 0
    if GROUPS:  # the row's groups as rows of their own: (BLOCK_M * GROUPS, BLOCK_K / GROUPS)
        width: tl.constexpr = BLOCK_K // GROUPS
        yg = tl.reshape(y, (BLOCK_M * GROUPS, width))
        q, scale = e4m3_codes(yg, tl.max(tl.abs(yg), axis=1), ROUND_IN_FP32)
        q = tl.reshape(q, (BLOCK_M, BLOCK_K))
        rg = tl.arange(0, GROUPS)
        tl.store(scale_ptr + rg[None, :] * stride_sg + rm[:, None], tl.reshape(scale, (BLOCK_M, GROUPS)),
                 mask=mask_m[:, None] & (rg[None, :] * width < K))
    else:
        q, scale = e4m3_codes(y, tl.max(tl.abs(y), axis=1), ROUND_IN_FP32)
        tl.store(scale_ptr + rm, scale, mask=mask_m)
    tl.store(q_ptr + rm64[:, None] * stride_qm + rk[None, :], q, mask=mask)


def new_group_scales(rows: int, k: int, device) -> torch.Tensor:
    """The (rows, G) fp32 scales of A quantized per row and FP8_GROUP columns, G = cdiv(k, FP8_GROUP), as a view of
    a (G, rows) buffer: a GEMM's K step reads one group's scales for a tile's rows, contiguous there."""
    return torch.empty((group_count(k), rows), device=device, dtype=torch.float32).t()


def new_group_codes(shape, device) -> tuple:
    """Empty (codes float8_e4m3fn `shape`, scales (*shape[:-1], G) as new_group_scales lays them out): the outputs
    of an op that quantizes (..., K) per row and FP8_GROUP columns."""
    rows, k = shape[:-1], shape[-1]
    scales = new_group_scales(torch.Size(rows).numel(), k, device).view(*rows, group_count(k))
    return torch.empty(shape, device=device, dtype=FP8_DTYPE), scales


def launch_quant_rows(x2d: torch.Tensor, ln=None, groups: bool = False):
    """x2d (M, K) already checked; ln = (weight, bias, eps) or None.
    Returns (q (M, K) float8_e4m3fn, scale (M,) fp32), or with `groups` scale (M, G) (new_group_scales)."""
    m, k = x2d.shape
    q = torch.empty((m, k), device=x2d.device, dtype=FP8_DTYPE)
    scale = new_group_scales(m, k, x2d.device) if groups else torch.empty((m,), device=x2d.device,
                                                                          dtype=torch.float32)
    ln_w, ln_b, eps = ln if ln is not None else (x2d, x2d, 0.0)
    block_k = triton.next_power_of_2(k)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)  # noqa: E731
    quant_rows_fp8_kernel[grid](
        x2d, ln_w, ln_b, q, scale, m, k, x2d.stride(0), x2d.stride(1), q.stride(0),
        scale.stride(1) if groups else 0, float(eps), m_bucket(m),
        HAS_LN=ln is not None, GROUPS=max(block_k // FP8_GROUP, 1) if groups else 0, ROUND_IN_FP32=is_interpreting(),
        BLOCK_K=block_k,
    )
    return q, scale


def aot_variants(exhaustive: bool = False):
    """bf16 input (the FP8 model's residual stream), with and without LayerNorm, at the ViT row widths, and per
    128-column group without LayerNorm (FC2's input after a dense FC1); fp16/fp32 at block 1024. FP8 stores need
    sm_89+: min_cc 89 (skipped for sm_80)."""
    out = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        widths = (256, 512, 1024, 2048, 4096, 8192) if dtype == torch.bfloat16 else (1024,)
        for block_k in widths:
            configs = _prune([triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=1) for bm, w in LN_CONFIGS],
                             {"M_BUCKET": 1 << 16}, BLOCK_K=block_k)
            modes = [(True, 0), (False, 0)] + ([(False, block_k // FP8_GROUP)] if dtype == torch.bfloat16 else [])
            for has_ln, groups in modes:
                for c in configs if exhaustive else configs[:1]:
                    p = "*" + TL_SIG[dtype]
                    sig = {"x_ptr": p, "ln_w_ptr": p, "ln_b_ptr": p, "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32",
                           "M": "i32", "K": "i32", "stride_xm": "i32", "stride_xk": "constexpr", "stride_qm": "i32",
                           "stride_sg": "i32", "eps": "fp32", "M_BUCKET": "i32",
                           "HAS_LN": "constexpr", "GROUPS": "constexpr", "ROUND_IN_FP32": "constexpr",
                           "BLOCK_K": "constexpr", "BLOCK_M": "constexpr"}
                    constexprs = {"stride_xk": 1, "HAS_LN": has_ln, "GROUPS": groups, "ROUND_IN_FP32": False,
                                  "BLOCK_K": block_k, "BLOCK_M": c.kwargs["BLOCK_M"]}
                    out.append({"fn": jit_fn(quant_rows_fp8_kernel), "signature": sig, "constexprs": constexprs,
                                "num_warps": c.num_warps, "num_stages": c.num_stages, "min_cc": 89,
                                "tables": ("hopper", "ada"),  # row blocks: the same prune on every family
                                "divisible": ("K", "stride_xm", "stride_qm", "stride_sg")})
    return out
