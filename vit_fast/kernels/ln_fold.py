"""LayerNorm folded into the GEMM that follows it, so the GEMM's A operand is the raw activations (TMA → wgmma with
nothing in between) and the normalization costs a per-row scale in the epilogue:

    LN(x) @ Wᵀ + b = rstd · (x @ W'ᵀ − mean · colsum(W')) + b',   W' = W·diag(γ),  b' = b + W β

`fold_layer_norm` derives (W', colsum, b') once per weight (callers cache it: `VisionTransformer._cached`); W' is
rounded to the activation dtype first and colsum is summed from that rounded W' in fp32, so the mean term cancels
the mean part of x @ W'ᵀ exactly up to fp32 accumulation. `row_stats` computes each row's (mean, rstd) once per row
(not once per N-tile), centred in fp32 (two passes over rows wider than one block), stable when |mean| ≫ std. tests/kernels/test_ln_fold.py bounds the
bf16 error against fp32 by 2× PyTorch's own bf16 error on rows whose mean is 10× their std.

Inside the model the rows a LayerNorm reads were just written by a residual GEMM (the out-projection, FC2), so that
GEMM's epilogue writes their statistics instead of a launch of their own: per row and per SLOT-wide column slot,
the (count, mean, centred sum of squares) of the stored values of the tile that starts there (`store_partials`;
the tile's other slots get zeros), and the next GEMM's epilogue merges a row's slots with Chan's formula
(`merge_partials`: M2 = Σ M2ᵢ + Σ nᵢ (meanᵢ − mean)², no E[x²] − mean² cancellation). The slot means are stored
(not sums) so the merge divides once per row, not once per slot: `row_moments` sums nᵢ·dᵢ and nᵢ·dᵢ² of
dᵢ = meanᵢ − mean₀ (slot 0's mean as the shift, so the one subtraction left, Σnᵢdᵢ² − (Σnᵢdᵢ)²/n, is of the
between-slot spread only). Layout (M, 3, cdiv(N, SLOT)) fp32, SLOT per launch (`stats_slot`): `new_partials`.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import STATS_SLOT_ENV, TL_SIG, cdiv, check, check_linear, is_interpreting, jit_fn, switch_value

MAX_BLOCK_K = 2048  # columns per step of the statistics loop (whole rows up to ViT-g widths)
BLOCK_ROWS = 4  # rows per program (one warp per row)
# Columns per partial-statistics slot: every epilogue (sub)tile of a GEMM that writes them covers whole slots (the
# GEMM prunes drop tiles that would not: stats_tile_ok). Two widths, one per launch (stats_slot, from the rows'
# count and width, so the op allocating the partials, the GEMM writing them and the one merging them agree):
# - 128 at large M: the writers' 128-wide epilogue slices, and half the partials for the merging GEMM to read;
# - 64 at small batches (M bucket up to NARROW_ROWS), where the writers' fastest tiles are 64 wide: on the fourth
#   lease's H100, B/16's FC2 at batch 1 took 9.5 µs a call on 64x64 without statistics and 14.8 µs on 64x128, the
#   narrowest tile 128-column slots allowed, with them. The merging GEMM unrolls its slots, so rows of more than
#   NARROW_MAX_SLOTS narrow slots keep 128 (sm_90, triton 3.9: FC1's 64x128 row at 168 registers with 16 slots,
#   220 with 20). VITFAST_STATS_SLOT=128 keeps 128 at every batch (the code before; the benchmark's ablate1 step
#   compares the two).
# Under the interpreter the GEMMs' epilogue tile is 16 wide, so one slot of 8 has the tests cover tiles that span
# two slots (16: one).
STATS_SLOT = 128
NARROW_STATS_SLOT = 64
NARROW_ROWS = 1024
NARROW_MAX_SLOTS = 16
INTERPRETER_STATS_SLOT = 8


class FoldedLinear(NamedTuple):
    """A LayerNorm + Linear pair with the norm's affine part folded into the weight."""

    weight: torch.Tensor  # (N, K) W·diag(γ) in the activation dtype
    colsum: torch.Tensor  # (N,) fp32 row sums of that rounded weight
    bias: torch.Tensor  # (N,) fp32 b + W β


@torch.no_grad()
def fold_layer_norm(ln_weight, ln_bias, weight, bias) -> FoldedLinear:
    """(γ, β) of a LayerNorm and the (N, K) weight / (N,) bias (or None) of the Linear after it -> FoldedLinear.
    Derived tensors only: the inputs are never modified."""
    w32 = weight.float()
    folded = (w32 * ln_weight.float()[None, :]).to(weight.dtype).contiguous()
    colsum = folded.float().sum(dim=1)
    b = w32 @ ln_bias.float()
    if bias is not None:
        b = b + bias.float()
    return FoldedLinear(folded, colsum.contiguous(), b.contiguous())


