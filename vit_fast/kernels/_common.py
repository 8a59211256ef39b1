"""Helpers shared by the kernel modules: interpreter detection, dtype maps, shape bucketing, input checks and the
per-GPU-family GEMM autotune tables.

Everything that looks at the GPU (capability, shared memory) runs lazily, when a kernel is first tuned on a device,
never at import time.
"""
import functools
import os

import torch
import triton

# the environment switches the kernels read at launch live in vit_fast/switches.py (no torch or triton there, so the
# CLI checks them before anything loads); the kernels import them from here
from ..switches import (AUTOTUNE_ENV, DESC_ENV, ENGINE_ENV, FP8_ENGINE_ENV, GELU_ENV, LN_PARTIALS_ENV,  # noqa: F401
                        PDL_ENV, PRECISE_ACC_ENV, SPLIT_ENV, STAGGER_ENV, STATS_SLOT_ENV, switch_value)

# torch dtype -> Triton signature string (used by aot_variants()).
TL_SIG = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8"}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

ACTIVATIONS = {"none": 0, "gelu": 1, "gelu_tanh": 2, "quick_gelu": 3, "swiglu": 4}
# "swiglu" (ln_linear only): the weight is packed (2H, K), gate rows first (timm SwiGLUPacked); the GEMM keeps a gate
# and an up accumulator per tile and stores silu(gate) * up, (M, H).
SWIGLU = ACTIVATIONS["swiglu"]


# the ACTIVATION code of "gelu" launched under VITFAST_GELU=libdevice (not a user's activation: epilogue_activation)
GELU_LIBDEVICE = 5


def epilogue_activation(code: int) -> int:
    """The ACTIVATION a GEMM launcher compiles for the activation `code`: the exact GELU through libdevice's erf
    under VITFAST_GELU=libdevice, else `code`. Read at every launch, like the other switches."""
    if code == ACTIVATIONS["gelu"] and switch_value(GELU_ENV) == "libdevice":
        return GELU_LIBDEVICE
    return code


