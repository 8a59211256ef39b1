"""A warp-specialized 16-bit GEMM for Hopper (sm_90), written in Gluon: each tile's epilogue beside the next tile's
wgmmas instead of after them.

Why a second 16-bit engine: on gemm_tma.py a program runs its epilogue after its main loop, and nothing on the SM
fills the tensor cores meanwhile. FC1 (folded LayerNorm, bias, exact GELU) and FC2 do the same FLOPs; at ViT-B/16
batch 256 FC1 took 0.570 ms a call against FC2's 0.374 on an H200 (third lease) and 0.490 against 0.394 on an H100
with the fitted GELU (fourth lease; benchmarks/NOTES.md): the difference is FC1's epilogue. The residual GEMMs'
epilogue (a residual tile, the output rows' partial statistics) costs about 6-7 us a 128x256 tile on the H100 too,
14 % of a ViT-L/16 block. Two co-resident programs (gemm_tma.PER_SM) did not hide it. Triton's own warp
specialization does not run on sm_90 with TMA stores in triton 3.6 (triton-lang/triton#11587); Gluon
(`triton.experimental.gluon`, in triton 3.6 and 3.9) builds the layout explicitly, as gemm_fp8_ws.py does for FP8
(what they share: _gluon_ws.py).

The tile is gemm_tma.py's best for these GEMMs, 128x256 (the third lease timed one 128x128 program 8-11 % slower on
the same launches): two math warpgroups take 64 rows each, one 64x256 wgmma chain with 128 fp32 sums a thread,
keep one wgmma group in flight and release each stage through an mbarrier; warpgroup 0 also issues the TMA loads of
4 stages of (A, W) 128x256x32 boxes, 3 steps ahead. No TMA warp: with a fourth warpgroup for it every thread would
start at 128 registers, under the 154 the 64x256 wgmma needs; three warpgroups start at 168. At the end of a tile
the math warpgroups hand the fp32 sums to a 128 KB shared buffer, and the epilogue warpgroup runs gemm_tma.py's
epilogue arithmetic from it, a 64x64 slice at a time (the folded LayerNorm with the rows' statistics merged from
the partials or read from row_stats, bias, GELU, residual, one cast, plain 16-byte global stores, the stored rows'
partial statistics slot by slot) while they run the next tile. The shared memory is spent, so the residual comes
through registers: plain 16-byte loads one slice ahead, the tile's first slice issued before the tile is ready.

What it runs (VITFAST_GEMM_ENGINE=ws, opt-in until a GPU lease has timed it: the interpreter cannot run Gluon): the
bf16 and fp16 GEMMs of at least MIN_WAVES waves of output tiles whose last wave is nearly full (`takes`): at
ViT-B/16 batch 256 and ViT-L/16 batch 256 all four of a block (QKV, the out-projection, FC1, FC2), at ViT-H/14 batch
64 too; at ViT-B/16 batch 64 QKV and FC1. SwiGLU (two accumulators), fp32 operands and the launches of fewer or
ragged waves stay on gemm_tma.py (whose smaller tiles and split-K waste less of a last, partly filled wave). One
tile, not autotuned.
"""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ._common import GELU_LIBDEVICE, SWIGLU, TL_SIG, cdiv, num_sms
from ._gluon_ws import MATH_WARPS, allocate_hand_over, allocate_ring, fill_stage, hand_over, load_rows
from .gemm import AOT_SLOTS, apply_activation, fold_rows, grouped_tile, row_stats_switch, slot_arg, slots_arg
from .ln_fold import STATS_SLOT, row_moments, tile_moments

