"""The persistent TMA GEMM engine for Hopper (sm_90): out = epilogue(A @ W^T) with the pointer engine's epilogues.

Why a second engine: on sm_90 the fastest Triton GEMMs feed wgmma from shared memory filled by TMA (one descriptor copy
per tile instead of per-thread address math and cp.async), and run one program per SM that walks the tiles
(`tl.range(..., flatten=True)` pipelines the next tile's loads under the current tile's epilogue). Tiles go in
GROUP_M-row groups so consecutive tiles reuse W in L2. The descriptors come with the launch (host descriptors of the
config's boxes, tma_desc.py); with VITFAST_TMA_DESC=device each program builds them instead
(`tl.make_tensor_descriptor`, 128 B of global scratch each, from the allocator `_scratch` hands Triton). TMA pads
out-of-range loads with zeros and clips stores, so ragged M, N and K need no masks in the main loop (SwiGLU's weight
descriptor spans the packed 2N rows: a gate tile past N reads up rows, which the store clips). The epilogue (folded
LayerNorm, bias, activation or SwiGLU's gate, residual) is `gemm.gated_epilogue_math`, applied to BLOCK_N /
EPI_SPLIT-wide column slices when EPI_SPLIT > 1 (half the live epilogue registers and store buffer). No warp
specialization: on sm_90 it is ignored or crashes with TMA stores in triton 3.6 (triton-lang/triton#11587). Without it a
program's epilogue does not overlap its own MMAs, and an exact-GELU epilogue (libdevice erf, ~30 instructions per
element) took ~30 % of FC1 on an H200; the fitted erfc (`gemm.gelu_erf`: 16, 12 storing bf16) shortens it. The
PER_SM = 2 rows try to overlap it: two programs per SM, each small enough in shared memory and registers to be
co-resident, so one's epilogue runs while the other's wgmmas do (CUTLASS's ping-pong schedule, by the hardware
scheduler). The third lease timed them
even with the one-program 128x256 tile, as two programs that start together and stay in step would run, so the
second program on each SM now starts one tile's main loop late (stagger.py). At small batch the output tiles fill
few SMs; there K is split (SPLIT_K, split_k.py): a unit of work is a (tile, part of K), and the last part of a tile
to finish sums the parts and runs the epilogue.

The op modules decide when this engine runs (`select_engine`): CUDA sm_90, 16-bit dtypes, operands TMA can address.
"""
import functools

import torch
import triton
import triton.language as tl

from ._common import (
    ENGINE_ENV, FAMILY_SMEM, GEMM_DIVISIBLE, SWIGLU, TL_SIG, check, gemm_vit_launches, gluon_runs,
    is_interpreting, is_sm90, jit_fn, m_bucket, num_sms, preset_activation, shared_memory_bytes,
    swiglu_accumulators_fit, switch_value, upcast_needed,
)
from .autotune import autotuned
from .gemm import (AOT_SLOTS, AOT_SPLIT, AOT_SPLITS_B1, aot_slots, column_halves, gated_epilogue_math, grouped_tile,
                   launch_fused_gemm, row_stats_switch, slot_arg, slots_arg, stats_modes, switch_combos)
