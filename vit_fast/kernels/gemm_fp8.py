"""FP8 engine of ln_qkv, ln_linear and linear_residual: out = epilogue((A_q @ W_q^T) · s_row · s_col).

A_q (M, K) float8 e4m3 with one fp32 scale per row (per token, from quant_fp8.py), W_q (N, K) float8 e4m3 with one
fp32 scale per output channel (quantized once, vit_fast.fp8). Two switches remove the quantization pass before FC2
(the out-projection's input comes as e4m3 codes from attention, kernels/attention.py, with per-row scales):
- GROUP_OUT (FC1): the epilogue stores e4m3 codes of its fp32 output, one scale per row and FP8_GROUP (128) columns
  (a tile is one group), which is how FC2's input is quantized (vit_fast.fp8.INPUT_GROUPS);
- A_GROUPED (FC2): A is such codes; each K step (BLOCK_K divides the group) multiplies its zero-started partial sum
  by its rows' scales of that group before adding it to the fp32 accumulator.
The dot runs on FP8 tensor cores (wgmma e4m3 on sm_90, mma e4m3 on sm_89) into an fp32 accumulator; the epilogue
applies acc · s_row · s_col, then bias, the shared activation and residual exactly as the bf16 engine (gemm.py)
does; QKV is stored as plain rows, the layout attention reads in place (ln_qkv.py). SwiGLU (ACTIVATION 4) keeps a
gate and an up accumulator over the packed (2N, K) weight, as gemm.py does.

Hopper adds FP8 wgmma products into its accumulator with fewer bits than fp32 (SageAttention2 finds the low 10 bits of
the fp32 accumulator truncated; DeepSeek-V3 reports relative errors near 2 % at K = 4096). PRECISE_ACC promotes: each
BLOCK_K-deep partial sum (128 or 256) starts from zero in the tensor cores and is added into the fp32 accumulator
(CUTLASS's and DeepSeek-V3's promotion, every 128 elements there): the dot says so (max_num_imprecise_acc = BLOCK_K),
and the loop must wait for each K step's MMAs before the add (ptxas inserts the wait): the MMAs of one step no longer
overlap the next step's issue, the cost the static report marks "drained". VITFAST_FP8_PRECISE_ACC=0 turns the promotion
off everywhere but in A_GROUPED launches (each step's sum takes its own scales), to measure that cost and the error it
saves on a GPU (`gpu_steps.sh fp8acc`); the default, 1, keeps it.
"""
import functools

import torch
import triton
import triton.language as tl

from ._common import (FP8_GROUP, GELU_LIBDEVICE, PRECISE_ACC_ENV, SWIGLU, TL_SIG, is_interpreting,
                      jit_fn, m_bucket, shared_memory_bytes, switch_value)
from .autotune import autotuned
from .gemm import apply_activation, grouped_tile, swiglu
from .quant_fp8 import e4m3_codes, masked_row_amax

GROUP_K = tl.constexpr(FP8_GROUP)  # FP8_GROUP inside the kernels

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): FP8 rows are 1 byte, so BLOCK_K 128 is one 128-byte swizzle row.
# Checked for sm_90 by AOT compile (registers, no spills): 128x256 (8 warps) and 128x128 (4 warps) spill once the
# second (promotion) accumulator exists, so they are not listed.
# BLOCK_K 256 halves the promotion's stalls per K (one per BLOCK_K, see the module docstring): promoted every 256.
HOPPER_FP8 = [
    (128, 128, 128, 8, 4),
    (128, 128, 128, 8, 3),
    (128, 64, 128, 4, 4),
    (64, 128, 128, 4, 4),
    (64, 128, 128, 8, 4),
    (64, 64, 128, 4, 4),
    (128, 128, 256, 8, 3),
    (64, 128, 256, 8, 3),
    (64, 128, 256, 4, 3),
]
# SwiGLU holds a gate and an up accumulator (each with its promotion accumulator): the Hopper tiles that compile
# without spills for sm_90 (benchmarks/static/report.md; 128x128 8 warps and 128x64 4 warps spill 88-96 B), and
# Ada's 128x64, 64x128 and 64x64, spill-free for sm_89 (the report's sm_89 section; Ada's 128x128 tile spills 152 B
# for SwiGLU on sm_89: `python -m benchmarks.kernels_static --only gemm_fp8 --cc 89 --all-targets`).
SWIGLU_FP8 = [(64, 128, 128, 8, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4), (128, 64, 64, 4, 4),
              (64, 128, 64, 4, 4), (64, 64, 64, 4, 4)]
