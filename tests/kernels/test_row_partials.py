"""Partial LayerNorm statistics (vit_fast/kernels/ln_fold.py): the residual GEMM's epilogue writes them
(linear_residual_stats), the next folded-LayerNorm GEMM merges them (ln_linear / ln_qkv `partials`), on both GEMM
engines, with slots as wide as the interpreter's epilogue slices (16 columns) and half as wide (8: a slice fills two
slots). Checked against float64 statistics of the stored rows, against the statistics launch they replace, and on
rows whose mean is about 300x their standard deviation, where E[x²] − mean² in fp32 would lose the variance."""
import math
import sys

import pytest
import torch
import triton
from gemm_engine import engine  # noqa: F401 (fixture)
from tolerances import KERNEL_TOL, assert_close, poison

from vit_fast import kernels
from vit_fast.kernels import gemm, ln_fold
from vit_fast.kernels.linear_residual import linear_residual_launch
from vit_fast.kernels.ln_linear import ln_linear_launch
from vit_fast.kernels.ln_qkv import ln_qkv_launch

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (leading dims, K, N): N a whole number of slots and not (240 = 3.75 slots of 64 and, past 1,024 rows, 1.875 of 128
# on the GPU: ln_fold.stats_slot; 52 = 6.5 slots of 8 under the interpreter, fp32 only: TMA rows must be 16-byte
# multiples); 197 and 257 token rows.
SHAPES = ([((2, 197), 768, 768), ((3, 257), 320, 240), ((8, 197), 768, 768), ((5, 257), 320, 240)] if CUDA
          else [((2, 13), 80, 48), ((1, 197), 40, 56), ((1, 257), 24, 52)])


@pytest.fixture(params=[8, 16], ids=["slot8", "slot16"])
def slot(request, monkeypatch):
    """The interpreter's slot width: half its GEMMs' epilogue slices, or all of one (the GPU's usual case)."""
    monkeypatch.setattr(ln_fold, "INTERPRETER_STATS_SLOT", request.param)
    return request.param


def shapes(dtype):
    return [s for s in SHAPES if dtype == torch.float32 or s[2] * dtype.itemsize % 16 == 0]


def make(lead, k, n, dtype, device, offset=0.0):
    x = torch.randn(*lead, k, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    bb = (0.5 * torch.randn(n, device=device)).to(dtype)
    res = (offset + 3 * torch.randn(*lead, n, device=device)).to(dtype)
    return x, w, bb, res


def exact_stats(rows: torch.Tensor, eps: float) -> torch.Tensor:
    """(mean, rstd) of the stored rows in float64."""
    r = rows.reshape(-1, rows.shape[-1]).double()
    return torch.stack([r.mean(1), (r.var(1, unbiased=False) + eps).rsqrt()], 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_gemm_writes_partials(dtype, engine, slot, device):
    """Every slot written (poisoned first), counts summing to N, merged statistics those of the stored rows."""
    for lead, k, n in shapes(dtype):
        x, w, bb, res = make(lead, k, n, dtype, device)
        out = poison(torch.empty(*lead, n, dtype=dtype, device=device))
        parts = poison(ln_fold.new_partials(out))
        linear_residual_launch(x, w, bb, res, out=out, stats_out=parts)
        assert_close(out, res.float() + x.float() @ w.float().t() + bb.float(), dtype)
        assert torch.isfinite(parts).all(), "unwritten slots"
        assert torch.equal(parts[:, 0].sum(1), torch.full_like(parts[:, 0, 0], n)), "counts do not add up to N"
        merged = ln_fold.merge_partials(parts, 1e-6).double()
        torch.testing.assert_close(merged, exact_stats(out, 1e-6), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_is_stable_for_offset_rows(dtype, engine, slot, device):
    """Rows at mean 1000 and std about 3 (far past a residual stream's offsets): the merge in the
    next GEMM's epilogue matches float64 statistics to fp32 rounding, which the one-pass E[x²] − mean² misses by
    orders of magnitude."""
    lead, k, n = shapes(dtype)[0]
    x, w, bb, res = make(lead, k, n, dtype, device, offset=1000.0)
    out, parts = kernels.linear_residual_stats(x, w, bb, res)
    exact = exact_stats(out, 1e-6)
    g, b = torch.ones(n, dtype=dtype, device=device), torch.zeros(n, dtype=dtype, device=device)
    eye = torch.eye(n, dtype=dtype, device=device)  # LN(out) @ I: the normalized rows, as the GEMM's epilogue makes them
    folded = kernels.fold_layer_norm(g, b, eye, None)
    normed = ln_linear_launch(out, 1e-6, *folded, partials=parts)
    rows = out.reshape(-1, n).double()
    ref = (rows - exact[:, :1]) * exact[:, 1:]
    assert_close(normed.reshape(-1, n), ref, dtype)
    r32 = out.reshape(-1, n).float()
    naive_var = (r32 * r32).mean(1) - r32.mean(1) ** 2  # what the merge must not do
    merged_var = ln_fold.merge_partials(parts, 0.0)[:, 1].double() ** -2
    true_var = rows.var(1, unbiased=False)
    # fp32 slot means of values near 1000 are good to ~6e-5 each: the merge's variance to about 1e-5 relative
    # (at most 1.3e-5 over 41 draws of the interpreter's 8-column slots); the one-pass formula to 1.7e-2-3e-2
    assert ((merged_var - true_var).abs() / true_var).max() < 1e-4
    assert ((naive_var.double() - true_var).abs() / true_var).max() > 1e-3, "the draw cannot tell the two apart"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_of_slots_far_apart(dtype, engine, slot, device):
    """Rows whose slots sit at means ±500 apart (most of the variance between slots, none of it in slot 0's shift:
    the merge's Σnᵢdᵢ² − (Σnᵢdᵢ)²/n term) and one slot at +2000: the merged statistics, and the LayerNorm a GEMM
    applies with them, those of the stored rows in float64."""
    lead, k, n = shapes(dtype)[0]
    x, w, bb, res = make(lead, k, n, dtype, device)
    cols = torch.arange(n, device=device) // ln_fold.stats_slot(math.prod(lead), n)  # the slots the GEMM writes
    offsets = torch.where(cols % 2 == 0, -500.0, 500.0) + torch.where(cols == cols.max(), 2000.0, 0.0)
    res = (res.float() + offsets).to(dtype)
    out, parts = kernels.linear_residual_stats(x, w, bb, res)
    exact = exact_stats(out, 1e-6)
    merged = ln_fold.merge_partials(parts, 1e-6).double()
    torch.testing.assert_close(merged[:, 0], exact[:, 0], rtol=1e-5, atol=1e-3)  # means of about ±700
    torch.testing.assert_close(merged[:, 1], exact[:, 1], rtol=1e-5, atol=0.0)
    g, b = torch.ones(n, dtype=dtype, device=device), torch.zeros(n, dtype=dtype, device=device)
    eye = torch.eye(n, dtype=dtype, device=device)
    normed = ln_linear_launch(out, 1e-6, *kernels.fold_layer_norm(g, b, eye, None), partials=parts)
    # LN(out) @ I: with the right statistics only the output's rounding is left, one step of the stored dtype
    # (bf16's 2^-7; fp32: the kernel tolerance), so a variance off by a few % fails where the kernel tolerance would not
    step = max(torch.finfo(dtype).eps, KERNEL_TOL[torch.float32][0])
    ref = (out.reshape(-1, n).double() - exact[:, :1]) * exact[:, 1:]
    torch.testing.assert_close(normed.reshape(-1, n).double(), ref, rtol=step, atol=step)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ln_ops_merge_partials(dtype, engine, slot, device):
    """ln_linear (GELU) and ln_qkv on a residual GEMM's output: with its partials the same result as with the
    statistics launch, within the kernel tolerance of the fp32 composition; outputs poisoned first."""
    lead, k, n = shapes(dtype)[-1]
    x, w, bb, res = make(lead, k, n, dtype, device)
    out, parts = kernels.linear_residual_stats(x, w, bb, res)
    g = (1 + 0.5 * torch.randn(n, device=device)).to(dtype)
    b = (0.5 * torch.randn(n, device=device)).to(dtype)
    heads = 4 if n % 4 == 0 else 1
    w2 = (torch.randn(3 * n, n, device=device) / n**0.5).to(dtype)
    b2 = (0.5 * torch.randn(3 * n, device=device)).to(dtype)
    folded = kernels.fold_layer_norm(g, b, w2, b2)
    merged = ln_linear_launch(out, 1e-6, *folded, "gelu", out=poison(torch.empty(*lead, 3 * n, dtype=dtype,
                                                                                 device=device)), partials=parts)
    launched = ln_linear_launch(out, 1e-6, *folded, "gelu")
    y = torch.nn.functional.layer_norm(out.float(), (n,), g.float(), b.float(), 1e-6) @ w2.float().t() + b2.float()
    assert_close(merged, torch.nn.functional.gelu(y), dtype)
    assert_close(merged, launched, dtype)
    qkv = ln_qkv_launch(out, 1e-6, *folded, heads, partials=parts)
    assert_close(qkv, ln_qkv_launch(out, 1e-6, *folded, heads), dtype)


def test_model_launches_statistics_once(monkeypatch, device):
    """A depth-3 model on the kernels: the embeddings' statistics are the only statistics launch; its logits are the
    same as with a statistics launch before every LayerNorm (VITFAST_LN_PARTIALS=0), which a bad value refuses."""
    import vit_fast
    from tests.helpers import randomize_

    model = randomize_(vit_fast.create("vit_ti_16", backend="triton", img_size=32, patch_size=8, embed_dim=64,
                                       num_heads=2, mlp_dim=96, depth=3, num_classes=10)).to(device).eval()
    x = torch.randn(2, 3, 32, 32, device=device)
    calls = []
    real = ln_fold.launch_row_stats
    for module in ("ln_linear", "ln_qkv"):  # the modules (the package's names are the ops)
        monkeypatch.setattr(sys.modules[f"vit_fast.kernels.{module}"], "launch_row_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        out = model(x)
        assert len(calls) == 1, calls
        monkeypatch.setenv("VITFAST_LN_PARTIALS", "0")
        ref = model(x)
        assert len(calls) == 1 + 2 * 3, calls
        monkeypatch.setenv("VITFAST_LN_PARTIALS", "no")
        with pytest.raises(ValueError, match="VITFAST_LN_PARTIALS: expected 1 | 0, got 'no'"):
            model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_slot_width_follows_the_rows(monkeypatch):
    """On a GPU: 64-column slots for small batches' rows of up to 16 of them (B/16 and L/16 at batch 1-5, whose
    residual GEMMs can then run 64-wide tiles), 128 from an M bucket of 2,048 rows on, for wider rows (H/14's 1,280
    columns) and under VITFAST_STATS_SLOT=128; the partials' shape, which the writing and the merging GEMMs both
    take, follows."""
    monkeypatch.setattr(ln_fold, "is_interpreting", lambda: False)
    monkeypatch.delenv("VITFAST_STATS_SLOT", raising=False)
    assert ln_fold.NARROW_ROWS & (ln_fold.NARROW_ROWS - 1) == 0  # so m <= it is the autotune key's bucket test
    for m, n, slot in [(197, 768, 64), (4 * 197, 1024, 64), (1024, 768, 64), (1025, 768, 128), (256 * 197, 768, 128),
                       (197, 1280, 128), (197, 1088, 128), (197, 240, 64)]:
        assert ln_fold.stats_slot(m, n) == slot, (m, n)
        assert ln_fold.partials_shape(torch.empty(m, n, device="meta")) == (m, 3, -(-n // slot))
    monkeypatch.setenv("VITFAST_STATS_SLOT", "128")  # the code before, to compare
    assert ln_fold.stats_slot(197, 768) == 128
    monkeypatch.setenv("VITFAST_STATS_SLOT", "64")
    with pytest.raises(ValueError, match="VITFAST_STATS_SLOT: expected auto | 128, got '64'"):
        ln_fold.stats_slot(197, 768)


@pytest.mark.parametrize("slot_width", [128, 64])
def test_stats_tiles_cover_whole_slots(slot_width, monkeypatch):
    """On a GPU a GEMM that writes partials never runs a tile whose epilogue slices are not whole slots of the
    launch's width, on either engine's prune; the launches that write none keep every tile. At 128 the 64-wide tiles
    go; at 64 (small batches) they stay."""
    from vit_fast.kernels import _common, gemm_tma

    monkeypatch.setattr(ln_fold, "is_interpreting", lambda: False)
    monkeypatch.setattr(gemm, "is_interpreting", lambda: False)
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in _common.gemm_aot_configs()]
    def not_whole(width):
        return [c for c in configs
                if c.kwargs["BLOCK_N"] // gemm.pointer_epi_split(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) % width]

    narrow = not_whole(slot_width)
    assert narrow and len(narrow) < len(configs) and len(not_whole(64)) < len(not_whole(128))
    seen = {}
    monkeypatch.setattr(gemm, "prune_gemm_configs", lambda cs, named_args, **kw: seen.setdefault(
        kw.get("WRITE_STATS", False), cs))
    gemm._prune(configs, {}, HAS_RESIDUAL=True, WRITE_STATS=True, SLOT=slot_width)
    gemm._prune(configs, {}, HAS_RESIDUAL=True, WRITE_STATS=False, SLOT=slot_width)
    assert not set(map(id, seen[True])) & set(map(id, narrow)) and len(seen[True]) == len(configs) - len(narrow)
    assert len(seen[False]) == len(configs)
    tma = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPI_SPLIT": e}, num_warps=w,
                         num_stages=s) for bm, bn, bk, w, s, e in gemm_tma.HOPPER_TMA]
    kept = {}
    monkeypatch.setattr(gemm_tma, "persistent_prune", lambda cs, a, m_bucket, allowed: kept.setdefault(
        len(kept), [c for c in cs if allowed((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"],
                                              c.num_warps, c.num_stages, c.kwargs["EPI_SPLIT"]), 232448, 233472)]))

    class A:  # what the prune reads of the A operand
        def element_size(self):
            return 2

    # as the launcher passes them
    gemm_tma._prune(tma, {}, a=A(), M_BUCKET=256, HAS_RESIDUAL=True, WRITE_STATS=True, SLOT=slot_width)
    gemm_tma._prune(tma, {}, a=A(), M_BUCKET=256, HAS_RESIDUAL=True, SLOT=slot_width)
    dropped = {(c.kwargs["BLOCK_N"], c.kwargs["EPI_SPLIT"]) for c in kept[1] if c not in kept[0]}
    assert all(bn // e % slot_width for bn, e in dropped), dropped
    assert bool(dropped) == (slot_width == 128)
    assert all(c.kwargs["BLOCK_N"] // c.kwargs["EPI_SPLIT"] % slot_width == 0 for c in kept[0]) and kept[0]
    if slot_width == 64:
        assert (64, 64, 64, 4, 4, 1) in {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
                                          c.num_stages, c.kwargs["EPI_SPLIT"]) for c in kept[0]}


def test_bad_partials(device):
    lead, k, n = SHAPES[0]
    x, w, bb, res = make(lead, k, n, torch.float32, device)
    out, parts = kernels.linear_residual_stats(x, w, bb, res)
    folded = kernels.fold_layer_norm(torch.ones(n, device=device), torch.zeros(n, device=device),
                                     torch.randn(8, n, device=device), None)
    with pytest.raises(ValueError, match="ln_linear: partials: expected a contiguous float32"):
        kernels.ln_linear_folded(out, 1e-6, folded, "none", parts[:, :, :-1])
    with pytest.raises(ValueError, match="ln_linear: partials"):
        kernels.ln_linear_folded(out[:, :-1], 1e-6, folded, "none", parts)
    with pytest.raises(ValueError, match="ln_qkv: partials"):
        kernels.ln_qkv_folded(out, 1e-6, kernels.fold_layer_norm(
            torch.ones(n, device=device), torch.zeros(n, device=device), torch.randn(3 * n, n, device=device), None),
            1, parts.double())
    with pytest.raises(ValueError, match="linear_residual: stats_out"):
        linear_residual_launch(x, w, bb, res, stats_out=parts[:-1])


def test_registered_ops(device):
    lead, k, n = SHAPES[0]
    x, w, bb, res = make(lead, k, n, torch.float32, device)
    torch.library.opcheck(torch.ops.vitfast.linear_residual_stats.default, (x, w, bb, res),
                          test_utils=("test_schema", "test_faketensor"))
    out, parts = kernels.linear_residual_stats(x, w, bb, res)
    folded = kernels.fold_layer_norm(torch.ones(n, device=device), torch.zeros(n, device=device),
                                     torch.randn(3 * n, n, device=device), None)
    torch.library.opcheck(torch.ops.vitfast.ln_qkv.default, (out, 1e-6, *folded, 2, parts),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.vitfast.ln_linear.default, (out, 1e-6, *folded, "gelu", parts),
                          test_utils=("test_schema", "test_faketensor"))
