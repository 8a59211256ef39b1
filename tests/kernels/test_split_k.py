"""Split-K in both GEMM engines (kernels/split_k.py): the part-count rule, and forced splits of the GEMM ops against
fp32 eager and against the same op unsplit: 197 rows, K whose last part is shorter (TMA: runs past K into the
zero padding), the output, the partial statistics and the workspace poisoned first, counters left at zero, the same
bits on a second launch."""
import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from tolerances import MODEL_TOL, assert_close, poison

from vit_fast.kernels import fold_layer_norm, gemm, gemm_tma, split_k
from vit_fast.kernels.split_k import split_k_fixup
from vit_fast.kernels._common import ENGINE_ENV, SPLIT_ENV
from vit_fast.kernels.linear_residual import linear_residual_launch
from vit_fast.kernels.ln_fold import merge_partials, new_partials
from vit_fast.kernels.ln_linear import ln_linear_launch

CUDA = torch.cuda.is_available()
# (rows, K, N): on the GPU B/16's FC2 at batch 1, K a little longer and not a multiple of 32 or 64 (the pointer
# engine's masked loop); in the interpreter (32x32x32 tiles) 7 steps of K, the last one partial, so 4 parts of 2
# steps leave the last part one (on the TMA engine: one step past K, TMA's zero padding)
M, K, N = (197, 3072 + 16, 768) if CUDA else (197, 200, 96)
# K a multiple of the step: on the GPU 49 steps of 64 (TMA row: four parts of 13, the last of 10) and 98 of 32
# (pointer row: 25, 25, 25, 23); in the interpreter 7 of 32 (2, 2, 2, 1)
K_EVEN = 3072 + 64 if CUDA else 224


# On a GPU each engine is pinned to a row that splits (an accumulator of 64 registers a thread), so the tests run
# the split code whatever the autotuner would pick; under the interpreter each engine has one 32x32x32 row.
SPLIT_ROWS = {"pointer": (64, 128, 32, 4, 4, None), "tma": (64, 128, 64, 4, 4, 1)}


@pytest.fixture(params=["pointer", "tma"])
def engine(request, monkeypatch):
    """Each GEMM engine in turn (VITFAST_GEMM_ENGINE; TMA is the 16-bit default on sm_90)."""
    if request.param == "tma" and CUDA and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engine needs an sm_90 GPU")
    monkeypatch.setenv(ENGINE_ENV, request.param)
    if CUDA:
        bm, bn, bk, warps, stages, epi = SPLIT_ROWS[request.param]
        kernel = gemm_tma.tma_gemm_kernel if request.param == "tma" else gemm.fused_gemm_kernel
        meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}
        if epi is not None:
            meta.update(EPI_SPLIT=epi, PER_SM=1)
        monkeypatch.setattr(kernel, "configs", [triton.Config(meta, num_warps=warps, num_stages=stages)])
    return request.param


@pytest.fixture
def splits(monkeypatch):
    """The SPLIT_K every GEMM launch ran (the heuristic's value for the config launched); the workspace filled with
    NaN before the kernel runs (a part never written, or read from the wrong slot, makes the output NaN)."""
    seen = []

    def poisoned(*args, **kwargs):
        mode, ws, lock = split_k.launch_operands(*args, **kwargs)
        if ws is not None:
            poison(ws)
        return mode, ws, lock

    for module, kernel in ((gemm, gemm.fused_gemm_kernel), (gemm_tma, gemm_tma.tma_gemm_kernel)):
        monkeypatch.setattr(module, "launch_operands", poisoned)
        rule = kernel.fn.values["SPLIT_K"]  # autotune -> heuristics -> jit

        def recording(args, rule=rule):
            seen.append(rule(args))
            return seen[-1]

        monkeypatch.setitem(kernel.fn.values, "SPLIT_K", recording)
    return seen