def is_interpreting() -> bool:
    """True when Triton kernels run on CPU through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if is_interpreting():  # the interpreter truncates fp32 -> bf16; make it round as the GPU does (_interpreter.py)
    from ._interpreter import round_bf16_like_gpu

    round_bf16_like_gpu()


@functools.lru_cache(maxsize=None)
def _device_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """The SMs of CUDA device `device` (cached)."""
    return _device_sms(device.index if device.index is not None else torch.cuda.current_device())


def upcast_needed(dtype: torch.dtype) -> bool:
    """The interpreter computes bf16 arithmetic and dots wrongly, so kernels convert bf16 tiles to fp32 there."""
    return is_interpreting() and dtype == torch.bfloat16


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host: triton.cdiv costs about 2 µs a call, and launchers call this on every launch."""
    return -(-a // b)


def m_bucket(m: int) -> int:
    """Autotune key for the row count: next power of two, clamped, so a new batch size rarely triggers a re-tune."""
    return min(max(triton.next_power_of_2(m), 16), 1 << 16)


def gluon_runs() -> bool:
    """Whether a Gluon kernel (gemm_ws.py, gemm_fp8_ws.py) can run here: not under the interpreter."""
    return not is_interpreting()


def check(cond: bool, what: str, expected: str, got) -> None:
    if not cond:
        raise ValueError(f"{what}: expected {expected}, got {got}")


def check_device(op: str, tensors: dict, runnable: bool = True) -> torch.device:
    """All tensors on one device; with runnable=True also one the kernels run on: CUDA, or CPU under the interpreter
    (fake implementations pass runnable=False)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    check(all(d == first for d in devices.values()), f"{op}: devices", "all tensors on one device", devices)
    if runnable and not is_interpreting():
        check(first.type == "cuda", f"{op}: device", "CUDA tensors (or TRITON_INTERPRET=1 for CPU)", first)
    return first


def check_dtype(op: str, name: str, t: torch.Tensor, allowed) -> None:
    check(t.dtype in allowed, f"{op}: {name}.dtype", " or ".join(str(a) for a in allowed), t.dtype)


def rows_view(op: str, name: str, x: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (M, K) without copying when the leading dims merge (slices like x[:, :1] do); otherwise copies."""
    check(x.dim() >= 2, f"{op}: {name}.dim()", ">= 2 (..., features)", tuple(x.shape))
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return x.reshape(-1, x.shape[-1])


# ---- GEMM autotune tables -------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
HOPPER_GEMM = [
    (128, 256, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 64, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (64, 32, 64, 4, 4),
]
AMPERE_GEMM = [
    (128, 256, 32, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 128, 64, 8, 3),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 32, 4, 4),
    (64, 32, 32, 2, 5),
]
FALLBACK_GEMM = [
    (128, 128, 32, 4, 3),
    (64, 128, 32, 4, 3),
    (64, 64, 32, 4, 3),
]
INTERPRETER_GEMM = (32, 32, 32, 4, 1)
GEMM_TABLES = {"hopper": HOPPER_GEMM, "ampere": AMPERE_GEMM, "fallback": FALLBACK_GEMM}
# Shared memory per block when the device does not report it (opt-in limit, bytes).
_SMEM_FALLBACK = {(9, 0): 232448, (8, 0): 167936, (8, 6): 101376, (8, 7): 167936, (8, 9): 101376}


def is_sm90(index: int) -> bool:
    """Whether GPU `index` is sm_90 (H100, H200: the TMA engines and PDL); cached, but not while torch.compile traces
    a caller (the FP8 engine choice the model makes in its forward): Dynamo warns on calls to lru_cache-wrapped
    functions."""
    if torch.compiler.is_compiling():
        return torch.cuda.get_device_capability(index)[0] == 9
    return _sm90_cached(index)


@functools.lru_cache(maxsize=None)
def _sm90_cached(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] == 9


@functools.lru_cache(maxsize=None)
def gpu_family(device_index: int) -> str:
    major, _ = torch.cuda.get_device_capability(device_index)
    if major >= 9:
        return "hopper"
    if major == 8:
        return "ampere"
    return "fallback"


@functools.lru_cache(maxsize=None)
def shared_memory_bytes(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    smem = getattr(props, "shared_memory_per_block_optin", 0)
    return smem or _SMEM_FALLBACK.get(torch.cuda.get_device_capability(device_index), 49152)


def gemm_configs(group_m: int = 8):
    """Every family's configs in one list (the prune hook keeps the current device's); one config when interpreting."""
    if is_interpreting():
        rows = [INTERPRETER_GEMM]
    else:
        rows = list(dict.fromkeys(r for table in GEMM_TABLES.values() for r in table))
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in rows
    ]


def prune_gemm_configs(configs, named_args, *, a_name="a_ptr", dot_dtype_name=None, **kwargs):
    """Keep the running device's family table, drop tiles that overflow shared memory, are far taller than M, are
    too big for fp32 FMA dots or known to spill on that family (HOPPER_GEMM_SPILLS, AMPERE_GEMM_SPILLS); always
    return at least one config."""
    if len(configs) <= 1:
        return configs
    a = named_args[a_name]
    dot_tensor = named_args[dot_dtype_name] if dot_dtype_name else a
    index = a.device.index if a.device.index is not None else torch.cuda.current_device()
    family_name = gpu_family(index)
    family = GEMM_TABLES[family_name]
    kind = gemm_kind({**named_args, **kwargs})
    smem = shared_memory_bytes(index)
    elem = 4 if dot_tensor.dtype == torch.float32 else 2
    m_cap = named_args.get("M_BUCKET", 1 << 16)
    kept = []
    for c in configs:
        k = c.kwargs
        row = (k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], c.num_warps, c.num_stages)
        if row in family and gemm_tile_allowed(row, elem, smem, m_cap, family_name, kind):
            kept.append(c)
    if not kept:
        kept = [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.num_stages)]
    return kept


def gemm_aot_configs():
    """Block shapes the AOT check compiles: the distinct rows of every family table."""
    return list(dict.fromkeys(r for table in GEMM_TABLES.values() for r in table))


# The tile the AOT check uses to cover constexpr switches (a small one that every dtype can pick: quick to compile).
SWITCH_TILE = (64, 64, 64, 4, 4)


def jit_fn(kernel):
    """The @triton.jit function under autotune/heuristics wrappers (what aot_variants() hands to triton.compile)."""
    while not isinstance(kernel, triton.runtime.JITFunction):
        kernel = kernel.fn
    return kernel


