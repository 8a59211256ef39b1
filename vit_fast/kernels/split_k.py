"""Split-K for GEMMs whose output tiles fill few SMs: the batch-1 launches.

Why: at batch 1 (ViT-B/16: 197 rows) the out-projection's and FC2's output is 24 tiles of 64x128 on a 132-SM H100,
each walking all of K (FC2: 48 steps of 64), so four fifths of the GPU idles while 24 SMs stream the weights. With
K split S ways a launch runs S times the programs, each over K / S. A program stores its fp32 partial tile to a
workspace and counts itself in on the tile's counter; the one that arrives last (the counter says so) sets the
counter back to zero, sums the partials in a fixed order and runs the tile's epilogue as before (LayerNorm fold,
bias, activation, residual, partial statistics). One launch, no zeroed output, no reduction kernel (CUTLASS's serial
split-K fix-up), and the same bits every run.

How many splits (`split_count`): a launch splits only when its tiles fill at most half the SMs, into the most parts
that keep tiles x parts within the SMs, every part at least MIN_K_STEPS steps of K, and none empty. Tiles whose fp32
accumulator exceeds 64 registers a thread do not split (the fix-up holds a partial beside the accumulator).
`VITFAST_SPLIT_K` overrides: 1 never splits (the code before split-K, for comparison); 2-4 ask for that many parts on
every launch whose tile can split and whose partials take at most FORCED_FLOATS, as K's steps allow (tests use it at
interpreter sizes).

Counters (`counters`): one int32 per tile, in a per-device buffer that every launch leaves at zero, so no launch
zeroes it; each launch takes the next range of it (round robin). Launches on one stream are ordered, so sharing is
safe there; split launches running at the same time on different streams are not supported (after the round robin
wraps, or against a captured graph's range, they could share counters). The buffer is allocated (zeroed) outside
CUDA-graph capture; a launch captured before any eager launch on that device does not split (a buffer first
allocated inside a capture would be zeroed only by the graph's replays). The workspace is an ordinary per-launch
allocation (its content needs no initial value).
"""
import functools
import threading

import torch
import triton
import triton.language as tl

from ._common import SPLIT_ENV, cdiv, check, switch_value

MIN_K_STEPS = 4  # steps of K per part at least: the pipeline's prologue and the fix-up amortized
MAX_ACC_REGS = 64  # fp32 accumulator registers a thread (BLOCK_M * BLOCK_N / threads) a splitting tile may hold
FORCED_FLOATS = 1 << 24  # a forced split (VITFAST_SPLIT_K=2-4) only where its partials take at most this (64 MB)
COUNTERS = 1 << 15  # counters per device (128 KB): many launches' worth of tiles before the round robin wraps
ALIGN = 4  # counter ranges start at multiples of 4 (16 bytes): one alignment, so one compiled kernel, for all

_buffers = {}  # (device type, index) -> [counters (int32), next offset]
_lock = threading.Lock()  # serving threads launch concurrently: one range each


def split_setting() -> str:
    """VITFAST_SPLIT_K, read at each launch: "auto" (default), or a forced part count "1" to "4"."""
    return switch_value(SPLIT_ENV)


