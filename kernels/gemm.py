"""The one fused GEMM behind ln_linear, ln_qkv and linear_residual: out = epilogue(prologue(A) @ W^T).

Constexpr switches pick the fusion: a LayerNorm prologue (row statistics in fp32 from a first pass over K inside the
same program; the normalized tile is built in registers right before tl.dot and never written to memory), bias,
exact-erf / tanh GELU, residual add, and a head-major (3, B, H, N, d) store for the fused QKV projection.
"""
import torch
import triton
import triton.language as tl

from ._common import (GEMM_DIVISIBLE, SWITCH_TILE, TL_SIG, gemm_configs, gemm_families, gemm_kind, gemm_rows_for,
                      gemm_vit_launches, jit_fn, m_bucket, prune_gemm_configs, upcast_needed)

DTYPES = (torch.bfloat16, torch.float32, torch.float16)  # AOT order: bf16 first (the fast path)
GEMM_AUTOTUNE_KEY = ["M_BUCKET", "N", "K", "HAS_LN", "HAS_BIAS", "ACTIVATION", "HAS_RESIDUAL", "QKV_HEAD_MAJOR"]


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a flat program id to (pid_m, pid_n) in groups of GROUP_M row tiles, so neighbours share W tiles in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def gelu_erf(x):
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def gelu_tanh(x):
    # 0.5 * x * (1 + tanh(u)) == x * sigmoid(2u), u = sqrt(2/pi) * (x + 0.044715 x^3); no tanh needed.
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def gelu_quick(x):
    # CLIP's "quick GELU": x * sigmoid(1.702 x)
    return x / (1.0 + tl.exp(-1.702 * x))


@triton.jit
def apply_activation(x, ACTIVATION: tl.constexpr):
    """The epilogue activation every GEMM engine shares; codes are _common.ACTIVATIONS."""
    if ACTIVATION == 1:
        x = gelu_erf(x)
    elif ACTIVATION == 2:
        x = gelu_tanh(x)
    elif ACTIVATION == 3:
        x = gelu_quick(x)
    return x


