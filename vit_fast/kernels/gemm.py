"""The pointer-based fused GEMM: out = epilogue(A @ W^T), the engine for sm_80, the interpreter, and operands the TMA
engine (gemm_tma.py) cannot take.

Epilogue switches, shared with the TMA engine (same order, same fp32 math): a folded LayerNorm
(rstd · (acc − mean · colsum), the rows' statistics read from ln_fold.row_stats' output or merged from the partial
statistics a residual GEMM wrote: ln_fold.row_moments), bias, the shared activation (exact-erf / tanh / quick GELU)
and a residual add; one cast at the store; optionally the stored rows' partial statistics (ln_fold.store_partials)
for the LayerNorm that reads them next. LayerNorm lives in the epilogue, not the prologue, so the
A operand goes straight from memory to the dot (see ln_fold.py). SwiGLU (ACTIVATION 4) reads the packed (2N, K)
weight: a second accumulator takes the up rows N below the gate rows, sharing the A tile, and the epilogue
(gated_epilogue_math) stores silu(gate) · up. At small batch K is split (SPLIT_K, split_k.py): a program is a (tile,
part of K), and the last part of a tile to finish sums the parts and runs the epilogue.
"""
import functools

import torch
import triton
import triton.language as tl

from ._common import (
    GEMM_DIVISIBLE, SPLIT_SPILLS, SWIGLU, SWITCH_TILE, TL_SIG, check, gemm_configs, gemm_families,
    gemm_kind, gemm_rows_for, gemm_vit_launches, gpu_family, is_interpreting, jit_fn, m_bucket, num_sms,
    preset_activation, prune_gemm_configs, upcast_needed,
)
from .autotune import autotuned
from .ln_fold import (NARROW_MAX_SLOTS, NARROW_STATS_SLOT, STATS_SLOT, row_moments, stats_slot, stats_tile_ok,
                      store_partials)
from .split_k import MAX_ACC_REGS, acc_registers, config_parts, launch_operands, split_k_fixup

DTYPES = (torch.bfloat16, torch.float32, torch.float16)  # AOT order: bf16 first (the fast path)
GEMM_AUTOTUNE_KEY = ["M_BUCKET", "N", "K", "ROW_STATS", "HAS_BIAS", "ACTIVATION", "HAS_RESIDUAL", "WRITE_STATS",
                     "SLOT", "split_mode"]  # SLOT: a writer's tiles depend on it (VITFAST_STATS_SLOT changes it)


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a flat tile id to (pid_m, pid_n) in groups of GROUP_M row tiles, so neighbours share W tiles in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def gelu_erf(x, OUT_MANTISSA: tl.constexpr):
    # Exact (erf) GELU as x * Phi(x), Phi(-|x|) = erfc(|x| / sqrt 2) / 2 = 2^(|x| * Q(|x|) - 1): no 1 + erf(x)
    # cancellation in the negative tail; past |x| = 6 the clamp leaves Phi(-6) = 1e-9, so -inf gives -inf (PyTorch:
    # NaN). Q is fitted on [0, 6] (benchmarks/gelu_fit.py). Stored in bf16 (OUT_MANTISSA 7 bits) the result takes a
    # degree-5 fit whose relative error is 1/40 of bf16's smallest relative half step, so the store rounds as it
    # would round the exact value but for a few near-ties. Every other store keeps degree 9, near fp32's own
    # rounding: fp32, fp16, and FC1's e4m3 codes, which the FP8 model tests hold to the torch emulation's codes
    # (degree 5 flipped enough of them to fail those tests in about 3 runs of 10).
    a = tl.minimum(tl.abs(x), 6.0)
    if OUT_MANTISSA == 7:  # bf16: degree 5, 4.9e-5 relative
        q = tl.fma(a, 2.3434442482539453e-05, -0.0006197582697495818)
        q = tl.fma(q, a, 0.007260461803525686)
        q = tl.fma(q, a, -0.051418885588645935)
        q = tl.fma(q, a, -0.46086326241493225)
        q = tl.fma(q, a, -1.1504803895950317)
    else:  # fp32, fp16, e4m3 codes: degree 9, 3.7e-7 relative
        q = tl.fma(a, -1.2712573216333567e-08, 4.270092688329896e-07)
        q = tl.fma(q, a, -6.103272880864097e-06)
        q = tl.fma(q, a, 4.650361734093167e-05)
        q = tl.fma(q, a, -0.00016986645641736686)
        q = tl.fma(q, a, -0.00024454708909615874)
        q = tl.fma(q, a, 0.007270929869264364)
        q = tl.fma(q, a, -0.05268044397234917)
        q = tl.fma(q, a, -0.4591355323791504)
        q = tl.fma(q, a, -1.151114583015442)
    tail = tl.exp2(tl.fma(q, a, -1.0))
    return x * tl.where(x < 0, tail, 1.0 - tail)


