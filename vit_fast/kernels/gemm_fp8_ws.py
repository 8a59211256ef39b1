"""A warp-specialized FP8 GEMM for Hopper (sm_90), written in Gluon: the promoted launches without the drain.

Why a third FP8 engine: the project promotes FP8 partial sums into fp32 every 128 of K (gemm_fp8.py's docstring),
and on gemm_fp8_tma.py that cost 16-38 % a GEMM on an H200 (benchmarks/NOTES.md, "Third GPU lease"): a program's
warpgroups wait for their wgmmas before each promotion, and Triton makes them meet at a CTA barrier every K step, so
the tensor cores drain together. Written one step behind in one warpgroup, ptxas serializes the wgmmas anyway ("Two
programs per SM for every FP8 GEMM"). This engine is DeepGEMM's layout, which Triton cannot express and Gluon
(`triton.experimental.gluon`, in triton 3.6 and 3.9) can: one TMA warp fills a ring of (A, W) stages; two math
warpgroups each take 64 rows of a 128-row tile, wait for their own wgmmas, promote, and release the stage through
an mbarrier, with no barrier between them, so while one promotes the other's wgmmas run. A fourth partition, the
epilogue warpgroup, takes each finished tile from a shared fp32 buffer and runs the epilogue while the math
warpgroups run the next tile's wgmmas: FC1's GELU and its stores stop idling the tensor cores (in gemm_fp8_tma.py
they cost FC1 a third of its time, benchmarks/NOTES.md, "A warp-specialized FP8 engine").

What it runs: every promoted FP8 launch of the model (QKV, FC1 with its GELU writing FC2's e4m3 codes, the
out-projection with its residual, FC2 on grouped codes), with the TMA engine's epilogue (acc · s_row · s_col, bias,
activation, then the residual and one cast, or the codes and their scales). SwiGLU stays on the pointer engine and
fast accumulation (VITFAST_FP8_PRECISE_ACC=0) on gemm_fp8_tma.py. It is opt-in (VITFAST_FP8_ENGINE=ws) until a GPU
lease has run its tests and timed it (the interpreter cannot run Gluon). One tile, 128x128x128 with 4 stages (128 KB
of stages and a 64 KB buffer, no spill: benchmarks/static/report.md), not autotuned: at small batches it leaves SMs
idle where the TMA engine picks smaller tiles.
"""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ._common import FP8_DTYPE, FP8_GROUP, GELU_LIBDEVICE, SWIGLU, TL_SIG, cdiv, num_sms
from ._gluon_ws import (LOAD_REGS, LOAD_WARPS, MATH_WARPS, allocate_hand_over, allocate_ring, hand_over,
                        load_partition, load_rows)
from .gemm import apply_activation, grouped_tile
from .quant_fp8 import e4m3_codes, masked_row_amax

# (BLOCK_M, BLOCK_N, BLOCK_K, STAGES, GROUP_M): 64 rows a math warpgroup, a K step of 128 (FP8_GROUP: one scale a row
# per step on grouped A), 4 stages of 32 KB
TILE = (128, 128, 128, 4, 8)
# registers a thread after setmaxnreg (triton 3.6 needs a count for each worker): 64 of fp32 sum and 64 of partial in
# a math warpgroup (134-143 used); the epilogue warpgroup gets the rest of the SM's 64 K, 168
MATH_REGS = gl.constexpr(152)
FP8_GROUP_K = gl.constexpr(FP8_GROUP)  # FP8_GROUP inside the kernel
# the (A, W) boxes' shared layouts (128-byte swizzle), which the host descriptors carry: built once, not per launch
A_LAYOUT = gl.NVMMASharedLayout.get_default_for([TILE[0], TILE[2]], gl.float8e4nv)
W_LAYOUT = gl.NVMMASharedLayout.get_default_for([TILE[1], TILE[2]], gl.float8e4nv)


