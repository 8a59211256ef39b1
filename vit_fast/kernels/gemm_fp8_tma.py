"""The persistent TMA engine for FP8 GEMMs on Hopper (sm_90): out = epilogue((A_q @ W_q^T) · s_row · s_col).

Why a second FP8 engine: on an H200 the pointer engine (gemm_fp8.py: per-thread addresses, cp.async, one program
per tile, 64-row tiles as the autotuner picked them) ran its FP8 GEMMs at 620-700 TFLOP/s, the speed of the bf16
TMA GEMMs, a third of the FP8 tensor cores' peak (benchmarks/NOTES.md, "Second GPU lease"). This engine feeds FP8
wgmma the way gemm_tma.py feeds bf16: TMA descriptors for A (M, K) and W (N, K) e4m3, 128-deep K steps, persistent
programs that walk GROUP_M-grouped tiles, and rows with two programs per SM (PER_SM) so that one's epilogue overlaps
the other's MMAs (the second starting one tile's main loop late, stagger.py). TMA pads out-of-range loads with zeros
and clips stores, so ragged M, N and K need no masks.

What it runs: launches whose A is e4m3: QKV and FC1 after the quantizing LayerNorm (per-row scales), the
out-projection on the codes attention wrote (kernels/attention.py: per-row scales), and FC2 on the codes FC1's
epilogue wrote, one scale per row and 128 columns (A_GROUPED: each K step's
partial sum times its rows' scales of that group; GROUP_OUT in FC1: the codes and their scales, TMA-stored). SwiGLU
stays on the pointer engine. The epilogue is the pointer engine's: acc · s_row · s_col, bias, activation, residual,
one cast (or the codes); PRECISE_ACC promotes every BLOCK_K of K into fp32 as there (max_num_imprecise_acc; A and W
both come from shared memory, so the request is kept).

The op modules choose it through `select_fp8_engine`: by default on an sm_90 GPU, where an H200 measured it 1.18-1.30x
faster than the pointer engine end to end (benchmarks/NOTES.md, "Third GPU lease"); `VITFAST_FP8_ENGINE=tma|pointer`
forces one (=tma also under the interpreter, which is how the tests run it on a CPU).
"""
import torch
import triton
import triton.language as tl

from ._common import (FAMILY_SMEM, FP8_DTYPE, FP8_ENGINE_ENV, FP8_GROUP, GELU_LIBDEVICE, GEMM_DIVISIBLE, SWIGLU,
                      TL_SIG, check, gluon_runs, is_interpreting, is_sm90, jit_fn, m_bucket, switch_value)
from .autotune import autotuned
from .gemm import apply_activation, grouped_tile
from .gemm_fp8 import dequantize_tile, launch_fp8_gemm, precise_acc_setting
from .quant_fp8 import e4m3_codes, masked_row_amax
from .gemm_tma import (INTERPRETER_TMA, SM90_SM_SMEM, _tma_addressable, co_resident, persistent_configs,
                       persistent_grid, persistent_prune, programs_per_sm)
from .stagger import MACS_PER_NS_FP8, stagger_rule, staggered_start
from .tma_desc import descriptor_rules, host_descriptors, kernel_descriptors, operand_signature