@triton.jit
def gelu_erf_libdevice(x):
    # the exact GELU before gelu_erf, kept behind VITFAST_GELU=libdevice to measure the two side by side
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def gelu_tanh(x):
    # 0.5 * x * (1 + tanh(u)) == x * sigmoid(2u), u = sqrt(2/pi) * (x + 0.044715 x^3); no tanh needed.
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def gelu_quick(x):
    # CLIP's "quick GELU": x * sigmoid(1.702 x)
    return x / (1.0 + tl.exp(-1.702 * x))


@triton.jit
def swiglu(gate, up):
    """SwiGLU's gate on fp32 tiles: silu(gate) * up."""
    return gate / (1.0 + tl.exp(-gate)) * up


@triton.jit
def column_halves(acc, up, BLOCK_M: tl.constexpr, HALF: tl.constexpr, GATED: tl.constexpr):
    """A (BLOCK_M, 2 * HALF) tile's left and right column halves, and those of SwiGLU's up accumulator when GATED
    (else the tile's own, never used): both engines' epilogues run on halves to keep half the temporaries live."""
    acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, HALF)), (0, 2, 1)))
    if GATED:
        up0, up1 = tl.split(tl.permute(tl.reshape(up, (BLOCK_M, 2, HALF)), (0, 2, 1)))
    else:
        up0, up1 = acc0, acc1
    return acc0, acc1, up0, up1


@triton.jit
def apply_activation(x, ACTIVATION: tl.constexpr, OUT_TY: tl.constexpr):
    """The epilogue activation every GEMM engine shares; codes are _common.ACTIVATIONS, and 5 (_common.GELU_LIBDEVICE)
    the exact GELU through libdevice's erf. OUT_TY: the element type the result is stored in (the exact GELU's fit
    follows its precision)."""
    if ACTIVATION == 1:
        x = gelu_erf(x, OUT_TY.fp_mantissa_width)
    elif ACTIVATION == 2:
        x = gelu_tanh(x)
    elif ACTIVATION == 3:
        x = gelu_quick(x)
    elif ACTIVATION == 5:  # _common.GELU_LIBDEVICE
        x = gelu_erf_libdevice(x)
    return x


@triton.jit
def epilogue_math(acc, rm, rn, M, N, mean, rstd, colsum_ptr, bias_ptr,
                  ROW_STATS: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, OUT_TY: tl.constexpr):
    """Folded LayerNorm (rows' mean and rstd from ln_fold.row_moments), bias and activation on an fp32 tile (rows rm,
    columns rn); shared by both engines (gemm_ws.py runs the same steps on column vectors it loads earlier)."""
    mask_n = rn < N
    if ROW_STATS:
        # colsum is the column sum of the folded weight
        acc = fold_rows(acc, mean, rstd, tl.load(colsum_ptr + rn, mask=mask_n, other=0.0))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    return apply_activation(acc, ACTIVATION, OUT_TY)


@triton.jit
def fold_rows(acc, mean, rstd, colsum):
    """The folded LayerNorm on an fp32 tile: rstd · (acc − mean · colsum), per row mean and rstd (ln_fold.py)."""
    return (acc - mean[:, None] * colsum[None, :]) * rstd[:, None]


