"""Flash-style multi-head attention forward for ViT inference (non-causal, no mask), tuned for short sequences.

Each program owns BLOCK_M query rows of one (batch, head) and streams K/V through it in BLOCK_N-row blocks with an
online softmax in fp32 and base 2, so the N x N score matrix never exists in memory. ViT sequences are short (50,
197, 257 tokens), so the tiles are chosen for few K/V blocks and for enough programs to fill the SMs at small
batches, and the ragged last K/V block is a masked step of the same software-pipelined loop (EVEN_N compiles the
unmasked fast path when N_K is a multiple of BLOCK_N).

The head dim is covered by one or two power-of-two column blocks, BLOCK_D0 + BLOCK_D1 (80 = 64 + 16, 96 = 64 + 32,
48 = 32 + 16): each of QK^T and PV is then one or two tensor-core dots with no padded columns, where a single
power-of-two block would pad 80 to 128. The scores stay unscaled fp32 dot products of Q and K as stored; the loop
takes exp2(s * softmax_scale * log2(e) - m) in one FMA a score. (Q multiplied by the scale at its load and rounded
back to bf16 saved nothing over that FMA and cost peaked bf16 softmaxes up to 2^-9 of each score: the fourth GPU
lease, benchmarks/NOTES.md.)

q/k/v are (B, H, N, d) views with any strides whose last dim is contiguous, so the kernel reads them in place from
the QKV projection's output: the (B, N, 3, H, d) rows `ln_qkv` writes (on every engine, FP8 included), viewed as
`.permute(2, 0, 3, 1, 4)`. The result is stored straight into (B, Nq, H*d), the layout the
out-projection reads. Nq may be smaller than Nk (Nq == 1 when the last layer keeps only [CLS]).

In an FP8 model (QKV and out-projection both FP8) `attention_fp8` stores the output as the out-projection's e4m3
codes, so no quantization pass runs between them. Its scale must be known before any head is stored, and a token's
row spans every head (one program each), so it is a bound rather than the row's maximum: attention's output is a
convex combination of value rows, whose size the QKV GEMM's input scales and weights bound
(vit_fast.fp8.attention_output_bound). Each program reads its image's N input scales (4·N bytes) and takes the
same bound, one scale per image; e4m3 is a floating-point format, so the slack costs no precision that matters.
"""
import math

import torch
import triton
import triton.language as tl

from ._common import (
    FAMILY_SMEM, FLOAT_DTYPES, FP8_DTYPE, TL_SIG, check, check_dtype, check_f32, gpu_family, is_interpreting, jit_fn,
    m_bucket, shared_memory_bytes, upcast_needed,
)
from .autotune import autotuned
from .pdl import dependency_wait, launch_options, pdl_launch
from .quant_fp8 import round_to_e4m3

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
_LOG2E = 1.4426950408889634


# ---- autotune tables ------------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages). K/V blocks at 197 / 257 / 50 tokens: BLOCK_N 64 -> 4 / 5 / 1 blocks,
# 128 -> 2 / 3 / 1, 32 -> 7 / 9 / 2 (see benchmarks/NOTES.md for the padded fractions). BLOCK_M 64 with 4 warps is
# one Hopper warpgroup (the smallest wgmma tile) and gives 4 programs per head at 197 tokens, for small batches;
# 128 rows with 8 warps (two warpgroups) halve the K/V reads per query for large batches. BLOCK_M 16 serves
# Nq <= 16 (the [CLS]-only last layer) with mma.sync.
HOPPER_ATTN = [
    (128, 64, 8, 3),
    (128, 128, 8, 2),
    (64, 64, 4, 3),
    (64, 128, 4, 2),
    (64, 32, 4, 3),
    (16, 64, 4, 2),
]
AMPERE_ATTN = [
    (128, 64, 8, 3),
    (64, 64, 4, 3),
    (64, 32, 4, 3),
    (16, 64, 4, 2),
]
FALLBACK_ATTN = [
    (64, 32, 4, 3),
    (16, 64, 4, 2),
]
# fp32 uses ieee dots, which run on FMA units on every family: small tiles and 8 warps keep every head dim free of
# spills (4-warp 32-row tiles spill 8-16 B at some head dims).
FP32_ATTN = [
    (64, 32, 8, 2),
    (16, 32, 8, 2),
    (16, 16, 4, 2),
]
ATTN_TABLES = {"hopper": HOPPER_ATTN, "ampere": AMPERE_ATTN, "fallback": FALLBACK_ATTN}
# Big tiles mean few numpy calls; the interpreter benchmarks nothing, so it gets exactly one config.
INTERPRETER_ATTN = (64, 64, 4, 1)
# Program-count bucket cap for the autotune key: beyond this many (batch, head) pairs every tile fills the GPU.
_BH_BUCKET_CAP = 512