def check_folded(op: str, x, weight, colsum, bias) -> tuple:
    """x (..., K), weight (N, K) in x.dtype, colsum and bias (N,) contiguous fp32 (what fold_layer_norm returns)."""
    k, n = check_linear(op, x, weight, None)
    for name, t in (("colsum", colsum), ("bias", bias)):
        check(tuple(t.shape) == (n,), f"{op}: {name}.shape", f"({n},)", tuple(t.shape))
        check(t.dtype == torch.float32, f"{op}: {name}.dtype", "torch.float32 (see fold_layer_norm)", t.dtype)
        check(n <= 1 or t.stride(0) == 1, f"{op}: {name}.stride()", "(1,) (contiguous)", t.stride())
    return k, n


@triton.jit(do_not_specialize=["M"])  # M = B·tokens: one compile for every batch size
def row_stats_kernel(
    x_ptr,  # (M, K) rows, any row stride, unit column stride
    stats_ptr,  # (M, 2) fp32 output: mean, rstd
    M,  # rows
    K,  # features per row
    stride_xm,  # row stride of x
    eps,  # LayerNorm epsilon, added to the variance
    BLOCK_ROWS: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # columns per step
    ONE_BLOCK: tl.constexpr,  # K <= BLOCK_K: the row is loaded once and both passes run on registers
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < M
    base = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    cols = tl.arange(0, BLOCK_K)
    if ONE_BLOCK:
        ok = row_ok[:, None] & (cols < K)[None, :]
        x = tl.load(base + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / K
        d = tl.where(ok, x - mean[:, None], 0.0)
        sq = tl.sum(d * d, axis=1)
    else:
        total = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ok = row_ok[:, None] & ((k0 + cols) < K)[None, :]
            total += tl.sum(tl.load(base + k0 + cols[None, :], mask=ok, other=0.0).to(tl.float32), axis=1)
        mean = total / K
        # second pass over the (cache-resident) row: the centred sum of squares has no cancellation
        sq = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ok = row_ok[:, None] & ((k0 + cols) < K)[None, :]
            x = tl.load(base + k0 + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            d = tl.where(ok, x - mean[:, None], 0.0)
            sq += tl.sum(d * d, axis=1)
    out = stats_ptr + rows.to(tl.int64) * 2
    tl.store(out, mean, mask=row_ok)
    tl.store(out + 1, 1.0 / tl.sqrt(sq / K + eps), mask=row_ok)


def stats_slot(m: int, n: int) -> int:
    """The partial-statistics slot width for m rows of n columns (the comment above STATS_SLOT)."""
    if is_interpreting():
        return INTERPRETER_STATS_SLOT
    # m <= NARROW_ROWS (a power of two) is m_bucket(m) <= NARROW_ROWS, which the GEMMs' autotune keys see; plain
    # comparisons keep a symbolic m (torch.compile tracing the ops) traceable
    if m <= NARROW_ROWS and cdiv(n, NARROW_STATS_SLOT) <= NARROW_MAX_SLOTS and switch_value(STATS_SLOT_ENV) == "auto":
        return NARROW_STATS_SLOT
    return STATS_SLOT


def stats_tile_ok(epi_n: int, slot: int) -> bool:
    """Whether a GEMM epilogue (sub)tile `epi_n` columns wide can write partial statistics in `slot`-wide slots:
    whole slots only."""
    return epi_n % slot == 0


def stats_slots(m: int, k: int) -> int:
    """Slots per row of m rows of width k."""
    return cdiv(k, stats_slot(m, k))


def partials_shape(rows: torch.Tensor) -> tuple:
    """(M, 3, slots): the partial statistics of the M rows of `rows` (..., N)."""
    n = rows.shape[-1]
    m = rows.numel() // max(n, 1)
    return (m, 3, stats_slots(m, n))


def new_partials(rows: torch.Tensor) -> torch.Tensor:
    """A buffer for the partial statistics of the rows of `rows` (..., N), on its device (every slot gets written)."""
    return torch.empty(partials_shape(rows), dtype=torch.float32, device=rows.device)


def check_partials(op: str, name: str, partials: torch.Tensor, rows: torch.Tensor) -> None:
    """partials: the statistics of the rows of `rows` (..., N): partials_shape(rows), contiguous fp32, its device."""
    shape = partials_shape(rows)
    check(tuple(partials.shape) == shape and partials.dtype == torch.float32 and partials.is_contiguous()
          and partials.device == rows.device, f"{op}: {name}",
          f"a contiguous float32 {shape} tensor on {rows.device} (linear_residual_stats' row statistics of those "
          "rows)", f"{tuple(partials.shape)} {partials.dtype} on {partials.device}")


@triton.jit
def tile_moments(y, col_ok, col0, N, WIDTH: tl.constexpr):
    """(count, mean, centred sum of squares) per row of y (rows, WIDTH) fp32, columns col0 .. col0 + WIDTH of which
    col_ok (those < N) count; the count is the same for every row (a scalar)."""
    valid = col_ok[None, :]
    count = tl.minimum(tl.maximum(N - col0, 0), WIDTH).to(tl.float32)
    mean = tl.sum(tl.where(valid, y, 0.0), axis=1) / tl.maximum(count, 1.0)
    d = tl.where(valid, y - mean[:, None], 0.0)
    return count, mean, tl.sum(d * d, axis=1)


@triton.jit
def store_partials(y, rows, col0, M, N, part_ptr, EPI_N: tl.constexpr, SLOT: tl.constexpr):
    """Partial statistics of one epilogue (sub)tile: y (BLOCK_M, EPI_N) fp32, the values as stored, of rows `rows`
    and columns col0 .. col0 + EPI_N; per row (count, mean, centred sum of squares) of the columns < N into slot
    col0 // SLOT of part_ptr's (M, 3, cdiv(N, SLOT)) rows, zeros into the tile's other slots. Row vectors only
    (no (rows, slots) tile, so no layout conversion through shared memory)."""
    cols = col0 + tl.arange(0, EPI_N)
    row_ok = rows < M
    # rows past M only feed their own statistics, which the stores drop
    count, mean, m2 = tile_moments(y, cols < N, col0, N, EPI_N)
    nslot = tl.cdiv(N, SLOT)
    first = col0 // SLOT
    ptrs = part_ptr + rows.to(tl.int64) * (3 * nslot) + first
    slot = tl.zeros_like(rows) + first  # a row vector: the interpreter cannot mask with a scalar comparison
    ok = row_ok & (slot < nslot)
    tl.store(ptrs, tl.zeros_like(mean) + count, mask=ok)
    tl.store(ptrs + nslot, mean, mask=ok)
    tl.store(ptrs + 2 * nslot, m2, mask=ok)
    for j in tl.static_range(1, EPI_N // SLOT):
        ok_j = row_ok & (slot + j < nslot)
        tl.store(ptrs + j, tl.zeros_like(mean), mask=ok_j)
        tl.store(ptrs + nslot + j, tl.zeros_like(mean), mask=ok_j)
        tl.store(ptrs + 2 * nslot + j, tl.zeros_like(mean), mask=ok_j)


@triton.jit
def _add_slot(ptrs, SLOTS: tl.constexpr, row_ok, mean0, n, s1, s2, m2):
    """One slot's (count, mean, M2) at ptrs into a row's sums about slot 0's mean: count, Σ nᵢdᵢ, Σ nᵢdᵢ², Σ M2ᵢ
    (dᵢ = meanᵢ − mean0; an empty slot, count 0, adds nothing)."""
    n_j = tl.load(ptrs, mask=row_ok, other=0.0)
    d = tl.load(ptrs + SLOTS, mask=row_ok, other=0.0) - mean0
    t = n_j * d
    return n + n_j, s1 + t, s2 + t * d, m2 + tl.load(ptrs + 2 * SLOTS, mask=row_ok, other=0.0)


@triton.jit
def row_moments(stats_ptr, rows, M, K, eps, ROW_STATS: tl.constexpr, SLOT: tl.constexpr, SLOTS: tl.constexpr,
                UNROLL: tl.constexpr):
    """(mean, rstd) of the rows `rows` of A (M, K) for the folded LayerNorm: read from row_stats' (M, 2) output
    (ROW_STATS 1), or merged from a residual GEMM's (M, 3, SLOTS) partial statistics (ROW_STATS 2; SLOTS =
    cdiv(K, stats_slot(M, K))): M2 = Σ M2ᵢ + Σ nᵢdᵢ² − (Σ nᵢdᵢ)²/n with dᵢ = meanᵢ − mean₀ (the module
    docstring), one division a row (row vectors: no (rows, slots) tile). UNROLL: the slots unrolled (the persistent
    engines: a loop here would stop Triton from flattening its tile loop) or in a loop (the pointer engine: one
    slot's loads live at a time instead of all of them)."""
    row_ok = rows < M
    r64 = rows.to(tl.int64)
    if ROW_STATS == 2:
        ptrs = stats_ptr + r64 * (3 * SLOTS)
        # slot 0 starts an epilogue slice, so its count is never 0 (1 for rows past M: no division by 0)
        n = tl.load(ptrs, mask=row_ok, other=1.0)
        mean0 = tl.load(ptrs + SLOTS, mask=row_ok, other=0.0)
        m2 = tl.load(ptrs + 2 * SLOTS, mask=row_ok, other=0.0)
        s1 = n * 0.0  # zeros in the rows' layout (n is finite; tl.zeros_like has no layout in a Gluon kernel)
        s2 = s1
        if UNROLL:
            for j in tl.static_range(1, SLOTS):
                n, s1, s2, m2 = _add_slot(ptrs + j, SLOTS, row_ok, mean0, n, s1, s2, m2)
        else:
            for j in range(1, SLOTS):
                n, s1, s2, m2 = _add_slot(ptrs + j, SLOTS, row_ok, mean0, n, s1, s2, m2)
        inv_n = 1.0 / n  # n = K when the partials are this A's
        mean = mean0 + s1 * inv_n
        # the between-slot term is >= 0 exactly; a rounding below 0 must not shrink eps's floor
        rstd = 1.0 / tl.sqrt((m2 + tl.maximum(s2 - s1 * s1 * inv_n, 0.0)) * inv_n + eps)
    else:
        mean = tl.load(stats_ptr + r64 * 2, mask=row_ok, other=0.0)
        rstd = tl.load(stats_ptr + r64 * 2 + 1, mask=row_ok, other=0.0)
    return mean, rstd


def merge_partials(partials: torch.Tensor, eps: float) -> torch.Tensor:
    """(M, 2) (mean, rstd) from (M, 3, S) partial statistics, in torch: the reference row_moments is tested against,
    and what a caller gets without a GEMM to merge them in."""
    count, means, m2 = partials.double().unbind(1)
    k = count.sum(1, keepdim=True)
    mean = (count * means).sum(1, keepdim=True) / k
    var = (m2 + count * (means - mean) ** 2).sum(1, keepdim=True) / k
    return torch.cat([mean, (var + eps).rsqrt()], 1).float()


def _block_k(k: int) -> int:
    return min(triton.next_power_of_2(k), MAX_BLOCK_K)


def launch_row_stats(x2d: torch.Tensor, eps: float) -> torch.Tensor:
    """(M, 2) fp32 (mean, rstd) of the rows of an already-checked (M, K) tensor."""
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    m, k = x2d.shape
    stats = torch.empty(m, 2, dtype=torch.float32, device=x2d.device)
    block_k = _block_k(k)
    row_stats_kernel[(triton.cdiv(m, BLOCK_ROWS),)](
        x2d, stats, m, k, x2d.stride(0), float(eps), BLOCK_ROWS=BLOCK_ROWS, BLOCK_K=block_k, ONE_BLOCK=k <= block_k,
        num_warps=1 if is_interpreting() else 4,
    )
    return stats


def _vit_launches(elem, block_k, one_block):
    """The static report's `vit` callable: one statistics launch per forward (the first block's LN1; every other
    LayerNorm merges the partial statistics its residual GEMM wrote), reading the (B·N, D) rows once and writing 8
    bytes per row."""
    def launches(cfg, batch):
        d, m = cfg.embed_dim, batch * (cfg.num_prefix_tokens + cfg.num_patches)
        if _block_k(d) != block_k or (d <= block_k) != one_block:
            return []
        launch = {"name": "ln stats", "flops": 0, "useful_flops": 0, "bytes": m * d * elem + 8 * m,
                  "programs": -(-m // BLOCK_ROWS)}
        return [launch]
    return launches


def aot_variants(exhaustive: bool = False):
    """bf16 at the whole-row blocks of the ViT family (192..1536 -> 256..2048) and on the looped path for wider
    rows; fp16 and fp32 at block 1024. exhaustive: every dtype at every block, small ones included."""
    blocks = [(b, True) for b in (64, 128, 256, 512, 1024, 2048)] if exhaustive else [(256, True), (1024, True),
                                                                                      (2048, True)]
    out = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        rows = blocks + [(MAX_BLOCK_K, False)] if exhaustive or dtype == torch.bfloat16 else [(1024, True)]
        for block_k, one_block in rows:
            sig = {"x_ptr": "*" + TL_SIG[dtype], "stats_ptr": "*fp32", "M": "i32", "K": "i32", "stride_xm": "i32",
                   "eps": "fp32", "BLOCK_ROWS": "constexpr", "BLOCK_K": "constexpr", "ONE_BLOCK": "constexpr"}
            out.append({"fn": jit_fn(row_stats_kernel), "signature": sig,
                        "constexprs": {"BLOCK_ROWS": BLOCK_ROWS, "BLOCK_K": block_k, "ONE_BLOCK": one_block},
                        "num_warps": 4, "num_stages": 2, "divisible": ("K", "stride_xm"), "op": "row_stats",
                        "tables": ("hopper", "ampere", "fallback"),
                        "vit": _vit_launches(torch.empty((), dtype=dtype).element_size(), block_k, one_block)})
    return out