@triton.jit
def gated_epilogue_math(acc, up, rm, rn, M, N, mean, rstd, colsum_ptr, bias_ptr,
                        ROW_STATS: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
                        OUT_TY: tl.constexpr):
    """epilogue_math, or for SwiGLU (ACTIVATION 4) the folded LayerNorm and bias of the gate tile `acc` (columns rn)
    and of the up tile `up` (columns rn + N of the packed weight), then silu(gate) * up; `up` is unused otherwise."""
    if ACTIVATION == 4:
        gate = epilogue_math(acc, rm, rn, M, N, mean, rstd, colsum_ptr, bias_ptr, ROW_STATS, HAS_BIAS, 0, OUT_TY)
        # N is the gated width H here: rn + N < 2N masks exactly as rn < N
        up = epilogue_math(up, rm, rn + N, M, 2 * N, mean, rstd, colsum_ptr, bias_ptr, ROW_STATS, HAS_BIAS, 0,
                           OUT_TY)
        return swiglu(gate, up)
    return epilogue_math(acc, rm, rn, M, N, mean, rstd, colsum_ptr, bias_ptr, ROW_STATS, HAS_BIAS, ACTIVATION,
                         OUT_TY)


@triton.jit
def _store_tile(acc, up, rm, col0, M, N, mean, rstd, colsum_ptr, bias_ptr, res_ptr, out_ptr, part_ptr, stride_rm,
                stride_rn, stride_om, stride_on, ROW_STATS: tl.constexpr, HAS_BIAS: tl.constexpr,
                ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, WRITE_STATS: tl.constexpr,
                EPI_N: tl.constexpr, SLOT: tl.constexpr):
    """Epilogue of one (sub)tile, columns col0 .. col0 + EPI_N: shared math (SwiGLU: of the gate and up tiles),
    residual, one cast, masked store (and the stored rows' partial statistics)."""
    tl.static_assert(not WRITE_STATS or EPI_N % SLOT == 0, "partial statistics need epilogue slices of whole slots")
    rn = col0 + tl.arange(0, EPI_N)
    acc = gated_epilogue_math(acc, up, rm, rn, M, N, mean, rstd, colsum_ptr, bias_ptr, ROW_STATS, HAS_BIAS,
                              ACTIVATION, out_ptr.dtype.element_ty)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    rm64 = rm.to(tl.int64)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + rm64[:, None] * stride_rm + rn[None, :] * stride_rn, mask=mask, other=0.0)
        acc += res.to(tl.float32)
    out = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rm64[:, None] * stride_om + rn[None, :] * stride_on, out, mask=mask)
    if WRITE_STATS:
        store_partials(out.to(tl.float32), rm, col0, M, N, part_ptr, EPI_N, SLOT)


def pointer_epi_split(bm: int, bn: int, interpreting: bool = None) -> int:
    """Split the epilogue of tiles of 128x128 and more (whose fp32 accumulator alone takes 64-128 registers); always
    under the interpreter, whose single small tile would otherwise leave the split path untested (`interpreting`:
    False for AOT lists, built for the GPU)."""
    interpreting = is_interpreting() if interpreting is None else interpreting
    return 2 if bm * bn >= 128 * 128 or interpreting else 1


def _epi_split(args):
    return pointer_epi_split(args["BLOCK_M"], args["BLOCK_N"])


def _split_parts(args) -> int:
    """SPLIT_K of the config being launched (split_k.config_parts over the device's SMs, split_sms); under the
    automatic rule 1 where the split code spills on the running GPU family (_common.SPLIT_SPILLS; a forced split,
    for tests, still splits there)."""
    a = args["a_ptr"]
    if args["split_mode"] == 1 and a.is_cuda:
        index = a.device.index if a.device.index is not None else torch.cuda.current_device()
        tile = (args["BLOCK_M"], args["BLOCK_N"], args["BLOCK_K"], args["num_warps"])
        if tile in SPLIT_SPILLS.get(gpu_family(index), {}).get(gemm_kind(args), {}):
            return 1
    return config_parts(args, args["split_sms"])


