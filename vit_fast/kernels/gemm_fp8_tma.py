"""The persistent TMA engine for FP8 GEMMs on Hopper (sm_90): out = epilogue((A_q @ W_q^T) · s_row · s_col).

Why a second FP8 engine: on an H200 the pointer engine (gemm_fp8.py: per-thread addresses, cp.async, one program
per tile, 64-row tiles as the autotuner picked them) ran its FP8 GEMMs at 620-700 TFLOP/s, the speed of the bf16
TMA GEMMs, a third of the FP8 tensor cores' peak (benchmarks/NOTES.md, "Second GPU lease"). This engine feeds FP8
wgmma the way gemm_tma.py feeds bf16: TMA descriptors for A (M, K) and W (N, K) e4m3, 128-deep K steps, persistent
programs that walk GROUP_M-grouped tiles, and rows with two programs per SM (PER_SM) so that one's epilogue overlaps
the other's MMAs. TMA pads out-of-range loads with zeros and clips stores, so ragged M, N and K need no masks.

What it runs: launches whose A is e4m3 rows with per-row scales: QKV and FC1 after the quantizing LayerNorm, and FC2
and the out-projection after a quantization pass of their own (quant_fp8.py; the same codes as the pointer engine's
QUANT_A, which re-quantizes each A tile once per column tile, ~320 issue cycles per K step at 64x128x128 against
256 cycles of FP8 MMAs). SwiGLU stays on the pointer engine. The epilogue is the pointer engine's: acc · s_row ·
s_col, bias, activation, residual, one cast, the stored rows' maxima (ROW_AMAX_OUT); PRECISE_ACC promotes every
BLOCK_K of K into fp32 as there (max_num_imprecise_acc; A and W both come from shared memory, so the request is
kept).

The op modules choose it through `select_fp8_engine`: by default on an sm_90 GPU, where an H200 measured it 1.18-1.30x
faster than the pointer engine end to end (benchmarks/NOTES.md, "Third GPU lease"); `VITFAST_FP8_ENGINE=tma|pointer`
forces one (=tma also under the interpreter, which is how the tests run it on a CPU). The model then asks attention
and FC1 for no row maxima (`fp8_gemm_reads_row_amax`).
"""
import torch
import triton
import triton.language as tl

from ._common import (FAMILY_SMEM, FP8_ENGINE_ENV, GEMM_DIVISIBLE, SWIGLU, TL_SIG, autotune_scope, check,
                      is_interpreting, jit_fn, m_bucket, switch_value)
from .gemm import apply_activation, grouped_tile
from .gemm_fp8 import dequantize_tile, precise_acc_setting, record_row_amax
from .gemm_tma import (SM90_SM_SMEM, _is_sm90, _tma_addressable, co_resident, persistent_configs, persistent_grid,
                       persistent_prune, programs_per_sm)

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, EPI_SPLIT); K is 1 byte, so BLOCK_K 128 is one 128-byte swizzle
# row. Registers, spills and shared memory of every row are in the static report (benchmarks/static/report.md).
HOPPER_FP8_TMA = [
    (128, 256, 128, 8, 3, 2),
    (128, 128, 128, 8, 4, 1),
    (128, 128, 256, 8, 3, 2),  # promoted keys: one drain per 256 of K (they cannot take 128x256: PROMOTED_SPILLS)
    (128, 128, 128, 4, 3, 2),
    (64, 128, 128, 4, 4, 1),
    (128, 64, 128, 4, 4, 1),
    (64, 64, 128, 4, 4, 1),
]
# Rows launched with two programs per SM (gemm_tma.py's docstring): 98,304 B of operand stages and a 16 KB store
# buffer, so two fit in an SM's 233,472 B without a residual.
PER_SM = {(128, 128, 128, 4, 3, 2): 2}
# Rows that spill on sm_90 once the promotion's second accumulator exists (PRECISE_ACC=1): the report's rows.
PROMOTED_SPILLS = {(128, 256, 128, 8, 3, 2)}
FP8_TMA_KEY = ["M_BUCKET", "N", "K", "HAS_BIAS", "ACTIVATION", "HAS_RESIDUAL", "PRECISE_ACC", "ROW_AMAX_OUT"]


def per_sm(tile) -> int:
    return programs_per_sm(tile, PER_SM)


def _configs():  # under the interpreter: gemm_tma's one row (fewer programs than the tests' tiles)
    return persistent_configs(HOPPER_FP8_TMA, PER_SM)


