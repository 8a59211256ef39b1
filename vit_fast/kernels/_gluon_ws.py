"""What the two warp-specialized Gluon engines share (gemm_ws.py for 16-bit operands, gemm_fp8_ws.py for FP8): the
ring of (A, W) stages, the fp32 hand-over buffer, the partitions' sizes, and the TMA warp that fills the ring (the
FP8 engine's; the 16-bit engine's 64x256 chains need the registers a fourth warpgroup would take, so its first math
warpgroup issues the loads).

Both run DeepGEMM's layout on sm_90: one program per SM walking its tiles (gemm.grouped_tile's order, NUM_SMS apart);
two math warpgroups of 64 rows each that release a stage through an mbarrier as soon as their wgmmas have read it;
and the default partition, one warpgroup, running each finished tile's epilogue from a shared fp32 buffer while the
math warpgroups run the next tile. Imported only by those engines, so Gluon is loaded only where a switch asks for
one of them.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from .gemm import grouped_tile

# triton 3.9 renamed the TMA load; 3.6 (the GPU image) has only the old name
tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

MATH_WARPS = gl.constexpr(4)  # a warpgroup: each math partition, and the epilogue's (the default partition)
LOAD_WARPS = gl.constexpr(1)
LOAD_REGS = gl.constexpr(40)  # registers a thread of the TMA warp keeps after setmaxnreg
# the fp32 tiles the math warpgroups hand to the epilogue, one 64-row half each (swizzled: rows of 128 fp32 would
# share banks); the epilogue takes a half at a time in a loop, one copy of its code (unrolled over four 32-row
# parts it took 69 KB of instructions for the FP8 FC1, with one warp a scheduler to run them)
ACC_LAYOUT = gl.constexpr(gl.SwizzledSharedLayout(4, 1, 8, [1, 0]))


@gluon.jit
def load_partition(a_desc, w_desc, a_s, w_s, ready, empty, M, N, K, NUM_SMS: gl.constexpr, STAGES: gl.constexpr,
                   GROUP_M: gl.constexpr):
    """The TMA warp: every tile's K steps in the math partitions' order, into the ring of stages."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    k_tiles = gl.cdiv(K, BLOCK_K)
    step = 0
    for tile in range(gl.program_id(0), num_tiles, NUM_SMS):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        for ki in range(k_tiles):
            fill_stage(a_desc, w_desc, a_s, w_s, ready, empty, step, pid_m * BLOCK_M, pid_n * BLOCK_N, ki * BLOCK_K,
                       STAGES)
            step += 1


@gluon.jit
def fill_stage(a_desc, w_desc, a_s, w_s, ready, empty, step, off_m, off_n, k0, STAGES: gl.constexpr):
    """K step `step`'s (A, W) boxes at rows off_m / off_n and column k0 into stage step % STAGES, once both math
    warpgroups released the stage's previous round (a fresh barrier passes the first round's wait on parity 1)."""
    s = step % STAGES
    mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)
    mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + w_desc.block_type.nbytes)
    tma_load(a_desc, [off_m, k0], ready.index(s), a_s.index(s))
    tma_load(w_desc, [off_n, k0], ready.index(s), w_s.index(s))


@gluon.jit
def load_rows(ptr, rows, cols, row_ok, col_ok, stride_m):
    """The (rows, cols) tile of a row-major tensor with unit column stride, zero where a row or column is not ok:
    the epilogues' residual, through registers (their shared memory is spent)."""
    mask = row_ok[:, None] & col_ok[None, :]
    return gl.load(ptr + rows.to(gl.int64)[:, None] * stride_m + cols[None, :], mask=mask, other=0.0)


@gluon.jit
def allocate_ring(a_desc, w_desc, STAGES: gl.constexpr):
    """The ring of (A, W) stages in shared memory (the descriptors' boxes and layouts) and its barriers: `ready`, the
    TMA bytes of a stage landed (one arrival, the loading warp's expect); `empty`, both math warpgroups are done with
    it."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    a_s = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    w_s = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    return a_s, w_s, ready, empty


@gluon.jit
def allocate_hand_over(BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """The fp32 buffer a tile's sums go through (a 64-row half a math warpgroup) and its barriers: `acc_ready`, both
    halves are in; `acc_empty`, the epilogue has read them."""
    acc_s = gl.allocate_shared_memory(gl.float32, [2, BLOCK_M // 2, BLOCK_N], ACC_LAYOUT)
    acc_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    acc_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(acc_ready, count=2)
    mbarrier.init(acc_empty, count=1)
    return acc_s, acc_ready, acc_empty


@gluon.jit
def hand_over(acc, acc_s, acc_ready, acc_empty, WG: gl.constexpr, t):
    """Math warpgroup WG's sums of its t-th tile into its half of the buffer, once the epilogue has read the tile
    before (a fresh barrier passes the first wait, on parity 1)."""
    mbarrier.wait(acc_empty, (t & 1) ^ 1)
    acc_s.index(WG).store(acc)
    mbarrier.arrive(acc_ready, count=1)
