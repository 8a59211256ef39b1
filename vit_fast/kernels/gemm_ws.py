"""A warp-specialized 16-bit GEMM for Hopper (sm_90), written in Gluon: FC1's GELU epilogue beside the next tile's
wgmmas instead of after them.

Why a second 16-bit engine: on gemm_tma.py a program runs its epilogue after its main loop, and nothing on the SM
fills the tensor cores meanwhile. FC1 (folded LayerNorm, bias, exact GELU) and FC2 do the same FLOPs; at ViT-B/16
batch 256 FC1 took 0.570 ms a call against FC2's 0.374 on an H200 (third lease) and 0.490 against 0.394 on an H100
with the fitted GELU (fourth lease; benchmarks/NOTES.md): the difference is FC1's epilogue. Two co-resident programs
(gemm_tma.PER_SM) did not hide it. Triton's own warp specialization does not run on sm_90 with TMA stores in triton
3.6 (triton-lang/triton#11587); Gluon (`triton.experimental.gluon`, in triton 3.6 and 3.9) builds the layout
explicitly, as gemm_fp8_ws.py does for FP8 (what they share: _gluon_ws.py).

The tile is gemm_tma.py's best for these GEMMs, 128x256 (the third lease timed one 128x128 program 8-11 % slower on
the same launches): two math warpgroups take 64 rows each, one 64x256 wgmma chain with 128 fp32 sums a thread,
keep one wgmma group in flight and release each stage through an mbarrier; warpgroup 0 also issues the TMA loads of
4 stages of (A, W) 128x256x32 boxes, 3 steps ahead. No TMA warp: with a fourth warpgroup for it every thread would
start at 128 registers, under the 154 the 64x256 wgmma needs; three warpgroups start at 168. At the end of a tile
the math warpgroups hand the fp32 sums to a 128 KB shared buffer, and the epilogue warpgroup runs gemm_tma.py's
epilogue arithmetic from it, a 64x64 slice at a time (the folded LayerNorm with the rows' statistics merged from
the partials or read from row_stats, bias, GELU, one cast, plain 16-byte global stores) while they run the next
tile.

What it runs (VITFAST_GEMM_ENGINE=ws, opt-in until a GPU lease has timed it: the interpreter cannot run Gluon): the
bf16 and fp16 GEMMs with a GELU epilogue (FC1) that have at least MIN_WAVES output tiles per SM (ViT-B/16's FC1
from batch 56 on 132 SMs). The launches without an activation (QKV, the out-projection, FC2) have lighter
epilogues and stay on gemm_tma.py, as do SwiGLU (two accumulators), fp32 operands and launches of fewer tiles
(where a last, partly filled wave of this engine's one tile costs what gemm_tma.py's smaller tiles and split-K
avoid). One tile, not autotuned.
"""
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ._common import GELU_LIBDEVICE, SWIGLU, TL_SIG, num_sms
from ._gluon_ws import MATH_WARPS, allocate_hand_over, allocate_ring, fill_stage, hand_over
from .gemm import AOT_SLOTS, apply_activation, fold_rows, grouped_tile, row_stats_switch, slots_arg
from .ln_fold import STATS_SLOT, row_moments, stats_slot