def smem_estimate(tile, has_residual: bool, out_bytes: int = 2) -> int:
    """e4m3 A and W stages, plus the epilogue's store (and residual) staging buffers in the output dtype, bytes."""
    bm, bn, bk, _, stages, epi = tile
    return stages * (bm + bn) * bk + bm * (bn // epi) * out_bytes * (2 if has_residual else 1)


def tile_allowed(tile, smem, has_residual=False, precise_acc=True, out_bytes=2, sm_smem=SM90_SM_SMEM) -> bool:
    """The prune's rule for one HOPPER_FP8_TMA row (BLOCK_M <= M aside): within a block's shared memory, not a known
    promoted spill, and for a PER_SM row that many programs within the SM's shared memory."""
    if precise_acc and tuple(tile) in PROMOTED_SPILLS:
        return False
    need = smem_estimate(tile, has_residual, out_bytes)
    return need <= smem and co_resident(PER_SM.get(tuple(tile), 1), need, sm_smem)


def _prune(configs, named_args, **kwargs):
    out_bytes = named_args["out_ptr"].element_size()
    return persistent_prune(configs, named_args, lambda tile, smem, sm_smem: tile_allowed(
        tile, smem, kwargs.get("HAS_RESIDUAL", False), kwargs.get("PRECISE_ACC", True), out_bytes, sm_smem))


@triton.jit
def _finish(acc, rows, cols, M, N, a_scale_ptr, w_scale_ptr, bias_ptr, amax_out_ptr, res_desc, out_desc, off_m, off_n,
            HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ROW_AMAX_OUT: tl.constexpr):
    """Epilogue of one (sub)tile: scales, bias, activation, residual (TMA), one cast, TMA store (clipped at M and N),
    and the stored values' row maxima."""
    mask_m = rows < M
    mask_n = cols < N
    acc = dequantize_tile(acc, tl.load(a_scale_ptr + rows, mask=mask_m, other=0.0),
                          tl.load(w_scale_ptr + cols, mask=mask_n, other=0.0), bias_ptr, cols, mask_n, HAS_BIAS)
    acc = apply_activation(acc, ACTIVATION)
    if HAS_RESIDUAL:
        acc += res_desc.load([off_m, off_n]).to(tl.float32)
    y = acc.to(out_desc.dtype)
    out_desc.store([off_m, off_n], y)
    if ROW_AMAX_OUT:
        record_row_amax(y, rows, mask_m, mask_n, amax_out_ptr)


@triton.autotune(configs=_configs(), key=FP8_TMA_KEY,
                 prune_configs_by={"early_config_prune": autotune_scope(_prune)},
                 cache_results=True)  # tuned configs persist on disk (triton's cache dir) across processes
@triton.jit(do_not_specialize=["M"])
def fp8_tma_gemm_kernel(
    a_ptr,  # (M, K) float8 e4m3 activations, unit column stride, 16-byte aligned rows
    a_scale_ptr,  # (M,) fp32 per-row (per-token) scales of A
    amax_out_ptr,  # (M,) fp32, zero-initialized: atomic max of |stored output| per row (ROW_AMAX_OUT only)
    w_ptr,  # (N, K) float8 e4m3 weight in nn.Linear layout, unit column stride
    w_scale_ptr,  # (N,) fp32 per-output-channel scales of W
    bias_ptr,  # (N,) bias; read only when HAS_BIAS
    res_ptr,  # (M, N) residual, unit column stride; read only when HAS_RESIDUAL
    out_ptr,  # (M, N) output, unit column stride
    M,  # rows (tokens over the whole batch); not specialized, so batch sizes share one binary
    N,  # output features
    K,  # input features
    stride_am,  # A row stride (bytes = elements; a multiple of 16)
    stride_wn,  # W row stride
    stride_rm,  # residual row stride
    stride_om,  # output row stride
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    HAS_BIAS: tl.constexpr,  # add bias in the epilogue
    ACTIVATION: tl.constexpr,  # 0 none, 1 exact-erf GELU, 2 tanh GELU, 3 quick GELU (SwiGLU: the pointer engine)
    HAS_RESIDUAL: tl.constexpr,  # add the residual after the activation
    PRECISE_ACC: tl.constexpr,  # promote the FP8 partial sums into fp32 every BLOCK_K (gemm_fp8.py's docstring)
    ROW_AMAX_OUT: tl.constexpr,  # atomically max |output| per row into amax_out_ptr (feeds the next GEMM's QUANT_A)
    NUM_SMS: tl.constexpr,  # the device's SMs; NUM_SMS * PER_SM programs at most, each walks tiles that far apart
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # output features per tile
    BLOCK_K: tl.constexpr,  # reduction step (one TMA box of A and of W per step)
    GROUP_M: tl.constexpr,  # row tiles per L2 group
    EPI_SPLIT: tl.constexpr,  # 1 or 2: epilogue on BLOCK_N / EPI_SPLIT-wide column slices
    PER_SM: tl.constexpr,  # programs per SM (PER_SM rows: 2, co-resident so their epilogues overlap MMAs)
):
    EPI_N: tl.constexpr = BLOCK_N // EPI_SPLIT
    PROGRAMS: tl.constexpr = NUM_SMS * PER_SM
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K])
    out_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[stride_om, 1], block_shape=[BLOCK_M, EPI_N])
    if HAS_RESIDUAL:
        res_desc = tl.make_tensor_descriptor(res_ptr, shape=[M, N], strides=[stride_rm, 1],
                                             block_shape=[BLOCK_M, EPI_N])
    else:
        res_desc = out_desc  # never read
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    tile_c = tl.program_id(0) - PROGRAMS  # the epilogue's own counter, as in gemm_tma.py
    for tile in tl.range(tl.program_id(0), num_tiles, PROGRAMS, flatten=True):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
            w = w_desc.load([pid_n * BLOCK_N, ki * BLOCK_K])
            if PRECISE_ACC:
                acc = tl.dot(a, w.T, acc, max_num_imprecise_acc=BLOCK_K)
            else:
                acc = tl.dot(a, w.T, acc)

        tile_c += PROGRAMS
        pid_m, pid_n = grouped_tile(tile_c, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        rows = off_m + tl.arange(0, BLOCK_M)
        if EPI_SPLIT == 2:
            acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, EPI_N)), (0, 2, 1)))
            _finish(acc0, rows, off_n + tl.arange(0, EPI_N), M, N, a_scale_ptr, w_scale_ptr, bias_ptr, amax_out_ptr,
                    res_desc, out_desc, off_m, off_n, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, ROW_AMAX_OUT)
            _finish(acc1, rows, off_n + EPI_N + tl.arange(0, EPI_N), M, N, a_scale_ptr, w_scale_ptr, bias_ptr,
                    amax_out_ptr, res_desc, out_desc, off_m, off_n + EPI_N, HAS_BIAS, ACTIVATION, HAS_RESIDUAL,
                    ROW_AMAX_OUT)
        else:
            _finish(acc, rows, off_n + tl.arange(0, BLOCK_N), M, N, a_scale_ptr, w_scale_ptr, bias_ptr, amax_out_ptr,
                    res_desc, out_desc, off_m, off_n, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, ROW_AMAX_OUT)


