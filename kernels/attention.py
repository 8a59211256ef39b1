"""Flash-style multi-head attention forward for ViT inference (non-causal, no mask).

Each program owns BLOCK_M query rows of one (batch, head) and streams K/V through it in BLOCK_N-row blocks with an
online softmax (fp32, base 2, the scale folded with log2(e)), so the N x N score matrix never exists in memory.
The result is stored straight into (B, Nq, H*d), the layout the out-projection reads, which removes the
transpose/reshape copy an unfused implementation needs. q/k/v may be strided views into the (3, B, H, N, d) tensor
that `ln_qkv` writes; Nq may be smaller than Nk (Nq == 1 when the last layer keeps only [CLS]).
"""
import math

import torch
import triton
import triton.language as tl

from ._common import (FAMILY_SMEM, FLOAT_DTYPES, TL_SIG, check, check_dtype, gpu_family, is_interpreting, jit_fn,
                      m_bucket, shared_memory_bytes, upcast_needed)

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
_LOG2E = 1.4426950408889634


# ---- autotune tables ------------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages). BLOCK_M == 16 rows serve Nq <= 16 (the [CLS]-only last layer).
HOPPER_ATTN = [
    (128, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 128, 8, 3),
    (128, 64, 4, 4),
    (128, 128, 8, 4),
    (64, 64, 4, 3),
    (64, 128, 4, 3),
    (16, 128, 4, 3),
]
AMPERE_ATTN = [
    (128, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 32, 4, 3),
    (64, 64, 4, 3),
    (64, 64, 4, 2),
    (64, 32, 4, 2),
    (16, 64, 4, 2),
]
FALLBACK_ATTN = [
    (64, 64, 4, 2),
    (64, 32, 4, 2),
    (16, 64, 4, 2),
]
# fp32 uses ieee dots, which run on FMA units on every family: small tiles keep registers (and compile time) sane.
FP32_ATTN = [
    (64, 32, 4, 2),
    (32, 32, 4, 2),
    (16, 32, 4, 2),
]
ATTN_TABLES = {"hopper": HOPPER_ATTN, "ampere": AMPERE_ATTN, "fallback": FALLBACK_ATTN}
# Hopper rows the static report (benchmarks/static/report.md, triton 3.9) shows spilling, with the BLOCK_D values
# they spill at: 128x64 with 4 warps at BLOCK_D = 128 (head dims 80-128, ragged 197/257 keys), 152-160 B. The prune
# drops them there (the CI gate forbids a Hopper pick that spills).
HOPPER_ATTN_SPILLS = {(128, 64, 4, 3): (128,), (128, 64, 4, 4): (128,)}
# Big tiles mean few numpy calls; the interpreter benchmarks nothing, so it gets exactly one config.
INTERPRETER_ATTN = (64, 64, 4, 1)
# The tile aot_variants() compiles every flag combination with (fp16/bf16: in the Hopper and Ampere tables), and
# the BLOCK_D values the launcher can pick: next power of two of MIN_HEAD_DIM..MAX_HEAD_DIM.
_AOT_TILE = {"16bit": (64, 64, 4, 3), "fp32": FP32_ATTN[1]}
_BLOCK_DS = (64, 128, 32, 16)  # most used first: the AOT subset for sm_80 takes the first


def _configs():
    tables = (*ATTN_TABLES.values(), FP32_ATTN)
    rows = [INTERPRETER_ATTN] if is_interpreting() else list(dict.fromkeys(r for t in tables for r in t))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in rows]


def _smem_estimate(block_m, block_n, block_d, num_stages, elem):
    """Q tile plus `num_stages` buffered K and V tiles (what the software pipeline keeps in shared memory)."""
    return elem * block_d * (block_m + 2 * num_stages * block_n)


def _prune_configs(configs, named_args, **kwargs):
    """Keep the running GPU family's table (the fp32 one for fp32); drop tiles taller than the queries, much wider
    than the keys, or too big for shared memory. Runs at first launch on a device, never at import."""
    if len(configs) <= 1:
        return configs
    q = named_args["Q"]
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    elem = q.element_size()
    table = FP32_ATTN if elem == 4 else ATTN_TABLES[gpu_family(index)]
    smem = shared_memory_bytes(index)
    block_d = kwargs["BLOCK_D"]
    q_bucket, k_bucket = named_args["N_Q_BUCKET"], named_args["N_K_BUCKET"]
    family = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in table]
    if gpu_family(index) == "hopper" and elem != 4:
        family = [c for c in family if block_d not in HOPPER_ATTN_SPILLS.get(
            (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages), ())]
    kept = []
    for c in family:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if bm > q_bucket or (bm == 16 and q_bucket > 16):
            continue
        if bn > max(64, k_bucket):
            continue
        if _smem_estimate(bm, bn, block_d, c.num_stages, elem) > smem:
            continue
        kept.append(c)
    if not kept:
        kept = [min(family or configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))]
    return kept