def _prune(configs, named_args, **kwargs):
    """The family tables' prune (prune_gemm_configs); a GEMM that writes partial statistics keeps only tiles whose
    epilogue (sub)tile covers whole slots of the launch's width (ln_fold.stats_tile_ok)."""
    if kwargs.get("WRITE_STATS"):
        configs = [c for c in configs if stats_tile_ok(
            c.kwargs["BLOCK_N"] // pointer_epi_split(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]), kwargs["SLOT"])]
        check(bool(configs), "fused_gemm_kernel: tiles writing partial statistics",
              "an epilogue (sub)tile of whole slots", "none in the table")
    return prune_gemm_configs(configs, named_args, **kwargs)


_CONFIGS = gemm_configs()


@autotuned(_CONFIGS, GEMM_AUTOTUNE_KEY, _prune)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0, "EPI_SPLIT": _epi_split,
                   "SPLIT_K": _split_parts})
@triton.jit(do_not_specialize=["M", "split_mode", "split_sms"])  # M = B·tokens: one compile for every batch size
def fused_gemm_kernel(
    a_ptr,  # (M, K) activations, any strides
    w_ptr,  # (N, K) weight in nn.Linear layout (LayerNorm-folded when ROW_STATS), any strides; (2N, K) for SwiGLU
    bias_ptr,  # (N,) bias (activation dtype, or fp32 when folded), (2N,) for SwiGLU; read only when HAS_BIAS
    res_ptr,  # (M, N) residual; read only when HAS_RESIDUAL
    stats_ptr,  # A's row statistics, fp32: (M, 2) (mean, rstd) if ROW_STATS 1; (M, 3, SLOTS) partials if 2
    colsum_ptr,  # (N,) fp32 column sums of the folded weight, (2N,) for SwiGLU; read only when ROW_STATS
    out_ptr,  # (M, N) output, any strides
    part_ptr,  # (M, 3, cdiv(N, SLOT)) fp32 partial statistics of the output rows; written only when WRITE_STATS
    ws_ptr,  # fp32 split-K workspace (split_k.py), SPLIT_K partial tiles per output tile; None unless it may split
    lock_ptr,  # int32 split-K counters, one per output tile, zero at launch and left zero; None as ws_ptr
    M,  # rows (tokens over the whole batch)
    N,  # output features (SwiGLU: the gated width H, half the weight's rows)
    K,  # input features
    eps,  # the folded LayerNorm's epsilon; read only when ROW_STATS 2 (merged partials)
    stride_am,  # A row stride
    stride_ak,  # A column stride
    stride_wn,  # W row stride
    stride_wk,  # W column stride
    stride_rm,  # residual row stride
    stride_rn,  # residual column stride
    stride_om,  # output row stride
    stride_on,  # output column stride
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    split_mode,  # read by the SPLIT_K heuristic only: 0 never split, 1 split_k.split_count's rule, 2-4 forced parts
    split_sms,  # read by the SPLIT_K heuristic only: the device's SMs (the programs a split may fill)
    ROW_STATS: tl.constexpr,  # folded LayerNorm epilogue rstd * (acc - mean * colsum): 0 off, 1 stats rows, 2 partials
    HAS_BIAS: tl.constexpr,  # add bias in the epilogue
    ACTIVATION: tl.constexpr,  # 0 none, 1 exact-erf GELU, 2 tanh GELU, 3 quick GELU, 4 SwiGLU (gate and up dots),
    # 5 exact GELU through libdevice's erf (VITFAST_GELU=libdevice)
    HAS_RESIDUAL: tl.constexpr,  # add the residual after the activation
    WRITE_STATS: tl.constexpr,  # write the stored rows' partial statistics (the next LayerNorm's) to part_ptr
    SLOT: tl.constexpr,  # columns per partial-statistics slot (ln_fold.stats_slot)
    SLOTS: tl.constexpr,  # the partial statistics' slots per row of A (ROW_STATS 2; the partials' shape)
    UPCAST: tl.constexpr,  # dot in fp32 (interpreter with bf16, whose bf16 arithmetic is wrong)
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # output features per tile
    BLOCK_K: tl.constexpr,  # reduction step
    GROUP_M: tl.constexpr,  # row tiles per L2 group
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no K masks
    EPI_SPLIT: tl.constexpr,  # 1 or 2: epilogue on BLOCK_N / EPI_SPLIT-wide column halves
    SPLIT_K: tl.constexpr,  # parts of K per output tile (split_k.py): program = (tile, part), the parts adjacent
):
    tl.static_assert(SPLIT_K == 1 or ACTIVATION != 4, "SwiGLU's up accumulator is not split")
    if SPLIT_K > 1:
        tile = tl.program_id(0) // SPLIT_K
        part = tl.program_id(0) % SPLIT_K
        k_span = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K  # a part's K; the last part ends at K
        k_lo = part * k_span
        k_hi = tl.minimum(k_lo + k_span, K)
    else:
        tile = tl.program_id(0)
        k_lo = 0
        k_hi = K
    pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # Out-of-range rows/columns wrap onto valid ones for the loads (masked at the store), so loads need no M/N masks.
    rm_load = (rm % M).to(tl.int64)
    rn_load = rn % N
    a_ptrs = a_ptr + rm_load[:, None] * stride_am + (k_lo + rk)[None, :] * stride_ak
    w_ptrs = w_ptr + rn_load[None, :] * stride_wn + (k_lo + rk)[:, None] * stride_wk

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if ACTIVATION == 4:  # SwiGLU: the up rows of the packed (2N, K) weight, N rows below the gate's; own accumulator
        up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    else:
        up = acc  # never used
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
            if ACTIVATION == 4:
                w_up = tl.load(w_ptrs + N * stride_wn)
        else:
            k_ok = (k0 + rk) < K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
            if ACTIVATION == 4:
                w_up = tl.load(w_ptrs + N * stride_wn, mask=k_ok[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision="ieee")
        if ACTIVATION == 4:
            if UPCAST:
                w_up = w_up.to(tl.float32)
            up = tl.dot(a, w_up, up, input_precision="ieee")
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    if SPLIT_K > 1:
        # the last of the tile's parts to arrive gets the summed accumulator and runs the epilogue
        acc, finish = split_k_fixup(acc, ws_ptr, lock_ptr, tile, part, BLOCK_M, BLOCK_N, SPLIT_K)
    else:
        finish = True
    if finish:
        if ROW_STATS:
            mean, rstd = row_moments(stats_ptr, rm, M, K, eps, ROW_STATS, SLOT, SLOTS, False)
        else:
            mean = 0.0  # never used
            rstd = 0.0
        if EPI_SPLIT == 2:
            # two BLOCK_N/2-wide halves: the epilogue's temporaries cover half the tile (no spill at 128x256 w8)
            half: tl.constexpr = BLOCK_N // 2
            acc0, acc1, up0, up1 = column_halves(acc, up, BLOCK_M, half, ACTIVATION == 4)
            col0 = pid_n * BLOCK_N
            _store_tile(acc0, up0, rm, col0, M, N, mean, rstd, colsum_ptr, bias_ptr, res_ptr, out_ptr, part_ptr,
                        stride_rm, stride_rn, stride_om, stride_on, ROW_STATS, HAS_BIAS, ACTIVATION, HAS_RESIDUAL,
                        WRITE_STATS, half, SLOT)
            _store_tile(acc1, up1, rm, col0 + half, M, N, mean, rstd, colsum_ptr, bias_ptr, res_ptr, out_ptr,
                        part_ptr, stride_rm, stride_rn, stride_om, stride_on, ROW_STATS, HAS_BIAS, ACTIVATION,
                        HAS_RESIDUAL, WRITE_STATS, half, SLOT)
        else:
            _store_tile(acc, up, rm, pid_n * BLOCK_N, M, N, mean, rstd, colsum_ptr, bias_ptr, res_ptr, out_ptr,
                        part_ptr, stride_rm, stride_rn, stride_om, stride_on, ROW_STATS, HAS_BIAS, ACTIVATION,
                        HAS_RESIDUAL, WRITE_STATS, BLOCK_N, SLOT)


def row_stats_switch(stats) -> int:
    """The ROW_STATS constexpr for a launcher's `stats`: 0 none, 1 row_stats' (M, 2) rows, 2 (M, 3, S) partials."""
    return 0 if stats is None else 1 if stats.dim() == 2 else 2


def slots_arg(stats) -> int:
    """The SLOTS constexpr: slots per row of partials (the ops check their shape: ln_fold.check_partials), 1
    otherwise (one binary whatever K is)."""
    return stats.shape[2] if row_stats_switch(stats) == 2 else 1


def slot_arg(stats_out, m: int, n: int) -> int:
    """The SLOT constexpr: the width of the slots a launch writing partial statistics of its m x n output fills
    (ln_fold.stats_slot); STATS_SLOT for the launches writing none (the constexpr is unused there: one binary)."""
    return stats_slot(m, n) if stats_out is not None else STATS_SLOT


def launch_fused_gemm(a, weight, bias, out, *, activation=0, residual=None, stats=None, colsum=None, eps=0.0,
                      stats_out=None):
    """Launch on already-checked 2-D operands: a (M, K), weight (N, K), out (M, N); residual (M, N) or None;
    stats and colsum (N,) fp32 together or neither (folded LayerNorm; stats (M, 2) fp32 (mean, rstd), or a residual
    GEMM's (M, 3, S) partials merged with eps); stats_out: new_partials(out), written with the output rows' partial
    statistics."""
    M, K = a.shape
    N = weight.shape[0] // 2 if activation == SWIGLU else weight.shape[0]  # SwiGLU: packed (2N, K) gate/up rows
    res = residual if residual is not None else out
    sms = split_sms(a.device)
    split_mode, ws, lock = launch_operands(a, M, N, K, split_rows(sms), activation == SWIGLU)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])  # noqa: E731
                         * meta["SPLIT_K"],)
    fused_gemm_kernel[grid](
        a, weight, bias if bias is not None else out, res,
        stats if stats is not None else out, colsum if colsum is not None else out, out,
        stats_out if stats_out is not None else out, ws, lock,
        M, N, K, float(eps),
        a.stride(0), a.stride(1), weight.stride(0), weight.stride(1), res.stride(-2), res.stride(-1),
        out.stride(0), out.stride(1), m_bucket(M), split_mode, sms,
        ROW_STATS=row_stats_switch(stats), HAS_BIAS=bias is not None, ACTIVATION=activation,
        HAS_RESIDUAL=residual is not None, WRITE_STATS=stats_out is not None, SLOT=slot_arg(stats_out, M, N),
        SLOTS=slots_arg(stats), UPCAST=upcast_needed(a.dtype),
    )  # fmt: skip
    return out