def head_dim_blocks(d: int) -> tuple:
    """(BLOCK_D0, BLOCK_D1) covering head dim d with power-of-two column blocks (BLOCK_D1 == 0: one block).
    Two blocks when the second is 16 or 32 wide and exactly covers the rest (80 -> 64 + 16, 96 -> 64 + 32,
    48 -> 32 + 16); otherwise the next power of two, its last columns masked (72 and 112 -> 128). A second block
    with masked columns (72 -> 64 + 16) gave wrong bf16 outputs on an H100 (relative error 1.1 where fp16 and
    fp32 passed: the fourth GPU lease, benchmarks/NOTES.md), so no head dim takes that path until it is understood."""
    full = max(16, triton.next_power_of_2(d))
    main = max(16, full // 2) if d < full else full
    rest = d - main
    if rest <= 0 or main == full or rest not in (16, 32):
        return full, 0
    return main, rest


# Head dims aot_variants() compiles: each distinct (BLOCK_D0, BLOCK_D1, padded) of 16..128 once; the ViT presets'
# 64 (B, L) and 80 (H/14) get every tile.
_AOT_HEAD_DIMS_ALL_TILES = (64, 80)
_AOT_HEAD_DIMS = (16, 32, 48, 72, 96, 112, 128)


def _configs():
    tables = (*ATTN_TABLES.values(), FP32_ATTN)
    rows = [INTERPRETER_ATTN] if is_interpreting() else list(dict.fromkeys(r for t in tables for r in t))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in rows]


def fits_registers(tile, block_d, elem, family="hopper"):
    """False for the tiles whose cubin spills at this head-dim width (measured with the JIT's specialization):
    16-bit BLOCK_N 128 at width 128 on sm_90 (64x128: 232 B of stack), 128-row tiles at width 128 with mma.sync
    (sm_80: 48 B), fp32 64-row tiles at width 128."""
    bm, bn = tile[0], tile[1]
    if elem == 4:
        return bm * block_d <= 64 * 96
    if family != "hopper" and bm * block_d > 128 * 96:
        return False
    return bn * block_d <= 128 * 96


def _smem_estimate(block_m, block_n, block_d, num_stages, elem):
    """Q tile plus `num_stages` buffered K and V tiles (what the software pipeline keeps in shared memory)."""
    return elem * block_d * (block_m + 2 * num_stages * block_n)


def _prune_configs(configs, named_args, **kwargs):
    """Keep the running GPU family's table (the fp32 one for fp32); the 16-row tiles only, and only them, for
    Nq <= 16; drop tiles taller than the queries, wider than the keys' bucket, too big for shared memory, or that
    spill at this head dim.
    Runs at first launch on a device, never at import."""
    if len(configs) <= 1:
        return configs
    q = named_args["Q"]
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    elem = q.element_size()
    family_name = gpu_family(index)
    table = FP32_ATTN if elem == 4 else ATTN_TABLES[family_name]
    smem = shared_memory_bytes(index)
    block_d = kwargs["BLOCK_D0"] + kwargs["BLOCK_D1"]
    q_bucket, k_bucket = named_args["N_Q_BUCKET"], named_args["N_K_BUCKET"]
    family = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in table]
    small_q = q_bucket <= 16 and any(c.kwargs["BLOCK_M"] == 16 for c in family)
    kept = []
    for c in family:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if (small_q and bm != 16) or (not small_q and bm == 16 and elem == 2) or bm > max(16, q_bucket):
            continue
        if bn > max(32, k_bucket) or not fits_registers((bm, bn), block_d, elem, family_name):
            continue
        if _smem_estimate(bm, bn, block_d, c.num_stages, elem) > smem:
            continue
        kept.append(c)
    if not kept:
        kept = [min(family or configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))]
    return kept