# ---- dispatch -------------------------------------------------------------------------------------------------------
def _auto_picks_tma(device: torch.device) -> bool:
    """VITFAST_FP8_ENGINE=auto's choice for operands TMA can address: this engine on an sm_90 GPU (never under the
    interpreter, where the tests ask for each engine by name)."""
    if is_interpreting() or device.type != "cuda":
        return False
    return _is_sm90(device.index if device.index is not None else torch.cuda.current_device())


def select_fp8_engine(k: int, weight, out, residual=None, activation=0) -> str:
    """"tma" or "pointer" for an FP8 launch on already-checked operands whose A is (or will be) fresh contiguous e4m3
    rows of `k` bytes from the row quantizer; the op modules ask before they quantize. VITFAST_FP8_ENGINE=auto (the
    default): this engine on an sm_90 GPU for operands TMA can address (measured faster than the pointer engine on
    an H200: benchmarks/NOTES.md, "Third GPU lease"), the pointer engine elsewhere (sm_89) and under the
    interpreter. =tma forces this engine (on an sm_90 GPU, or under the interpreter: how the tests run it on a CPU)
    and fails with one line where it cannot run; =pointer forces the other. SwiGLU's FC1 always takes the pointer
    engine."""
    choice = switch_value(FP8_ENGINE_ENV)
    if choice == "pointer" or activation == SWIGLU:
        return "pointer"
    bad = {name: (tuple(t.shape), t.stride(), t.data_ptr() % 16)
           for name, t in dict(weight=weight, out=out, residual=residual).items()
           if t is not None and not _tma_addressable(t)}
    if k % 16:
        bad["a"] = ((None, k), (k, 1), 0)  # e4m3 rows of k bytes: the row stride is not a multiple of 16
    if choice == "auto":
        return "tma" if not bad and _auto_picks_tma(weight.device) else "pointer"
    if not is_interpreting():
        check(_auto_picks_tma(weight.device), f"{FP8_ENGINE_ENV}=tma: device", "an sm_90 GPU",
              torch.cuda.get_device_name(weight.device) if weight.is_cuda else str(weight.device))
    check(not bad, f"{FP8_ENGINE_ENV}=tma: FP8 operands", "2-D, unit last stride, 16-byte aligned base and rows",
          f"(shape, strides, base % 16) {bad}")
    return "tma"