# (BLOCK_M, BLOCK_N, BLOCK_K, STAGES, GROUP_M): 64 rows a math warpgroup, each one 64x256 wgmma chain; 4 stages of
# 24 KB and the 128 KB fp32 buffer: 225 KB of the SM's 227 KB (BLOCK_K 32 so that four stages fit beside it)
TILE = (128, 256, 32, 4, 8)
# registers a thread: three warpgroups (no TMA warp: a fourth would cap every thread at 128 at launch, under the 154
# a 64x256 wgmma with its 128 fp32 sums needs) share the SM's 64 K, 168 each
MATH_REGS = gl.constexpr(168)
# columns of the tile the epilogue takes from the buffer at a time (a 64x64 fp32 slice: 32 values a thread)
EPI_COLS = gl.constexpr(64)
DTYPES = (torch.bfloat16, torch.float16)
# tiles a launch needs per SM to come here: with 8 or more waves the last, partly filled one costs at most 1/9
MIN_WAVES = 8
# the (A, W) boxes' shared layouts (128-byte swizzle) per operand dtype: built once, not per launch
_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}
A_LAYOUTS = {dt: gl.NVMMASharedLayout.get_default_for([TILE[0], TILE[2]], g) for dt, g in _GL_DTYPES.items()}
W_LAYOUTS = {dt: gl.NVMMASharedLayout.get_default_for([TILE[1], TILE[2]], g) for dt, g in _GL_DTYPES.items()}