# ---- kernel ---------------------------------------------------------------------------------------------------------
@triton.jit
def _load(ptrs, rows, n_rows, cols, n_cols, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """A (rows, cols) tile with zeros where masked. Row masks only for ragged Q/K/V blocks, column masks only for
    head dims narrower than their one column block (72 and 112 in 128)."""
    if MASK_ROWS and MASK_COLS:
        x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)
    elif MASK_ROWS:
        x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    elif MASK_COLS:
        x = tl.load(ptrs, mask=cols[None, :] < n_cols, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _store(ptrs, x, rows, n_rows, cols, n_cols, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    if MASK_ROWS and MASK_COLS:
        tl.store(ptrs, x, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))
    elif MASK_ROWS:
        tl.store(ptrs, x, mask=rows[:, None] < n_rows)
    elif MASK_COLS:
        tl.store(ptrs, x, mask=cols[None, :] < n_cols)
    else:
        tl.store(ptrs, x)


@triton.jit
def _q_block(ptrs, rows, n_rows, cols, n_cols, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr,
             UPCAST: tl.constexpr):
    """A Q column block as the dot takes it (unscaled: the scale is applied to the fp32 scores)."""
    q = _load(ptrs, rows, n_rows, cols, n_cols, MASK_ROWS, MASK_COLS)
    if UPCAST:
        return q.to(tl.float32)
    return q


@autotuned(_configs(), ["N_Q_BUCKET", "N_K_BUCKET", "BH_BUCKET", "HEAD_DIM"], _prune_configs)
@triton.heuristics({
    "EVEN_M": lambda a: a["N_Q"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: a["N_K"] % a["BLOCK_N"] == 0,
})
@triton.jit(do_not_specialize=["N_Q_BUCKET", "N_K_BUCKET", "BH_BUCKET"])  # autotune keys only: no recompiles
def _attn_fwd_kernel(
    Q,  # (B, H, N_Q, HEAD_DIM) queries, last dim contiguous
    K,  # (B, H, N_K, HEAD_DIM) keys, last dim contiguous
    V,  # (B, H, N_K, HEAD_DIM) values, last dim contiguous
    Out,  # (B, N_Q, H * HEAD_DIM) output: head h occupies columns [h*HEAD_DIM, (h+1)*HEAD_DIM); e4m3 with CODES_OUT
    InScale,  # (B, N_K) fp32 per-token scales of the QKV GEMM's input (CODES_OUT only)
    Bound,  # (2,) fp32 (c, b): |output| <= max InScale · c + b over an image (CODES_OUT only; fp8.value_bound)
    OutScale,  # (B, N_Q) fp32 output: each row's dequantization scale, one value per image (CODES_OUT only)
    stride_qb, stride_qh, stride_qm,  # element strides of Q over batch, head, row
    stride_kb, stride_kh, stride_kn,  # element strides of K over batch, head, row
    stride_vb, stride_vh, stride_vn,  # element strides of V over batch, head, row
    stride_ob, stride_om,  # element strides of Out over batch and row (the head stride is HEAD_DIM)
    H,  # number of heads
    N_Q,  # query rows per (batch, head)
    N_K,  # key/value rows per (batch, head)
    qk_scale,  # softmax scale * log2(e): exp2(s * qk_scale - m) of the raw scores s is the softmax numerator
    N_Q_BUCKET,  # next power of two of N_Q: autotune key only, unused in the body
    N_K_BUCKET,  # next power of two of N_K: autotune key only, unused in the body
    BH_BUCKET,  # next power of two of B*H (capped): autotune key only (small batches favour small BLOCK_M)
    HEAD_DIM: tl.constexpr,  # head dimension d
    BLOCK_D0: tl.constexpr,  # first (power-of-two) column block of the head dim
    BLOCK_D1: tl.constexpr,  # second column block (power of two >= 16), or 0 when BLOCK_D0 covers HEAD_DIM
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # key/value rows per loop step
    EVEN_M: tl.constexpr,  # N_Q % BLOCK_M == 0: no row masks on Q loads and Out stores
    EVEN_N: tl.constexpr,  # N_K % BLOCK_N == 0: no ragged last K/V block, no score masks
    UPCAST: tl.constexpr,  # convert tiles to fp32 after loading (bf16 under the interpreter is computed wrongly)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no tf32), the target default otherwise
    CODES_OUT: tl.constexpr,  # store e4m3 codes at the image's bound (attention_fp8) and write OutScale
    ROUND_IN_FP32: tl.constexpr,  # round codes to e4m3 in fp32 before the cast (the interpreter's cast is wrong)
    PDL: tl.constexpr,  # launched with programmatic dependent launch (pdl.py): wait for the previous kernel first
):
    dependency_wait(PDL)  # before any global memory access
    pid = tl.program_id(0)
    num_m = tl.cdiv(N_Q, BLOCK_M)
    pid_m = pid % num_m  # query blocks of one head run next to each other and share its K/V in L2
    pid_bh = pid // num_m
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    # Only a single column block can be partial (72 and 112 in 128 columns); two cover the head dim exactly, so the
    # second block's loads and stores take no column mask.
    tl.static_assert(BLOCK_D1 == 0 or BLOCK_D0 + BLOCK_D1 == HEAD_DIM, "two column blocks cover the head dim exactly")
    MASK_D0: tl.constexpr = BLOCK_D1 == 0 and BLOCK_D0 != HEAD_DIM

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BLOCK_D0)
    q_base = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm
    k_base = K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kn
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vn

    q0 = _q_block(q_base + offs_d0[None, :], offs_m, N_Q, offs_d0, HEAD_DIM, not EVEN_M, MASK_D0, UPCAST)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D0], dtype=tl.float32)
    if BLOCK_D1 > 0:
        offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        q1 = _q_block(q_base + offs_d1[None, :], offs_m, N_Q, offs_d1, HEAD_DIM, not EVEN_M, False, UPCAST)
        acc1 = tl.zeros([BLOCK_M, BLOCK_D1], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # One pipelined loop over every K/V block; without EVEN_N each step masks rows past N_K (loaded as zeros, scored
    # -inf), which only bites in the last one.
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        k0 = _load(k_base + start_n * stride_kn + offs_d0[None, :], cols, N_K, offs_d0, HEAD_DIM, not EVEN_N, MASK_D0)
        if UPCAST:
            k0 = k0.to(tl.float32)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)  # raw scores, fp32
        if BLOCK_D1 > 0:
            k1 = _load(k_base + start_n * stride_kn + offs_d1[None, :], cols, N_K, offs_d1, HEAD_DIM, not EVEN_N,
                       False)
            if UPCAST:
                k1 = k1.to(tl.float32)
            s = tl.dot(q1, tl.trans(k1), s, input_precision=DOT_PRECISION)
        if not EVEN_N:
            s = tl.where(cols[None, :] < N_K, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # in log2 units (qk_scale > 0 keeps the maximum)
        p = tl.exp2(tl.fma(s, qk_scale, -m_new[:, None]))  # one FMA a score, as the subtraction alone
        alpha = tl.exp2(m_i - m_new)  # 0 on the first block (m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        v0 = _load(v_base + start_n * stride_vn + offs_d0[None, :], cols, N_K, offs_d0, HEAD_DIM, not EVEN_N, MASK_D0)
        if UPCAST:
            v0 = v0.to(tl.float32)
        p = p.to(v0.dtype)
        acc0 = tl.dot(p, v0, acc0 * alpha[:, None], input_precision=DOT_PRECISION)
        if BLOCK_D1 > 0:
            v1 = _load(v_base + start_n * stride_vn + offs_d1[None, :], cols, N_K, offs_d1, HEAD_DIM, not EVEN_N,
                       False)
            if UPCAST:
                v1 = v1.to(tl.float32)
            acc1 = tl.dot(p, v1, acc1 * alpha[:, None], input_precision=DOT_PRECISION)

    inv_l = 1.0 / l_i
    o_base = Out + off_b * stride_ob + off_h * HEAD_DIM + offs_m[:, None] * stride_om
    if CODES_OUT:
        # The image's bound (vit_fast.fp8.attention_output_bound): every program of the image computes the same one
        scan = tl.arange(0, 128)
        s_max = tl.zeros([128], dtype=tl.float32)  # the scales are positive
        for t0 in range(0, N_K, 128):
            s_max = tl.maximum(s_max, tl.load(InScale + off_b * N_K + t0 + scan, mask=t0 + scan < N_K, other=0.0))
        amax = tl.maximum(tl.fma(tl.max(s_max, 0), tl.load(Bound), tl.load(Bound + 1)), 1e-12)
        inv = inv_l * tl.div_rn(448.0, amax)
        o0 = _codes(acc0 * inv[:, None], ROUND_IN_FP32)
        if off_h == 0:  # one head's programs write the rows' scale
            scale = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.div_rn(amax, 448.0)
            tl.store(OutScale + off_b * N_Q + offs_m, scale, mask=offs_m < N_Q)
    else:
        o0 = (acc0 * inv_l[:, None]).to(Out.dtype.element_ty)
    _store(o_base + offs_d0[None, :], o0, offs_m, N_Q, offs_d0, HEAD_DIM, not EVEN_M, MASK_D0)
    if BLOCK_D1 > 0:
        if CODES_OUT:
            o1 = _codes(acc1 * inv[:, None], ROUND_IN_FP32)
        else:
            o1 = (acc1 * inv_l[:, None]).to(Out.dtype.element_ty)
        _store(o_base + offs_d1[None, :], o1, offs_m, N_Q, offs_d1, HEAD_DIM, not EVEN_M, False)


@triton.jit
def _codes(y, ROUND_IN_FP32: tl.constexpr):
    """fp32 values already divided by the scale -> e4m3 codes, clamped to ±448 (the bound holds for exact values;
    p in the dot's dtype may pass it by an ulp)."""
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    if ROUND_IN_FP32:
        y = round_to_e4m3(y)
    return y.to(tl.float8e4nv)


# ---- launcher -------------------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, scale):
    op = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(isinstance(t, torch.Tensor), f"{op}: {name}", "a torch.Tensor", type(t).__name__)
        check(t.dim() == 4, f"{op}: {name}.dim()", "4 (B, H, N, d)", tuple(t.shape))
        check_dtype(op, name, t, FLOAT_DTYPES)
    check(q.dtype == k.dtype == v.dtype, f"{op}: dtypes", "q, k, v of one dtype", (q.dtype, k.dtype, v.dtype))
    check(k.shape == v.shape, f"{op}: v.shape", f"equal to k.shape {tuple(k.shape)}", tuple(v.shape))
    check(q.shape[:2] == k.shape[:2], f"{op}: q.shape[:2] (B, H)", f"equal to k.shape[:2] {tuple(k.shape[:2])}",
          tuple(q.shape[:2]))
    check(q.shape[3] == k.shape[3], f"{op}: q head dim", f"equal to k's {k.shape[3]}", q.shape[3])
    d = q.shape[3]
    check(MIN_HEAD_DIM <= d <= MAX_HEAD_DIM, f"{op}: head dim", f"{MIN_HEAD_DIM}..{MAX_HEAD_DIM}", d)
    check(q.shape[2] >= 1 and k.shape[2] >= 1, f"{op}: sequence lengths (Nq, Nk)", ">= 1", (q.shape[2], k.shape[2]))
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(t.stride(3) == 1, f"{op}: {name}.stride(-1)", "1 (last dim contiguous)", t.stride())
    check(isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0, f"{op}: scale",
          "a finite positive float", scale)


def _check_devices(*tensors):
    devices = [t.device for t in tensors if t is not None]
    check(all(d == devices[0] for d in devices), "attention: devices",
          "q, k, v (and out, in_scale, bound, out_scale) on one device", devices)
    if not is_interpreting():
        check(devices[0].type == "cuda", "attention: device", "CUDA tensors (or TRITON_INTERPRET=1 for CPU)",
              devices[0])


def _check_codes(q, k, in_scale, bound, out_scale=None):
    """attention_fp8's extra operands: the QKV input's per-token scales (B, Nk), the (c, b) bound, the scales out."""
    B, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    check_f32("attention_fp8", "in_scale", in_scale, (B, n_k))
    check_f32("attention_fp8", "bound", bound, (2,))
    if out_scale is not None:
        check_f32("attention_fp8", "out_scale", out_scale, (B, n_q))


def _attention_fwd(q, k, v, scale, out=None, config=None, codes=None):
    """Check, allocate and launch. `out` (B, Nq, H*d) contiguous lets tests poison the buffer; `config`
    (BLOCK_M, BLOCK_N, num_warps, num_stages) bypasses the autotuner (tests exercise several tilings); `codes`
    (in_scale, bound, out_scale) stores e4m3 codes into `out` (float8_e4m3fn) and the rows' scales into out_scale."""
    _check_inputs(q, k, v, scale)
    if codes is not None:
        _check_codes(q, k, *codes)
    _check_devices(q, k, v, out, *(codes or ()))
    B, H, n_q, d = q.shape
    n_k = k.shape[2]
    out_dtype = FP8_DTYPE if codes is not None else q.dtype
    if out is None:
        out = torch.empty((B, n_q, H * d), device=q.device, dtype=out_dtype)
    else:
        check(out.shape == (B, n_q, H * d) and out.dtype == out_dtype and out.is_contiguous(), "attention: out",
              f"contiguous {(B, n_q, H * d)} {out_dtype}", f"{tuple(out.shape)} {out.dtype} strides {out.stride()}")
    in_scale, bound, out_scale = codes if codes is not None else (out, out, out)  # unused placeholders otherwise
    args = (q, k, v, out, in_scale, bound, out_scale,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1),
            H, n_q, n_k, float(scale) * _LOG2E, m_bucket(n_q), m_bucket(n_k),
            min(triton.next_power_of_2(B * H), _BH_BUCKET_CAP))
    block_d0, block_d1 = head_dim_blocks(d)
    # no PDL for the FP8 model's attention: its neighbours, the FP8 GEMMs, launch without it
    pdl = pdl_launch(q.device) and codes is None
    meta = dict(HEAD_DIM=d, BLOCK_D0=block_d0, BLOCK_D1=block_d1, UPCAST=upcast_needed(q.dtype),
                DOT_PRECISION=_dot_precision(q.dtype), CODES_OUT=codes is not None,
                ROUND_IN_FP32=codes is not None and is_interpreting(), **launch_options(pdl))

    def grid(m):
        return (triton.cdiv(n_q, m["BLOCK_M"]) * B * H,)

    if config is None:
        _attn_fwd_kernel[grid](*args, **meta)
    else:
        bm, bn, warps, stages = config
        _attn_fwd_kernel.fn[grid](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **meta)
    return out