@triton.autotune(
    configs=gemm_configs(),
    key=GEMM_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_gemm_configs},
    cache_results=True,  # tuned configs persist on disk (triton's cache dir), so a restarted server does not re-tune
)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit(do_not_specialize=["M"])  # M = B·tokens: one compile for every batch size
def fused_gemm_kernel(
    a_ptr,  # (M, K) activations, any strides
    w_ptr,  # (N, K) weight in nn.Linear layout, any strides
    bias_ptr,  # (N,) bias; read only when HAS_BIAS
    res_ptr,  # (M, N) residual; read only when HAS_RESIDUAL
    ln_w_ptr,  # (K,) LayerNorm weight; read only when HAS_LN
    ln_b_ptr,  # (K,) LayerNorm bias; read only when HAS_LN
    out_ptr,  # (M, N) output with strides, or contiguous (3, B, H, SEQ, HEAD_DIM) when QKV_HEAD_MAJOR
    M,  # rows (tokens over the whole batch)
    N,  # output features
    K,  # input features
    stride_am,  # A row stride
    stride_ak,  # A column stride
    stride_wn,  # W row stride
    stride_wk,  # W column stride
    stride_rm,  # residual row stride
    stride_rn,  # residual column stride
    stride_om,  # output row stride (ignored when QKV_HEAD_MAJOR)
    stride_on,  # output column stride (ignored when QKV_HEAD_MAJOR)
    eps,  # LayerNorm epsilon
    SEQ,  # tokens per image (QKV_HEAD_MAJOR only)
    HEAD_DIM,  # head dim (QKV_HEAD_MAJOR only)
    M_BUCKET,  # next power of two of M: an autotune key, unused by the kernel body
    HAS_LN: tl.constexpr,  # LayerNorm prologue on A rows
    HAS_BIAS: tl.constexpr,  # add bias in the epilogue
    ACTIVATION: tl.constexpr,  # 0 none, 1 exact-erf GELU, 2 tanh GELU, 3 quick GELU
    HAS_RESIDUAL: tl.constexpr,  # add the residual after the activation
    QKV_HEAD_MAJOR: tl.constexpr,  # store column j of row (b, n) at [j // D, b, (j % D) // HEAD_DIM, n, j % HEAD_DIM]
    UPCAST: tl.constexpr,  # dot in fp32 (interpreter with bf16, whose bf16 arithmetic is wrong)
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
    # Out-of-range rows/columns wrap onto valid ones for the loads (masked at the store), so loads need no M/N masks.
    rm_load = (rm % M).to(tl.int64)
    rn_load = rn % N
    a_ptrs = a_ptr + rm_load[:, None] * stride_am + rk[None, :] * stride_ak
    w_ptrs = w_ptr + rn_load[None, :] * stride_wn + rk[:, None] * stride_wk

    if HAS_LN:
        # Chan/Welford merge of per-chunk (mean, M2): one pass over K, stable when |mean| >> std.
        mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                x = tl.load(a_ptrs + k0 * stride_ak).to(tl.float32)
                cnt = BLOCK_K * 1.0
                c_mean = tl.sum(x, axis=1) / cnt
                d = x - c_mean[:, None]
            else:
                k_ok = (k0 + rk) < K
                x = tl.load(a_ptrs + k0 * stride_ak, mask=k_ok[None, :], other=0.0).to(tl.float32)
                cnt = tl.minimum(K - k0, BLOCK_K) * 1.0
                c_mean = tl.sum(x, axis=1) / cnt
                d = tl.where(k_ok[None, :], x - c_mean[:, None], 0.0)
            c_m2 = tl.sum(d * d, axis=1)
            total = k0 + cnt
            delta = c_mean - mean
            mean += delta * (cnt / total)
            m2 += c_m2 + delta * delta * (k0 * cnt / total)
        rstd = 1.0 / tl.sqrt(m2 / K + eps)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = (k0 + rk) < K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        if HAS_LN:
            if EVEN_K:
                g = tl.load(ln_w_ptr + k0 + rk).to(tl.float32)
                b = tl.load(ln_b_ptr + k0 + rk).to(tl.float32)
            else:
                g = tl.load(ln_w_ptr + k0 + rk, mask=k_ok, other=0.0).to(tl.float32)
                b = tl.load(ln_b_ptr + k0 + rk, mask=k_ok, other=0.0).to(tl.float32)
            a = (a.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :] + b[None, :]
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        else:
            a = a.to(w.dtype)
        acc = tl.dot(a, w, acc, input_precision="ieee")
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    mask_m = rm < M
    mask_n = rn < N
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    rm64 = rm.to(tl.int64)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + rm64[:, None] * stride_rm + rn[None, :] * stride_rn, mask=mask, other=0.0)
        acc += res.to(tl.float32)
    if QKV_HEAD_MAJOR:
        D = N // 3
        n_tok = rm64 % SEQ
        row_off = (rm64 - n_tok) * D + n_tok * HEAD_DIM  # b * SEQ * D + n * HEAD_DIM
        which = rn // D
        h = (rn % D) // HEAD_DIM
        col_off = which.to(tl.int64) * M * D + h * SEQ * HEAD_DIM + rn % HEAD_DIM
        out_ptrs = out_ptr + row_off[:, None] + col_off[None, :]
    else:
        out_ptrs = out_ptr + rm64[:, None] * stride_om + rn[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def launch_fused_gemm(a, weight, bias, out, *, ln=None, activation=0, residual=None, qkv=None):
    """Launch on already-checked 2-D operands. a (M, K), weight (N, K), out (M, N) or (3, B, H, SEQ, HEAD_DIM);
    ln = (weight, bias, eps) or None; residual (M, N) or None; qkv = (SEQ, HEAD_DIM) or None."""
    M, K = a.shape
    N = weight.shape[0]
    ln_w, ln_b, eps = ln if ln is not None else (out, out, 0.0)
    seq, head_dim = qkv if qkv is not None else (1, 1)
    res = residual if residual is not None else out
    # (unused with qkv; 0, 1 keeps the JIT's stride specialization equal to the AOT variants')
    stride_om, stride_on = out.stride() if qkv is None else (0, 1)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    fused_gemm_kernel[grid](
        a, weight, bias if bias is not None else out, res, ln_w, ln_b, out,
        M, N, K,
        a.stride(0), a.stride(1), weight.stride(0), weight.stride(1), res.stride(-2), res.stride(-1),
        stride_om, stride_on,
        float(eps), seq, head_dim, m_bucket(M),
        HAS_LN=ln is not None, HAS_BIAS=bias is not None, ACTIVATION=activation,
        HAS_RESIDUAL=residual is not None, QKV_HEAD_MAJOR=qkv is not None,
        UPCAST=upcast_needed(a.dtype),
    )  # fmt: skip
    return out


def gemm_aot_variants(has_ln, activations, has_bias, has_residual, qkv, exhaustive=False):
    """AOT-compile descriptions of fused_gemm_kernel for one op (its fixed switches has_ln/has_residual/qkv, the
    activation and bias values it accepts; the first activation listed is the one the ViT presets use): every dtype
    at every tile row any GPU family's table can pick for it (the ViT switches: bias, that activation, EVEN_K), plus
    the switches at SWITCH_TILE. exhaustive=True: the switches' full product (dtype x activation x bias x EVEN_K).
    Default: bf16 and fp32 (different dot lowerings) vary one switch at a time, fp16 compiles the base.
    Metadata follows the contract in tests/kernels/aot_compile.py."""
    op = _op_name(has_ln, has_residual, qkv)
    base = (activations[0], True, True)  # activation, has_bias, EVEN_K
    if exhaustive:
        combos = [(a, b, e) for a in activations for b in has_bias for e in (True, False)]
    else:
        combos = [base] + [(a, True, True) for a in activations[1:]] + [(base[0], b, True) for b in has_bias
                                                                          if b is not True] + [(base[0], True, False)]
    out = []
    for dtype in DTYPES:
        elem = torch.empty((), dtype=dtype).element_size()
        for row in gemm_rows_for(elem):
            out.append(_gemm_variant(dtype, has_ln, base[0], True, has_residual, qkv, True, row, op))
        for act, bias, even_k in (combos if exhaustive or dtype != torch.float16 else [base]):
            if (act, bias, even_k) != base:
                out.append(_gemm_variant(dtype, has_ln, act, bias, has_residual, qkv, even_k, SWITCH_TILE, op))
    return out


def _op_name(has_ln, has_residual, qkv):
    return "ln_qkv" if qkv else "ln_linear" if has_ln else "linear_residual" if has_residual else "linear"


def aot_variants(exhaustive: bool = False):
    """The shared kernel as ln_linear's bf16 LN + GELU variants at every tile (the op modules list the rest; the
    report compiles identical variants once)."""
    return [v for v in gemm_aot_variants(True, (1, 0, 2, 3), (True, False), False, False)
            if v["signature"]["a_ptr"] == "*bf16" and v["constexprs"]["ACTIVATION"] == 1]


def _gemm_variant(dtype, has_ln, activation, has_bias, has_residual, qkv, even_k, tile, op=None):
    bm, bn, bk, warps, stages = tile
    p = "*" + TL_SIG[dtype]
    elem = torch.empty((), dtype=dtype).element_size()
    sig = {
        "a_ptr": p, "w_ptr": p, "bias_ptr": p, "res_ptr": p, "ln_w_ptr": p, "ln_b_ptr": p, "out_ptr": p,
        "M": "i32", "N": "i32", "K": "i32",
        "stride_am": "i32", "stride_ak": "constexpr", "stride_wn": "i32", "stride_wk": "constexpr",
        "stride_rm": "i32", "stride_rn": "constexpr", "stride_om": "i32", "stride_on": "constexpr",
        "eps": "fp32", "SEQ": "i32", "HEAD_DIM": "i32", "M_BUCKET": "i32",
    }  # fmt: skip
    constexprs = {
        "stride_ak": 1, "stride_wk": 1, "stride_rn": 1, "stride_on": 1,
        "HAS_LN": has_ln, "HAS_BIAS": has_bias, "ACTIVATION": activation, "HAS_RESIDUAL": has_residual,
        "QKV_HEAD_MAJOR": qkv, "UPCAST": False,
        "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EVEN_K": even_k,
    }  # fmt: skip
    divisible = GEMM_DIVISIBLE + (("HEAD_DIM",) if qkv else ())
    if not qkv:  # the launcher passes SEQ = HEAD_DIM = 1, which the JIT turns into constants
        constexprs.update(SEQ=1, HEAD_DIM=1)
    for name in constexprs:
        sig[name] = "constexpr"
    op = op or _op_name(has_ln, has_residual, qkv)
    vit_activation = 1 if op == "ln_linear" else 0
    return {"fn": jit_fn(fused_gemm_kernel), "signature": sig, "constexprs": constexprs,
            "num_warps": warps, "num_stages": stages, "divisible": divisible, "op": op, "main_loop": "gemm",
            "tables": gemm_families(tile, elem, gemm_kind(dict(HAS_LN=has_ln, QKV_HEAD_MAJOR=qkv))),
            "vit": gemm_vit_launches(op, tile, elem, even_k,
                                     when=lambda cfg: has_bias == cfg.qkv_bias if qkv else (
                                         has_bias and activation == vit_activation))}