GROUP_K = tl.constexpr(FP8_GROUP)  # FP8_GROUP inside the kernels

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, EPI_SPLIT); K is 1 byte, so BLOCK_K 128 is one 128-byte swizzle
# row. Registers, spills and shared memory of every row are in the static report (benchmarks/static/report.md).
HOPPER_FP8_TMA = [
    (128, 256, 128, 8, 3, 2),
    (128, 128, 128, 8, 4, 1),
    (128, 128, 128, 4, 3, 2),
    (64, 128, 128, 4, 4, 1),
    (128, 64, 128, 4, 4, 1),
    (64, 64, 128, 4, 4, 1),
    (64, 128, 128, 4, 3, 1),  # two programs per SM for every launch, those the 128x128 row cannot take too
]
# Rows launched with two programs per SM (gemm_tma.py's docstring), so one's promotion drains and epilogues overlap
# the other's MMAs. 128x128: 98,304 B of operand stages and a 16 KB store buffer, two fit an SM's 233,472 B without
# a residual (QKV). 64x128: 73,728 B of stages, a 16 KB store and a 16 KB residual buffer, two fit with a residual,
# and 64 accumulator registers a thread leave room for the promotion's second (all four GEMMs; benchmarks/NOTES.md,
# "Two programs per SM for every FP8 GEMM").
PER_SM = {(128, 128, 128, 4, 3, 2): 2, (64, 128, 128, 4, 3, 1): 2}
# Rows that spill on sm_90 once the promotion's second accumulator exists (PRECISE_ACC=1, and FC2's grouped A, which
# is promoted by construction): the report's rows.
PROMOTED_SPILLS = {(128, 256, 128, 8, 3, 2)}
# Rows that spill on sm_90 when FC1 writes e4m3 codes (the 128x128 two-programs row keeps both 64-wide slices' values
# for their joint maximum: 128 B under triton 3.6; 128-168 B under 3.9 until the fitted GELU, clean since) or FC2
# scales grouped A (104 B)
GROUP_OUT_SPILLS = {(128, 128, 128, 4, 3, 2)}
A_GROUPED_SPILLS = {(128, 128, 128, 4, 3, 2)}
FP8_TMA_KEY = ["M_BUCKET", "N", "K", "HAS_BIAS", "ACTIVATION", "HAS_RESIDUAL", "PRECISE_ACC", "A_GROUPED",
               "GROUP_OUT", "HOST_DESC"]
# Under the interpreter, a launch that writes e4m3 codes takes one of these (gemm_tma's row otherwise): 64-wide
# epilogue slices that share one group, or 128-wide slices that are one group each (the tests pick with
# INTERPRETER_GROUP_OUT)
INTERPRETER_GROUP_OUT_TILES = {"shared": (32, 128, 32, 4, 1, 2), "sliced": (32, 256, 32, 4, 1, 2)}
INTERPRETER_GROUP_OUT = "shared"


def per_sm(tile) -> int:
    return programs_per_sm(tile, PER_SM)


def _configs():  # under the interpreter: gemm_tma's one row (fewer programs than the tests' tiles), and the above
    if is_interpreting():
        rows = [INTERPRETER_TMA, *INTERPRETER_GROUP_OUT_TILES.values()]
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPI_SPLIT": e,
                               "PER_SM": per_sm((bm, bn, bk, w, st, e))}, num_warps=w, num_stages=st)
                for bm, bn, bk, w, st, e in rows]
    return persistent_configs(HOPPER_FP8_TMA, PER_SM)