def check_vector(op: str, name: str, t: torch.Tensor, n: int, dtype: torch.dtype) -> None:
    """A (n,) parameter vector, unit stride, in the activation dtype."""
    check(tuple(t.shape) == (n,), f"{op}: {name}.shape", f"({n},)", tuple(t.shape))
    check(t.dtype == dtype, f"{op}: {name}.dtype", f"{dtype} (the activation dtype)", t.dtype)
    check(n <= 1 or t.stride(0) == 1, f"{op}: {name}.stride()", "(1,) (contiguous)", t.stride())


def check_linear(op: str, x: torch.Tensor, weight: torch.Tensor, bias) -> tuple:
    """x (..., K) float, weight (N, K) and bias (N,) or None in x.dtype; returns (K, N)."""
    check_dtype(op, "x", x, FLOAT_DTYPES)
    check(x.dim() >= 2, f"{op}: x.dim()", ">= 2 (..., K)", tuple(x.shape))
    k = x.shape[-1]
    check(k > 0, f"{op}: x.shape[-1]", "> 0", k)
    check(weight.dim() == 2 and weight.shape[1] == k, f"{op}: weight.shape", f"(N, {k})", tuple(weight.shape))
    check(weight.dtype == x.dtype, f"{op}: weight.dtype", f"{x.dtype} (x.dtype)", weight.dtype)
    n = weight.shape[0]
    if bias is not None:
        check_vector(op, "bias", bias, n, x.dtype)
    return k, n


def check_out(op: str, out: torch.Tensor, shape, dtype: torch.dtype, rows: bool = True) -> torch.Tensor:
    """Validate a caller-provided output buffer; return its (M, N) view (rows=True) or itself (must be contiguous)."""
    check(tuple(out.shape) == tuple(shape), f"{op}: out.shape", tuple(shape), tuple(out.shape))
    check(out.dtype == dtype, f"{op}: out.dtype", dtype, out.dtype)
    if not rows:
        check(out.is_contiguous(), f"{op}: out", "a contiguous tensor", out.stride())
        return out
    try:
        return out.view(-1, out.shape[-1])
    except RuntimeError:
        raise ValueError(f"{op}: out: expected strides that merge into (rows, {out.shape[-1]}), got {out.stride()}")


# ---- static report / gate plumbing (tests/kernels/aot_compile.py holds the contract) --------------------------------
# Device limits the prune and the static report share: opt-in shared memory per block, SM count of the datasheet part.
FAMILY_SMEM = {"hopper": 232448, "ampere": 166912, "fallback": 65536}
# Integer GEMM launch arguments the launchers make multiples of 16 for every ViT preset (never M: B·197 is odd).
GEMM_DIVISIBLE = ("N", "K", "stride_am", "stride_wn", "stride_rm", "stride_om", "M_BUCKET")