INTERPRETER_SMS = 1  # the SMs the automatic split rule assumes under the interpreter (tests force their splits)


def split_sms(device: torch.device) -> int:
    """The SMs a split launch may fill on `device` (INTERPRETER_SMS under the interpreter)."""
    return INTERPRETER_SMS if is_interpreting() else num_sms(device)


@functools.lru_cache(maxsize=None)
def split_rows(sms: int) -> tuple:
    """Every row the autotuner can run (the configs of gemm_configs: each family's table, whose prune may fall back
    to another's smallest row; the interpreter's one row), as split_k.launch_operands takes them: (BLOCK_M, BLOCK_N,
    BLOCK_K, warps, programs = SMs)."""
    return tuple((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, sms)
                 for c in _CONFIGS)


def switch_combos(activations, has_bias, exhaustive):
    """(activation, has_bias, EVEN_K) tuples for an op's AOT list; the first is the base the ViT presets run.
    exhaustive: the full product; default (the CI budget): the base and one switch changed at a time."""
    base = (activations[0], True, True)
    if exhaustive:
        return [(a, b, e) for a in activations for b in has_bias for e in (True, False)]
    return ([base] + [(a, True, True) for a in activations[1:]]
            + [(base[0], b, True) for b in has_bias if b is not True] + [(base[0], True, False)])