def smem_estimate(tile, has_residual: bool, out_bytes: int = 2) -> int:
    """e4m3 A and W stages, plus the epilogue's store (and residual) staging buffers in the output dtype, bytes."""
    bm, bn, bk, _, stages, epi = tile
    return stages * (bm + bn) * bk + bm * (bn // epi) * out_bytes * (2 if has_residual else 1)


def group_tile_ok(tile, a_grouped: bool, group_out: bool) -> bool:
    """Grouped A (FC2): BLOCK_K divides FP8_GROUP (each K step's partial sum gets one scale per row). Codes out
    (FC1): a tile holds whole groups, and an epilogue slice is a group or half of one (then the tile is one group,
    and both slices are quantized with their joint maximum)."""
    _, bn, bk, _, _, epi = tile
    epi_n = bn // epi
    return ((not a_grouped or FP8_GROUP % bk == 0)
            and (not group_out or epi_n == FP8_GROUP or bn == FP8_GROUP))


def tile_allowed(tile, smem, has_residual=False, precise_acc=True, out_bytes=2, sm_smem=SM90_SM_SMEM,
                 a_grouped=False, group_out=False) -> bool:
    """The prune's rule for one HOPPER_FP8_TMA row (BLOCK_M <= M aside): within a block's shared memory, not a known
    promoted spill (grouped A is promoted by construction), suited to the launch's groups, and for a PER_SM row
    that many programs within the SM's shared memory."""
    if (precise_acc or a_grouped) and tuple(tile) in PROMOTED_SPILLS:
        return False
    if not group_tile_ok(tile, a_grouped, group_out):
        return False
    if (group_out and tuple(tile) in GROUP_OUT_SPILLS) or (a_grouped and tuple(tile) in A_GROUPED_SPILLS):
        return False
    need = smem_estimate(tile, has_residual, out_bytes)
    return need <= smem and co_resident(PER_SM.get(tuple(tile), 1), need, sm_smem)


def _prune(configs, named_args, **kwargs):
    kwargs = {**(named_args or {}), **kwargs}  # the launcher passes every argument by keyword (gemm_tma._prune)
    group_out = kwargs.get("GROUP_OUT", False)
    rows = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages,
             c.kwargs["EPI_SPLIT"]) for c in configs]
    if set(rows) <= {INTERPRETER_TMA, *INTERPRETER_GROUP_OUT_TILES.values()}:  # the interpreter's configs
        want = INTERPRETER_GROUP_OUT_TILES[INTERPRETER_GROUP_OUT] if group_out else INTERPRETER_TMA
        return [c for c, row in zip(configs, rows) if row == want]
    out_bytes = kwargs["out"].element_size()
    a_grouped = kwargs.get("A_GROUPED", False)
    configs = [c for c, row in zip(configs, rows) if group_tile_ok(row, a_grouped, group_out)]  # the fallback too
    return persistent_prune(configs, kwargs["a"], kwargs["M_BUCKET"], lambda tile, smem, sm_smem: tile_allowed(
        tile, smem, kwargs.get("HAS_RESIDUAL", False), kwargs.get("PRECISE_ACC", True), out_bytes, sm_smem,
        a_grouped, group_out))


@triton.jit
def _values(acc, rows, cols, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, HAS_BIAS: tl.constexpr,
            ACTIVATION: tl.constexpr, A_GROUPED: tl.constexpr, OUT_TY: tl.constexpr):
    """One (sub)tile's fp32 values: scales (the row scales are already in acc with A_GROUPED), bias, activation (for
    an output of element type OUT_TY)."""
    if A_GROUPED:
        s_row = tl.full([rows.shape[0]], 1.0, tl.float32)
    else:
        s_row = tl.load(a_scale_ptr + rows, mask=rows < M, other=0.0)
    mask_n = cols < N
    acc = dequantize_tile(acc, s_row, tl.load(w_scale_ptr + cols, mask=mask_n, other=0.0), bias_ptr, cols, mask_n,
                          HAS_BIAS)
    return apply_activation(acc, ACTIVATION, OUT_TY)


@triton.jit
def _finish(acc, rows, cols, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, res_desc, out_desc, off_m, off_n,
            HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, A_GROUPED: tl.constexpr):
    """Epilogue of one (sub)tile: values, residual (TMA), one cast, TMA store (clipped at M and N)."""
    acc = _values(acc, rows, cols, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, HAS_BIAS, ACTIVATION, A_GROUPED,
                  out_desc.dtype)
    if HAS_RESIDUAL:
        acc += res_desc.load([off_m, off_n]).to(tl.float32)
    out_desc.store([off_m, off_n], acc.to(out_desc.dtype))