@gluon.jit
def _math_partition(a_s, w_s, ready, empty, acc_s, acc_ready, acc_empty, a_scale_ptr, M, N, K, stride_sa,
                    HALF: gl.constexpr, WG: gl.constexpr, A_GROUPED: gl.constexpr, NUM_SMS: gl.constexpr,
                    STAGES: gl.constexpr, GROUP_M: gl.constexpr):
    """Math warpgroup WG: rows [WG * HALF, (WG + 1) * HALF) of every tile. Each K step's wgmmas start from zero, are
    waited for, and the partial is added to the fp32 sum (times its rows' group scales with A_GROUPED); then the sum
    goes to the shared buffer once the epilogue warpgroup has read the previous tile out of it."""
    BLOCK_N: gl.constexpr = w_s.shape[1]
    BLOCK_K: gl.constexpr = w_s.shape[2]
    BLOCK_M: gl.constexpr = 2 * HALF
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                          instr_shape=[16, BLOCK_N, 32])
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    k_tiles = gl.cdiv(K, BLOCK_K)
    zero = gl.zeros([HALF, BLOCK_N], gl.float32, acc_layout)
    step = 0
    t = 0
    for tile in range(gl.program_id(0), num_tiles, NUM_SMS):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M + WG * HALF
        a_rows = off_m + gl.arange(0, HALF, gl.SliceLayout(1, acc_layout))
        acc = gl.zeros([HALF, BLOCK_N], gl.float32, acc_layout)
        for ki in range(k_tiles):
            s = step % STAGES
            mbarrier.wait(ready.index(s), (step // STAGES) & 1)
            part = warpgroup_mma(a_s.index(s).slice(WG * HALF, HALF), w_s.index(s).permute((1, 0)), zero,
                                 use_acc=False, is_async=True)
            if A_GROUPED:  # the step is one group of K (BLOCK_K == FP8_GROUP); its scales load under the wgmmas
                s_k = gl.load(a_scale_ptr + ki * stride_sa + a_rows, mask=a_rows < M, other=0.0)
            part = warpgroup_mma_wait(num_outstanding=0, deps=(part,))
            mbarrier.arrive(empty.index(s), count=1)
            if A_GROUPED:
                acc = acc + part * s_k[:, None]
            else:
                acc = acc + part
            step += 1

        hand_over(acc, acc_s, acc_ready, acc_empty, WG, t)
        t += 1


@gluon.jit
def _half_sums(acc_s, acc_empty, srow_s, half, s_col, bias, out_layout: gl.constexpr,
               HAS_BIAS: gl.constexpr, ACTIVATION: gl.constexpr, A_GROUPED: gl.constexpr, OUT_TY: gl.constexpr):
    """A 64-row half of the tile's sums from the buffer (the second: then the buffer is free for the math
    warpgroups), times the rows' and columns' scales, plus bias, through the activation."""
    acc = acc_s.index(half).load(out_layout)
    if half == 1:
        mbarrier.arrive(acc_empty, count=1)  # the buffer is read: the math warpgroups may refill it
    if not A_GROUPED:
        acc = acc * srow_s.index(half).load(gl.SliceLayout(1, out_layout))[:, None]
    acc = acc * s_col[None, :]
    if HAS_BIAS:
        acc = acc + bias[None, :]
    return apply_activation(acc, ACTIVATION, OUT_TY)


@gluon.jit
def _epilogue_partition(acc_s, acc_ready, acc_empty, srow_s, a_scale_ptr, scale_out_ptr, w_scale_ptr, bias_ptr,
                        res_ptr, out_ptr, M, N, stride_rm, stride_om, stride_so, HAS_BIAS: gl.constexpr,
                        ACTIVATION: gl.constexpr, HAS_RESIDUAL: gl.constexpr, A_GROUPED: gl.constexpr,
                        GROUP_OUT: gl.constexpr, NUM_SMS: gl.constexpr, GROUP_M: gl.constexpr):
    """The epilogue warpgroup (the default partition): each tile's fp32 sums from the buffer, a 64-row half at a time,
    through the TMA engine's epilogue (acc · s_row · s_col, bias, activation, then the residual and one cast, or
    e4m3 codes per row and 128 columns with their scales) while the math warpgroups run the next tile's wgmmas.
    What does not depend on the sums is loaded before the tile is ready: the columns' scales and bias, the rows'
    scales into srow_s (read back in the tile's layout), and a 16-bit residual's first half, so no global load
    latency sits between the tile's arrival and FC1's GELU or the first residual add (the second half's residual
    is loaded with it: both in flight beside a half's sums spill the epilogue warpgroup)."""
    HALF: gl.constexpr = acc_s.shape[1]
    BLOCK_M: gl.constexpr = 2 * HALF
    BLOCK_N: gl.constexpr = acc_s.shape[2]
    out_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // BLOCK_N, BLOCK_N // 8], [4, 1], [1, 0])
    row_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])  # the rows' scales, before the tile
    # a 16-bit residual's first half is loaded before the tile is ready (32 registers a thread; an fp32 one, 64,
    # spills the epilogue warpgroup, and is loaded with its half, as before)
    EARLY_RESIDUAL: gl.constexpr = HAS_RESIDUAL and res_ptr.dtype.element_ty.primitive_bitwidth == 16
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    t = 0
    for tile in range(gl.program_id(0), num_tiles, NUM_SMS):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_n = pid_n * BLOCK_N
        cols = off_n + gl.arange(0, BLOCK_N, gl.SliceLayout(0, out_layout))
        mask_n = cols < N
        s_col = gl.load(w_scale_ptr + cols, mask=mask_n, other=0.0)
        if HAS_BIAS:
            bias = gl.load(bias_ptr + cols, mask=mask_n, other=0.0).to(gl.float32)
        else:
            bias = s_col  # never read
        if not A_GROUPED:  # the rows' scales before the tile is ready, read back in the tile's layout
            for half in gl.static_range(2):
                rows_1 = pid_m * BLOCK_M + half * HALF + gl.arange(0, HALF, row_layout)
                srow_s.index(half).store(gl.load(a_scale_ptr + rows_1, mask=rows_1 < M, other=0.0))
        if EARLY_RESIDUAL:  # halves unrolled, so that one half's residual at most is in flight beside a half's sums
            rows_0 = pid_m * BLOCK_M + gl.arange(0, HALF, gl.SliceLayout(1, out_layout))
            res = load_rows(res_ptr, rows_0, cols, rows_0 < M, mask_n, stride_rm)  # while the tile's main loop ends
            mbarrier.wait(acc_ready, t & 1)
            for half in gl.static_range(2):
                rows = rows_0 + half * HALF
                if half == 1:
                    res = load_rows(res_ptr, rows, cols, rows < M, mask_n, stride_rm)
                acc = _half_sums(acc_s, acc_empty, srow_s, half, s_col, bias, out_layout, HAS_BIAS, ACTIVATION,
                                 A_GROUPED, out_ptr.dtype.element_ty) + res.to(gl.float32)
                gl.store(out_ptr + rows.to(gl.int64)[:, None] * stride_om + cols[None, :],
                         acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & mask_n[None, :])
        else:
            mbarrier.wait(acc_ready, t & 1)
            for half in range(2):
                acc = _half_sums(acc_s, acc_empty, srow_s, half, s_col, bias, out_layout, HAS_BIAS, ACTIVATION,
                                 A_GROUPED, out_ptr.dtype.element_ty)
                rows = pid_m * BLOCK_M + half * HALF + gl.arange(0, HALF, gl.SliceLayout(1, out_layout))
                mask = (rows[:, None] < M) & mask_n[None, :]
                rows64 = rows.to(gl.int64)  # M·N passes 2^31 (FC1 of about 2,700 L/16 images)
                if GROUP_OUT:
                    q, scale = e4m3_codes(acc, masked_row_amax(acc, mask_n), False)
                    gl.store(scale_out_ptr + (off_n // BLOCK_N) * stride_so + rows, scale, mask=rows < M)
                    gl.store(out_ptr + rows64[:, None] * stride_om + cols[None, :], q, mask=mask)
                else:
                    if HAS_RESIDUAL:
                        acc = acc + gl.load(res_ptr + rows64[:, None] * stride_rm + cols[None, :], mask=mask,
                                            other=0.0).to(gl.float32)
                    gl.store(out_ptr + rows64[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                             mask=mask)
        t += 1


@gluon.jit(do_not_specialize=["M"])  # M = B·tokens: one compile for every batch size
def fp8_ws_gemm_kernel(
    a_desc,  # (M, K) float8 e4m3 activations: a host descriptor with a (BLOCK_M, BLOCK_K) box
    w_desc,  # (N, K) float8 e4m3 weight in nn.Linear layout: a host descriptor with a (BLOCK_N, BLOCK_K) box
    a_scale_ptr,  # (M,) fp32 per-row scales of A; A_GROUPED: (G, M) per row and FP8_GROUP columns
    scale_out_ptr,  # (G, M) fp32: the scales of the e4m3 output per row and FP8_GROUP columns (GROUP_OUT only)
    w_scale_ptr,  # (N,) fp32 per-output-channel scales of W
    bias_ptr,  # (N,) bias; read only when HAS_BIAS
    res_ptr,  # (M, N) residual, unit column stride; read only when HAS_RESIDUAL
    out_ptr,  # (M, N) output, unit column stride (bf16, fp16 or fp32; e4m3 codes with GROUP_OUT)
    M,  # rows (tokens over the whole batch)
    N,  # output features
    K,  # input features
    stride_rm,  # residual row stride
    stride_om,  # output row stride
    stride_sa,  # a_scale_ptr's group stride (A_GROUPED only)
    stride_so,  # scale_out_ptr's group stride (GROUP_OUT only)
    HAS_BIAS: gl.constexpr,  # add bias in the epilogue
    ACTIVATION: gl.constexpr,  # gemm.apply_activation's codes (not SwiGLU: the pointer engine)
    HAS_RESIDUAL: gl.constexpr,  # add the residual before the cast
    A_GROUPED: gl.constexpr,  # A per row and FP8_GROUP columns: each K step's partial times its rows' scales
    GROUP_OUT: gl.constexpr,  # store e4m3 codes per row and FP8_GROUP columns, and their scales (FC1 before FC2)
    NUM_SMS: gl.constexpr,  # programs: one per SM, each walking tiles NUM_SMS apart
    STAGES: gl.constexpr,  # the ring of (A, W) stages
    GROUP_M: gl.constexpr,  # row tiles per L2 group
):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    gl.static_assert(BLOCK_M == 128, "two math warpgroups of 64 rows")
    if A_GROUPED:
        gl.static_assert(BLOCK_K == FP8_GROUP_K, "a K step is one group of the grouped A")
    if GROUP_OUT:
        gl.static_assert(BLOCK_N == FP8_GROUP_K and not HAS_RESIDUAL, "a tile's columns are one group of the codes")
    a_s, w_s, ready, empty = allocate_ring(a_desc, w_desc, STAGES)
    acc_s, acc_ready, acc_empty = allocate_hand_over(BLOCK_M, BLOCK_N)
    srow_s = gl.allocate_shared_memory(gl.float32, [2, BLOCK_M // 2], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    fence_async_shared()  # the initialized barriers, before the TMA unit signals them (DeepGEMM fences here too)
    HALF: gl.constexpr = BLOCK_M // 2
    gl.warp_specialize([
        (_epilogue_partition, (acc_s, acc_ready, acc_empty, srow_s, a_scale_ptr, scale_out_ptr, w_scale_ptr, bias_ptr,
                               res_ptr, out_ptr, M, N, stride_rm, stride_om, stride_so, HAS_BIAS, ACTIVATION,
                               HAS_RESIDUAL, A_GROUPED, GROUP_OUT, NUM_SMS, GROUP_M)),
        (_math_partition, (a_s, w_s, ready, empty, acc_s, acc_ready, acc_empty, a_scale_ptr, M, N, K, stride_sa, HALF,
                           0, A_GROUPED, NUM_SMS, STAGES, GROUP_M)),
        (_math_partition, (a_s, w_s, ready, empty, acc_s, acc_ready, acc_empty, a_scale_ptr, M, N, K, stride_sa, HALF,
                           1, A_GROUPED, NUM_SMS, STAGES, GROUP_M)),
        (load_partition, (a_desc, w_desc, a_s, w_s, ready, empty, M, N, K, NUM_SMS, STAGES, GROUP_M)),
    ], [MATH_WARPS, MATH_WARPS, LOAD_WARPS], [MATH_REGS, MATH_REGS, LOAD_REGS])


def takes(activation: int, precise_acc: bool) -> bool:
    """Whether this engine runs a launch: promoted (the engine's reason to exist), not SwiGLU (two accumulators: the
    pointer engine)."""
    return activation != SWIGLU and precise_acc


def launch_fp8_ws_gemm(a_q, a_scale, weight, w_scale, bias, out, *, activation=0, residual=None, out_scale=None):
    """gemm_fp8_tma.launch_fp8_tma_gemm's contract (promoted) for the launches `takes` accepts, on operands
    select_fp8_engine gave to "ws" (an sm_90 GPU, TMA-addressable)."""
    bm, bn, bk, stages, group_m = TILE
    M, K = a_q.shape
    N = weight.shape[0]
    a_grouped = a_scale.dim() == 2
    sms = num_sms(a_q.device)
    grid = (min(sms, cdiv(M, bm) * cdiv(N, bn)),)
    fp8_ws_gemm_kernel[grid](
        TensorDescriptor.from_tensor(a_q, [bm, bk], A_LAYOUT),
        TensorDescriptor.from_tensor(weight, [bn, bk], W_LAYOUT),
        a_scale, out_scale if out_scale is not None else w_scale, w_scale, bias if bias is not None else out,
        residual if residual is not None else out, out,
        M, N, K, 0 if residual is None else residual.stride(0), out.stride(0), a_scale.stride(1) if a_grouped else 0,
        out_scale.stride(1) if out_scale is not None else 0,
        HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual is not None, A_GROUPED=a_grouped,
        GROUP_OUT=out_scale is not None, NUM_SMS=sms, STAGES=stages, GROUP_M=group_m, num_warps=MATH_WARPS.value,
    )  # fmt: skip
    return out


# ---- AOT ------------------------------------------------------------------------------------------------------------
def aot_variants(exhaustive: bool = False):
    """QKV (bias), FC1 (bias, GELU, e4m3 codes per 128 columns out; also through libdevice's erf), the out-projection
    (bias, residual) and FC2 (grouped A, bias, residual), bf16; FC1 with a bf16 output, and fp16 and fp32 outputs of
    the out-projection, with `exhaustive`. FP8 wgmma and Gluon's warp specialization: sm_90 only."""
    out = [_variant(torch.bfloat16, 0, False, False, False, "ln_qkv"),
           _variant(torch.bfloat16, 1, False, False, True, "ln_linear"),
           _variant(torch.bfloat16, 0, True, False, False, "linear_residual"),
           _variant(torch.bfloat16, 0, True, True, False, "linear_residual"),
           _variant(torch.bfloat16, GELU_LIBDEVICE, False, False, True, "ln_linear")]  # VITFAST_GELU=libdevice
    if exhaustive:
        out += [_variant(torch.bfloat16, 1, False, False, False, "ln_linear")]
        out += [_variant(dt, 0, True, False, False, "linear_residual") for dt in (torch.float16, torch.float32)]
    return out


def _variant(out_dtype, activation, has_residual, a_grouped, group_out, op, num_sms=132):
    bm, bn, bk, stages, group_m = TILE
    fp8 = TL_SIG[FP8_DTYPE]
    p = "*" + TL_SIG[out_dtype]
    sig = {"a_desc": f"tensordesc<{fp8}[{bm},{bk}],{A_LAYOUT!r}>",
           "w_desc": f"tensordesc<{fp8}[{bn},{bk}],{W_LAYOUT!r}>",
           "a_scale_ptr": "*fp32", "scale_out_ptr": "*fp32", "w_scale_ptr": "*fp32", "bias_ptr": p, "res_ptr": p,
           "out_ptr": "*" + fp8 if group_out else p, "M": "i32", "N": "i32", "K": "i32", "stride_rm": "i32",
           "stride_om": "i32", "stride_sa": "i32", "stride_so": "i32"}
    constexprs = {"HAS_BIAS": True, "ACTIVATION": activation, "HAS_RESIDUAL": has_residual, "A_GROUPED": a_grouped,
                  "GROUP_OUT": group_out, "NUM_SMS": num_sms, "STAGES": stages, "GROUP_M": group_m}
    for name in constexprs:
        sig[name] = "constexpr"
    return {"fn": fp8_ws_gemm_kernel, "gluon": True, "signature": sig, "constexprs": constexprs,
            # promoted: a zero-started wgmma group a K step in each math warpgroup
            "tile": f"{bm}x{bn}x{bk} (16 warps)", "promoted": 2,
            "vit": lambda cfg, batch: [],  # a switch (VITFAST_FP8_ENGINE=ws): no preset runs it by default
            "num_warps": MATH_WARPS.value, "num_stages": 1, "min_cc": 90, "op": "linear_fp8", "main_loop": "gemm",
            "programs_per_sm": 1, "tables": ("hopper",), "divisible": ("N", "K", "stride_rm", "stride_om")}