def split_count(tiles: int, k_steps: int, programs: int, acc_regs: int, setting: str = "auto",
                tile_elems: int = 0) -> int:
    """Parts of K for a launch of `tiles` output tiles of `tile_elems` elements, `k_steps` steps of K each, on
    `programs` concurrent programs (SMs x programs per SM), with `acc_regs` accumulator registers a thread; never an
    empty part."""
    if setting == "1" or acc_regs > MAX_ACC_REGS or k_steps < 2:
        return 1
    if setting == "auto":
        if 2 * tiles > programs:
            return 1
        parts = min(programs // tiles, k_steps // MIN_K_STEPS)
    else:
        parts = min(int(setting), k_steps)
        if tiles * parts * tile_elems > FORCED_FLOATS:
            return 1
    if parts < 2:
        return 1
    return cdiv(k_steps, cdiv(k_steps, parts))  # S parts of cdiv(k_steps, S) steps: the last part not empty


def acc_registers(bm: int, bn: int, warps: int) -> int:
    """fp32 accumulator registers a thread holds for a BLOCK_M x BLOCK_N tile on `warps` warps."""
    return bm * bn // (32 * warps)


def config_parts(args, programs: int) -> int:
    """SPLIT_K for the config a launch runs (a triton.heuristics rule over the kernel's arguments and the config):
    split_count of its tiles, or 1 when the launcher's split_mode is 0. A split checks that the launcher's workspace
    and counters cover it (launch_operands sizes them over the table's rows: a config from elsewhere would not)."""
    mode = args["split_mode"]
    if mode == 0:
        return 1
    bm, bn = args["BLOCK_M"], args["BLOCK_N"]
    tiles = cdiv(args["M"], bm) * cdiv(args["N"], bn)
    parts = split_count(tiles, cdiv(args["K"], args["BLOCK_K"]), programs,
                        acc_registers(bm, bn, args["num_warps"]), "auto" if mode == 1 else str(mode), bm * bn)
    if parts > 1:
        ws, lock = args["ws_ptr"], args["lock_ptr"]
        check(ws is not None and lock is not None and ws.numel() >= tiles * parts * bm * bn
              and lock.numel() >= tiles, f"split-K launch of {tiles} {bm}x{bn} tiles in {parts} parts",
              f"{tiles * parts * bm * bn} workspace floats and {tiles} counters",
              (None if ws is None else ws.numel(), None if lock is None else lock.numel()))
    return parts


@functools.lru_cache(maxsize=4096)
def _plan(M: int, N: int, K: int, rows: tuple, setting: str):
    """(counters, workspace floats) a launch needs for whichever of `rows` ((BLOCK_M, BLOCK_N, BLOCK_K, warps,
    programs) each) the autotuner runs: the most tiles and partial-tile floats over the rows that split."""
    tiles_max = floats_max = 0
    for bm, bn, bk, warps, programs in rows:
        tiles = cdiv(M, bm) * cdiv(N, bn)
        parts = split_count(tiles, cdiv(K, bk), programs, acc_registers(bm, bn, warps), setting, bm * bn)
        if parts > 1:
            tiles_max = max(tiles_max, tiles)
            floats_max = max(floats_max, tiles * parts * bm * bn)
    return tiles_max, floats_max


def launch_operands(a: torch.Tensor, M: int, N: int, K: int, rows, two_accumulators: bool = False):
    """(split_mode, workspace, counters) for a GEMM launch whose autotuner can run any of `rows` ((BLOCK_M,
    BLOCK_N, BLOCK_K, warps, programs) each): split_mode 0 and two Nones when no row would split, the setting is 1,
    the kernel keeps two accumulators (SwiGLU), or no counters exist yet inside a CUDA-graph capture."""
    setting = split_setting()
    if two_accumulators or setting == "1":
        return 0, None, None
    tiles, floats = _plan(M, N, K, tuple(rows), setting)
    lock = counters(a.device, tiles) if tiles else None
    if lock is None:
        return 0, None, None
    mode = 1 if setting == "auto" else int(setting)
    return mode, torch.empty(floats, dtype=torch.float32, device=a.device), lock


def counters(device: torch.device, tiles: int):
    """`tiles` zeroed int32 counters for one launch on `device` (a view into the device's buffer, the next range
    round robin, 16-byte aligned), or None inside a CUDA-graph capture before any eager launch allocated the buffer
    (no split)."""
    cuda = device.type == "cuda"
    key = (device.type, device.index if device.index is not None or not cuda else torch.cuda.current_device())
    check(tiles <= COUNTERS, "split-K launch", f"at most {COUNTERS} tiles", tiles)
    with _lock:
        entry = _buffers.get(key)
        if entry is None:
            if cuda and torch.cuda.is_current_stream_capturing():
                return None
            entry = _buffers[key] = [torch.zeros(COUNTERS, dtype=torch.int32, device=device), 0]
        start = entry[1] if entry[1] + tiles <= COUNTERS else 0
        entry[1] = start + cdiv(tiles, ALIGN) * ALIGN
        return entry[0][start:start + tiles]


@triton.jit
def split_k_fixup(acc, ws_ptr, lock_ptr, tile, part, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  SPLIT_K: tl.constexpr):
    """Store part `part` of `tile`'s fp32 accumulator to the workspace, count it in on the tile's counter; returns
    (the parts' sum, whether this program arrived last and so runs the epilogue). The last program sums every part
    from the workspace, its own too, in a fixed order: the result does not depend on which program arrived last, so a
    launch gives the same bits every time. It resets the counter to zero for the next launch first."""
    offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tile_ws = ws_ptr + tile.to(tl.int64) * (SPLIT_K * BLOCK_M * BLOCK_N)
    tl.store(tile_ws + part * (BLOCK_M * BLOCK_N) + offs, acc)
    tl.debug_barrier()  # every thread's partial stored before the count releases it (CUTLASS's semaphore order)
    arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel", scope="gpu")
    last = arrived == SPLIT_K - 1
    if last:
        # every part is in and nothing else touches the counter this launch: a plain store resets it, and the
        # reads below wait on no second atomic (an exchange's answer was one more L2 round trip on their path)
        tl.store(lock_ptr + tile, 0)
        # zero at run time (the last part's count): Triton's passes cannot prove it (LLVM folds it later, inside
        # this branch). 2 * zero offsets the reads below, so they are 8-byte vectors, not 16 (with 16-byte reads
        # triton 3.6 spilled 24-48 B in the writers, inside the loop; with 4-byte ones, an odd offset, the fix-up
        # issued four times the loads). As the loop's bound it cost SPLIT_K = 2 no spill, where the constant bound
        # spilled 328 B (the loop's one trip taken apart before the layouts were set)
        zero = arrived - (SPLIT_K - 1)
        tile_ws += 2 * zero
        # The sum starts from zeros in the accumulator's register layout, selected on zero (a fresh zero tensor
        # takes the loads' layout, and the epilogue spilled 0.3-2 KB on sm_90 converting to it; acc * 0.0 was NaN
        # where this program's own partial overflowed, so the result depended on which part came last). Partials
        # are read two at a time and added to each other in the loads' layout before the one conversion to the
        # accumulator's: both reads in flight together, so ceil(SPLIT_K / 2) round trips to L2, not SPLIT_K (added
        # to the accumulator one by one, the second read waited for the first's conversion). An odd count's last
        # pair reads zeros for its missing second part (masked: no traffic); a separate read of the last part was
        # scheduled beside the pair's and spilled 600 B. The order is fixed, ((p0 + p1) + (p2 + p3)) + (p4 + 0):
        # the same bits every launch, whichever part came last. .cg reads L2, where the other SMs' partials are
        acc = tl.where(zero == 0, 0.0, acc)
        for p in tl.range(0, SPLIT_K + zero, 2, num_stages=1):
            pair = tl.load(tile_ws + p * (BLOCK_M * BLOCK_N) + offs, cache_modifier=".cg")
            pair += tl.load(tile_ws + (p + 1) * (BLOCK_M * BLOCK_N) + offs, mask=p + 1 < SPLIT_K, other=0.0,
                            cache_modifier=".cg")
            acc += pair
    return acc, last


def aot_variants(exhaustive: bool = False):
    """None of its own: split_k_fixup is a helper compiled into both engines' split variants (SPLIT_K > 1 in
    gemm.gemm_aot_variants and gemm_tma.tma_aot_variants), which the report and the gate list per op."""
    return []