@triton.jit
def _store_codes(y, amax, rows, M, N, scale_out_ptr, stride_so, out_desc, off_m, off_n, ROUND_IN_FP32: tl.constexpr,
                 WRITE_SCALE: tl.constexpr):
    """e4m3 codes of y at its group's max |y| (quant_fp8's rule), TMA-stored (clipped at M and N); the group's
    scales once, for a group that starts before N."""
    q, scale = e4m3_codes(y, amax, ROUND_IN_FP32)
    out_desc.store([off_m, off_n], q)
    if WRITE_SCALE:
        rows_end = tl.where(off_n < N, M, 0)
        tl.store(scale_out_ptr + (off_n // GROUP_K) * stride_so + rows, scale, mask=rows < rows_end)


@autotuned(_configs(), FP8_TMA_KEY, _prune)
# a, w, res, out: descriptors of the config's boxes (tma_desc.py); STAGGER: stagger.py
@triton.heuristics({"STAGGER": stagger_rule, **descriptor_rules()})
@triton.jit(do_not_specialize=["M"])
def fp8_tma_gemm_kernel(
    a,  # (M, K) float8 e4m3 activations, unit column stride, 16-byte aligned rows: a descriptor (HOST_DESC) or a
    # pointer
    a_scale_ptr,  # (M,) fp32 per-row (per-token) scales of A; A_GROUPED: (G, M) per row and FP8_GROUP columns
    scale_out_ptr,  # (G, M) fp32: the scales of the e4m3 output per row and FP8_GROUP columns (GROUP_OUT only)
    w,  # (N, K) float8 e4m3 weight in nn.Linear layout, unit column stride
    w_scale_ptr,  # (N,) fp32 per-output-channel scales of W
    bias_ptr,  # (N,) bias; read only when HAS_BIAS
    res,  # (M, N) residual, unit column stride; None without HAS_RESIDUAL
    out,  # (M, N) output, unit column stride (e4m3 codes with GROUP_OUT)
    M,  # rows (tokens over the whole batch); not specialized, so batch sizes share one binary
    N,  # output features
    K,  # input features
    stride_am,  # A row stride (bytes = elements; a multiple of 16); the four strides are read only without HOST_DESC
    stride_wn,  # W row stride
    stride_rm,  # residual row stride
    stride_om,  # output row stride
    stride_sa,  # a_scale_ptr's group stride (A_GROUPED only)
    stride_so,  # scale_out_ptr's group stride (GROUP_OUT only)
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    HAS_BIAS: tl.constexpr,  # add bias in the epilogue
    ACTIVATION: tl.constexpr,  # 0 none, 1 exact-erf GELU, 2 tanh GELU, 3 quick GELU (SwiGLU: the pointer engine),
    # 5 exact GELU through libdevice's erf (VITFAST_GELU=libdevice)
    HAS_RESIDUAL: tl.constexpr,  # add the residual after the activation
    PRECISE_ACC: tl.constexpr,  # promote the FP8 partial sums into fp32 every BLOCK_K (gemm_fp8.py's docstring)
    A_GROUPED: tl.constexpr,  # A per row and FP8_GROUP columns: each K step's zero-started sum times its scales
    GROUP_OUT: tl.constexpr,  # store e4m3 codes per row and FP8_GROUP columns, and their scales (FC1 before FC2)
    ROUND_IN_FP32: tl.constexpr,  # GROUP_OUT under the interpreter: round to e4m3 in fp32 first (quant_fp8.py)
    NUM_SMS: tl.constexpr,  # the device's SMs; NUM_SMS * PER_SM programs at most, each walks tiles that far apart
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # output features per tile
    BLOCK_K: tl.constexpr,  # reduction step (one TMA box of A and of W per step)
    GROUP_M: tl.constexpr,  # row tiles per L2 group
    EPI_SPLIT: tl.constexpr,  # 1 or 2: epilogue on BLOCK_N / EPI_SPLIT-wide column slices
    PER_SM: tl.constexpr,  # programs per SM (PER_SM rows: 2, co-resident so their epilogues overlap MMAs)
    HOST_DESC: tl.constexpr,  # a, w, res, out are host descriptors of the config's boxes (tma_desc.py); else
    # pointers, and each program builds its descriptors (VITFAST_TMA_DESC=device)
    STAGGER: tl.constexpr,  # the second program on each SM starts one tile's main loop late (stagger.py)
):
    EPI_N: tl.constexpr = BLOCK_N // EPI_SPLIT
    if A_GROUPED:
        tl.static_assert(GROUP_K % BLOCK_K == 0)
    PROGRAMS: tl.constexpr = NUM_SMS * PER_SM
    a_desc, w_desc, res_desc, out_desc = kernel_descriptors(
        a, w, res, out, M, N, K, N, stride_am, stride_wn, stride_rm, stride_om, BLOCK_M, BLOCK_N, BLOCK_K, EPI_N,
        HAS_RESIDUAL, HOST_DESC)
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    staggered_start(K, num_tiles, NUM_SMS, PER_SM, BLOCK_M, BLOCK_N, MACS_PER_NS_FP8, STAGGER)
    tile_c = tl.program_id(0) - PROGRAMS  # the epilogue's own counter, as in gemm_tma.py
    for tile in tl.range(tl.program_id(0), num_tiles, PROGRAMS, flatten=True):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        a_rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # A_GROUPED's scales
        for ki in range(k_tiles):
            a_tile = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
            w_tile = w_desc.load([pid_n * BLOCK_N, ki * BLOCK_K])
            if A_GROUPED:  # promoted by construction: the partial sum starts from zero, is scaled, then added
                s_k = tl.load(a_scale_ptr + (ki * BLOCK_K // GROUP_K) * stride_sa + a_rows, mask=a_rows < M,
                              other=0.0)
                acc += tl.dot(a_tile, w_tile.T) * s_k[:, None]
            elif PRECISE_ACC:
                acc = tl.dot(a_tile, w_tile.T, acc, max_num_imprecise_acc=BLOCK_K)
            else:
                acc = tl.dot(a_tile, w_tile.T, acc)

        tile_c += PROGRAMS
        pid_m, pid_n = grouped_tile(tile_c, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        rows = off_m + tl.arange(0, BLOCK_M)
        if GROUP_OUT:  # (group_tile_ok) each slice is a group, or both slices are one
            tl.static_assert((EPI_N == GROUP_K or BLOCK_N == GROUP_K) and not HAS_RESIDUAL)
            if EPI_SPLIT == 2:
                acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, EPI_N)), (0, 2, 1)))
                cols0 = off_n + tl.arange(0, EPI_N)
                cols1 = cols0 + EPI_N
                y0 = _values(acc0, rows, cols0, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, HAS_BIAS, ACTIVATION,
                             A_GROUPED, out_desc.dtype)
                if EPI_N >= GROUP_K:  # each slice its own group: one slice's values live at a time
                    _store_codes(y0, masked_row_amax(y0, cols0 < N), rows, M, N, scale_out_ptr, stride_so, out_desc,
                                 off_m, off_n, ROUND_IN_FP32, True)
                    y1 = _values(acc1, rows, cols1, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, HAS_BIAS, ACTIVATION,
                                 A_GROUPED, out_desc.dtype)
                    _store_codes(y1, masked_row_amax(y1, cols1 < N), rows, M, N, scale_out_ptr, stride_so, out_desc,
                                 off_m, off_n + EPI_N, ROUND_IN_FP32, True)
                else:  # one group over both slices: their joint maximum
                    y1 = _values(acc1, rows, cols1, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, HAS_BIAS, ACTIVATION,
                                 A_GROUPED, out_desc.dtype)
                    m = tl.maximum(masked_row_amax(y0, cols0 < N), masked_row_amax(y1, cols1 < N))
                    _store_codes(y0, m, rows, M, N, scale_out_ptr, stride_so, out_desc, off_m, off_n, ROUND_IN_FP32,
                                 True)
                    _store_codes(y1, m, rows, M, N, scale_out_ptr, stride_so, out_desc, off_m, off_n + EPI_N,
                                 ROUND_IN_FP32, False)
            else:
                cols = off_n + tl.arange(0, BLOCK_N)
                y = _values(acc, rows, cols, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, HAS_BIAS, ACTIVATION,
                            A_GROUPED, out_desc.dtype)
                _store_codes(y, masked_row_amax(y, cols < N), rows, M, N, scale_out_ptr, stride_so, out_desc, off_m,
                             off_n, ROUND_IN_FP32, True)
        elif EPI_SPLIT == 2:
            acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, EPI_N)), (0, 2, 1)))
            _finish(acc0, rows, off_n + tl.arange(0, EPI_N), M, N, a_scale_ptr, w_scale_ptr, bias_ptr, res_desc,
                    out_desc, off_m, off_n, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, A_GROUPED)
            _finish(acc1, rows, off_n + EPI_N + tl.arange(0, EPI_N), M, N, a_scale_ptr, w_scale_ptr, bias_ptr,
                    res_desc, out_desc, off_m, off_n + EPI_N, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, A_GROUPED)
        else:
            _finish(acc, rows, off_n + tl.arange(0, BLOCK_N), M, N, a_scale_ptr, w_scale_ptr, bias_ptr, res_desc,
                    out_desc, off_m, off_n, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, A_GROUPED)