def stats_modes(row_stats: bool, has_residual: bool) -> tuple:
    """(ROW_STATS, WRITE_STATS) pairs an op launches with, the model's most frequent first: LayerNorm ops merge a
    residual GEMM's partial statistics (2) in every block after the first, whose norm reads row_stats' rows (1);
    residual ops write the partials, except the last block's FC2 (its rows go to the final norm's own kernel)."""
    if row_stats:
        return ((2, False), (1, False))
    return ((0, True), (0, False)) if has_residual else ((0, False),)


AOT_SPLIT = 4  # parts in the split-K variants at every tile that can split
# The other part counts batch 1 runs (H/14's FC2 in 2, B/16's out-projection in 3 and FC2 in 5), compiled at the TMA
# engine's batch-1 row: the fix-up compiles differently per count (a draft spilled 328 B at 2 parts, none at 4)
AOT_SPLITS_B1 = (2, 3, 5)
AOT_SLOTS = NARROW_MAX_SLOTS  # slots per row in AOT variants: the most a merging GEMM reads (ln_fold.stats_slot:
# L/16's 1024 columns in 16 narrow slots at small batches; H/14's 1280 in 10 of 128); the persistent engines unroll
# the merge, so the most slots are the most registers


def aot_slots(epi_n: int, mode) -> tuple:
    """The SLOT values a launch in statistics mode `mode` (stats_modes) runs a tile with epi_n-wide epilogue slices
    at on a GPU (ln_fold.stats_slot; AOT lists are built for the GPU, interpreter or not): a writer's STATS_SLOT
    (large M) and NARROW_STATS_SLOT (small batches) where the slices hold whole slots of that width, none if
    neither; STATS_SLOT for the others (unused there)."""
    if not mode[1]:
        return (STATS_SLOT,)
    return tuple(s for s in (STATS_SLOT, NARROW_STATS_SLOT) if stats_tile_ok(epi_n, s))