# Hopper tiles the static report (benchmarks/static/report.md) shows spilling on sm_90 with today's kernels, per
# (operand bytes, kind): "ln" = the LayerNorm-folded epilogue without an activation (ln_qkv), "ln_act" = the same
# with GELU and kin (ln_linear's FC1), "plain" = bias/residual epilogues (linear_residual), "patch" = the
# implicit-im2col patch embedding. The prune drops them because the CI gate forbids a 16-bit Hopper pick that
# spills (spill traffic costs more than the bigger tile saves); put a tile back when the report shows it clean. An
# fp32 pick may keep a cold spill (benchmarks/kernels_static.COLD_SPILL_BYTES): the fp32 entries below predate that
# rule and stay until a GPU run shows the tile pays. Stack bytes from the report, triton 3.9 unless a version is
# named (3.6 is the GPU image's).
HOPPER_GEMM_SPILLS = {
    (2, "ln"): {},
    (2, "ln_act"): {},
    (2, "plain"): {},
    (2, "patch"): {(128, 256, 64, 8, 3): "552-632 B", (128, 128, 64, 4, 4): "464-584 B",
                   (64, 128, 64, 4, 4): "72 B in the loop at P=14 under triton 3.6 (clean under 3.9)"},
    # fp32 QKV merging partial statistics (ROW_STATS=2): 64x128 and 64x64 are clean under 3.9 but spill inside the
    # loop under 3.6 (report-triton-3.6-fp32-ln-sm90)
    (4, "ln"): {(128, 64, 64, 4, 4): "96 B (1,384 B under 3.6)", (64, 128, 64, 4, 4): "1,480 B under triton 3.6",
                (64, 64, 64, 4, 4): "552-560 B under triton 3.6"},
    (4, "ln_act"): {(128, 64, 64, 4, 4): "6.2 KB (1.4 KB under 3.6)", (64, 128, 64, 4, 4): "6.4 KB (1.3 KB under 3.6)",
                    (64, 64, 64, 4, 4): "224-232 B (40 B under 3.6)"},
    (4, "plain"): {(128, 64, 64, 4, 4): "24 B"},
    (4, "patch"): {(128, 64, 64, 4, 4): "24 B", (64, 32, 64, 4, 4): "8 B"},
    # ln_linear with activation "swiglu" (gate and up accumulators): the 16-bit tiles left after
    # swiglu_accumulators_fit are clean on sm_90; fp32's 64x64 (255 registers with row_stats' rows) spills once
    # the epilogue merges partial statistics
    (4, "swiglu"): {(64, 64, 64, 4, 4): "6.7 KB, merging partial statistics"},
}
# The same for Ampere and Ada (sm_80, sm_89; reported, not gated): SwiGLU's 128x128 8-warp tile, clean on sm_90,
# spills there (report-triton-3.9-gemm-bf16-sm80-sm89). LayerNorm + FC1 with GELU at 128x256x32 spilled 16 B there
# until the fitted GELU (gemm.gelu_erf): 246-252 registers since, no spill, so FC1 has it back.
# fp32 SwiGLU spills at every Ampere tile (so does fp32 LayerNorm+GELU at 128x128): the least (112 B) is kept.
AMPERE_GEMM_SPILLS = {
    (2, "swiglu"): {(128, 128, 64, 8, 3): "128 B"},
    (4, "swiglu"): {(64, 128, 32, 4, 4): "8984 B", (64, 64, 32, 4, 4): "472 B", (64, 32, 32, 2, 5): "456 B"},
}
_GEMM_SPILLS = {"hopper": HOPPER_GEMM_SPILLS, "ampere": AMPERE_GEMM_SPILLS}
# The pointer engine's split-K code (split_k.py: a partial tile beside the accumulator) at table tiles that spill,
# per GPU family, kind and (BLOCK_M, BLOCK_N, BLOCK_K, warps): those launches run unsplit there (gemm._split_parts).
# None since change 28 (the fix-up reads its partials in pairs): FC1's 128x64x32 and 64x128x32 rows, which spilled
# 16-96 B on sm_80/sm_89, compile clean there at 2-5 parts (report-triton-3.9-gemm-bf16-sm80-sm89: every split row
# at 4; 2, 3 and 5 compiled for the notes). Kept for the next kernel change that spills where it splits.
SPLIT_SPILLS = {}


def gemm_kind(named_args: dict) -> str:
    """The launch's key into HOPPER_GEMM_SPILLS: "patch" (named by the patch embedding's prune), "swiglu", "ln_act"
    (LayerNorm epilogue with an activation), "ln" or "plain"."""
    activation = named_args.get("ACTIVATION")
    if activation == SWIGLU:
        return "swiglu"
    if named_args.get("kind"):
        return named_args["kind"]
    if named_args.get("ROW_STATS"):
        return "ln_act" if activation else "ln"
    return "plain"


def swiglu_accumulators_fit(bm: int, bn: int, warps: int) -> bool:
    """SwiGLU's gate and up fp32 accumulators hold at most 128 registers per thread (the plain tables' ceiling,
    128x256 with 8 warps): the register rule every engine's SwiGLU prune applies before its spill list."""
    return 2 * bm * bn <= 128 * 32 * warps


def preset_activation(op: str, cfg) -> int:
    """The activation code a ViT preset's launch of `op` uses: FC1 exact GELU (its gate for a SwiGLU MLP), none
    for QKV and the residual GEMMs."""
    if op != "ln_linear":
        return 0
    return SWIGLU if cfg.mlp_type == "swiglu" else ACTIVATIONS["gelu"]


def gemm_tile_allowed(row, elem: int, smem: int, m_bucket_value: int = 1 << 16, family: str = None,
                      kind: str = "plain") -> bool:
    """The prune's rule for one (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) row: fits shared memory, not far taller
    than M, no more than 128x128 for fp32 FMA dots (elem = bytes of the dot operands), not a known spill of the
    family.
    SwiGLU (kind "swiglu") streams two W tiles and keeps two accumulators: both count, and at most 128 accumulator
    registers per thread (what every other kind's table rows hold at most)."""
    bm, bn, bk, warps, stages = row
    if tuple(row) in _GEMM_SPILLS.get(family, {}).get((elem, kind), {}):
        return False
    copies = 2 if kind == "swiglu" else 1
    if kind == "swiglu" and not swiglu_accumulators_fit(bm, bn, warps):
        return False
    return (stages * (bm + copies * bn) * bk * elem <= smem and bm <= max(64, m_bucket_value)
            and not (elem == 4 and copies * bm * bn > 128 * 128))