ADA_FP8 = [  # sm_89 (L4, L40S): 99 KB of shared memory per block; spill-free for sm_89 where the prune picks them
    (128, 128, 128, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
]
INTERPRETER_FP8 = (32, 32, 32, 4, 1)
FP8_TABLES = {"hopper": HOPPER_FP8, "ada": ADA_FP8}
FP8_AUTOTUNE_KEY = ["M_BUCKET", "N", "K", "HAS_BIAS", "ACTIVATION", "HAS_RESIDUAL", "PRECISE_ACC", "A_GROUPED",
                    "GROUP_OUT"]
# Under the interpreter: one tile, 128 wide for a launch that writes e4m3 codes (one FP8_GROUP per tile)
INTERPRETER_GROUP_OUT = (32, 128, 32, 4, 1)


def _configs():
    rows = ([INTERPRETER_FP8, INTERPRETER_GROUP_OUT] if is_interpreting()
            else list(dict.fromkeys(HOPPER_FP8 + ADA_FP8 + SWIGLU_FP8)))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in rows]


@functools.lru_cache(maxsize=None)
def _family(device_index: int) -> str:
    return "hopper" if torch.cuda.get_device_capability(device_index)[0] >= 9 else "ada"


# Shared memory per block (opt-in) the static report checks each family's tiles against; the prune uses the device's.
FP8_FAMILY_SMEM = {"hopper": 232448, "ada": 101376}


# SwiGLU's FC1 writing e4m3 codes (GROUP_OUT): Hopper tiles that spill on sm_90 (triton 3.9: 8 B)
SWIGLU_GROUP_OUT_SPILLS = {"hopper": {(64, 128, 128, 4, 4)}}


def fp8_tile_fits(family: str, tile, swiglu: bool, smem=None, a_grouped=False) -> bool:
    """`tile` is in the `family` table (SwiGLU: also in SWIGLU_FP8) and fits its shared memory."""
    table = FP8_TABLES[family]
    if swiglu:
        table = [row for row in table if row in SWIGLU_FP8]
    need = smem_bytes(family, tile, swiglu, a_grouped)
    return tile in table and need <= (smem or FP8_FAMILY_SMEM[family])


def group_tile_ok(tile, a_grouped: bool, group_out: bool) -> bool:
    """A launch that reads A quantized per FP8_GROUP columns steps K within a group (BLOCK_K divides it: each step's
    partial sum gets one scale per row); one that writes codes holds whole groups in a tile (BLOCK_N = FP8_GROUP)."""
    _, bn, bk = tile[:3]
    return (not a_grouped or FP8_GROUP % bk == 0) and (not group_out or bn == FP8_GROUP)


def fp8_tile_allowed(family: str, tile, swiglu: bool, smem=None, a_grouped=False, group_out=False) -> bool:
    """Whether the prune on a `family` GPU can pick `tile` (a row of the tables) for a launch of this kind: it fits
    (fp8_tile_fits), is not a known spill, and suits grouped A or grouped codes (group_tile_ok)."""
    spills = SWIGLU_GROUP_OUT_SPILLS.get(family, set()) if swiglu and group_out else set()
    return (fp8_tile_fits(family, tile, swiglu, smem, a_grouped) and tuple(tile) not in spills
            and group_tile_ok(tile, a_grouped, group_out))