# (BLOCK_M, BLOCK_N, BLOCK_K, STAGES, GROUP_M): 64 rows a math warpgroup, each one 64x256 wgmma chain; 4 stages of
# 24 KB and the 128 KB fp32 buffer: 225 KB of the SM's 227 KB (BLOCK_K 32 so that four stages fit beside it)
TILE = (128, 256, 32, 4, 8)
# registers a thread: three warpgroups (no TMA warp: a fourth would cap every thread at 128 at launch, under the 154
# a 64x256 wgmma with its 128 fp32 sums needs) share the SM's 64 K, 168 each
MATH_REGS = gl.constexpr(168)
# columns of the tile the epilogue takes from the buffer at a time (a 64x64 fp32 slice: 32 values a thread)
EPI_COLS = gl.constexpr(64)
DTYPES = (torch.bfloat16, torch.float16)
# waves of output tiles (tiles per SM) a launch needs to come here: each program's epilogue hides behind its next
# tile's main loop only, so one or two tiles a program gain little
MIN_WAVES = 4
# and the share of the waves' program slots the last, partly filled wave leaves idle, at most (8 or more waves always
# pass: at most 1/9). gemm_tma.py's smaller tiles and split-K waste less where it is more.
MAX_IDLE = 1 / 9
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
def _merge_slice(y, mask_n, col0, N, n_a, mean_a, m2_a, EPI_COLS: gl.constexpr):
    """A slot's running (count, mean, M2) per row with one more slice y (fp32, the values as stored; columns col0 ..,
    mask_n: those < N): Chan's pairwise merge; the counts are the same for every row, so its factors are scalars
    (no division a row)."""
    n_b, mean_b, m2_b = tile_moments(y, mask_n, col0, N, EPI_COLS)
    n = n_a + n_b
    delta = mean_b - mean_a
    inv = 1.0 / gl.maximum(n, 1.0)
    return n, mean_a + delta * (n_b * inv), m2_a + m2_b + delta * delta * (n_a * n_b * inv)