@gluon.jit
def _load_step(a_desc, w_desc, a_s, w_s, ready, empty, g, k_tiles, num_tiles, M, N, NUM_SMS: gl.constexpr,
               STAGES: gl.constexpr, GROUP_M: gl.constexpr):
    """_gluon_ws.fill_stage for the program's g-th K step overall (step g % k_tiles of its tile number
    g // k_tiles); nothing past the program's last tile."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    tile = gl.program_id(0) + (g // k_tiles) * NUM_SMS
    if tile < num_tiles:
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        fill_stage(a_desc, w_desc, a_s, w_s, ready, empty, g, pid_m * BLOCK_M, pid_n * BLOCK_N, (g % k_tiles) * BLOCK_K,
                   STAGES)


@gluon.jit
def _math_partition(a_desc, w_desc, a_s, w_s, ready, empty, acc_s, acc_ready, acc_empty, M, N, K,
                    HALF: gl.constexpr, WG: gl.constexpr, NUM_SMS: gl.constexpr, STAGES: gl.constexpr,
                    GROUP_M: gl.constexpr):
    """Math warpgroup WG: rows [WG * HALF, (WG + 1) * HALF) of every tile. One wgmma group stays in flight: once a
    step's group is issued, the previous one is waited for and its stage released. Warpgroup 0 also issues the TMA
    loads, STAGES - 1 steps ahead (into the next tile while the current one finishes). The finished sums go to the
    shared buffer once the epilogue warpgroup has read the previous tile out of it."""
    BLOCK_N: gl.constexpr = w_s.shape[1]
    BLOCK_K: gl.constexpr = w_s.shape[2]
    BLOCK_M: gl.constexpr = 2 * HALF
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                          instr_shape=[16, BLOCK_N, 16])
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    k_tiles = gl.cdiv(K, BLOCK_K)
    if WG == 0:
        for g in range(STAGES - 1):
            _load_step(a_desc, w_desc, a_s, w_s, ready, empty, g, k_tiles, num_tiles, M, N, NUM_SMS, STAGES, GROUP_M)
    acc = gl.zeros([HALF, BLOCK_N], gl.float32, acc_layout)
    step = 0
    t = 0
    for tile in range(gl.program_id(0), num_tiles, NUM_SMS):
        for ki in range(k_tiles):
            s = step % STAGES
            mbarrier.wait(ready.index(s), (step // STAGES) & 1)
            acc = warpgroup_mma(a_s.index(s).slice(WG * HALF, HALF), w_s.index(s).permute((1, 0)), acc,
                                use_acc=ki > 0, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            if ki > 0:  # the previous step's wgmmas are done: its stage may be refilled
                mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1)
            if WG == 0:  # that stage's next round (the previous tile's last step released it before this tile)
                _load_step(a_desc, w_desc, a_s, w_s, ready, empty, step + STAGES - 1, k_tiles, num_tiles, M, N,
                           NUM_SMS, STAGES, GROUP_M)
            step += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1)

        hand_over(acc, acc_s, acc_ready, acc_empty, WG, t)
        t += 1


@gluon.jit
def _epilogue_partition(acc_s, acc_ready, acc_empty, stat_s, stats_ptr, colsum_ptr, bias_ptr, out_ptr, M, N, K, eps,
                        stride_om, ROW_STATS: gl.constexpr, HAS_BIAS: gl.constexpr, ACTIVATION: gl.constexpr,
                        SLOT: gl.constexpr, SLOTS: gl.constexpr, NUM_SMS: gl.constexpr, GROUP_M: gl.constexpr):
    """The epilogue warpgroup (the default partition): each tile's fp32 sums from the buffer, a 64x64 slice at a
    time, through gemm_tma.py's epilogue (the folded LayerNorm with the rows' statistics, bias, activation, one cast)
    while the math warpgroups run the next tile. The rows' statistics are merged before the tile is ready; each
    slice's colsum and bias (8 columns a thread; all 256 would hold 64 registers) are loaded with the slice."""
    HALF: gl.constexpr = acc_s.shape[1]
    BLOCK_M: gl.constexpr = 2 * HALF
    BLOCK_N: gl.constexpr = acc_s.shape[2]
    # 8 contiguous columns a thread: 16-byte stores of the 16-bit output
    out_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // EPI_COLS, EPI_COLS // 8], [4, 1], [1, 0])
    # one row a thread for the statistics (the tile layout's row vectors repeat each row on 8 threads, and merging
    # the partials takes three loads and five instructions a row and slot); stat_s hands them to the tile layout
    row_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    row_vector: gl.constexpr = gl.SliceLayout(1, out_layout)
    SLICES: gl.constexpr = BLOCK_N // EPI_COLS
    t = 0
    for tile in range(gl.program_id(0), num_tiles, NUM_SMS):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        if ROW_STATS:
            for half in gl.static_range(2):
                rows_1 = pid_m * BLOCK_M + half * HALF + gl.arange(0, HALF, row_layout)
                mean_1, rstd_1 = row_moments(stats_ptr, rows_1, M, K, eps, ROW_STATS, SLOT, SLOTS, True)
                stat_s.index(half).store(mean_1)
                stat_s.index(2 + half).store(rstd_1)
        mbarrier.wait(acc_ready, t & 1)
        for half in range(2):
            rows = pid_m * BLOCK_M + half * HALF + gl.arange(0, HALF, row_vector)
            rows64 = rows.to(gl.int64)  # M·N passes 2^31 (FC1 of about 2,700 L/16 images)
            for c in gl.static_range(SLICES):  # the half's 64-column slices (a slice's start is a constant)
                acc = acc_s.index(half).slice(c * EPI_COLS, EPI_COLS, dim=1).load(out_layout)
                if c == SLICES - 1:
                    if half == 1:
                        mbarrier.arrive(acc_empty, count=1)  # the buffer is read: the math warpgroups may refill it
                cols = pid_n * BLOCK_N + c * EPI_COLS + gl.arange(0, EPI_COLS, gl.SliceLayout(0, out_layout))
                mask_n = cols < N
                if ROW_STATS:  # gemm.epilogue_math's steps, the rows' statistics prepared before the tile was ready
                    acc = fold_rows(acc, stat_s.index(half).load(row_vector),
                                    stat_s.index(2 + half).load(row_vector),
                                    gl.load(colsum_ptr + cols, mask=mask_n, other=0.0))
                if HAS_BIAS:
                    acc += gl.load(bias_ptr + cols, mask=mask_n, other=0.0).to(gl.float32)[None, :]
                acc = apply_activation(acc, ACTIVATION, out_ptr.dtype.element_ty)
                mask = (rows[:, None] < M) & mask_n[None, :]
                gl.store(out_ptr + rows64[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                         mask=mask)
        t += 1


@gluon.jit(do_not_specialize=["M"])  # M = B·tokens: one compile for every batch size
def ws_gemm_kernel(
    a_desc,  # (M, K) 16-bit activations: a host descriptor with a (BLOCK_M, BLOCK_K) box
    w_desc,  # (N, K) weight in nn.Linear layout (LayerNorm-folded when ROW_STATS): a (BLOCK_N, BLOCK_K) box
    stats_ptr,  # A's row statistics, fp32: (M, 2) (mean, rstd) if ROW_STATS 1; (M, 3, SLOTS) partials if 2
    colsum_ptr,  # (N,) fp32 column sums of the folded weight; read only when ROW_STATS
    bias_ptr,  # (N,) bias (activation dtype, or fp32 when folded); read only when HAS_BIAS
    out_ptr,  # (M, N) output in A's dtype, unit column stride
    M,  # rows (tokens over the whole batch)
    N,  # output features
    K,  # input features
    eps,  # the folded LayerNorm's epsilon; read only when ROW_STATS 2 (merged partials)
    stride_om,  # output row stride
    ROW_STATS: gl.constexpr,  # folded LayerNorm epilogue rstd * (acc - mean * colsum): 0 off, 1 stats rows, 2 partials
    HAS_BIAS: gl.constexpr,  # add bias in the epilogue
    ACTIVATION: gl.constexpr,  # gemm.apply_activation's codes (a GELU: `takes`)
    SLOT: gl.constexpr,  # columns per partial-statistics slot (ln_fold.stats_slot)
    SLOTS: gl.constexpr,  # cdiv(K, SLOT): the partial statistics' slots per row of A (ROW_STATS 2)
    NUM_SMS: gl.constexpr,  # programs: one per SM, each walking tiles NUM_SMS apart
    STAGES: gl.constexpr,  # the ring of (A, W) stages
    GROUP_M: gl.constexpr,  # row tiles per L2 group
):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    gl.static_assert(BLOCK_M == 128, "two math warpgroups of 64 rows")
    a_s, w_s, ready, empty = allocate_ring(a_desc, w_desc, STAGES)
    acc_s, acc_ready, acc_empty = allocate_hand_over(BLOCK_M, BLOCK_N)
    # the epilogue's row statistics (mean of each half, then rstd of each half), read back in the tile's layout
    stat_s = gl.allocate_shared_memory(gl.float32, [4, BLOCK_M // 2], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    fence_async_shared()  # the initialized barriers, before the TMA unit signals them
    HALF: gl.constexpr = BLOCK_M // 2
    gl.warp_specialize([
        (_epilogue_partition, (acc_s, acc_ready, acc_empty, stat_s, stats_ptr, colsum_ptr, bias_ptr, out_ptr, M, N, K,
                               eps, stride_om, ROW_STATS, HAS_BIAS, ACTIVATION, SLOT, SLOTS, NUM_SMS, GROUP_M)),
        (_math_partition, (a_desc, w_desc, a_s, w_s, ready, empty, acc_s, acc_ready, acc_empty, M, N, K, HALF, 0,
                           NUM_SMS, STAGES, GROUP_M)),
        (_math_partition, (a_desc, w_desc, a_s, w_s, ready, empty, acc_s, acc_ready, acc_empty, M, N, K, HALF, 1,
                           NUM_SMS, STAGES, GROUP_M)),
    ], [MATH_WARPS, MATH_WARPS], [MATH_REGS, MATH_REGS])


def takes(a, N: int, activation: int, residual=None, stats_out=None) -> bool:
    """Whether this engine runs a launch that select_engine gave to "ws": 16-bit, a GELU epilogue (FC1; the
    launches without an activation have lighter epilogues, which gemm_tma.py runs on the same tile with little to
    hide: benchmarks/NOTES.md, "A warp-specialized 16-bit FC1"), and at least MIN_WAVES output tiles per SM (with
    fewer, gemm_tma.py's smaller tiles or split-K waste less of the last wave)."""
    bm, bn = TILE[:2]
    return (a.dtype in DTYPES and activation not in (0, SWIGLU) and residual is None and stats_out is None
            and triton.cdiv(a.shape[0], bm) * triton.cdiv(N, bn) >= MIN_WAVES * num_sms(a.device))


def launch_ws_gemm(a, weight, bias, out, *, activation=0, stats=None, colsum=None, eps=0.0):
    """gemm.launch_fused_gemm's contract, without a residual or statistics out, for the launches `takes` accepts, on
    operands select_engine gave to "ws" (an sm_90 GPU, TMA-addressable)."""
    bm, bn, bk, stages, group_m = TILE
    M, K = a.shape
    N = weight.shape[0]
    sms = num_sms(a.device)
    grid = (min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn)),)
    ws_gemm_kernel[grid](
        TensorDescriptor.from_tensor(a, [bm, bk], A_LAYOUTS[a.dtype]),
        TensorDescriptor.from_tensor(weight, [bn, bk], W_LAYOUTS[a.dtype]),
        stats if stats is not None else out, colsum if colsum is not None else out,
        bias if bias is not None else out, out, M, N, K, float(eps), out.stride(0),
        ROW_STATS=row_stats_switch(stats), HAS_BIAS=bias is not None, ACTIVATION=activation, SLOT=stats_slot(),
        SLOTS=slots_arg(stats, K), NUM_SMS=sms, STAGES=stages, GROUP_M=group_m, num_warps=MATH_WARPS.value,
    )  # fmt: skip
    return out


# ---- AOT ------------------------------------------------------------------------------------------------------------
def aot_variants(exhaustive: bool = False):
    """FC1 in bf16: the folded LayerNorm merging the out-projection's partial statistics, bias, exact GELU (also
    through libdevice's erf, VITFAST_GELU=libdevice), and reading row_stats' rows (VITFAST_LN_PARTIALS=0); with
    `exhaustive`, fp16 and the tanh and quick GELUs. Gluon's warp specialization and TMA: sm_90 only."""
    out = [_variant(torch.bfloat16, 2, 1), _variant(torch.bfloat16, 2, GELU_LIBDEVICE), _variant(torch.bfloat16, 1, 1)]
    if exhaustive:
        out += [_variant(torch.float16, 2, 1)] + [_variant(torch.bfloat16, 2, act) for act in (2, 3)]
    return out


def _variant(dtype, row_stats, activation, num_sms=132):
    bm, bn, bk, stages, group_m = TILE
    elem = TL_SIG[dtype]
    sig = {"a_desc": f"tensordesc<{elem}[{bm},{bk}],{A_LAYOUTS[dtype]!r}>",
           "w_desc": f"tensordesc<{elem}[{bn},{bk}],{W_LAYOUTS[dtype]!r}>",
           "stats_ptr": "*fp32", "colsum_ptr": "*fp32", "bias_ptr": "*fp32", "out_ptr": "*" + elem, "M": "i32",
           "N": "i32", "K": "i32", "eps": "fp32", "stride_om": "i32"}
    constexprs = {"ROW_STATS": row_stats, "HAS_BIAS": True, "ACTIVATION": activation, "SLOT": STATS_SLOT,
                  "SLOTS": AOT_SLOTS if row_stats == 2 else 1, "NUM_SMS": num_sms, "STAGES": stages,
                  "GROUP_M": group_m}
    for name in constexprs:
        sig[name] = "constexpr"
    return {"fn": ws_gemm_kernel, "gluon": True, "signature": sig, "constexprs": constexprs,
            "tile": f"{bm}x{bn}x{bk} (12 warps)",
            "vit": lambda cfg, batch: [],  # a switch (VITFAST_GEMM_ENGINE=ws): no preset runs it by default
            "num_warps": MATH_WARPS.value, "num_stages": 1, "min_cc": 90, "op": "ln_linear", "main_loop": "gemm",
            "programs_per_sm": 1, "tables": ("hopper",), "divisible": ("N", "K", "stride_om")}