def _prune(configs, named_args, **kwargs):
    """The running GPU family's table, tiles that fit shared memory, suit the launch's groups and are not far taller
    than M (under the interpreter: its tile for the launch)."""
    group_out = kwargs.get("GROUP_OUT", False)
    if {_row(c) for c in configs} <= {INTERPRETER_FP8, INTERPRETER_GROUP_OUT}:  # the interpreter's configs
        return [c for c in configs if (_row(c) == INTERPRETER_GROUP_OUT) == group_out]
    if len(configs) <= 1:
        return configs
    a = named_args["a_ptr"]
    index = a.device.index if a.device.index is not None else torch.cuda.current_device()
    family, smem = _family(index), shared_memory_bytes(index)
    m_cap = max(64, named_args.get("M_BUCKET", 1 << 16))
    swiglu = kwargs.get("ACTIVATION") == SWIGLU
    a_grouped = kwargs.get("A_GROUPED", False)
    configs = [c for c in configs if group_tile_ok(_row(c), a_grouped, group_out)]  # the fallback too
    kept = [c for c in configs
            if fp8_tile_allowed(family, _row(c), swiglu, smem, a_grouped, group_out)
            and c.kwargs["BLOCK_M"] <= m_cap]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.num_stages)]


def _row(c) -> tuple:
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages


def smem_bytes(family: str, tile, swiglu: bool = False, a_grouped: bool = False) -> int:
    """Shared memory a launch takes on a `family` GPU: the software pipeline's A and W buffers (two W tiles for
    SwiGLU). On Hopper (wgmma) num_stages of each; on Ada (mma.sync) num_stages - 1 of each. Grouped A on a tile
    taller than wide (128x64) adds BLOCK_M fp32: the K step's row scales pass through shared memory to reach the
    accumulator's layout there.
    This equals what every FP8 variant compiles to under triton 3.6 and 3.9; the static gate checks it on every
    compile (`smem_estimate` in the report)."""
    bm, bn, bk, _, stages = tile
    a, w = bm * bk, bn * bk * (2 if swiglu else 1)
    scales = 4 * bm if a_grouped and bm > bn else 0
    if family == "ada":
        return (stages - 1) * (a + w) + scales
    return stages * (a + w) + scales