def fp8_gemm_reads_row_amax(device: torch.device) -> bool:
    """Whether the model should have attention and FC1 record their rows' maxima for the FP8 launches on `device`:
    the pointer engine quantizes the out-projection's and FC2's inputs in its main loop from them; the TMA engine
    (the one auto picks on sm_90) quantizes those rows in a pass of its own and reads none. A launch that falls back
    to the pointer engine without them quantizes in a pass too, so the answer only decides what is wasted."""
    choice = switch_value(FP8_ENGINE_ENV)
    return choice == "pointer" or (choice == "auto" and not _auto_picks_tma(device))


def launch_fp8_tma_gemm(a_q, a_scale, weight, w_scale, bias, out, *, activation=0, residual=None, precise_acc=None,
                        amax_out=None):
    """gemm_fp8.launch_fp8_gemm's contract for an e4m3 A (no a_amax), on operands select_fp8_engine gave to "tma"."""
    if precise_acc is None:
        precise_acc = precise_acc_setting()
    M, K = a_q.shape
    N = weight.shape[0]
    num_sms, grid = persistent_grid(a_q.device, M, N)
    res = residual if residual is not None else out
    fp8_tma_gemm_kernel[grid](
        a_q, a_scale, amax_out if amax_out is not None else w_scale, weight, w_scale,
        bias if bias is not None else out, res, out,
        M, N, K, a_q.stride(0), weight.stride(0), res.stride(0), out.stride(0), m_bucket(M),
        HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual is not None,
        PRECISE_ACC=precise_acc, ROW_AMAX_OUT=amax_out is not None, NUM_SMS=num_sms,
    )  # fmt: skip
    return out


# ---- AOT ------------------------------------------------------------------------------------------------------------
def aot_variants(exhaustive: bool = False):
    """bf16 outputs at every Hopper tile for QKV (no activation), FC1 (GELU, bias, row maxima) and FC2 / the
    out-projection (residual; "FC2" below), each promoted and not; fp16 and fp32 outputs at the 128x128 tile with
    `exhaustive`. The promoted 128x256 row is compiled to show why the prune drops it (PROMOTED_SPILLS). FP8 wgmma:
    sm_90 only (min_cc 90)."""
    out = []
    for tile in HOPPER_FP8_TMA:
        for precise in (True, False):
            out.append(_variant(torch.bfloat16, 0, True, False, precise, False, tile, "ln_qkv"))  # QKV
            out.append(_variant(torch.bfloat16, 1, True, False, precise, True, tile, "ln_linear"))  # FC1
            out.append(_variant(torch.bfloat16, 0, True, True, precise, False, tile, "linear_residual"))  # FC2
    if exhaustive:
        out += [_variant(dt, act, True, False, True, False, HOPPER_FP8_TMA[1], "ln_linear")
                for dt in (torch.float16, torch.float32) for act in (0, 1, 2, 3)]
    return out


def _variant(out_dtype, activation, has_bias, has_residual, precise, amax_out, tile, op, num_sms=132):
    bm, bn, bk, warps, stages, epi = tile
    p = "*" + TL_SIG[out_dtype]
    sig = {
        "a_ptr": "*fp8e4nv", "a_scale_ptr": "*fp32", "amax_out_ptr": "*fp32", "w_ptr": "*fp8e4nv",
        "w_scale_ptr": "*fp32", "bias_ptr": p, "res_ptr": p, "out_ptr": p, "M": "i32", "N": "i32", "K": "i32",
        "stride_am": "i32", "stride_wn": "i32", "stride_rm": "i32", "stride_om": "i32", "M_BUCKET": "i32",
    }  # fmt: skip
    constexprs = {
        "HAS_BIAS": has_bias, "ACTIVATION": activation, "HAS_RESIDUAL": has_residual, "PRECISE_ACC": precise,
        "ROW_AMAX_OUT": amax_out, "NUM_SMS": num_sms, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
        "EPI_SPLIT": epi, "PER_SM": per_sm(tile),
    }  # fmt: skip
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    out_bytes = torch.empty((), dtype=out_dtype).element_size()
    fits = tile_allowed(tile, FAMILY_SMEM["hopper"], has_residual, precise, out_bytes)
    return {"fn": jit_fn(fp8_tma_gemm_kernel), "signature": sig, "constexprs": constexprs, "num_warps": warps,
            "num_stages": stages, "min_cc": 90, "op": "linear_fp8", "main_loop": "gemm",
            "programs_per_sm": per_sm(tile), "tables": ("hopper",) if fits else (),
            "divisible": GEMM_DIVISIBLE}