@gluon.jit
def _epilogue_partition(acc_s, acc_ready, acc_empty, stat_s, stats_ptr, colsum_ptr, bias_ptr, res_ptr, out_ptr,
                        part_ptr, M, N, K, eps, stride_rm, stride_om, ROW_STATS: gl.constexpr, HAS_BIAS: gl.constexpr,
                        ACTIVATION: gl.constexpr, HAS_RESIDUAL: gl.constexpr, WRITE_STATS: gl.constexpr,
                        SLOT: gl.constexpr, SLOTS: gl.constexpr, NUM_SMS: gl.constexpr, GROUP_M: gl.constexpr):
    """The epilogue warpgroup (the default partition): each tile's fp32 sums from the buffer, a 64x64 slice at a
    time, through gemm_tma.py's epilogue (the folded LayerNorm with the rows' statistics, bias, activation, residual,
    one cast, the stored rows' partial statistics) while the math warpgroups run the next tile. The rows' statistics
    are merged, and the tile's first residual slice loaded, before the tile is ready; each slice's colsum and bias
    (8 columns a thread; all 256 would hold 64 registers) are loaded with the slice, its residual one slice ahead."""
    HALF: gl.constexpr = acc_s.shape[1]
    BLOCK_M: gl.constexpr = 2 * HALF
    BLOCK_N: gl.constexpr = acc_s.shape[2]
    gl.static_assert(not WRITE_STATS or (SLOT % EPI_COLS == 0 and BLOCK_N % SLOT == 0),
                     "partial statistics need slots of whole slices")
    # 8 contiguous columns a thread: 16-byte stores of the 16-bit output (and loads of the residual)
    out_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // EPI_COLS, EPI_COLS // 8], [4, 1], [1, 0])
    # one row a thread for the statistics (the tile layout's row vectors repeat each row on 8 threads, and merging
    # the partials takes three loads and five instructions a row and slot); stat_s hands them to the tile layout
    row_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    row_vector: gl.constexpr = gl.SliceLayout(1, out_layout)
    col_vector: gl.constexpr = gl.SliceLayout(0, out_layout)
    SLICES: gl.constexpr = BLOCK_N // EPI_COLS
    SLOT_SLICES: gl.constexpr = SLOT // EPI_COLS
    nslot = gl.cdiv(N, SLOT)
    t = 0
    for tile in range(gl.program_id(0), num_tiles, NUM_SMS):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        row_end = pid_m * BLOCK_M + BLOCK_M
        if ROW_STATS:
            for half in gl.static_range(2):
                rows_1 = pid_m * BLOCK_M + half * HALF + gl.arange(0, HALF, row_layout)
                mean_1, rstd_1 = row_moments(stats_ptr, rows_1, M, K, eps, ROW_STATS, SLOT, SLOTS, True)
                stat_s.index(half).store(mean_1)
                stat_s.index(2 + half).store(rstd_1)
        if HAS_RESIDUAL:  # the tile's first slice, in flight while the tile's main loop ends
            rows_0 = pid_m * BLOCK_M + gl.arange(0, HALF, row_vector)
            cols_0 = pid_n * BLOCK_N + gl.arange(0, EPI_COLS, col_vector)
            res_next = load_rows(res_ptr, rows_0, cols_0, rows_0 < M, cols_0 < N, stride_rm)
        mbarrier.wait(acc_ready, t & 1)
        for half in range(2):
            rows = pid_m * BLOCK_M + half * HALF + gl.arange(0, HALF, row_vector)
            rows64 = rows.to(gl.int64)  # M·N passes 2^31 (FC1 of about 2,700 L/16 images)
            n_s = 0.0  # the current slot's running (count, mean, M2) per row
            mean_s = gl.zeros([HALF], gl.float32, row_vector)
            m2_s = gl.zeros([HALF], gl.float32, row_vector)
            for c in gl.static_range(SLICES):  # the half's 64-column slices (a slice's start is a constant)
                acc = acc_s.index(half).slice(c * EPI_COLS, EPI_COLS, dim=1).load(out_layout)
                if c == SLICES - 1:
                    if half == 1:
                        mbarrier.arrive(acc_empty, count=1)  # the buffer is read: the math warpgroups may refill it
                col0 = pid_n * BLOCK_N + c * EPI_COLS
                cols = col0 + gl.arange(0, EPI_COLS, col_vector)
                mask_n = cols < N
                if HAS_RESIDUAL:  # this slice's residual arrived; the next slice's (or next half's first) goes out
                    res = res_next
                    if c + 1 < SLICES:
                        res_next = load_rows(res_ptr, rows, cols + EPI_COLS, rows < M, cols + EPI_COLS < N,
                                             stride_rm)
                    else:  # rows past the tile (after its second half): nothing loaded
                        first = cols - (SLICES - 1) * EPI_COLS
                        res_next = load_rows(res_ptr, rows + HALF, first, (rows + HALF < M) & (rows + HALF < row_end),
                                             first < N, stride_rm)
                if ROW_STATS:  # gemm.epilogue_math's steps, the rows' statistics prepared before the tile was ready
                    acc = fold_rows(acc, stat_s.index(half).load(row_vector),
                                    stat_s.index(2 + half).load(row_vector),
                                    gl.load(colsum_ptr + cols, mask=mask_n, other=0.0))
                if HAS_BIAS:
                    acc += gl.load(bias_ptr + cols, mask=mask_n, other=0.0).to(gl.float32)[None, :]
                acc = apply_activation(acc, ACTIVATION, out_ptr.dtype.element_ty)
                if HAS_RESIDUAL:  # after the activation, as gemm_tma.py adds it
                    acc += res.to(gl.float32)
                y = acc.to(out_ptr.dtype.element_ty)
                mask = (rows[:, None] < M) & mask_n[None, :]
                gl.store(out_ptr + rows64[:, None] * stride_om + cols[None, :], y, mask=mask)
                if WRITE_STATS:  # ln_fold.store_partials' (count, mean, M2) of each SLOT-wide slot, slice by slice
                    n_s, mean_s, m2_s = _merge_slice(y.to(gl.float32), mask_n, col0, N, n_s, mean_s, m2_s, EPI_COLS)
                    if c % SLOT_SLICES == SLOT_SLICES - 1:
                        slot = (col0 // SLOT) + gl.zeros([HALF], gl.int32, row_vector)
                        ptrs = part_ptr + rows64 * (3 * nslot) + slot
                        ok = (rows < M) & (slot < nslot)
                        gl.store(ptrs, gl.zeros([HALF], gl.float32, row_vector) + n_s, mask=ok)
                        gl.store(ptrs + nslot, mean_s, mask=ok)
                        gl.store(ptrs + 2 * nslot, m2_s, mask=ok)
                        n_s = 0.0
                        mean_s = gl.zeros([HALF], gl.float32, row_vector)
                        m2_s = gl.zeros([HALF], gl.float32, row_vector)
        t += 1


@gluon.jit(do_not_specialize=["M"])  # M = B·tokens: one compile for every batch size
def ws_gemm_kernel(
    a_desc,  # (M, K) 16-bit activations: a host descriptor with a (BLOCK_M, BLOCK_K) box
    w_desc,  # (N, K) weight in nn.Linear layout (LayerNorm-folded when ROW_STATS): a (BLOCK_N, BLOCK_K) box
    stats_ptr,  # A's row statistics, fp32: (M, 2) (mean, rstd) if ROW_STATS 1; (M, 3, SLOTS) partials if 2
    colsum_ptr,  # (N,) fp32 column sums of the folded weight; read only when ROW_STATS
    bias_ptr,  # (N,) bias (activation dtype, or fp32 when folded); read only when HAS_BIAS
    res_ptr,  # (M, N) residual in the output dtype, unit column stride; read only when HAS_RESIDUAL
    out_ptr,  # (M, N) output in A's dtype, unit column stride
    part_ptr,  # (M, 3, cdiv(N, SLOT)) fp32 partial statistics of the output rows; written only when WRITE_STATS
    M,  # rows (tokens over the whole batch)
    N,  # output features
    K,  # input features
    eps,  # the folded LayerNorm's epsilon; read only when ROW_STATS 2 (merged partials)
    stride_rm,  # residual row stride
    stride_om,  # output row stride
    ROW_STATS: gl.constexpr,  # folded LayerNorm epilogue rstd * (acc - mean * colsum): 0 off, 1 stats rows, 2 partials
    HAS_BIAS: gl.constexpr,  # add bias in the epilogue
    ACTIVATION: gl.constexpr,  # gemm.apply_activation's codes (0 none; not SwiGLU: `takes`)
    HAS_RESIDUAL: gl.constexpr,  # add the residual after the activation
    WRITE_STATS: gl.constexpr,  # write the output rows' partial statistics (ln_fold.store_partials' layout)
    SLOT: gl.constexpr,  # columns per partial-statistics slot (ln_fold.stats_slot)
    SLOTS: gl.constexpr,  # the partial statistics' slots per row of A (ROW_STATS 2; the partials' shape)
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
        (_epilogue_partition, (acc_s, acc_ready, acc_empty, stat_s, stats_ptr, colsum_ptr, bias_ptr, res_ptr, out_ptr,
                               part_ptr, M, N, K, eps, stride_rm, stride_om, ROW_STATS, HAS_BIAS, ACTIVATION,
                               HAS_RESIDUAL, WRITE_STATS, SLOT, SLOTS, NUM_SMS, GROUP_M)),
        (_math_partition, (a_desc, w_desc, a_s, w_s, ready, empty, acc_s, acc_ready, acc_empty, M, N, K, HALF, 0,
                           NUM_SMS, STAGES, GROUP_M)),
        (_math_partition, (a_desc, w_desc, a_s, w_s, ready, empty, acc_s, acc_ready, acc_empty, M, N, K, HALF, 1,
                           NUM_SMS, STAGES, GROUP_M)),
    ], [MATH_WARPS, MATH_WARPS], [MATH_REGS, MATH_REGS])