from .ln_fold import STATS_SLOT, row_moments, stats_tile_ok, store_partials
from .split_k import MAX_ACC_REGS, acc_registers, config_parts, launch_operands, split_k_fixup
from .pdl import dependency_wait, launch_options, pdl_launch
from .stagger import MACS_PER_NS_16BIT, stagger_rule, staggered_start
from .tma_desc import descriptor_rules, host_descriptors, kernel_descriptors, operand_signature

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, EPI_SPLIT): the sm_90 table (registers, spills and shared memory
# of each row are in benchmarks/NOTES.md).
HOPPER_TMA = [
    (128, 256, 64, 8, 3, 2),
    (128, 128, 64, 8, 4, 1),
    (128, 128, 64, 4, 4, 2),
    (128, 64, 64, 4, 4, 1),
    (64, 128, 64, 4, 4, 1),
    (64, 64, 64, 4, 4, 1),
    (128, 128, 64, 4, 3, 2),
]
# Rows launched with two programs per SM (see the module docstring): 115,224 B of shared memory and 203-226
# registers x 128 threads for QKV and FC1 on sm_90 (triton 3.6 and 3.9), so two fit in an SM's 233,472 B and 64K
# registers; the prune keeps such a row only where two fit (a residual's staging buffer does not: FC2 and the
# out-projection drop it).
PER_SM = {(128, 128, 64, 4, 3, 2): 2}
# The row batch 1's launches split K at (the third lease's batch-1 picks were 64x128): the AOT variants compare the
# two descriptor sources on it
B1_SPLIT_ROW = (64, 128, 64, 4, 4, 1)
# The row batch 1's residual GEMMs may split K at with 64-column statistics slots (ln_fold.stats_slot): the AOT
# variants compile it at batch 1's part counts too
B1_NARROW_ROW = (64, 64, 64, 4, 4, 1)
# One config under the interpreter (several fail there); EPI_SPLIT 2 so tests cover the subtiled epilogue, PER_SM 2
# so they cover the stride of a multi-program-per-SM launch.
INTERPRETER_TMA = (32, 32, 32, 4, 1, 2)
INTERPRETER_PER_SM = 2
INTERPRETER_SMS = 1  # 2 programs, fewer than the op tests' tiles, so tests cover the persistent loop
AUTOTUNE_KEY = ["M_BUCKET", "N", "K", "ROW_STATS", "HAS_BIAS", "ACTIVATION", "HAS_RESIDUAL", "WRITE_STATS", "SLOT",
                "split_mode", "HOST_DESC"]  # the tile each split setting picks is its own; PDL is not a key (pdl.py):
# with and without it a launch shares its tile, which b1pdl's side-by-side rows rely on
DTYPES = (torch.bfloat16, torch.float16)


def programs_per_sm(tile, per_sm_rows) -> int:
    """Programs per SM a persistent engine's table row launches with (its PER_SM rows; the interpreter's row: 2)."""
    if is_interpreting() and tuple(tile) == INTERPRETER_TMA:
        return INTERPRETER_PER_SM
    return per_sm_rows.get(tuple(tile), 1)


def persistent_configs(rows, per_sm_rows):
    """The autotune configs of a persistent TMA engine's (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, EPI_SPLIT) table
    (the interpreter's one row when interpreting), each with its PER_SM."""
    rows = [INTERPRETER_TMA] if is_interpreting() else rows
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPI_SPLIT": e,
                           "PER_SM": programs_per_sm((bm, bn, bk, w, s, e), per_sm_rows)}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s, e in rows]


def per_sm(tile) -> int:
    return programs_per_sm(tile, PER_SM)


def _configs():
    return persistent_configs(HOPPER_TMA, PER_SM)