def _dot_precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"  # the latter only matters for fp32 operands


# ---- registered op --------------------------------------------------------------------------------------------------
@torch.library.custom_op("vitfast::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return _attention_fwd(q, k, v, scale)


@_attention_op.register_fake
def _(q, k, v, scale):
    _check_inputs(q, k, v, scale)
    B, H, n_q, d = q.shape
    return q.new_empty((B, n_q, H * d))


# The FP8 model's attention: e4m3 codes and their per-row scales (two outputs, not mutated arguments, so that
# torch.compile's functionalization sees a plain op), which the FP8 out-projection reads as its quantized input.
@torch.library.custom_op("vitfast::attention_fp8", mutates_args=())
def _attention_fp8_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, in_scale: torch.Tensor,
                      bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out_scale = torch.empty((q.shape[0], q.shape[2]), device=q.device, dtype=torch.float32)
    return _attention_fwd(q, k, v, scale, codes=(in_scale, bound, out_scale)), out_scale


@_attention_fp8_op.register_fake
def _(q, k, v, scale, in_scale, bound):
    _check_inputs(q, k, v, scale)
    _check_codes(q, k, in_scale, bound)
    B, H, n_q, d = q.shape
    return q.new_empty((B, n_q, H * d), dtype=FP8_DTYPE), q.new_empty((B, n_q), dtype=torch.float32)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for q (B, H, Nq, d), k/v (B, H, Nk, d) -> (B, Nq, H*d), heads concatenated."""
    return torch.ops.vitfast.attention(q, k, v, float(scale))


def attention_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, in_scale: torch.Tensor,
                  bound: torch.Tensor) -> tuple:
    """attention() stored as the FP8 out-projection's input: (e4m3 codes (B, Nq, H*d), fp32 scales (B, Nq)), at one
    scale per image, bound / 448 with bound = max(max_t in_scale[b, t] · c + b, 1e-12): in_scale (B, Nk) fp32,
    the per-token scales the FP8 QKV GEMM quantized its input with (ln_qkv's return_input_scale), (c, b) = `bound`
    (2,) fp32 from the QKV weights (vit_fast.fp8.value_bound). vit_fast.fp8.quantize_bounded is the torch rule."""
    return torch.ops.vitfast.attention_fp8(q, k, v, float(scale), in_scale, bound)


# ---- ahead-of-time compile variants ---------------------------------------------------------------------------------
# Integer arguments the launches make multiples of 16 for the models' shapes (row, head and batch strides of the
# head-major and row-major QKV buffers and of the output, for head dims that are multiples of 16); the JIT gives
# them tt.divisibility=16, which is what lets it vectorize and pipeline the K/V loads.
_DIVISIBLE = ("stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn",
              "stride_vb", "stride_vh", "stride_vn", "stride_ob", "stride_om")


def _tiles(dtype):
    if dtype == torch.float32:
        return FP32_ATTN
    return list(dict.fromkeys(r for t in ATTN_TABLES.values() for r in t))


def _families(tile, dtype, block_d):
    """GPU families whose pruner can pick `tile` at this head-dim width: in the table (the fp32 one for fp32), free
    of spills (`fits_registers`) and within shared memory."""
    elem = torch.empty((), dtype=dtype).element_size()
    tables = {f: FP32_ATTN for f in ATTN_TABLES} if elem == 4 else ATTN_TABLES
    return tuple(f for f, t in tables.items()
                 if tile in t and fits_registers(tile, block_d, elem, f)
                 and _smem_estimate(tile[0], tile[1], block_d, tile[3], elem) <= FAMILY_SMEM[f])


def _vit_launches(dtype, bm, bn, d, even_m, even_n, codes=False):
    """The `vit` callable of the static report's contract (tests/kernels/aot_compile.py): full-sequence attention
    in every layer plus the last layer's [CLS]-only query (Nq = 1); [] where the launcher would not pick this.
    With `codes` (the FP8 model's attention) the launches are named "+fp8": 1-byte outputs, each program reads its
    image's input scales (4 B a token) and one head writes the rows' scales (4 B a row)."""
    elem = torch.empty((), dtype=dtype).element_size()
    width = sum(head_dim_blocks(d))
    suffix = "+fp8" if codes else ""

    def launches(cfg, batch):
        n = cfg.num_prefix_tokens + cfg.num_patches
        if cfg.embed_dim // cfg.num_heads != d:
            return []
        out = []
        for name, n_q, count in (("attn", n, cfg.depth), ("attn [CLS]", 1, 1)):
            q_bucket, k_bucket = m_bucket(n_q), m_bucket(n)
            small_q = q_bucket <= 16
            if (small_q and bm != 16) or (not small_q and bm == 16 and elem == 2) or bm > max(16, q_bucket):
                continue
            if bn > max(32, k_bucket) or (n_q % bm == 0) != even_m or (n % bn == 0) != even_n:
                continue
            programs = batch * cfg.num_heads * -(-n_q // bm)
            out.extend([{"name": name + suffix, "programs": programs,
                         "flops": programs * 4 * bm * -(-n // bn) * bn * width,
                         "useful_flops": batch * cfg.num_heads * 4 * n_q * n * d,
                         "bytes": batch * cfg.num_heads * ((n_q + 2 * n) * elem + n_q * (1 if codes else elem)) * d
                         + (programs * 4 * n + batch * n_q * 4 if codes else 0)}] * count)
        return out
    return launches


def _pickable(tile, block_d, dtype):
    """Some family's pruner keeps this tile at this head-dim width."""
    if dtype == torch.float32:
        return fits_registers(tile, block_d, 4)
    return any(tile in table and fits_registers(tile, block_d, 2, family) for family, table in ATTN_TABLES.items())


def aot_variants(exhaustive=False):
    """What the launcher can pick on a GPU. Every tile of every table (the fp32 table for fp32) x dtype x EVEN_M x
    EVEN_N for the presets' head dims 64 and 80 (one and two column blocks); every other head-dim block layout
    (16, 32, 32+16, 64+32, 128 masked at 72 and 112, 128) x EVEN_M x EVEN_N at the first tile of the Hopper (or
    fp32) table. `exhaustive=True`: every tile for every head dim. Tiles the pruner drops for a head dim because
    they spill there (`fits_registers`) are left out.
    The e4m3-output variants (CODES_OUT, the FP8 model's attention): bf16 (the FP8 model's activations), every
    tile x EVEN_M x EVEN_N at head dims 64 and 80, the other layouts at the first tile with ragged Nq and Nk;
    `exhaustive=True`: every tile and flag, also for fp16 and fp32. With programmatic dependent launch
    (VITFAST_PDL=1, pdl.py; credited to no preset): bf16, head dim 64, the first tile, ragged."""
    fn = jit_fn(_attn_fwd_kernel)
    variants = []

    def add(dtype, tile, d, even_m, even_n, codes, pdl=False):
        bm, bn, warps, stages = tile
        ty = TL_SIG[dtype]
        sig = {name: "i32" for name in fn.arg_names}
        # without the switch the launcher passes Out in the scales' places (never read)
        scales = "*fp32" if codes else f"*{ty}"
        sig.update({"Q": f"*{ty}", "K": f"*{ty}", "V": f"*{ty}", "Out": "*fp8e4nv" if codes else f"*{ty}",
                    "InScale": scales, "Bound": scales, "OutScale": scales, "qk_scale": "fp32"})
        block_d0, block_d1 = head_dim_blocks(d)
        consts = dict(HEAD_DIM=d, BLOCK_D0=block_d0, BLOCK_D1=block_d1, BLOCK_M=bm, BLOCK_N=bn, EVEN_M=even_m,
                      EVEN_N=even_n, UPCAST=False, DOT_PRECISION=_dot_precision(dtype), CODES_OUT=codes,
                      ROUND_IN_FP32=False, PDL=pdl)
        sig.update({name: "constexpr" for name in consts})
        variants.append({"fn": fn, "signature": sig, "constexprs": consts, "num_warps": warps, "num_stages": stages,
                         "divisible": _DIVISIBLE, "op": "attention", "main_loop": None,
                         "wgmma": bm >= 64,  # a wgmma covers 64 rows per warpgroup: the 16-row tile is mma.sync
                         # PDL's griddepcontrol needs sm_90: Hopper only
                         "tables": tuple(f for f in _families(tile, dtype, block_d0 + block_d1)
                                         if f == "hopper" or not pdl),
                         # e4m3 stores need sm_89+
                         **({"min_cc": 90} if pdl else {"min_cc": 89} if codes else {}),
                         # PDL (VITFAST_PDL=1): a switch, credited to no preset
                         "vit": (lambda cfg, batch: []) if pdl else _vit_launches(dtype, bm, bn, d, even_m, even_n,
                                                                                    codes)})

    flags = [(even_m, even_n) for even_m in (True, False) for even_n in (True, False)]
    for codes in (False, True):
        for dtype in FLOAT_DTYPES:
            if codes and dtype != torch.bfloat16 and not exhaustive:
                continue
            tiles = _tiles(dtype)
            for d in _AOT_HEAD_DIMS_ALL_TILES + _AOT_HEAD_DIMS:
                fitting = [t for t in tiles if _pickable(t, sum(head_dim_blocks(d)), dtype)]
                every = exhaustive or d in _AOT_HEAD_DIMS_ALL_TILES
                for tile in (fitting if every else fitting[:1]):
                    # codes at other head dims: the ragged case only (masked stores; CI time)
                    for even_m, even_n in (flags if every or not codes else [(False, False)]):
                        add(dtype, tile, d, even_m, even_n, codes)
    # programmatic dependent launch (VITFAST_PDL=1): bf16 at head dim 64, the first tile, ragged (B/16's 197 rows)
    first = next(t for t in _tiles(torch.bfloat16) if _pickable(t, sum(head_dim_blocks(64)), torch.bfloat16))
    add(torch.bfloat16, first, 64, False, False, False, pdl=True)
    return variants