# ---- kernel ---------------------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(ptrs, rows, n_rows, offs_d, HEAD_DIM, MASK_ROWS: tl.constexpr):
    """Load a (rows, BLOCK_D) tile with zeros in the padding. The head-dim mask is always applied: Triton
    specialises HEAD_DIM as a multiple of 16 for the usual head dims (32, 64, 80, 96, 128), so the mask is constant
    over 16-element runs and the loads stay vectorized; an unmasked variant would double the compiled variants."""
    if MASK_ROWS:
        x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def _attn_step(acc, l_i, m_i, q, k_ptrs, v_ptrs, start_n, offs_n, offs_d,
               N_K, HEAD_DIM, stride_kn, stride_vn, qk_scale,
               MASK_N: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One K/V block of the online softmax; MASK_N only for the ragged last block."""
    cols = start_n + offs_n
    k = _load_tile(k_ptrs + start_n * stride_kn, cols, N_K, offs_d, HEAD_DIM, MASK_N)
    v = _load_tile(v_ptrs + start_n * stride_vn, cols, N_K, offs_d, HEAD_DIM, MASK_N)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # log2-domain scores, fp32
    if MASK_N:
        qk = tl.where(cols[None, :] < N_K, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)  # 0 on the first block (m_i = -inf)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.autotune(configs=_configs(), key=["N_Q_BUCKET", "N_K_BUCKET", "HEAD_DIM"],
                 prune_configs_by={"early_config_prune": _prune_configs},
                 cache_results=True)  # tuned configs persist in triton's cache dir across processes
@triton.heuristics({
    "EVEN_M": lambda a: a["N_Q"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: a["N_K"] % a["BLOCK_N"] == 0,
})
@triton.jit
def _attn_fwd_kernel(
    Q,  # (B, H, N_Q, HEAD_DIM) queries, last dim contiguous
    K,  # (B, H, N_K, HEAD_DIM) keys, last dim contiguous
    V,  # (B, H, N_K, HEAD_DIM) values, last dim contiguous
    Out,  # (B, N_Q, H * HEAD_DIM) output: head h occupies columns [h*HEAD_DIM, (h+1)*HEAD_DIM)
    stride_qb, stride_qh, stride_qm,  # element strides of Q over batch, head, row
    stride_kb, stride_kh, stride_kn,  # element strides of K over batch, head, row
    stride_vb, stride_vh, stride_vn,  # element strides of V over batch, head, row
    stride_ob, stride_oh, stride_om,  # element strides of Out over batch, head (= HEAD_DIM), row
    H,  # number of heads
    N_Q,  # query rows per (batch, head)
    N_K,  # key/value rows per (batch, head)
    HEAD_DIM,  # head dimension d (runtime; BLOCK_D is its power-of-two padding)
    qk_scale,  # softmax scale * log2(e), so exp2 can replace exp
    N_Q_BUCKET,  # next power of two of N_Q: autotune key only, unused in the body
    N_K_BUCKET,  # next power of two of N_K: autotune key only, unused in the body
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # key/value rows per loop step
    BLOCK_D: tl.constexpr,  # next power of two >= HEAD_DIM (and >= 16 for tl.dot)
    EVEN_M: tl.constexpr,  # N_Q % BLOCK_M == 0: no row masks on Q loads and Out stores
    EVEN_N: tl.constexpr,  # N_K % BLOCK_N == 0: no ragged last K/V block
    UPCAST: tl.constexpr,  # convert tiles to fp32 after loading (bf16 under the interpreter is computed wrongly)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no tf32), the target default otherwise
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(N_Q, BLOCK_M)
    pid_m = pid % num_m  # query blocks of one head run next to each other and share its K/V in L2
    pid_bh = pid // num_m
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    k_ptrs = K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]

    q = _load_tile(q_ptrs, offs_m, N_Q, offs_d, HEAD_DIM, not EVEN_M)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if EVEN_N:
        n_full = N_K
    else:
        n_full = (N_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _attn_step(acc, l_i, m_i, q, k_ptrs, v_ptrs, start_n, offs_n, offs_d,
                                   N_K, HEAD_DIM, stride_kn, stride_vn, qk_scale,
                                   False, UPCAST, DOT_PRECISION)
    if not EVEN_N:
        acc, l_i, m_i = _attn_step(acc, l_i, m_i, q, k_ptrs, v_ptrs, n_full, offs_n, offs_d,
                                   N_K, HEAD_DIM, stride_kn, stride_vn, qk_scale,
                                   True, UPCAST, DOT_PRECISION)

    acc = acc / l_i[:, None]
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    o = acc.to(Out.dtype.element_ty)
    if EVEN_M:
        tl.store(o_ptrs, o, mask=offs_d[None, :] < HEAD_DIM)
    else:
        tl.store(o_ptrs, o, mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))


# ---- launcher -------------------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, scale):
    op = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(isinstance(t, torch.Tensor), f"{op}: {name}", "a torch.Tensor", type(t).__name__)
        check(t.dim() == 4, f"{op}: {name}.dim()", "4 (B, H, N, d)", tuple(t.shape))
        check_dtype(op, name, t, FLOAT_DTYPES)
    check(q.dtype == k.dtype == v.dtype, f"{op}: dtypes", "q, k, v of one dtype", (q.dtype, k.dtype, v.dtype))
    check(k.shape == v.shape, f"{op}: v.shape", f"equal to k.shape {tuple(k.shape)}", tuple(v.shape))
    check(q.shape[:2] == k.shape[:2], f"{op}: q.shape[:2] (B, H)", f"equal to k.shape[:2] {tuple(k.shape[:2])}",
          tuple(q.shape[:2]))
    check(q.shape[3] == k.shape[3], f"{op}: q head dim", f"equal to k's {k.shape[3]}", q.shape[3])
    d = q.shape[3]
    check(MIN_HEAD_DIM <= d <= MAX_HEAD_DIM, f"{op}: head dim", f"{MIN_HEAD_DIM}..{MAX_HEAD_DIM}", d)
    check(q.shape[2] >= 1 and k.shape[2] >= 1, f"{op}: sequence lengths (Nq, Nk)", ">= 1", (q.shape[2], k.shape[2]))
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(t.stride(3) == 1, f"{op}: {name}.stride(-1)", "1 (last dim contiguous)", t.stride())
    check(isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0, f"{op}: scale",
          "a finite positive float", scale)


def _check_devices(*tensors):
    devices = [t.device for t in tensors if t is not None]
    check(all(d == devices[0] for d in devices), "attention: devices", "q, k, v (and out) on one device", devices)
    if not is_interpreting():
        check(devices[0].type == "cuda", "attention: device", "CUDA tensors (or TRITON_INTERPRET=1 for CPU)",
              devices[0])


def _attention_fwd(q, k, v, scale, out=None, config=None):
    """Check, allocate and launch. `out` (B, Nq, H*d) contiguous lets tests poison the buffer; `config`
    (BLOCK_M, BLOCK_N, num_warps, num_stages) bypasses the autotuner (tests exercise several tilings)."""
    _check_inputs(q, k, v, scale)
    _check_devices(q, k, v, out)
    B, H, n_q, d = q.shape
    n_k = k.shape[2]
    if out is None:
        out = torch.empty((B, n_q, H * d), device=q.device, dtype=q.dtype)
    else:
        check(out.shape == (B, n_q, H * d) and out.dtype == q.dtype and out.is_contiguous(), "attention: out",
              f"contiguous {(B, n_q, H * d)} {q.dtype}", f"{tuple(out.shape)} {out.dtype} strides {out.stride()}")
    args = (q, k, v, out,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), d, out.stride(1),
            H, n_q, n_k, d, float(scale) * _LOG2E, m_bucket(n_q), m_bucket(n_k))
    meta = dict(BLOCK_D=max(16, triton.next_power_of_2(d)), UPCAST=upcast_needed(q.dtype),
                DOT_PRECISION=_dot_precision(q.dtype))

    def grid(m):
        return (triton.cdiv(n_q, m["BLOCK_M"]) * B * H,)

    if config is None:
        _attn_fwd_kernel[grid](*args, **meta)
    else:
        bm, bn, warps, stages = config
        _attn_fwd_kernel.fn[grid](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **meta)
    return out


def _dot_precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"  # the latter only matters for fp32 operands


# ---- registered op --------------------------------------------------------------------------------------------------
@torch.library.custom_op("vitfast::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return _attention_fwd(q, k, v, scale)


@_attention_op.register_fake
def _(q, k, v, scale):
    _check_inputs(q, k, v, scale)
    B, H, n_q, d = q.shape
    return q.new_empty((B, n_q, H * d))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for q (B, H, Nq, d), k/v (B, H, Nk, d) -> (B, Nq, H*d), heads concatenated."""
    return torch.ops.vitfast.attention(q, k, v, float(scale))


# ---- ahead-of-time compile variants ---------------------------------------------------------------------------------
def _families(row, dtype, block_d):
    """GPU families whose table holds `row` for this dtype and whose shared memory fits it (the prune's rules)."""
    elem = torch.empty((), dtype=dtype).element_size()
    tables = {f: FP32_ATTN for f in ATTN_TABLES} if dtype == torch.float32 else ATTN_TABLES
    return tuple(f for f, t in tables.items()
                 if row in t and _smem_estimate(row[0], row[1], block_d, row[3], elem) <= FAMILY_SMEM[f]
                 and not (f == "hopper" and elem != 4 and block_d in HOPPER_ATTN_SPILLS.get(row, ())))


def _vit_launches(dtype, bm, bn, block_d, even_m, even_n):
    """The `vit` callable of the contract: full-sequence attention in every layer, plus the [CLS]-only query launch
    of the last layer (Nq = 1); [] where the launcher would not pick this variant."""
    elem = torch.empty((), dtype=dtype).element_size()

    def launches(cfg, batch):
        n = (cfg.img_size[0] // cfg.patch_size) * (cfg.img_size[1] // cfg.patch_size) + 1
        d = cfg.embed_dim // cfg.num_heads
        if max(16, triton.next_power_of_2(d)) != block_d:
            return []
        out = []
        for name, n_q, count in (("attn", n, cfg.depth), ("attn [CLS]", 1, 1)):
            q_bucket, k_bucket = m_bucket(n_q), m_bucket(n)
            if bm > q_bucket or (bm == 16 and q_bucket > 16) or bn > max(64, k_bucket):
                continue
            if (n_q % bm == 0) != even_m or (n % bn == 0) != even_n:
                continue
            programs = batch * cfg.num_heads * -(-n_q // bm)
            launch = {"name": name, "programs": programs,
                      "flops": programs * 4 * bm * -(-n // bn) * bn * block_d,
                      "useful_flops": batch * cfg.num_heads * 4 * n_q * n * d,
                      "bytes": batch * cfg.num_heads * (2 * n_q + 2 * n) * d * elem}
            out.extend([launch] * count)
        return out
    return launches


def aot_variants():
    """Every constexpr combination the launcher can pick on a GPU: dtype x BLOCK_D x EVEN_M x EVEN_N, each with a
    representative tile; every row of every family table (bf16 and fp32, ragged EVEN_M = EVEN_N = False, head
    dims 64 and 128); fp16 at the 16-row and the large Hopper tile. Metadata: tests/kernels/aot_compile.py."""
    fn = jit_fn(_attn_fwd_kernel)
    variants = []

    def add(dtype, bm, bn, warps, stages, block_d, even_m, even_n):
        ty = TL_SIG[dtype]
        sig = {name: "i32" for name in fn.arg_names}
        sig.update({"Q": f"*{ty}", "K": f"*{ty}", "V": f"*{ty}", "Out": f"*{ty}", "qk_scale": "fp32"})
        consts = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, EVEN_M=even_m, EVEN_N=even_n, UPCAST=False,
                      DOT_PRECISION=_dot_precision(dtype))
        sig.update({name: "constexpr" for name in consts})
        # (B, H, N, d) views of the head-major QKV output and the (B, N, H·d) output: every stride is a multiple of
        # the head dim, itself a multiple of 16 for the ViT presets (64, 80); the buckets are powers of two >= 16.
        divisible = ("stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn", "stride_vb",
                     "stride_vh", "stride_vn", "stride_ob", "stride_oh", "stride_om", "HEAD_DIM", "N_Q_BUCKET",
                     "N_K_BUCKET")
        variants.append({"fn": fn, "signature": sig, "constexprs": consts, "num_warps": warps, "num_stages": stages,
                         "divisible": divisible, "op": "attention", "main_loop": None,
                         "wgmma": bm >= 64,  # a wgmma covers 64 rows per warpgroup: the 16-row tile is mma.sync
                         # fp32 ieee dots run on FMA units and spill at every ragged tile (static report)
                         "ungated": "fp32 ieee attention: validation path; backend auto sends fp32 models to sdpa"
                         if dtype == torch.float32 else None,
                         "tables": _families((bm, bn, warps, stages), dtype, block_d),
                         "vit": _vit_launches(dtype, bm, bn, block_d, even_m, even_n)})

    for dtype in FLOAT_DTYPES:
        for block_d in _BLOCK_DS:
            for even_m in (True, False):
                for even_n in (True, False):
                    add(dtype, *_AOT_TILE["fp32" if dtype == torch.float32 else "16bit"], block_d, even_m, even_n)
        if dtype == torch.float32:
            add(dtype, *FP32_ATTN[-1], 64, False, False)
            rows = FP32_ATTN
        else:
            add(dtype, *HOPPER_ATTN[-1], 64, False, False)
            add(dtype, *HOPPER_ATTN[2], 128, True, False)
            rows = list(dict.fromkeys(r for t in ATTN_TABLES.values() for r in t)) if dtype == torch.bfloat16 else []
        for row in rows:
            for block_d in (64, 128):
                add(dtype, *row, block_d, False, False)
    return variants