def smem_estimate(bm, bn, bk, stages, epi_split, has_residual, elem=2, swiglu=False):
    """Pipelined A and W tiles (SwiGLU: a gate and an up W tile) plus the epilogue's store (and residual) staging
    buffers, in bytes."""
    epi = bm * (bn // epi_split) * elem * (2 if has_residual else 1)
    return stages * (bm + bn * (2 if swiglu else 1)) * bk * elem + epi


# SwiGLU's gate and up accumulators (beyond _common.swiglu_accumulators_fit): these rows spill on sm_90 (the static
# report, triton 3.9).
SWIGLU_TMA_SPILLS = {(128, 128, 64, 8, 4, 1): "24 B"}


# Shared memory per SM on sm_90 (H100, H200), what co-resident programs share; each also takes CTA_RESERVED_SMEM
# (CUDA's per-block reservation) and up to SMEM_SLACK beyond smem_estimate (barriers, alignment: 536 B at
# 128x128x64 s3 under triton 3.9).
SM90_SM_SMEM = 233472
CTA_RESERVED_SMEM = 1024
SMEM_SLACK = 1024


def tile_allowed(tile, smem, has_residual=False, swiglu=False, elem=2, sm_smem=SM90_SM_SMEM,
                 write_stats=False, slot=STATS_SLOT) -> bool:
    """The prune's rule for one HOPPER_TMA row (BLOCK_M <= M aside): within a block's shared memory `smem`, and for
    a PER_SM row, that many programs within the SM's `sm_smem`; writing partial statistics, an epilogue slice of
    whole `slot`-wide slots."""
    bm, bn, bk, warps, stages, epi = tile
    if write_stats and not stats_tile_ok(bn // epi, slot):
        return False
    if swiglu and (not swiglu_accumulators_fit(bm, bn, warps) or tuple(tile) in SWIGLU_TMA_SPILLS):
        return False
    need = smem_estimate(bm, bn, bk, stages, epi, has_residual, elem, swiglu)
    return need <= smem and co_resident(PER_SM.get(tuple(tile), 1), need, sm_smem)


def co_resident(programs: int, need: int, sm_smem: int) -> bool:
    """Whether `programs` programs of `need` bytes of shared memory (smem_estimate) fit one SM together."""
    return programs == 1 or programs * (need + CTA_RESERVED_SMEM + SMEM_SLACK) <= sm_smem


@functools.lru_cache(maxsize=None)
def _sm_shared_memory(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    return getattr(props, "shared_memory_per_multiprocessor", 0) or SM90_SM_SMEM


def persistent_prune(configs, a, m_bucket, allowed):
    """A persistent engine's early_config_prune: the rows `allowed(tile, smem, sm_smem)` keeps for the device of
    operand `a` (a block's and an SM's shared memory), not far taller than M (`m_bucket`); at least the smallest
    one."""
    if len(configs) <= 1:
        return configs
    index = a.device.index if a.device.index is not None else torch.cuda.current_device()
    smem, sm_smem = shared_memory_bytes(index), _sm_shared_memory(index)
    m_cap = max(64, m_bucket)
    def row(c):
        kw = c.kwargs
        return kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], c.num_warps, c.num_stages, kw["EPI_SPLIT"]

    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= m_cap and allowed(row(c), smem, sm_smem)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


def _prune(configs, named_args, **kwargs):
    """Drop tiles over the device's shared memory (or SwiGLU's register budget) or far taller than M; keep one (for
    a GEMM writing partial statistics, one whose epilogue slices are whole slots). The launcher passes every
    argument by keyword (tma_desc.descriptor_rules replaces the operands), so they come in `kwargs`."""
    kwargs = {**(named_args or {}), **kwargs}
    swiglu = kwargs.get("ACTIVATION") == SWIGLU
    elem = kwargs["a"].element_size()  # fp32 when VITFAST_GEMM_ENGINE=tma forces it
    write_stats, slot = kwargs.get("WRITE_STATS", False), kwargs.get("SLOT", STATS_SLOT)  # the launcher gives SLOT
    if write_stats and len(configs) > 1:
        configs = [c for c in configs if stats_tile_ok(c.kwargs["BLOCK_N"] // c.kwargs["EPI_SPLIT"], slot)]
    return persistent_prune(configs, kwargs["a"], kwargs["M_BUCKET"], lambda tile, smem, sm_smem: tile_allowed(
        tile, smem, kwargs.get("HAS_RESIDUAL", False), swiglu, elem, sm_smem, write_stats, slot))


@triton.jit
def _finish(acc, up, rows, M, N, mean, rstd, colsum_ptr, bias_ptr, res_desc, out_desc, part_ptr, off_m, off_n,
            ROW_STATS: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
            WRITE_STATS: tl.constexpr, EPI_N: tl.constexpr, SLOT: tl.constexpr):
    """Epilogue of one (sub)tile, columns off_n .. off_n + EPI_N: shared math (SwiGLU: of the gate and up tiles),
    residual through TMA, one cast, TMA store (clipped at M and N), and the stored rows' partial statistics."""
    tl.static_assert(not WRITE_STATS or EPI_N % SLOT == 0, "partial statistics need epilogue slices of whole slots")
    cols = off_n + tl.arange(0, EPI_N)
    acc = gated_epilogue_math(acc, up, rows, cols, M, N, mean, rstd, colsum_ptr, bias_ptr, ROW_STATS, HAS_BIAS,
                              ACTIVATION, out_desc.dtype)
    if HAS_RESIDUAL:
        acc += res_desc.load([off_m, off_n]).to(tl.float32)
    out = acc.to(out_desc.dtype)
    out_desc.store([off_m, off_n], out)
    if WRITE_STATS:
        store_partials(out.to(tl.float32), rows, off_n, M, N, part_ptr, EPI_N, SLOT)


def _split_parts(args) -> int:
    """SPLIT_K of the config being launched (split_k.config_parts over its programs: NUM_SMS x PER_SM)."""
    return config_parts(args, args["NUM_SMS"] * args["PER_SM"])


@autotuned(_configs(), AUTOTUNE_KEY, _prune)
@triton.heuristics({"SPLIT_K": _split_parts, "STAGGER": stagger_rule,  # STAGGER reads SPLIT_K: after it
                    **descriptor_rules()})  # a, w, res, out: descriptors of the config
@triton.jit(do_not_specialize=["M", "split_mode"])
def tma_gemm_kernel(
    a,  # (M, K) activations, unit column stride, 16-byte aligned rows: a descriptor (HOST_DESC) or a pointer
    w,  # (N, K) weight in nn.Linear layout (LayerNorm-folded when ROW_STATS), unit column stride; (2N, K) SwiGLU
    bias_ptr,  # (N,) bias (activation dtype, or fp32 when folded), (2N,) SwiGLU; read only when HAS_BIAS
    res,  # (M, N) residual, unit column stride; None without HAS_RESIDUAL
    stats_ptr,  # A's row statistics, fp32: (M, 2) (mean, rstd) if ROW_STATS 1; (M, 3, SLOTS) partials if 2
    colsum_ptr,  # (N,) fp32 column sums of the folded weight, (2N,) SwiGLU; read only when ROW_STATS
    out,  # (M, N) output, unit column stride
    part_ptr,  # (M, 3, cdiv(N, SLOT)) fp32 partial statistics of the output rows; written only when WRITE_STATS
    ws_ptr,  # fp32 split-K workspace, SPLIT_K partial tiles per output tile; None unless the launch may split
    lock_ptr,  # int32 split-K counters, one per output tile, zero at launch and left zero; None as ws_ptr
    M,  # rows (tokens over the whole batch); not specialized, so batch sizes share one binary
    N,  # output features (SwiGLU: the gated width H, half the weight's rows)
    K,  # input features
    eps,  # the folded LayerNorm's epsilon; read only when ROW_STATS 2 (merged partials)
    stride_am,  # A row stride (elements; a multiple of 16 bytes); the strides are read only without HOST_DESC
    stride_wn,  # W row stride
    stride_rm,  # residual row stride
    stride_om,  # output row stride
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    split_mode,  # read by the SPLIT_K heuristic only: 0 never split, 1 split_k.split_count's rule, 2-4 forced parts
    ROW_STATS: tl.constexpr,  # folded LayerNorm epilogue rstd * (acc - mean * colsum): 0 off, 1 stats rows, 2 partials
    HAS_BIAS: tl.constexpr,  # add bias in the epilogue
    ACTIVATION: tl.constexpr,  # 0 none, 1 exact-erf GELU, 2 tanh GELU, 3 quick GELU, 4 SwiGLU (gate and up dots),
    # 5 exact GELU through libdevice's erf (VITFAST_GELU=libdevice)
    HAS_RESIDUAL: tl.constexpr,  # add the residual after the activation
    WRITE_STATS: tl.constexpr,  # write the stored rows' partial statistics (the next LayerNorm's) to part_ptr
    SLOT: tl.constexpr,  # columns per partial-statistics slot (ln_fold.stats_slot)
    SLOTS: tl.constexpr,  # the partial statistics' slots per row of A (ROW_STATS 2; the partials' shape)
    UPCAST: tl.constexpr,  # dot in fp32 (interpreter with bf16, whose bf16 arithmetic is wrong)
    NUM_SMS: tl.constexpr,  # the device's SMs; NUM_SMS * PER_SM programs at most, each walks units that far apart
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # output features per tile
    BLOCK_K: tl.constexpr,  # reduction step (one TMA box of A and of W per step)
    GROUP_M: tl.constexpr,  # row tiles per L2 group
    EPI_SPLIT: tl.constexpr,  # 1 or 2: epilogue on BLOCK_N / EPI_SPLIT-wide column slices
    PER_SM: tl.constexpr,  # programs per SM (PER_SM rows: 2, co-resident so their epilogues overlap MMAs)
    SPLIT_K: tl.constexpr,  # parts of K per output tile (split_k.py): a unit of work is (tile, part); 1 no split
    HOST_DESC: tl.constexpr,  # a, w, res, out are host descriptors of the config's boxes (tma_desc.py); else
    # pointers, and each program builds its descriptors (VITFAST_TMA_DESC=device)
    PDL: tl.constexpr,  # launched with programmatic dependent launch (pdl.py): wait for the previous kernel first
    STAGGER: tl.constexpr,  # the second program on each SM starts one tile's main loop late (stagger.py)
):
    dependency_wait(PDL)  # before any global memory access (descriptor scratch included)
    tl.static_assert(SPLIT_K == 1 or ACTIVATION != 4, "SwiGLU's up accumulator is not split")
    EPI_N: tl.constexpr = BLOCK_N // EPI_SPLIT
    PROGRAMS: tl.constexpr = NUM_SMS * PER_SM
    if ACTIVATION == 4:  # SwiGLU: packed (2N, K) weight, up rows N below the gate rows
        w_rows = 2 * N
    else:
        w_rows = N
    a_desc, w_desc, res_desc, out_desc = kernel_descriptors(
        a, w, res, out, M, N, K, w_rows, stride_am, stride_wn, stride_rm, stride_om, BLOCK_M, BLOCK_N, BLOCK_K, EPI_N,
        HAS_RESIDUAL, HOST_DESC)
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    staggered_start(K, num_tiles, NUM_SMS, PER_SM, BLOCK_M, BLOCK_N, MACS_PER_NS_16BIT, STAGGER)
    if SPLIT_K > 1:
        k_steps = tl.cdiv(k_tiles, SPLIT_K)  # a part's steps; the last part's run past K reads TMA's zero padding
    else:
        k_steps = k_tiles
    # The epilogue recomputes its unit from a second counter: the flattened loop then carries no value from the
    # loads' prologue into the epilogue (the pattern Triton's persistent-matmul tutorial uses). Split launches are
    # not flattened: with the fix-up's branch in the loop, the flattened K loop was no longer pipelined (its wgmmas
    # drained every step); they run about one unit a program, so there is no next tile to overlap anyway.
    unit_c = tl.program_id(0) - PROGRAMS
    for unit in tl.range(tl.program_id(0), num_tiles * SPLIT_K, PROGRAMS, flatten=SPLIT_K == 1):
        pid_m, pid_n = grouped_tile(unit // SPLIT_K, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        k0 = (unit % SPLIT_K) * k_steps * BLOCK_K
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if ACTIVATION == 4:
            up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        else:
            up = acc  # never used
        for ki in range(k_steps):
            a_tile = a_desc.load([pid_m * BLOCK_M, k0 + ki * BLOCK_K])
            w_tile = w_desc.load([pid_n * BLOCK_N, k0 + ki * BLOCK_K])
            if UPCAST:
                a_tile = a_tile.to(tl.float32)
                w_tile = w_tile.to(tl.float32)
            acc = tl.dot(a_tile, w_tile.T, acc, input_precision="ieee")  # fp32 operands (forced engine): no tf32
            if ACTIVATION == 4:
                # a gate tile past row N reads up rows (columns clipped at the store); up tiles past 2N read zeros
                w_up = w_desc.load([N + pid_n * BLOCK_N, k0 + ki * BLOCK_K])
                if UPCAST:
                    w_up = w_up.to(tl.float32)
                up = tl.dot(a_tile, w_up.T, up, input_precision="ieee")

        unit_c += PROGRAMS
        tile_c = unit_c // SPLIT_K
        if SPLIT_K > 1:
            # the last of the tile's parts to arrive gets the summed accumulator and runs the epilogue
            acc, finish = split_k_fixup(acc, ws_ptr, lock_ptr, tile_c, unit_c % SPLIT_K, BLOCK_M, BLOCK_N, SPLIT_K)
        else:
            finish = True
        if finish:
            _epilogue(acc, up, tile_c, M, N, K, eps, stats_ptr, colsum_ptr, bias_ptr, res_desc, out_desc, part_ptr,
                      ROW_STATS, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, WRITE_STATS, SLOT, SLOTS, BLOCK_M, BLOCK_N,
                      GROUP_M, EPI_SPLIT)


@triton.jit
def _epilogue(acc, up, tile, M, N, K, eps, stats_ptr, colsum_ptr, bias_ptr, res_desc, out_desc, part_ptr,
              ROW_STATS: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
              WRITE_STATS: tl.constexpr, SLOT: tl.constexpr, SLOTS: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, EPI_SPLIT: tl.constexpr):
    """Output tile `tile`'s epilogue from its fp32 accumulator (SwiGLU: and the up accumulator): the rows'
    LayerNorm statistics, then _finish on the whole tile or on its EPI_SPLIT column slices."""
    EPI_N: tl.constexpr = BLOCK_N // EPI_SPLIT
    pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    rows = off_m + tl.arange(0, BLOCK_M)
    if ROW_STATS:
        mean, rstd = row_moments(stats_ptr, rows, M, K, eps, ROW_STATS, SLOT, SLOTS, True)
    else:
        mean = 0.0  # never used
        rstd = 0.0
    if EPI_SPLIT == 2:
        acc0, acc1, up0, up1 = column_halves(acc, up, BLOCK_M, EPI_N, ACTIVATION == 4)
        _finish(acc0, up0, rows, M, N, mean, rstd, colsum_ptr, bias_ptr, res_desc, out_desc, part_ptr, off_m,
                off_n, ROW_STATS, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, WRITE_STATS, EPI_N, SLOT)
        _finish(acc1, up1, rows, M, N, mean, rstd, colsum_ptr, bias_ptr, res_desc, out_desc, part_ptr, off_m,
                off_n + EPI_N, ROW_STATS, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, WRITE_STATS, EPI_N, SLOT)
    else:
        _finish(acc, up, rows, M, N, mean, rstd, colsum_ptr, bias_ptr, res_desc, out_desc, part_ptr, off_m,
                off_n, ROW_STATS, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, WRITE_STATS, BLOCK_N, SLOT)


# ---- dispatch -------------------------------------------------------------------------------------------------------
def _tma_addressable(t: torch.Tensor) -> bool:
    """2-D, unit last stride, 16-byte aligned base and row stride (what a TMA descriptor needs)."""
    elem = t.element_size()
    return (t.dim() == 2 and t.stride(1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * elem) % 16 == 0
            and t.shape[1] * elem >= 16)


def select_engine(a, weight, out, residual=None) -> str:
    """"tma", "ws" or "pointer" for already-checked 2-D operands; the op modules launch through `gemm_launcher`.
    auto: TMA on sm_90 for bf16/fp16 operands it can address. VITFAST_GEMM_ENGINE=tma forces it (also under the
    interpreter, in any float dtype, which is how the tests run this engine on a CPU) and fails with one line when the
    operands do not fit; =ws the warp-specialized engine for 16-bit launches of many tiles (gemm_ws.py: sm_90 only,
    never the interpreter; the 16-bit launches it does not take run here, fp32 ones as auto); =pointer forces the
    other."""
    choice = switch_value(ENGINE_ENV)
    if choice == "pointer":
        return "pointer"
    operands = dict(a=a, weight=weight, out=out, residual=residual)
    fits = all(_tma_addressable(t) for t in operands.values() if t is not None)
    if choice == "auto":
        if is_interpreting() or a.dtype not in DTYPES:
            return "pointer"
        return "tma" if fits and _on_sm90(a) else "pointer"
    if choice == "ws":
        check(gluon_runs(), f"{ENGINE_ENV}=ws: device", "an sm_90 GPU (Gluon kernels do not run under the "
              "interpreter)", "TRITON_INTERPRET=1")
    else:
        bad = {k: (tuple(t.shape), t.stride(), t.data_ptr() % 16) for k, t in operands.items()
               if t is not None and not _tma_addressable(t)}
        check(fits, f"{ENGINE_ENV}=tma: operands", "2-D, unit last stride, 16-byte aligned base and rows",
              f"(shape, strides, base % 16) {bad}")
    if not is_interpreting():  # a forced engine (tests fake gluon_runs under the interpreter: TMA stands in for ws)
        check(_on_sm90(a), f"{ENGINE_ENV}={choice}: device", "an sm_90 GPU",
              torch.cuda.get_device_name(a.device) if a.is_cuda else str(a.device))
    if choice == "ws":  # the 16-bit launches auto would give the TMA engine; the others where auto sends them
        return "ws" if fits and a.dtype in DTYPES else "pointer"
    return "tma"


def _on_sm90(a) -> bool:
    """Whether tensor `a` lives on an sm_90 GPU."""
    return a.is_cuda and is_sm90(a.device.index if a.device.index is not None else torch.cuda.current_device())


def gemm_launcher(engine: str):
    """The launcher of `engine` (select_engine's answer), all with gemm.launch_fused_gemm's contract."""
    return {"tma": launch_tma_gemm, "ws": _launch_ws_or_tma, "pointer": launch_fused_gemm}[engine]


def _launch_ws_or_tma(a, weight, bias, out, *, activation=0, residual=None, stats=None, colsum=None, eps=0.0,
                      stats_out=None):
    """VITFAST_GEMM_ENGINE=ws: the warp-specialized engine for the launches it takes (gemm_ws.takes: not SwiGLU,
    at least gemm_ws.MIN_WAVES waves of its output tiles, the last one nearly full), this engine for the others."""
    from . import gemm_ws  # Gluon's Hopper API, imported only where this engine is asked for

    if gemm_ws.takes(a, weight.shape[0], activation):
        return gemm_ws.launch_ws_gemm(a, weight, bias, out, activation=activation, residual=residual, stats=stats,
                                      colsum=colsum, eps=eps, stats_out=stats_out)
    return launch_tma_gemm(a, weight, bias, out, activation=activation, residual=residual, stats=stats,
                           colsum=colsum, eps=eps, stats_out=stats_out)


def _scratch(size: int, alignment: int, stream):
    """Global scratch for the device-side descriptors (128 B per descriptor per program)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def persistent_grid(device: torch.device, M: int, N: int):
    """(NUM_SMS, grid) of a persistent launch: at most NUM_SMS * PER_SM programs, never more than the units of work
    (output tiles x SPLIT_K)."""
    if is_interpreting():
        sms = INTERPRETER_SMS
    else:
        # set per launch: the allocator is a context variable, so a serving thread needs it too
        triton.set_allocator(_scratch)
        sms = num_sms(device)
    return sms, lambda meta: (min(sms * meta["PER_SM"], triton.cdiv(M, meta["BLOCK_M"])
                                      * triton.cdiv(N, meta["BLOCK_N"]) * meta.get("SPLIT_K", 1)),)


@functools.lru_cache(maxsize=None)
def split_rows(sms: int) -> tuple:
    """The table rows a launch's autotuner can run, as split_k.launch_operands takes them (programs: SMs x PER_SM)."""
    rows = [INTERPRETER_TMA] if is_interpreting() else HOPPER_TMA
    return tuple((bm, bn, bk, w, sms * per_sm((bm, bn, bk, w, s, e))) for bm, bn, bk, w, s, e in rows)


def launch_tma_gemm(a, weight, bias, out, *, activation=0, residual=None, stats=None, colsum=None, eps=0.0,
                    stats_out=None):
    """Same contract as gemm.launch_fused_gemm, for operands select_engine() gave to "tma"."""
    M, K = a.shape
    N = weight.shape[0] // 2 if activation == SWIGLU else weight.shape[0]  # SwiGLU: packed (2N, K) gate/up rows
    sms, grid = persistent_grid(a.device, M, N)
    split_mode, ws, lock = launch_operands(a, M, N, K, split_rows(sms), activation == SWIGLU)
    # the operands by keyword: tma_desc.descriptor_rules replaces them with descriptors of the config's boxes
    tma_gemm_kernel[grid](
        bias_ptr=bias if bias is not None else out,
        stats_ptr=stats if stats is not None else out, colsum_ptr=colsum if colsum is not None else out,
        part_ptr=stats_out if stats_out is not None else out, ws_ptr=ws, lock_ptr=lock,
        M=M, N=N, K=K, eps=float(eps), stride_am=a.stride(0), stride_wn=weight.stride(0),
        stride_rm=0 if residual is None else residual.stride(0), stride_om=out.stride(0), M_BUCKET=m_bucket(M),
        split_mode=split_mode,
        ROW_STATS=row_stats_switch(stats), HAS_BIAS=bias is not None, ACTIVATION=activation,
        HAS_RESIDUAL=residual is not None, WRITE_STATS=stats_out is not None, SLOT=slot_arg(stats_out, M, N),
        SLOTS=slots_arg(stats), UPCAST=upcast_needed(a.dtype), NUM_SMS=sms, HOST_DESC=host_descriptors(),
        **launch_options(pdl_launch(a.device)), a=a, w=weight, res=residual, out=out,
    )  # fmt: skip
    return out


# ---- AOT ------------------------------------------------------------------------------------------------------------
def tma_aot_variants(row_stats, activations, has_bias, has_residual, exhaustive=False, op=None):
    """One op on this engine: bf16 at every Hopper tile with the base switches (see gemm.switch_combos) in every
    statistics mode (gemm.stats_modes), the other switches at a mid-size tile, fp16 (the same code) at that tile.
    The mid tile is the largest the prune keeps for the mode (SwiGLU, or a GEMM writing statistics, drop some). The
    TMA engine has no EVEN_K switch (TMA zero-pads K), so the EVEN_K=False combos are dropped. With device-side
    descriptors (VITFAST_TMA_DESC=device, credited to no preset): the mid tile, and B1_SPLIT_ROW split; with
    programmatic dependent launch (VITFAST_PDL=1, credited to none): B1_SPLIT_ROW split, both descriptor sources;
    B1_SPLIT_ROW at batch 1's other part counts (gemm.AOT_SPLITS_B1), and for a GEMM writing statistics
    B1_NARROW_ROW too; a GEMM writing statistics at each slot width the tile can write (`_slots`; the descriptor and
    PDL variants at STATS_SLOT);
    the two-programs rows the prune keeps for the op without their staggered start (VITFAST_STAGGER=0, credited to
    none). Metadata: tests/kernels/aot_compile.py."""
    op = op or ("ln_linear" if row_stats else "linear_residual")
    combos = [c for c in switch_combos(activations, has_bias, exhaustive) if c[2]]
    modes = stats_modes(row_stats, has_residual)
    swiglu = activations[0] == SWIGLU
    mid = next(t for t in HOPPER_TMA[2:] + HOPPER_TMA[:2] if tile_allowed(
        t, FAMILY_SMEM["hopper"], has_residual, swiglu, write_stats=modes[0][1]))
    base, rest = combos[0], combos[1:]
    out = [_variant(DTYPES[0], mode, base[0], base[1], has_residual, tile, op, slot=slot) for tile in HOPPER_TMA
           for mode in modes for slot in _slots(tile, mode)]
    out += [_variant(DTYPES[0], modes[0], act, bias, has_residual, mid, op) for act, bias, _ in rest]
    if not swiglu:  # the split-K code (batch 1-4) at every tile that can split, in the model's statistics mode
        out += [_variant(DTYPES[0], modes[0], base[0], base[1], has_residual, tile, op, split=AOT_SPLIT, slot=slot)
                for tile in HOPPER_TMA if splits(tile) for slot in _slots(tile, modes[0])]
    for dtype in DTYPES[1:]:
        out += [_variant(dtype, modes[0], act, bias, has_residual, tile, op)
                for tile in (HOPPER_TMA if exhaustive else [mid]) for act, bias, _ in
                (combos if exhaustive else combos[:1])]
    # descriptors built by each program (VITFAST_TMA_DESC=device): the mid tile, and batch 1's split row
    out.append(_variant(DTYPES[0], modes[0], base[0], base[1], has_residual, mid, op, host=False))
    if not swiglu:
        out.append(_variant(DTYPES[0], modes[0], base[0], base[1], has_residual, B1_SPLIT_ROW, op, split=AOT_SPLIT,
                            host=False))
        # programmatic dependent launch (VITFAST_PDL=1) on batch 1's split row, with either descriptor source
        out += [_variant(DTYPES[0], modes[0], base[0], base[1], has_residual, B1_SPLIT_ROW, op, split=AOT_SPLIT,
                         host=host, pdl=True) for host in (True, False)]
        # batch 1's other part counts on its split rows (gemm.AOT_SPLITS_B1)
        out += [_variant(DTYPES[0], modes[0], base[0], base[1], has_residual, tile, op, split=parts, slot=slot)
                for parts in AOT_SPLITS_B1 for tile in (B1_SPLIT_ROW, B1_NARROW_ROW)
                if tile == B1_SPLIT_ROW or modes[0][1] for slot in _slots(tile, modes[0])]
    # the two-programs rows without their staggered start (VITFAST_STAGGER=0, credited to none), where the prune keeps
    # them (the variant's own `tables`)
    twins = (_variant(DTYPES[0], modes[0], base[0], base[1], has_residual, tile, op, stagger=False,
                      slot=_slots(tile, modes[0])[0]) for tile in PER_SM if _slots(tile, modes[0]))
    return out + [v for v in twins if v["tables"]]


def aot_variants(exhaustive: bool = False):
    """Every Hopper tile, as the bf16 folded-LN + GELU (fc1, merging partial statistics) and the residual (fc2,
    writing them) variants."""
    dtypes = DTYPES if exhaustive else DTYPES[:1]
    return [_variant(dtype, mode, act, True, res, tile, op, slot=_slots(tile, mode)[0]) for dtype in dtypes
            for mode, act, res, op in (((2, False), 1, False, "ln_linear"), ((0, True), 0, True, "linear_residual"))
            for tile in HOPPER_TMA if _slots(tile, mode)]


def splits(tile) -> bool:
    """Whether a HOPPER_TMA row may split K (split_k.MAX_ACC_REGS: its accumulator leaves room for a partial)."""
    bm, bn, bk, warps, stages, epi = tile
    return acc_registers(bm, bn, warps) <= MAX_ACC_REGS


def _slots(tile, mode) -> tuple:
    """gemm.aot_slots for a HOPPER_TMA row (its epilogue slices are BLOCK_N / EPI_SPLIT wide)."""
    return aot_slots(tile[1] // tile[5], mode)


def _variant(dtype, mode, activation, has_bias, has_residual, tile, op, num_sms=132, split=1, host=True, pdl=False,
             stagger=True, slot=STATS_SLOT):
    """One variant; split > 1: the split-K code (split_k.py) with that many parts, its workspace and counters;
    host=False: the descriptors built by each program (VITFAST_TMA_DESC=device); pdl: launched with programmatic
    dependent launch (VITFAST_PDL=1); stagger=False: a two-programs row under VITFAST_STAGGER=0; slot: the partial
    statistics' slot width (SLOT) when it writes them (credited to the presets at STATS_SLOT only: large M)."""
    bm, bn, bk, warps, stages, epi = tile
    row_stats, write_stats = mode
    p = "*" + TL_SIG[dtype]
    elem_sig = TL_SIG[dtype]
    box = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "EPI_SPLIT": epi}
    a, w, res, out = (operand_signature(name, elem_sig, box, host) for name in ("a", "w", "res", "out"))
    sig = {
        "a": a, "w": w, "bias_ptr": "*fp32" if row_stats else p, "stats_ptr": "*fp32",
        "colsum_ptr": "*fp32", "out": out, "part_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "eps": "fp32",
        "stride_am": "i32", "stride_wn": "i32", "stride_rm": "i32", "stride_om": "i32", "M_BUCKET": "i32",
        "split_mode": "i32",
    }  # fmt: skip
    constexprs = {
        "ROW_STATS": row_stats, "HAS_BIAS": has_bias, "ACTIVATION": activation, "HAS_RESIDUAL": has_residual,
        "WRITE_STATS": write_stats, "SLOT": slot, "SLOTS": AOT_SLOTS if row_stats == 2 else 1,
        "UPCAST": False, "NUM_SMS": num_sms, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
        "EPI_SPLIT": epi, "PER_SM": per_sm(tile), "SPLIT_K": split, "HOST_DESC": host, "PDL": pdl,
        "STAGGER": per_sm(tile) > 1 and split == 1 and stagger,  # stagger_rule on a GPU
    }  # fmt: skip
    if has_residual:
        sig["res"] = res
    else:
        constexprs["res"] = None  # the launcher passes None without a residual
    if split > 1:
        sig.update(ws_ptr="*fp32", lock_ptr="*i32")
    else:
        constexprs.update(ws_ptr=None, lock_ptr=None)  # the launcher passes None where no row splits
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    elem = torch.empty((), dtype=dtype).element_size()
    fits = tile_allowed(tile, FAMILY_SMEM["hopper"], has_residual, activation == SWIGLU, elem,
                        write_stats=write_stats, slot=slot)
    base_mode = mode == stats_modes(bool(row_stats), has_residual)[0]
    return {"fn": jit_fn(tma_gemm_kernel), "signature": sig, "constexprs": constexprs, "num_warps": warps,
            "num_stages": stages, "divisible": GEMM_DIVISIBLE, "op": op, "main_loop": "gemm",
            "programs_per_sm": per_sm(tile), **({"min_cc": 90} if pdl else {}),  # PDL: griddepcontrol, sm_90 on
            "tables": ("hopper",) if fits else (),
            "vit": gemm_vit_launches(op, tile[:5], elem, None, when=lambda cfg: fits and base_mode and has_bias
                                     and split == 1 and host and not pdl and stagger and slot == STATS_SLOT
                                     and activation == preset_activation(op, cfg))}