def test_split_count_rule():
    # B/16 at batch 1 on a 132-SM H100, 64x128 tiles (24): FC2 (48 steps of 64) in 5 parts, the out-projection
    # (12 steps) in 3 (at least MIN_K_STEPS steps a part)
    assert split_k.split_count(24, 48, 132, 64) == 5
    assert split_k.split_count(24, 12, 132, 64) == 3
    assert split_k.split_count(67, 48, 132, 64) == 1  # tiles fill more than half the SMs
    assert split_k.split_count(24, 48, 132, 128) == 1  # a 128-register accumulator leaves no room for a partial
    assert split_k.split_count(24, 48, 132, 64, "1") == 1
    assert split_k.split_count(500, 48, 132, 64, "3") == 3  # forced: whatever the tiles
    assert split_k.split_count(9456, 12, 132, 64, "2", 128 * 128) == 1  # but not B/16 b256's FC1 (1.2 GB of parts)
    for k_steps in range(2, 40):
        for setting in ("auto", "2", "3", "4"):
            parts = split_k.split_count(1, k_steps, 132, 32, setting)
            step = -(-k_steps // parts)
            assert 1 <= parts and (parts - 1) * step < k_steps, (k_steps, setting, parts)  # no part is empty


def test_bad_setting(monkeypatch, device):
    monkeypatch.setenv(SPLIT_ENV, "5")
    with pytest.raises(ValueError, match="VITFAST_SPLIT_K: expected auto | 1 | 2 | 3 | 4, got '5'"):
        split_k.split_setting()


def test_no_counters_first_allocated_inside_a_capture(monkeypatch):
    """Inside a CUDA-graph capture before any eager launch the buffer is not allocated (a zeroing captured in a graph
    runs only at its replays): the launch does not split."""
    monkeypatch.setattr(split_k, "_buffers", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert split_k.counters(torch.device("cuda", 0), 8) is None
    assert split_k._buffers == {}


def test_counters_round_robin(device):
    """Ranges follow each other, each 16-byte aligned (Triton compiles a kernel per pointer alignment: an odd start
    would mean a compile at a first sighting, possibly inside a CUDA-graph capture), and start over when the buffer
    is used up."""
    device = torch.device(device)
    views = [split_k.counters(device, n) for n in (5, 3, 7, 1)]
    assert [v.numel() for v in views] == [5, 3, 7, 1]
    assert all(v.data_ptr() % 16 == 0 for v in views)
    assert [b.storage_offset() - a.storage_offset() for a, b in zip(views, views[1:])] == [8, 4, 8]
    again = split_k.counters(device, split_k.COUNTERS - 3)  # does not fit after the others: starts over at 0
    assert again.numel() == split_k.COUNTERS - 3 and again.storage_offset() == 0
    with pytest.raises(ValueError, match="split-K launch: expected at most"):
        split_k.counters(device, split_k.COUNTERS + 1)


def test_split_beyond_the_workspace_is_refused(device):
    """A config the launcher's plan did not size for (the heuristic's rule on a tile outside the table) stops with
    one line instead of writing past the workspace."""
    args = {"split_mode": 2, "M": 197, "N": 96, "K": 200, "BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32,
            "num_warps": 4, "ws_ptr": torch.empty(1024, device=device),
            "lock_ptr": torch.zeros(21, dtype=torch.int32, device=device)}
    with pytest.raises(ValueError, match=r"split-K launch of 21 32x32 tiles in 2 parts: expected 43008 workspace"):
        split_k.config_parts(args, 2)
    args["ws_ptr"] = torch.empty(43008, device=device)
    assert split_k.config_parts(args, 2) == 2


def _operands(dtype, device, k=K):
    x = torch.randn(M, k, device=device).to(dtype)
    w = (torch.randn(N, k, device=device) / k**0.5).to(dtype)
    bias = (0.5 * torch.randn(N, device=device)).to(dtype)
    res = (3 * torch.randn(M, N, device=device)).to(dtype)
    g, b = (1 + 0.1 * torch.randn(k, device=device)).to(dtype), (0.1 * torch.randn(k, device=device)).to(dtype)
    return x, w, bias, res, g, b


def _counters_zero():
    return all(int(entry[0].abs().sum()) == 0 for entry in split_k._buffers.values())


@pytest.mark.parametrize("parts,dtype,k", [("2", torch.float32, K), ("3", torch.float32, K), ("4", torch.float32, K),
                                           ("3", torch.bfloat16, K), ("3", torch.float16, K),
                                           ("4", torch.bfloat16, K_EVEN)])
def test_forced_split_residual_with_statistics(parts, dtype, k, engine, splits, monkeypatch, device):
    """linear_residual writing partial statistics (the out-projection and FC2): split against fp32 eager and against
    the unsplit launch; the statistics as the unsplit launch's; a second launch gives the same bits. K_EVEN: K a
    multiple of the step (the pointer engine's unmasked loop), the last part still shorter."""
    x, w, bias, res, _, _ = _operands(dtype, device, k)
    ref = res.float() + F.linear(x.float(), w.float(), bias.float())
    outs = {}
    for setting in ("1", parts, parts):
        monkeypatch.setenv(SPLIT_ENV, setting)
        out, stats = poison(torch.empty_like(res)), poison(new_partials(res))
        linear_residual_launch(x, w, bias, res, out=out, stats_out=stats)
        assert_close(out, ref, dtype)
        outs.setdefault(setting, []).append((out, stats))
    assert splits == [1, int(parts), int(parts)]
    assert _counters_zero()
    (plain, plain_stats), (split, split_stats), (again, again_stats) = outs["1"] + outs[parts]
    assert torch.equal(split, again) and torch.equal(split_stats, again_stats)
    assert_close(split, plain, dtype)
    # each launch's statistics are its own stored rows' (in 16 bits split and unsplit rows differ by a rounding step
    # here and there, and a row's mean near zero then differs relatively more than the stored values: seen once)
    for out, stats in ((split, split_stats), (plain, plain_stats)):
        rows = out.double().reshape(-1, out.shape[-1])
        own = torch.stack([rows.mean(1), (rows.var(1, unbiased=False) + 1e-6).rsqrt()], 1).float()
        torch.testing.assert_close(merge_partials(stats, 1e-6), own, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("parts", ["2", "4"])
@pytest.mark.parametrize("merged", [False, True], ids=["stats-launch", "merged-partials"])
def test_forced_split_layer_norm_gelu(parts, merged, engine, splits, monkeypatch, device):
    """ln_linear with GELU (FC1): LayerNorm statistics from a statistics launch, or merged from partials in the
    epilogue that only the last part runs."""
    dtype = torch.float32
    x, w, bias, _, g, b = _operands(dtype, device)
    folded = fold_layer_norm(g, b, w, bias)
    partials = None
    if merged:
        monkeypatch.setenv(SPLIT_ENV, "1")
        partials = new_partials(x)
        linear_residual_launch(x, torch.eye(K, device=device), None, torch.zeros_like(x), out=torch.empty_like(x),
                               stats_out=partials)  # x's own partial statistics, written by a residual GEMM
    monkeypatch.setenv(SPLIT_ENV, parts)
    out = poison(torch.empty(M, N, device=device, dtype=dtype))
    ln_linear_launch(x, 1e-6, folded.weight, folded.colsum, folded.bias, "gelu", out=out, partials=partials)
    ref = F.gelu(F.linear(F.layer_norm(x.float(), (K,), g.float(), b.float(), 1e-6), w.float(), bias.float()))
    assert_close(out, ref, dtype)
    assert splits[-1] == int(parts) and _counters_zero()


def test_swiglu_never_splits(engine, splits, monkeypatch, device):
    """SwiGLU's FC1 keeps a second (up) accumulator the fix-up does not sum: a forced split leaves it whole (the
    kernels also refuse SPLIT_K > 1 with SwiGLU at compile time)."""
    monkeypatch.setenv(SPLIT_ENV, "4")
    if CUDA and engine == "tma":  # fp32 SwiGLU holds two weight tiles a stage: the pinned row's 4 stages overflow
        row = gemm_tma.tma_gemm_kernel.configs[0]  # shared memory (311 KB), 2 fit
        monkeypatch.setattr(gemm_tma.tma_gemm_kernel, "configs",
                            [triton.Config(row.kwargs, num_warps=row.num_warps, num_stages=2)])
    x, _, _, _, g, b = _operands(torch.float32, device)
    w = (torch.randn(2 * N, K, device=device) / K**0.5)
    bias = 0.5 * torch.randn(2 * N, device=device)
    folded = fold_layer_norm(g, b, w, bias)
    out = poison(torch.empty(M, N, device=device))
    ln_linear_launch(x, 1e-6, folded.weight, folded.colsum, folded.bias, "swiglu", out=out)
    gate, up = F.linear(F.layer_norm(x, (K,), g, b, 1e-6), w, bias).chunk(2, dim=-1)
    assert_close(out, F.silu(gate) * up, torch.float32)
    assert splits == [1]


def test_whole_model_split(engine, splits, monkeypatch, device):
    """A tiny two-block ViT with every GEMM split in three (QKV, out-projection, FC1, FC2: K of 192 and 384, 3 and 6
    steps of 64, 6 and 12 of 32; the partial statistics merged across blocks) against the fp32 torch model (fp16 on a
    GPU, as the TMA engine's model test)."""
    import vit_fast
    from tests.helpers import randomize_

    monkeypatch.setenv(SPLIT_ENV, "3")
    ref = randomize_(vit_fast.create("vit_ti_16", backend="torch", img_size=32, embed_dim=192, num_heads=3,
                                     mlp_dim=384, depth=2, num_classes=5)).to(device).eval()
    fast = vit_fast.VisionTransformer(ref.config, backend="triton").to(device).eval()
    fast.load_state_dict(ref.state_dict())
    dtype = torch.float16 if CUDA else torch.float32
    fast = fast.to(dtype)
    x = torch.randn(3, 3, 32, 32, device=device)
    with torch.no_grad():
        assert_close(fast(x.to(dtype)), ref(x), dtype, MODEL_TOL)
    assert splits and set(splits) == {3}, splits
    assert _counters_zero()


@triton.jit
def _fixup_probe(ws_ptr, lock_ptr, out_ptr, flag_ptr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (tile, part): part p contributes p + 1 everywhere; each program records whether it finished
    its tile, the finisher stores the sum."""
    tile = tl.program_id(0) // SPLIT_K
    part = tl.program_id(0) % SPLIT_K
    acc = tl.zeros([BLOCK, BLOCK], dtype=tl.float32) + (part + 1).to(tl.float32)
    acc, last = split_k_fixup(acc, ws_ptr, lock_ptr, tile, part, BLOCK, BLOCK, SPLIT_K)
    tl.store(flag_ptr + tl.program_id(0), last.to(tl.int32))
    if last:
        offs = tl.arange(0, BLOCK)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
        tl.store(out_ptr + tile * BLOCK * BLOCK + offs, acc)


@pytest.mark.parametrize("parts", [2, 3, 4, 5])
def test_fixup_one_finisher_per_tile(parts, device):
    """split_k_fixup itself: exactly one program of each tile finishes it (the interpreter runs programs one after
    another, so an early finisher would not show in the ops' outputs: the last one overwrites them), after every part
    is in: its sum is 1 + ... + parts over a NaN-poisoned workspace; the counters are back at zero."""
    tiles, block = 5, 16
    ws = poison(torch.empty(tiles * parts * block * block, device=device))
    lock = split_k.counters(torch.device(device), tiles)
    out = poison(torch.empty(tiles, block, block, device=device))
    flags = torch.full((tiles * parts,), -1, dtype=torch.int32, device=device)
    _fixup_probe[(tiles * parts,)](ws, lock, out, flags, SPLIT_K=parts, BLOCK=block)
    assert flags.view(tiles, parts).sum(1).tolist() == [1] * tiles
    assert (out == parts * (parts + 1) / 2).all()
    assert int(lock.abs().sum()) == 0


@triton.jit
def _fixup_order_probe(vals_ptr, ws_ptr, lock_ptr, out_ptr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr,
                       REVERSE: tl.constexpr):
    """One program per (tile, part), part p's partial read from vals[tile, p]; REVERSE numbers the parts backwards,
    so the program that arrives last holds part 0 instead of part SPLIT_K - 1 (programs arrive in program order in
    the interpreter, about so on a GPU)."""
    tile = tl.program_id(0) // SPLIT_K
    part = tl.program_id(0) % SPLIT_K
    if REVERSE:
        part = SPLIT_K - 1 - part
    offs = tl.arange(0, BLOCK)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    acc = tl.load(vals_ptr + (tile * SPLIT_K + part) * BLOCK * BLOCK + offs)
    acc, last = split_k_fixup(acc, ws_ptr, lock_ptr, tile, part, BLOCK, BLOCK, SPLIT_K)
    if last:
        tl.store(out_ptr + tile * BLOCK * BLOCK + offs, acc)


@pytest.mark.parametrize("parts", [2, 3, 4, 5])
def test_fixup_sums_in_a_fixed_order(parts, device):
    """The fix-up's sum does not depend on which part arrives last, and is the documented order, pairs first:
    ((p0 + p1) + (p2 + p3)) + (p4 + 0) in fp32, bit for bit. The partials span 12 decades, so another grouping
    rounds differently (from 4 parts the sequential sum does, checked); an overflowed partial (inf) in the finishing
    program gives inf, not NaN (a sum started from acc * 0.0 did)."""
    tiles, block = 3, 16
    gen = torch.Generator().manual_seed(parts)
    vals = torch.randn(tiles, parts, block, block, generator=gen) * 10.0 ** torch.randint(-4, 8, (tiles, parts,
                                                                                                  block, block),
                                                                                           generator=gen)
    vals[0, 0, 0, 0] = float("inf")  # finished by part 0's program under REVERSE
    vals[0, parts - 1, 0, 1] = float("inf")  # by part SPLIT_K - 1's otherwise
    padded = torch.cat([vals, torch.zeros_like(vals[:, :1])], 1) if parts % 2 else vals
    pairs = padded[:, 0::2] + padded[:, 1::2]
    want = pairs[:, 0]
    for i in range(1, pairs.shape[1]):
        want = want + pairs[:, i]
    sequential = vals[:, 0]
    for i in range(1, parts):
        sequential = sequential + vals[:, i]
    assert parts < 4 or not torch.equal(want, sequential)  # up to 3 parts the two orders are the same
    outs = []
    for reverse in (False, True):
        ws = poison(torch.empty(tiles * parts * block * block, device=device))
        lock = split_k.counters(torch.device(device), tiles)
        out = poison(torch.empty(tiles, block, block, device=device))
        _fixup_order_probe[(tiles * parts,)](vals.to(device), ws, lock, out, SPLIT_K=parts, BLOCK=block,
                                             REVERSE=reverse)
        assert int(lock.abs().sum()) == 0
        outs.append(out.cpu())
    assert torch.equal(outs[0], want) and torch.equal(outs[1], want)
    assert outs[0][0, 0, 0] == float("inf") and outs[0][0, 0, 1] == float("inf")


@pytest.mark.skipif(not CUDA, reason="the automatic rule splits at GPU sizes (132 SMs)")
def test_auto_splits_batch_one(engine, splits, monkeypatch, device):
    """Default setting at B/16's batch-1 FC2 shape: the launch splits and matches the unsplit one."""
    monkeypatch.delenv(SPLIT_ENV, raising=False)
    x, w, bias, res, _, _ = _operands(torch.bfloat16, device)
    split = linear_residual_launch(x, w, bias, res)
    monkeypatch.setenv(SPLIT_ENV, "1")
    plain = linear_residual_launch(x, w, bias, res)
    assert splits[0] > 1 and splits[-1] == 1, splits
    assert_close(split, plain, torch.bfloat16)
    assert _counters_zero()


def test_pointer_engine_keeps_listed_spilling_rows_unsplit(monkeypatch):
    """The automatic rule on the pointer engine skips the split rows _common.SPLIT_SPILLS lists for the running GPU
    family and kind (none since change 28; a listed FC1 row here): the last layer's [CLS]-only FC1 at batch 1 (one
    row) splits on Hopper, not on the listed family, where QKV and the unlisted rows still split and a forced split
    still does."""

    class FakeCudaTensor:  # what the heuristic reads of A: is it on a GPU, which one
        is_cuda = True
        device = torch.device("cuda", 0)

    monkeypatch.setattr(gemm, "SPLIT_SPILLS", {"ampere": {"ln_act": {(128, 64, 32, 4): "a spill"}}})

    def parts(family, activation=1, mode=1, tile=(128, 64, 32, 4)):
        monkeypatch.setattr(gemm, "gpu_family", lambda index: family)
        bm, bn, bk, warps = tile
        return gemm._split_parts(dict(
            a_ptr=FakeCudaTensor(), M=1, N=3072, K=768, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
            ACTIVATION=activation, ROW_STATS=2, split_mode=mode, split_sms=108,
            ws_ptr=torch.empty(1 << 22), lock_ptr=torch.empty(1024, dtype=torch.int32)))

    assert parts("hopper") > 1 and parts("hopper", tile=(64, 128, 32, 4)) > 1
    assert parts("ampere") == 1
    assert parts("ampere", tile=(64, 128, 32, 4)) > 1  # not listed
    assert parts("ampere", activation=0) > 1  # QKV's LayerNorm epilogue: another kind
    assert parts("ampere", tile=(64, 64, 32, 4)) > 1
    assert parts("ampere", mode=3) == 3
    monkeypatch.undo()
    assert gemm.SPLIT_SPILLS == {}  # shipped: no row refused (change 28)