# ---- dispatch -------------------------------------------------------------------------------------------------------
def _auto_picks_tma(device: torch.device) -> bool:
    """VITFAST_FP8_ENGINE=auto's choice for operands TMA can address: this engine on an sm_90 GPU (never under the
    interpreter, where the tests ask for each engine by name)."""
    if is_interpreting() or device.type != "cuda":
        return False
    return is_sm90(device.index if device.index is not None else torch.cuda.current_device())


def select_fp8_engine(k: int, weight, out, residual=None, activation=0, a=None) -> str:
    """"tma", "ws" or "pointer" for an FP8 launch on already-checked operands whose A is (or will be) fresh
    contiguous e4m3 rows of `k` bytes from the row quantizer, or the caller's e4m3 rows `a`; the op modules ask before
    they quantize, then launch through `fp8_launcher`. VITFAST_FP8_ENGINE=auto (the default): this engine on an sm_90
    GPU for operands TMA can address (measured faster than the pointer engine on an H200: benchmarks/NOTES.md, "Third
    GPU lease"), the pointer engine elsewhere (sm_89) and under the interpreter. =tma forces this engine (on an sm_90
    GPU, or under the interpreter: how the tests run it on a CPU) and fails with one line where it cannot run; =ws
    the warp-specialized engine (gemm_fp8_ws.py: an sm_90 GPU only, never the interpreter; the launches it does not
    take run here); =pointer forces the pointer engine. SwiGLU's FC1 always takes the pointer engine."""
    choice = switch_value(FP8_ENGINE_ENV)
    if choice == "pointer" or activation == SWIGLU:
        return "pointer"
    bad = {name: (tuple(t.shape), t.stride(), t.data_ptr() % 16)
           for name, t in dict(weight=weight, out=out, residual=residual, a=a).items()
           if t is not None and not _tma_addressable(t)}
    if k % 16:
        bad["a"] = ((None, k), (k, 1), 0)  # e4m3 rows of k bytes: the row stride is not a multiple of 16
    if choice == "auto":
        return "tma" if not bad and _auto_picks_tma(weight.device) else "pointer"
    if choice == "ws":
        check(gluon_runs(), f"{FP8_ENGINE_ENV}=ws: device", "an sm_90 GPU (Gluon kernels do not run under the "
              "interpreter)", "TRITON_INTERPRET=1")
    if not is_interpreting():
        check(_auto_picks_tma(weight.device), f"{FP8_ENGINE_ENV}={choice}: device", "an sm_90 GPU",
              torch.cuda.get_device_name(weight.device) if weight.is_cuda else str(weight.device))
    check(not bad, f"{FP8_ENGINE_ENV}={choice}: FP8 operands", "2-D, unit last stride, 16-byte aligned base and rows",
          f"(shape, strides, base % 16) {bad}")
    return choice