def takes(a, N: int, activation: int) -> bool:
    """Whether this engine runs a launch that select_engine gave to "ws": 16-bit, not SwiGLU (two accumulators), at
    least MIN_WAVES waves of output tiles and at most MAX_IDLE of their slots idle in the last wave. That is every GEMM
    of a block at large batches: QKV (the folded LayerNorm), FC1 (and a GELU), the out-projection and FC2 (a residual
    and the output rows' partial statistics)."""
    bm, bn = TILE[:2]
    tiles, sms = cdiv(a.shape[0], bm) * cdiv(N, bn), num_sms(a.device)  # on every 16-bit launch under the switch
    waves = cdiv(tiles, sms)
    return (a.dtype in DTYPES and activation != SWIGLU and tiles >= MIN_WAVES * sms
            and waves * sms - tiles <= MAX_IDLE * waves * sms)


def launch_ws_gemm(a, weight, bias, out, *, activation=0, residual=None, stats=None, colsum=None, eps=0.0,
                   stats_out=None):
    """gemm.launch_fused_gemm's contract, for the launches `takes` accepts, on operands select_engine gave to "ws"
    (an sm_90 GPU, TMA-addressable)."""
    bm, bn, bk, stages, group_m = TILE
    M, K = a.shape
    N = weight.shape[0]
    sms = num_sms(a.device)
    grid = (min(sms, cdiv(M, bm) * cdiv(N, bn)),)
    ws_gemm_kernel[grid](
        TensorDescriptor.from_tensor(a, [bm, bk], A_LAYOUTS[a.dtype]),
        TensorDescriptor.from_tensor(weight, [bn, bk], W_LAYOUTS[a.dtype]),
        stats if stats is not None else out, colsum if colsum is not None else out,
        bias if bias is not None else out, residual if residual is not None else out, out,
        stats_out if stats_out is not None else out, M, N, K, float(eps),
        0 if residual is None else residual.stride(0), out.stride(0),
        ROW_STATS=row_stats_switch(stats), HAS_BIAS=bias is not None, ACTIVATION=activation,
        HAS_RESIDUAL=residual is not None, WRITE_STATS=stats_out is not None, SLOT=slot_arg(stats_out, M, N),
        SLOTS=slots_arg(stats), NUM_SMS=sms, STAGES=stages, GROUP_M=group_m, num_warps=MATH_WARPS.value,
    )  # fmt: skip
    return out