@autotuned(_configs(), FP8_AUTOTUNE_KEY, _prune)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit(do_not_specialize=["M"])  # M = B·tokens: one compile for every batch size
def fp8_gemm_kernel(
    a_ptr,  # (M, K) float8 e4m3 activations
    a_scale_ptr,  # (M,) fp32 per-row (per-token) scales of A; A_GROUPED: (G, M)
    scale_out_ptr,  # (G, M) fp32: the scales of the e4m3 output per row and FP8_GROUP columns (GROUP_OUT only)
    w_ptr,  # (N, K) float8 e4m3 weight in nn.Linear layout; (2N, K) gate then up rows for SwiGLU
    w_scale_ptr,  # (N,) fp32 per-output-channel scales of W; (2N,) for SwiGLU
    bias_ptr,  # (N,) bias, (2N,) for SwiGLU; read only when HAS_BIAS
    res_ptr,  # (M, N) residual; read only when HAS_RESIDUAL
    out_ptr,  # (M, N) output, any strides
    M,  # rows (tokens over the whole batch)
    N,  # output features
    K,  # input features
    stride_am,  # A row stride (column stride 1)
    stride_wn,  # W row stride (column stride 1)
    stride_rm,  # residual row stride
    stride_rn,  # residual column stride
    stride_om,  # output row stride
    stride_on,  # output column stride
    stride_sa,  # a_scale_ptr's group stride (A_GROUPED only)
    stride_so,  # scale_out_ptr's group stride (GROUP_OUT only)
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    HAS_BIAS: tl.constexpr,  # add bias in the epilogue
    ACTIVATION: tl.constexpr,  # 0 none, 1 exact-erf GELU, 2 tanh GELU, 3 quick GELU, 4 SwiGLU (gate and up dots),
    # 5 exact GELU through libdevice's erf (VITFAST_GELU=libdevice)
    HAS_RESIDUAL: tl.constexpr,  # add the residual after the activation
    PRECISE_ACC: tl.constexpr,  # promote the FP8 partial sums into fp32 every BLOCK_K (see the module docstring)
    A_GROUPED: tl.constexpr,  # A is e4m3 with a scale per row and FP8_GROUP columns: each K step's sum scaled
    GROUP_OUT: tl.constexpr,  # store e4m3 codes of the output per row and FP8_GROUP columns (FC1 before FC2)
    ROUND_IN_FP32: tl.constexpr,  # e4m3 codes made here, under the interpreter: round in fp32 first (quant_fp8.py)
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # output features per tile
    BLOCK_K: tl.constexpr,  # reduction step
    GROUP_M: tl.constexpr,  # row tiles per L2 group
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no K masks
):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # Out-of-range rows/columns wrap onto valid ones for the loads (masked at the store): no M/N load masks.
    rm_load = (rm % M).to(tl.int64)
    rn_load = rn % N
    a_ptrs = a_ptr + rm_load[:, None] * stride_am + rk[None, :]
    w_ptrs = w_ptr + rn_load[None, :] * stride_wn + rk[:, None]  # (BLOCK_K, BLOCK_N) view of W^T, K-major

    if A_GROUPED:  # the scales are applied per K step (FC2: no SwiGLU's second accumulator)
        tl.static_assert(GROUP_K % BLOCK_K == 0 and ACTIVATION != 4)
        s_row = tl.full([BLOCK_M], 1.0, tl.float32)
    else:
        s_row = tl.load(a_scale_ptr + rm_load)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if ACTIVATION == 4:  # SwiGLU: W is (2N, K), the up rows N below the gate rows; a second accumulator
        up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    else:
        up = acc  # never used
    for k0 in range(0, K, BLOCK_K):
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
        if A_GROUPED:  # one scale per row for this step's columns: the partial sum starts from zero (promoted)
            s_k = tl.load(a_scale_ptr + (k0 // GROUP_K) * stride_sa + rm_load)
            acc += tl.dot(a, w) * s_k[:, None]
        elif PRECISE_ACC:
            acc = tl.dot(a, w, acc, max_num_imprecise_acc=BLOCK_K)
            if ACTIVATION == 4:
                up = tl.dot(a, w_up, up, max_num_imprecise_acc=BLOCK_K)
        else:
            acc = tl.dot(a, w, acc)
            if ACTIVATION == 4:
                up = tl.dot(a, w_up, up)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    mask_m = rm < M
    mask_n = rn < N
    mask = mask_m[:, None] & mask_n[None, :]
    acc = dequantize_tile(acc, s_row, tl.load(w_scale_ptr + rn_load), bias_ptr, rn, mask_n, HAS_BIAS)
    if ACTIVATION == 4:  # the up half's scales and bias sit N further on; silu(gate) * up in fp32
        up = dequantize_tile(up, s_row, tl.load(w_scale_ptr + N + rn_load), bias_ptr + N, rn, mask_n, HAS_BIAS)
        acc = swiglu(acc, up)
    else:
        acc = apply_activation(acc, ACTIVATION, out_ptr.dtype.element_ty)
    rm64 = rm.to(tl.int64)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + rm64[:, None] * stride_rm + rn[None, :] * stride_rn, mask=mask, other=0.0)
        acc += res.to(tl.float32)
    out_ptrs = out_ptr + rm64[:, None] * stride_om + rn[None, :] * stride_on
    if GROUP_OUT:  # the tile is one group (group_tile_ok): codes of the fp32 values, one cast
        tl.static_assert(BLOCK_N == GROUP_K)
        q, scale = e4m3_codes(acc, masked_row_amax(acc, mask_n), ROUND_IN_FP32)
        tl.store(out_ptrs, q, mask=mask)
        tl.store(scale_out_ptr + pid_n * stride_so + rm, scale, mask=mask_m)
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def dequantize_tile(acc, s_row, s_col, bias_ptr, cols, mask_n, HAS_BIAS: tl.constexpr):
    """An FP8 GEMM's fp32 tile back at the model's scale: acc · s_row · s_col (+ bias); both FP8 engines' epilogue."""
    acc = acc * s_row[:, None] * s_col[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    return acc


def precise_acc_setting() -> bool:
    """The promotion switch from VITFAST_FP8_PRECISE_ACC (read at each launch): 1 (default) or 0."""
    return switch_value(PRECISE_ACC_ENV, "0 or 1") == "1"


def launch_fp8_gemm(a_q, a_scale, weight, w_scale, bias, out, *, activation=0, residual=None, precise_acc=None,
                    out_scale=None):
    """Launch on already-checked operands: a_q (M, K) e4m3 with unit column stride and a_scale (M,) fp32, or (M, G)
    (quant_fp8.new_group_scales: per row and FP8_GROUP columns); weight (N, K) e4m3 rows contiguous, w_scale (N,)
    fp32; out (M, N); residual (M, N) or None; out_scale (M, G) (new_group_scales) or None: out is then e4m3 and
    receives the output's codes per row and FP8_GROUP columns, out_scale their scales. precise_acc None:
    `precise_acc_setting()` (grouped A is promoted by construction)."""
    if precise_acc is None:
        precise_acc = precise_acc_setting()
    M, K = a_q.shape
    N = weight.shape[0] // 2 if activation == SWIGLU else weight.shape[0]  # SwiGLU: (2N, K) packed gate/up rows
    res = residual if residual is not None else out
    a_grouped = a_scale.dim() == 2
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    fp8_gemm_kernel[grid](
        a_q, a_scale, out_scale if out_scale is not None else w_scale, weight, w_scale,
        bias if bias is not None else out, res, out,
        M, N, K, a_q.stride(0), weight.stride(0), res.stride(-2), res.stride(-1), out.stride(0), out.stride(1),
        a_scale.stride(1) if a_grouped else 0, out_scale.stride(1) if out_scale is not None else 0, m_bucket(M),
        HAS_BIAS=bias is not None, ACTIVATION=activation, HAS_RESIDUAL=residual is not None,
        PRECISE_ACC=precise_acc or a_grouped, A_GROUPED=a_grouped,
        GROUP_OUT=out_scale is not None,
        ROUND_IN_FP32=is_interpreting(),
    )  # fmt: skip
    return out


def aot_variants(exhaustive: bool = False):
    """bf16 outputs (the FP8 model's residual stream) at every Hopper and Ada tile for the launches a fully FP8
    model makes: FC1 (GELU, bias, e4m3 codes out per 128 columns), SwiGLU's FC1 (gate and up dots, codes out), FC2
    (A grouped per 128 columns, residual), the out-projection (per-row e4m3 A from attention, residual), QKV.
    Tiles a launch's group rule excludes (group_tile_ok) are not compiled (the kernel's static_assert refuses them).
    At one tile per family (Hopper 64x128x128, Ada 64x128x64) the launches only `exclude`, API callers or odd widths
    make: GELU with a plain bf16 store (FC1 before a dense FC2), the non-even K path, and imprecise accumulation.
    fp16 and fp32 launches only with `exhaustive` (at the Hopper tile). Each variant names the families whose prune
    can pick it, so sm_90 gates the Hopper picks and sm_89 the Ada ones. FP8 dots do not exist before sm_89: min_cc
    89 (skipped for sm_80)."""
    tiles = list(dict.fromkeys(HOPPER_FP8 + ADA_FP8))
    writers = [t for t in tiles if group_tile_ok(t, False, True)]  # (the others fail the kernel's static_assert)
    out = [_variant(torch.bfloat16, 1, True, False, True, True, t, group_out=True) for t in writers]  # FC1
    # SwiGLU at every table tile that writes codes; the prune keeps SWIGLU_FP8's (the others show why not)
    out += [_variant(torch.bfloat16, SWIGLU, True, False, True, True, t, group_out=True)
            for t in dict.fromkeys(writers + [t for t in SWIGLU_FP8 if group_tile_ok(t, False, True)])]
    out += [_variant(torch.bfloat16, 0, True, True, True, True, t, a_grouped=True) for t in tiles
            if group_tile_ok(t, True, False)]  # FC2
    out += [_variant(torch.bfloat16, 0, True, True, True, True, t) for t in tiles]  # out-projection
    out += [_variant(torch.bfloat16, 0, True, False, True, True, t) for t in tiles]  # QKV
    for tile in ((64, 128, 128, 4, 4), (64, 128, 64, 4, 4)):  # Hopper, Ada
        out += [_variant(torch.bfloat16, 1, True, False, True, True, tile),  # FC1 storing bf16 (FC2 kept dense)
                _variant(torch.bfloat16, 1, False, False, False, True, tile),  # no bias, ragged K
                _variant(torch.bfloat16, 1, True, False, True, False, tile),  # imprecise accumulation
                _variant(torch.bfloat16, GELU_LIBDEVICE, True, False, True, True, tile)]  # VITFAST_GELU=libdevice
    tile = (64, 128, 128, 4, 4)
    if exhaustive:
        out += [_variant(dt, act, True, res, True, True, tile)
                for dt in (torch.float16, torch.float32) for act in (0, 1, 2, 3) for res in (False, True)]
    return out


def _variant(out_dtype, activation, has_bias, has_residual, even_k, precise, tile, a_grouped=False,
             group_out=False):
    bm, bn, bk, warps, stages = tile
    p = "*" + TL_SIG[out_dtype]
    sig = {
        "a_ptr": "*fp8e4nv", "a_scale_ptr": "*fp32", "scale_out_ptr": "*fp32",
        "w_ptr": "*fp8e4nv", "w_scale_ptr": "*fp32",
        "bias_ptr": p, "res_ptr": p, "out_ptr": "*fp8e4nv" if group_out else p,
        "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_wn": "i32",
        "stride_rm": "i32", "stride_rn": "constexpr", "stride_om": "i32", "stride_on": "constexpr",
        "stride_sa": "i32", "stride_so": "i32", "M_BUCKET": "i32",
    }  # fmt: skip
    constexprs = {
        "stride_rn": 1, "stride_on": 1,
        "HAS_BIAS": has_bias, "ACTIVATION": activation, "HAS_RESIDUAL": has_residual,
        "PRECISE_ACC": precise, "A_GROUPED": a_grouped, "GROUP_OUT": group_out,
        "ROUND_IN_FP32": False, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EVEN_K": even_k,
    }  # fmt: skip
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    # no report preset has a SwiGLU MLP, nor runs libdevice's GELU (a switch)
    extra = {"vit": lambda cfg, batch: []} if activation in (SWIGLU, GELU_LIBDEVICE) else {}
    swiglu = activation == SWIGLU
    return {"fn": jit_fn(fp8_gemm_kernel), "signature": sig, "constexprs": constexprs, **extra,
            "num_warps": warps, "num_stages": stages, "min_cc": 89, "op": "linear_fp8", "main_loop": "gemm",
            "tables": tuple(f for f in FP8_TABLES
                            if fp8_tile_allowed(f, tile, swiglu, None, a_grouped, group_out)),
            "smem_estimate": {f: smem_bytes(f, tile, swiglu, a_grouped) for f in FP8_TABLES},
            "divisible": ("N", "K", "stride_am", "stride_wn", "stride_rm", "stride_om", "stride_sa", "stride_so")}