def fp8_launcher(engine: str):
    """The launcher of `engine` (select_fp8_engine's answer), all with gemm_fp8.launch_fp8_gemm's contract."""
    return {"tma": launch_fp8_tma_gemm, "ws": _launch_ws_or_tma, "pointer": launch_fp8_gemm}[engine]


def launch_fp8_tma_gemm(a_q, a_scale, weight, w_scale, bias, out, *, activation=0, residual=None, precise_acc=None,
                        out_scale=None):
    """gemm_fp8.launch_fp8_gemm's contract (a_scale (M,) or grouped (M, G)), on operands
    select_fp8_engine gave to "tma"."""
    if precise_acc is None:
        precise_acc = precise_acc_setting()
    M, K = a_q.shape
    N = weight.shape[0]
    num_sms, grid = persistent_grid(a_q.device, M, N)
    a_grouped = a_scale.dim() == 2
    # every argument by keyword: tma_desc.descriptor_rules replaces the operands with descriptors of the config's boxes
    fp8_tma_gemm_kernel[grid](
        a_scale_ptr=a_scale, scale_out_ptr=out_scale if out_scale is not None else w_scale, w_scale_ptr=w_scale,
        bias_ptr=bias if bias is not None else out,
        M=M, N=N, K=K, stride_am=a_q.stride(0), stride_wn=weight.stride(0),
        stride_rm=0 if residual is None else residual.stride(0),
        stride_om=out.stride(0), stride_sa=a_scale.stride(1) if a_grouped else 0,
        stride_so=out_scale.stride(1) if out_scale is not None else 0, M_BUCKET=m_bucket(M),
        HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual is not None,
        PRECISE_ACC=precise_acc or a_grouped, A_GROUPED=a_grouped, GROUP_OUT=out_scale is not None,
        ROUND_IN_FP32=is_interpreting(), NUM_SMS=num_sms, HOST_DESC=host_descriptors(),
        a=a_q, w=weight, res=residual, out=out,
    )  # fmt: skip
    return out