def gemm_families(row, elem: int, kind: str = "plain") -> tuple:
    """GPU families whose table holds `row` and whose prune keeps it for operands of `elem` bytes."""
    return tuple(f for f, table in GEMM_TABLES.items()
                 if row in table and gemm_tile_allowed(row, elem, FAMILY_SMEM[f], family=f, kind=kind))


def gemm_rows_for(elem: int, kind: str = "plain") -> list:
    """Every distinct table row some family can pick for operands of `elem` bytes, before the spill list (what
    aot_variants() covers: the report keeps showing the pruned tiles)."""
    return [r for r in gemm_aot_configs()
            if any(r in t and gemm_tile_allowed(r, elem, FAMILY_SMEM[f], kind=kind)
                   for f, t in GEMM_TABLES.items())]


def vit_gemm_problems(cfg, batch: int, op: str) -> list:
    """(name, M, N, K, DRAM elements besides A and W) of one ViT forward's launches of a GEMM op; [] for other ops.
    Every layer counted as full-sequence (the [CLS]-only last layer is left out: it is < 1/depth of the work)."""
    n_tok = (cfg.img_size[0] // cfg.patch_size) * (cfg.img_size[1] // cfg.patch_size) + 1
    d, mlp, depth = cfg.embed_dim, cfg.mlp_dim, cfg.depth
    m = batch * n_tok
    if op == "ln_qkv":
        return [("qkv", m, 3 * d, d, m * 3 * d)] * depth
    if op == "ln_linear":  # SwiGLU: the packed GEMM's 2H columns (FLOPs, weight bytes), H stored
        return [("fc1", m, mlp * (2 if cfg.mlp_type == "swiglu" else 1), d, m * mlp)] * depth
    if op == "linear_residual":
        return [("proj", m, d, d, 2 * m * d)] * depth + [("fc2", m, d, mlp, 2 * m * d)] * depth
    if op == "patch_embed":
        k = cfg.in_chans * cfg.patch_size ** 2
        mp = batch * (n_tok - 1)
        return [("patch", mp, d, k, mp * d + batch * n_tok * d)]
    return []


def gemm_launch(name, m, n, k, other_elems, row, elem: int) -> dict:
    """One launch of a tiled GEMM for the static report's roofline: tile-padded FLOPs, programs, compulsory bytes."""
    bm, bn, bk = row[:3]
    tiles_m, tiles_n, steps = -(-m // bm), -(-n // bn), -(-k // bk)
    return {"name": name, "flops": 2 * tiles_m * bm * tiles_n * bn * steps * bk, "useful_flops": 2 * m * n * k,
            "bytes": (m * k + n * k + other_elems) * elem, "programs": tiles_m * tiles_n}


def gemm_vit_launches(op: str, row, elem: int, even_k=None, when=None):
    """The `vit` callable of a GEMM variant (see the contract): its launches for a preset, [] where the launcher
    cannot pick it (EVEN_K disagrees with K % BLOCK_K, or `when(cfg)` is False)."""
    def launches(cfg, batch):
        if when is not None and not when(cfg):
            return []
        out = []
        for name, m, n, k, other in vit_gemm_problems(cfg, batch, op):
            if even_k is not None and (k % row[2] == 0) != even_k:
                continue
            if not gemm_tile_allowed(row, elem, 1 << 30, triton.next_power_of_2(m)):
                continue
            out.append(gemm_launch(name, m, n, k, other, row, elem))
        return out
    return launches


# ---- FP8 (e4m3) GEMM operands ----------------------------------------------------------------------------------------
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
# FC2's input is quantized per token and FP8_GROUP channels (vit_fast.fp8.INPUT_GROUPS): FC1's epilogue writes the
# codes with one scale per row and group; the FP8 GEMMs read such A with K steps that divide it
FP8_GROUP = 128
TL_SIG[FP8_DTYPE] = "fp8e4nv"


def fp8_unsupported_reason(device: torch.device):
    """None when FP8 GEMMs can run on `device` (sm_89/sm_90 and newer, or the CPU interpreter), else why not.
    Looks at the GPU only when called (never at import)."""
    if device.type == "cpu" and is_interpreting():
        return None
    if device.type != "cuda":
        return (f"FP8 GEMMs need an NVIDIA GPU with compute capability 8.9 or 9.0 (Ada, Hopper) and the tensors are on "
                f"{device}; set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter, or run the "
                "quantized model with backend 'torch'/'sdpa' (an exact CPU emulation)")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return (f"FP8 GEMMs need compute capability 8.9 or 9.0 (Ada, Hopper); {device} ({name}) is sm_{major}{minor}, "
                "which has no FP8 tensor cores: use dtype bfloat16 there")
    return None


def check_linear_fp8(op: str, x: torch.Tensor, weight: torch.Tensor, weight_scale, bias, model_dtype=None) -> tuple:
    """x (..., K) float activations (or, with `model_dtype`, e4m3 codes), weight (N, K) float8_e4m3fn with
    weight_scale (N,) fp32 (per output channel), bias (N,) in x.dtype (model_dtype) or None; returns (K, N)."""
    check_dtype(op, "x", x, (FP8_DTYPE,) if model_dtype is not None else FLOAT_DTYPES)
    check(x.dim() >= 2, f"{op}: x.dim()", ">= 2 (..., K)", tuple(x.shape))
    k = x.shape[-1]
    check(k > 0, f"{op}: x.shape[-1]", "> 0", k)
    check(weight.dim() == 2 and weight.shape[1] == k, f"{op}: weight.shape", f"(N, {k})", tuple(weight.shape))
    check(weight.dtype == FP8_DTYPE, f"{op}: weight.dtype", str(FP8_DTYPE), weight.dtype)
    check(weight.stride(1) == 1, f"{op}: weight.stride()", "(K, 1) (rows contiguous)", weight.stride())
    n = weight.shape[0]
    check(weight_scale is not None, f"{op}: weight_scale", "a (N,) float32 tensor for a float8 weight", None)
    check(tuple(weight_scale.shape) == (n,) and weight_scale.dtype == torch.float32 and weight_scale.is_contiguous(),
          f"{op}: weight_scale", f"a contiguous ({n},) torch.float32 tensor",
          f"{tuple(weight_scale.shape)} {weight_scale.dtype}")
    if bias is not None:
        check_vector(op, "bias", bias, n, model_dtype or x.dtype)
    return k, n


def check_fp8_device(op: str, device: torch.device) -> None:
    reason = fp8_unsupported_reason(device)
    if reason is not None:
        raise RuntimeError(f"{op}: {reason}")


def group_count(k: int) -> int:
    """Scales per row of K columns quantized per FP8_GROUP columns (the last group may be narrower)."""
    return -(-k // FP8_GROUP)


def check_group_scales(op: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """Per-row, per-FP8_GROUP-column fp32 scales of e4m3 x (..., K): shape (..., cdiv(K, 128)), any strides."""
    shape = (*x.shape[:-1], group_count(x.shape[-1]))
    check(tuple(t.shape) == shape and t.dtype == torch.float32, f"{op}: {name}",
          f"a float32 tensor of shape {shape} (one scale per row of x and {FP8_GROUP} columns)",
          f"{tuple(t.shape)} {t.dtype}")


def group_scales_view(t: torch.Tensor) -> torch.Tensor:
    """(..., G) scales -> (M, G) with unit row stride (a (G, M) buffer's transpose, as the kernels read a group's
    scales for a tile's rows), copying only when t is laid out otherwise."""
    t2d = t.reshape(-1, t.shape[-1])
    return t2d if t2d.stride(0) == 1 else t2d.t().contiguous().t()


def check_row_stats(op: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """A per-row fp32 statistic of x (..., K): contiguous, shape x.shape[:-1]."""
    check_f32(op, name, t, tuple(x.shape[:-1]), " (one value per row of x)")


def check_f32(op: str, name: str, t, shape: tuple, note: str = "") -> None:
    """A contiguous float32 tensor of `shape` (scales, statistics)."""
    ok = isinstance(t, torch.Tensor)
    got = f"{tuple(t.shape)} {t.dtype}" if ok else type(t).__name__
    check(ok and tuple(t.shape) == tuple(shape) and t.dtype == torch.float32 and t.is_contiguous(), f"{op}: {name}",
          f"a contiguous float32 tensor of shape {tuple(shape)}{note}", got)