def gemm_aot_variants(row_stats, activations, has_bias, has_residual, exhaustive=False, op=None):
    """AOT-compile descriptions of fused_gemm_kernel for one op (its fixed switches row_stats/has_residual, the
    activation and bias values it accepts; the first activation listed is the one the ViT presets use): every dtype
    at every tile row any GPU family's table can pick for it (the base switches; bf16 in every statistics mode of
    stats_modes the tile can run), plus the other switches at SWITCH_TILE (bf16 and fp32, different dot lowerings,
    one switch at a time, fp32 also in the other statistics modes; fp16 the base only). exhaustive=True: the
    switches' full product. SwiGLU (activations (4,)) has its own prune rule (_common.gemm_kind "swiglu").
    Metadata follows the contract in tests/kernels/aot_compile.py."""
    op = op or _op_name(row_stats, has_residual)
    kind = gemm_kind(dict(ACTIVATION=activations[0], ROW_STATS=row_stats))
    combos = switch_combos(activations, has_bias, exhaustive)
    base = combos[0]
    modes = stats_modes(row_stats, has_residual)
    out = []
    for dtype in DTYPES:
        elem = torch.empty((), dtype=dtype).element_size()
        for row in gemm_rows_for(elem, kind):
            # (mode, slot): a call writing statistics at each slot width whose slots the tile's epilogue slices hold
            runs = [(m, s) for m in modes for s in aot_slots(row[1] // _aot_epi_split(row), m)]
            wide = [r for r in runs if r[1] == STATS_SLOT]  # large M: the presets' launches, and fp16/fp32's variant
            for mode, slot in (runs if dtype == DTYPES[0] else wide[:1]):
                out.append(_gemm_variant(dtype, mode, base[0], base[1], has_residual, True, row, op, kind,
                                         vit=(mode, slot) == wide[0], slot=slot))
        for act, bias, even_k in (combos if exhaustive or dtype != torch.float16 else combos[:1]):
            if (act, bias, even_k) != base:
                out.append(_gemm_variant(dtype, modes[0], act, bias, has_residual, even_k, _switch_tile(modes[0]),
                                         op, kind))
        if dtype == torch.float32:
            out += [_gemm_variant(dtype, m, base[0], base[1], has_residual, True, SWITCH_TILE, op, kind)
                    for m in modes[1:]]
    if kind != "swiglu":  # the split-K code (small batches), bf16, at every table tile that can split
        elem = torch.empty((), dtype=DTYPES[0]).element_size()
        out += [_gemm_variant(DTYPES[0], modes[0], base[0], base[1], has_residual, True, row, op, kind,
                              split=AOT_SPLIT, slot=slot)
                for row in gemm_rows_for(elem, kind) if acc_registers(*row[:2], row[3]) <= MAX_ACC_REGS
                for slot in aot_slots(row[1] // _aot_epi_split(row), modes[0])]
    return out


def _switch_tile(mode):
    """The tile the AOT list covers switches at: SWITCH_TILE, or for a GEMM writing statistics the smallest table
    tile whose epilogue slices are whole 128-column slots (64x128)."""
    if not mode[1] or stats_tile_ok(SWITCH_TILE[1] // _aot_epi_split(SWITCH_TILE), STATS_SLOT):
        return SWITCH_TILE
    return STATS_SWITCH_TILE


STATS_SWITCH_TILE = (64, 128, 64, 4, 4)


def _aot_epi_split(row) -> int:
    return pointer_epi_split(row[0], row[1], interpreting=False)


def _op_name(row_stats, has_residual):
    return "ln_linear" if row_stats else "linear_residual" if has_residual else "linear"


def aot_variants(exhaustive: bool = False):
    """The shared kernel as ln_linear's bf16 folded-LN + GELU variants at every tile (the op modules list the rest;
    the report compiles identical variants once)."""
    return [v for v in gemm_aot_variants(True, (1, 0, 2, 3), (True,), False)
            if v["signature"]["a_ptr"] == "*bf16" and v["constexprs"]["ACTIVATION"] == 1
            and v["constexprs"]["ROW_STATS"] == 2]


def _gemm_variant(dtype, mode, activation, has_bias, has_residual, even_k, tile, op, kind, vit=None, split=1,
                  slot=STATS_SLOT):
    """One variant; `vit`: whether the report counts it for the presets' launches (default: in the statistics mode
    the model runs most, stats_modes' first; never a split variant); split > 1: the split-K code (split_k.py);
    `slot`: the partial statistics' slot width (SLOT) when the variant writes them."""
    bm, bn, bk, warps, stages = tile
    row_stats, write_stats = mode
    p = "*" + TL_SIG[dtype]
    elem = torch.empty((), dtype=dtype).element_size()
    sig = {
        "a_ptr": p, "w_ptr": p, "bias_ptr": "*fp32" if row_stats else p, "res_ptr": p, "stats_ptr": "*fp32",
        "colsum_ptr": "*fp32", "out_ptr": p, "part_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "eps": "fp32",
        "stride_am": "i32", "stride_ak": "constexpr", "stride_wn": "i32", "stride_wk": "constexpr",
        "stride_rm": "i32", "stride_rn": "constexpr", "stride_om": "i32", "stride_on": "constexpr",
        "M_BUCKET": "i32", "split_mode": "i32", "split_sms": "i32",
    }  # fmt: skip
    constexprs = {
        "stride_ak": 1, "stride_wk": 1, "stride_rn": 1, "stride_on": 1,
        "ROW_STATS": row_stats, "HAS_BIAS": has_bias, "ACTIVATION": activation, "HAS_RESIDUAL": has_residual,
        "WRITE_STATS": write_stats, "SLOT": slot, "SLOTS": AOT_SLOTS if row_stats == 2 else 1,
        "UPCAST": False, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EVEN_K": even_k,
        "EPI_SPLIT": _aot_epi_split(tile), "SPLIT_K": split,
    }  # fmt: skip
    if split > 1:
        sig.update(ws_ptr="*fp32", lock_ptr="*i32")
    else:
        constexprs.update(ws_ptr=None, lock_ptr=None)  # the launcher passes None where no row splits
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    base_mode = (mode == stats_modes(bool(row_stats), has_residual)[0] if vit is None else vit) and split == 1
    return {"fn": jit_fn(fused_gemm_kernel), "signature": sig, "constexprs": constexprs,
            "num_warps": warps, "num_stages": stages, "divisible": GEMM_DIVISIBLE, "op": op, "main_loop": "gemm",
            "tables": gemm_families(tile, elem, kind),
            "vit": gemm_vit_launches(op, tile, elem, even_k, when=lambda cfg: base_mode and has_bias
                                     and activation == preset_activation(op, cfg))}