def _launch_ws_or_tma(a_q, a_scale, weight, w_scale, bias, out, *, activation=0, residual=None, precise_acc=None,
                      out_scale=None):
    """VITFAST_FP8_ENGINE=ws: the warp-specialized engine for the launches it takes (every promoted one: grouped A is
    promoted by construction), this engine for fast accumulation (VITFAST_FP8_PRECISE_ACC=0)."""
    from . import gemm_fp8_ws  # Gluon's Hopper API, imported only where this engine is asked for

    if precise_acc is None:
        precise_acc = precise_acc_setting()
    if gemm_fp8_ws.takes(activation, precise_acc or a_scale.dim() == 2):
        return gemm_fp8_ws.launch_fp8_ws_gemm(a_q, a_scale, weight, w_scale, bias, out, activation=activation,
                                              residual=residual, out_scale=out_scale)
    return launch_fp8_tma_gemm(a_q, a_scale, weight, w_scale, bias, out, activation=activation, residual=residual,
                               precise_acc=precise_acc, out_scale=out_scale)


# ---- AOT ------------------------------------------------------------------------------------------------------------
def aot_variants(exhaustive: bool = False):
    """bf16 rows at every Hopper tile for QKV (no activation), FC1 (GELU, bias, e4m3 codes out per 128 columns) and
    FC2 (A grouped per 128 columns, residual) and the out-projection (per-row A, residual), each promoted and not
    (FC2 is promoted by construction: once), FC1 through libdevice's erf (VITFAST_GELU) at one tile, QKV with
    device-side descriptors (VITFAST_TMA_DESC=device) at one tile, QKV on the two-programs rows without their
    staggered start (VITFAST_STAGGER=0), fp32 outputs on the two-programs rows that take them; fp16 and fp32 outputs
    at the 128x128 tile with `exhaustive`. Tiles the
    prune drops for a launch as spills (PROMOTED_SPILLS, GROUP_OUT_SPILLS, A_GROUPED_SPILLS) are compiled to show why
    and gate nothing; tiles the group rules exclude (group_tile_ok) are not compiled. FP8 wgmma: sm_90 only (min_cc
    90)."""
    out = []
    for tile in HOPPER_FP8_TMA:
        for precise in (True, False):
            out.append(_variant(torch.bfloat16, 0, True, False, precise, tile, "ln_qkv"))  # QKV
            if group_tile_ok(tile, False, True):  # (other tiles fail group_tile_ok's static_assert)
                out.append(_variant(torch.bfloat16, 1, True, False, precise, tile, "ln_linear",
                                    group_out=True))  # FC1
            out.append(_variant(torch.bfloat16, 0, True, True, precise, tile, "linear_residual"))  # out-projection
        if group_tile_ok(tile, True, False):
            out.append(_variant(torch.bfloat16, 0, True, True, True, tile, "linear_residual", a_grouped=True))  # FC2
    # FC1 with VITFAST_GELU=libdevice, promoted, at the first tile its prune keeps
    fc1 = next(t for t in HOPPER_FP8_TMA if tile_allowed(t, FAMILY_SMEM["hopper"], False, True, 1, group_out=True))
    out.append(_variant(torch.bfloat16, GELU_LIBDEVICE, True, False, True, fc1, "ln_linear", group_out=True))
    # descriptors built by each program (VITFAST_TMA_DESC=device): QKV, promoted, at the first tile its prune keeps
    qkv = next(t for t in HOPPER_FP8_TMA if tile_allowed(t, FAMILY_SMEM["hopper"], False, True, 2))
    out.append(_variant(torch.bfloat16, 0, True, False, True, qkv, "ln_qkv", host=False))
    # the two-programs rows without their staggered start (VITFAST_STAGGER=0): QKV, promoted, which takes both
    out += [_variant(torch.bfloat16, 0, True, False, True, tile, "ln_qkv", stagger=False) for tile in PER_SM]
    # fp32 outputs (QKV, FC1 without codes), promoted, on the two-programs rows whose prune keeps them (64x128)
    out += [_variant(torch.float32, act, True, False, True, tile, "ln_linear") for tile in PER_SM for act in (0, 1)
            if tile_allowed(tile, FAMILY_SMEM["hopper"], False, True, 4)]
    if exhaustive:
        out += [_variant(dt, act, True, False, True, HOPPER_FP8_TMA[1], "ln_linear")
                for dt in (torch.float16, torch.float32) for act in (0, 1, 2, 3)]
    return out