# ---- AOT ------------------------------------------------------------------------------------------------------------
# (ROW_STATS, ACTIVATION, HAS_RESIDUAL, WRITE_STATS, op) of a block's four launches, partial statistics on
QKV, FC1, RESIDUAL = (2, 0, False, False, "ln_qkv"), (2, 1, False, False, "ln_linear"), (0, 0, True, True,
                                                                                          "linear_residual")


def aot_variants(exhaustive: bool = False):
    """In bf16, what a ViT forward launches here: QKV (the folded LayerNorm merging the residual GEMM's partial
    statistics, or on row_stats' rows in the first block; bias); FC1 (the same and the exact GELU, also through
    libdevice's erf, VITFAST_GELU=libdevice, and on row_stats' rows, VITFAST_LN_PARTIALS=0); the out-projection and
    FC2 (bias, residual, the output rows' partial statistics; none after the last block). With `exhaustive`: fp16 and
    the tanh and quick GELUs. Gluon's warp specialization and TMA: sm_90 only."""
    bf16 = torch.bfloat16
    out = [_variant(bf16, *QKV), _variant(bf16, 1, 0, False, False, "ln_qkv"), _variant(bf16, *FC1),
           _variant(bf16, 2, GELU_LIBDEVICE, False, False, "ln_linear"),
           _variant(bf16, 1, 1, False, False, "ln_linear"), _variant(bf16, *RESIDUAL),
           _variant(bf16, 0, 0, True, False, "linear_residual")]
    if exhaustive:
        out += [_variant(torch.float16, *v) for v in (QKV, FC1, RESIDUAL)]
        out += [_variant(bf16, 2, act, False, False, "ln_linear") for act in (2, 3)]
    return out


def _variant(dtype, row_stats, activation, has_residual, write_stats, op, num_sms=132):
    bm, bn, bk, stages, group_m = TILE
    elem = TL_SIG[dtype]
    sig = {"a_desc": f"tensordesc<{elem}[{bm},{bk}],{A_LAYOUTS[dtype]!r}>",
           "w_desc": f"tensordesc<{elem}[{bn},{bk}],{W_LAYOUTS[dtype]!r}>",
           "stats_ptr": "*fp32", "colsum_ptr": "*fp32",
           "bias_ptr": "*fp32" if row_stats else "*" + elem,  # folded: fp32 (fold_layer_norm); else the weight's
           "res_ptr": "*" + elem, "out_ptr": "*" + elem, "part_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32",
           "eps": "fp32", "stride_rm": "i32", "stride_om": "i32"}
    constexprs = {"ROW_STATS": row_stats, "HAS_BIAS": True, "ACTIVATION": activation, "HAS_RESIDUAL": has_residual,
                  "WRITE_STATS": write_stats, "SLOT": STATS_SLOT, "SLOTS": AOT_SLOTS if row_stats == 2 else 1,
                  "NUM_SMS": num_sms, "STAGES": stages, "GROUP_M": group_m}
    for name in constexprs:
        sig[name] = "constexpr"
    return {"fn": ws_gemm_kernel, "gluon": True, "signature": sig, "constexprs": constexprs,
            "tile": f"{bm}x{bn}x{bk} (12 warps)",
            "vit": lambda cfg, batch: [],  # a switch (VITFAST_GEMM_ENGINE=ws): no preset runs it by default
            "num_warps": MATH_WARPS.value, "num_stages": 1, "min_cc": 90, "op": op, "main_loop": "gemm",
            "programs_per_sm": 1, "tables": ("hopper",), "divisible": ("N", "K", "stride_rm", "stride_om")}