def _variant(out_dtype, activation, has_bias, has_residual, precise, tile, op, a_grouped=False, group_out=False,
             num_sms=132, host=True, stagger=True):
    bm, bn, bk, warps, stages, epi = tile
    p = "*" + TL_SIG[out_dtype]
    box = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "EPI_SPLIT": epi}
    fp8 = TL_SIG[FP8_DTYPE]
    out_elem = fp8 if group_out else TL_SIG[out_dtype]
    sig = {
        "a": operand_signature("a", fp8, box, host), "a_scale_ptr": "*fp32", "scale_out_ptr": "*fp32",
        "w": operand_signature("w", fp8, box, host), "w_scale_ptr": "*fp32", "bias_ptr": p,
        "out": operand_signature("out", out_elem, box, host),
        "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_wn": "i32", "stride_rm": "i32",
        "stride_om": "i32", "stride_sa": "i32", "stride_so": "i32", "M_BUCKET": "i32",
    }  # fmt: skip
    constexprs = {
        "HAS_BIAS": has_bias, "ACTIVATION": activation, "HAS_RESIDUAL": has_residual, "PRECISE_ACC": precise,
        "A_GROUPED": a_grouped, "GROUP_OUT": group_out, "ROUND_IN_FP32": False, "NUM_SMS": num_sms,
        "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPI_SPLIT": epi, "PER_SM": per_sm(tile),
        "HOST_DESC": host, "STAGGER": per_sm(tile) > 1 and stagger,  # stagger_rule on a GPU (False: VITFAST_STAGGER=0)
    }  # fmt: skip
    if has_residual:
        sig["res"] = operand_signature("res", TL_SIG[out_dtype], box, host)
    else:
        constexprs["res"] = None  # the launcher passes None without a residual
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    out_bytes = 1 if group_out else torch.empty((), dtype=out_dtype).element_size()
    fits = tile_allowed(tile, FAMILY_SMEM["hopper"], has_residual, precise, out_bytes, a_grouped=a_grouped,
                        group_out=group_out)
    switched = activation == GELU_LIBDEVICE or not host or not stagger
    extra = {"vit": lambda cfg, batch: []} if switched else {}  # a switch: no preset runs it
    return {"fn": jit_fn(fp8_tma_gemm_kernel), "signature": sig, "constexprs": constexprs, **extra, "num_warps": warps,
            "num_stages": stages, "min_cc": 90, "op": "linear_fp8", "main_loop": "gemm",
            "programs_per_sm": per_sm(tile), "tables": ("hopper",) if fits else (),
            "divisible": GEMM_DIVISIBLE}
