"""The CI gate over the static kernel report (benchmarks/kernels_static.py; the variant contract is in
tests/kernels/aot_compile.py), plus the checks that make it trustworthy without compiling everything twice:

- test_static_gate: one run of `python -m benchmarks.kernels_static --check` (every variant the Hopper tables
  can pick, compiled for sm_90 with the JIT's divisibility attributes, the FP8 Ada table's picks for sm_89, and a
  representative sm_80 sample; replaces the former --full AOT test): every variant compiles, none the Hopper tables
  can pick spills (16-bit and FP8 rows: no stack at all; others: at most a cold spill, 32 B outside every loop) or
  overflows shared memory, 16-bit dots are wgmma, GEMM main loops use cp.async or TMA; on sm_89 the Ada FP8 picks
  are spill-free QMMA + cp.async within 99 KB; every kernel module compiled on its targets.
- test_variants_cover_every_table_row: every tile of every autotune table has a variant for every op (no compile).
- test_spill_detector_sees_a_known_spill: the cubin reader reports spilling kernels as spilling, outside or inside
  their loops (so the gate can fail), and the gate's rules flag each kind of problem.
- test_spills_in_loops_reads_back_edges: where a spill instruction sits, read from disassembly text.
- test_mma_drains_in_loops: a full wgmma drain inside a loop (serialized MMAs) told from the pipelined wait.
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vit_fast.kernels._common import SWIGLU

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("attention", "patch_embed", "ln_linear", "ln_qkv", "linear_residual", "layer_norm", "gemm_tma", "ln_fold")
GEMM_OPS = ("ln_linear", "ln_qkv", "linear_residual", "patch_embed")
FP8_MODULES = ("gemm_fp8", "quant_fp8", "gemm_fp8_tma")  # FP8 only: sm_90 and sm_89 (min_cc 89; TMA: 90), no sm_80


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def variants():
    """{module: aot_variants() as plain tuples}, from one subprocess without the interpreter (it changes what
    @triton.jit builds)."""
    import pickle

    code = ("import importlib, pickle, sys\nout = {}\n"
            f"for name in {MODULES + FP8_MODULES!r}:\n"
            "    m = importlib.import_module('vit_fast.kernels.' + name)\n"
            "    out[name] = [(v.get('op', name), v['signature'], v['constexprs'], v['num_warps'], v['num_stages'],\n"
            "                  tuple(v.get('tables', ('hopper',))), tuple(v.get('divisible', ()))) for v in m.aot_variants()]\n"
            "sys.stdout.buffer.write(pickle.dumps(out))\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, check=True)
    return pickle.loads(out.stdout)


def test_static_gate(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernels_static", "--check", "--out",
                           str(tmp_path)], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=1500)
    tail = proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text()) if (tmp_path / "report.json").exists() else None
    assert report is not None, tail
    problems = [f"{r['target']} {r['label']}: {r.get('error') or r['gate']}" for r in report["rows"]
                if r.get("error") or r.get("gate")]
    assert not problems and proc.returncode == 0, "\n".join(problems) or tail
    print(f"static gate: {report['compiles']} compiles in {report['wall_s']} s (triton {report['triton']})")
    seen = {(r["module"], r["target"]) for r in report["rows"]}
    for module in MODULES:
        for target in ("sm_90",) if module == "gemm_tma" else ("sm_90", "sm_80"):  # TMA: Hopper only
            assert (module, target) in seen, f"no {module} variant compiled for {target}"
    # 16-bit activations (a GEMM row also lists its fp32 bias/statistics pointers: "bf16/fp32"); FP8 rows apart
    hopper16 = [r for r in report["rows"] if r["target"] == "sm_90" and "hopper" in r["families"]
                and r["dtype"].split("/")[0] in ("bf16", "fp16") and "fp8" not in r["dtype"]]
    assert hopper16 and all(r["stack"] == 0 and r["shared"] <= 232448 for r in hopper16)
    gemms = [r for r in hopper16 if r["op"] in GEMM_OPS and not r.get("ungated")]
    assert {"gemm_tma", "ln_qkv", "ln_linear", "linear_residual"} <= {r["module"] for r in gemms}
    assert all(r["tensor_core"] == "wgmma" and r["async_copy"] != "none" for r in gemms)
    assert all("TMA" in r["async_copy"] for r in gemms if r["module"] == "gemm_tma")
    fp8 = [r for r in report["rows"] if r["target"] == "sm_90" and r["op"] == "linear_fp8" and "hopper" in r["families"]]
    assert fp8 and all(r["tensor_core"] == "wgmma e4m3" and r["stack"] == 0 for r in fp8)
    # promoted where PRECISE_ACC=1 (FC2 and the out-projection too, whose A comes from registers), never without it
    # (the warp-specialized engine promotes by construction: gemm_fp8_ws.py)
    assert all(("promoted" in r["mma_loop"]) == ("PRECISE_ACC=1" in r["switches"] or r["module"] == "gemm_fp8_ws")
               for r in fp8)
    # a cold spill passes only in fp32 rows: every other Hopper pick (16-bit, FP8, uint8 images) has no stack
    assert all(r["stack"] == 0 for r in report["rows"]
               if r["target"] == "sm_90" and "hopper" in r["families"] and r["dtype"] != "fp32")
    # Ada (sm_89, L4/L40S): the FP8 engine's table on FP8 mma.sync, spill-free, within 99 KB; the row quantizer too
    from vit_fast.kernels.gemm_fp8 import ADA_FP8

    ada = [r for r in report["rows"] if r["target"] == "sm_89" and "ada" in r["families"]]
    ada_gemm = [r for r in ada if r["op"] == "linear_fp8"]
    assert {f"{bm}x{bn}x{bk} w{w}s{s}" for bm, bn, bk, w, s in ADA_FP8} <= {r["tile"] for r in ada_gemm}
    assert all(r["tensor_core"] == "mma e4m3" and r["async_copy"] == "cp.async" for r in ada_gemm)
    assert all(r["stack"] == 0 and r["shared"] <= 101376 for r in ada) and any(r["op"] == "quant_fp8" for r in ada)
    assert not [r for r in report["rows"] if r["target"] == "sm_89" and "fp8" not in r["dtype"]]  # FP8 only
    # the FP8 prune's shared-memory model is what the compiler allocates (the gate flags only an excess)
    fitted = [r for r in report["rows"] if "smem_estimate" in r]
    assert {"sm_89", "sm_90"} <= {r["target"] for r in fitted}
    assert all(r["shared"] == r["smem_estimate"] for r in fitted), \
        [(r["target"], r["label"], r["shared"], r["smem_estimate"]) for r in fitted if r["shared"] != r["smem_estimate"]]
    # every Hopper GEMM tile was compiled and gated for every GEMM op in bf16
    from vit_fast.kernels._common import FAMILY_SMEM, GEMM_TABLES, gemm_tile_allowed

    for op in GEMM_OPS:
        tiles = {r["tile"] for r in gemms if r["op"] == op and r["dtype"].startswith("bf16")
                 and r["module"] != "gemm_tma"}  # the pointer engine's table
        kind = {"ln_qkv": "ln", "ln_linear": "ln_act", "patch_embed": "patch"}.get(op, "plain")
        for row in GEMM_TABLES["hopper"]:
            if gemm_tile_allowed(row, 2, FAMILY_SMEM["hopper"], family="hopper", kind=kind):
                bm, bn, bk, w, s = row
                assert f"{bm}x{bn}x{bk} w{w}s{s}" in tiles, (op, row)


@pytest.mark.parametrize("name", GEMM_OPS)
def test_variants_cover_every_table_row(name, variants):
    from vit_fast.kernels._common import FAMILY_SMEM, GEMM_TABLES, gemm_tile_allowed

    rows = variants[name]
    kind = {"ln_qkv": "ln", "ln_linear": "ln_act", "patch_embed": "patch"}.get(name, "plain")
    for dtype, elem in ((torch.bfloat16, 2), (torch.float16, 2), (torch.float32, 4)):
        sig = "*" + {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
        have = {}
        for _, signature, consts, w, s, tables, divisible in rows:
            assert "M" not in divisible, "M varies with the batch: never divisible"
            if signature.get("out_ptr") == sig:  # the pointer engine's variants (the TMA engine's call it `out`)
                have.setdefault((consts["BLOCK_M"], consts["BLOCK_N"], consts["BLOCK_K"], w, s), set()).update(tables)
        for family, table in GEMM_TABLES.items():
            for row in table:
                if gemm_tile_allowed(row, elem, FAMILY_SMEM[family], family=family, kind=kind):
                    assert family in have.get(row, ()), f"{name} {dtype}: no {family} variant for tile {row}"
                elif gemm_tile_allowed(row, elem, FAMILY_SMEM[family]):  # pruned as a known spill: still reported
                    assert row in have, f"{name} {dtype}: pruned tile {row} missing from the report's variants"


def test_fp8_variants_cover_every_table_row(variants):
    """Every tile the FP8 prune can pick on Hopper or Ada, for each kind of launch the FP8 model makes, has a
    variant naming that family, so the report compiles it for that family's target (sm_90, sm_89) and gates it."""
    from vit_fast.kernels import gemm_fp8

    have = {}
    for _, sig, c, w, s, tables, _ in variants["gemm_fp8"]:
        kind = ("swiglu" if c["ACTIVATION"] == SWIGLU else "fc2" if c["A_GROUPED"] else "fc1" if c["GROUP_OUT"]
                else "proj" if c["ACTIVATION"] == 0 and c["HAS_RESIDUAL"] and c["EVEN_K"] and c["HAS_BIAS"]
                and sig["res_ptr"] == "*bf16"
                else "qkv" if c["ACTIVATION"] == 0 and not c["HAS_RESIDUAL"] and c["EVEN_K"] else "other")
        have.setdefault((kind, (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], w, s)), set()).update(tables)
    for family, table in gemm_fp8.FP8_TABLES.items():
        for kind, swiglu, a_grouped, group_out in (
                ("fc1", False, False, True), ("swiglu", True, False, True), ("fc2", False, True, False),
                ("proj", False, False, False), ("qkv", False, False, False)):
            picks = [t for t in table if gemm_fp8.fp8_tile_allowed(family, t, swiglu, None, a_grouped, group_out)]
            assert picks, (family, kind)
            for tile in picks:
                assert family in have.get((kind, tile), ()), f"FP8 {kind}: no {family} variant for tile {tile}"


def test_attention_variants_cover_every_table_row(variants):
    attention = importlib.import_module("vit_fast.kernels.attention")
    rows = variants["attention"]
    for dtype, tables in (("*bf16", attention.ATTN_TABLES), ("*fp32", {"hopper": attention.FP32_ATTN})):
        have = {(c["BLOCK_M"], c["BLOCK_N"], w, s) for _, sig, c, w, s, _, _ in rows if sig["Q"] == dtype}
        for table in tables.values():
            assert set(table) <= have, (dtype, set(table) - have)
    # the FP8 model's attention (e4m3 codes for the out-projection): every bf16 tile at head dims 64 and 80
    for d in (64, 80):
        codes = {(c["BLOCK_M"], c["BLOCK_N"], w, s) for _, sig, c, w, s, _, _ in rows
                 if sig["Q"] == "*bf16" and c["CODES_OUT"] and c["HEAD_DIM"] == d and sig["Out"] == "*fp8e4nv"}
        for table in attention.ATTN_TABLES.values():
            fitting = {t for t in table if attention.fits_registers(t, sum(attention.head_dim_blocks(d)), 2)}
            assert fitting <= codes, (d, fitting - codes)


def test_spill_detector_sees_a_known_spill():
    """Two known spills on sm_90, and the gate's rules for each kind of problem:
    - the bf16 patch embedding at 128x256 (pruned from the Hopper table for this reason) spills hundreds of bytes in
      its epilogue, after the main loop: outside every loop, but far over the cold allowance;
    - fp32 attention at 64x64 with 4 warps (never in the fp32 table) spills inside its K/V loop.
    The cubin reader must report both, and the gate must flag both."""
    code = """
import importlib, json, sys
sys.path.insert(0, 'tests/kernels')
import aot_compile, triton
from triton.backends.compiler import GPUTarget
pe = importlib.import_module('vit_fast.kernels.patch_embed')
i = next(i for i, v in enumerate(pe.aot_variants()) if v['signature']['x_ptr'] == '*bf16'
         and (v['constexprs']['BLOCK_M'], v['constexprs']['BLOCK_N']) == (128, 256))
print(json.dumps(aot_compile.compile_one(('patch_embed', i, 90, False, True))[-1]))
attn = importlib.import_module('vit_fast.kernels.attention')
v = next(v for v in attn.aot_variants() if v['signature']['Q'] == '*fp32'
         and v['constexprs']['HEAD_DIM'] == 64 and v['constexprs']['BLOCK_M'] == 64)
v = dict(v, constexprs=dict(v['constexprs'], BLOCK_N=64), num_warps=4)
c = triton.compile(aot_compile._source(v), target=GPUTarget('cuda', 90, 32), options={'num_warps': 4,
                   'num_stages': v['num_stages']})
print(json.dumps(aot_compile.inspect_compiled(c)))
"""
    out = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    stats, hot = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert stats["stack"] > 100 and stats["stl"] > 0 and stats["ldl"] > 0, stats
    assert stats["spills_in_loops"] == 0, stats  # the epilogue's
    assert stats["hgmma"] > 0 and stats["ldgsts"] > 0, stats
    assert hot["stack"] > 0 and hot["spills_in_loops"] > 0, hot

    from benchmarks.kernels_static import COLD_SPILL_BYTES, gate_problems

    variant = {"signature": {"a": "*bf16"}, "constexprs": {}, "tables": ("hopper",), "main_loop": "gemm"}
    clean = dict(registers=128, stack=0, shared=1000, hgmma=4, hmma=0, ldgsts=8, utmaldg=0, stl=0, ldl=0,
                 spills_in_loops=0)
    assert gate_problems(variant, 90, clean) == []
    for spilled in (stats, hot):
        assert gate_problems(variant, 90, dict(spilled)) and "spills" in gate_problems(variant, 90, dict(spilled))[0]
    # an fp32 variant's cold spill passes; one spill instruction inside a loop, more stack, an unread loop count, or
    # a 16-bit, FP8 or uint8 pointer does not
    fp32 = {"signature": {"q": "*fp32", "out": "*fp32"}, "constexprs": {}, "tables": ("hopper",)}
    cold = dict(clean, stack=COLD_SPILL_BYTES, stl=2, ldl=2)
    assert gate_problems(fp32, 90, cold) == []
    for change in (dict(spills_in_loops=1), dict(stack=COLD_SPILL_BYTES + 8), dict(spills_in_loops=None)):
        assert "spills" in gate_problems(fp32, 90, {**cold, **change})[0], change
    for pointer in ("*bf16", "*fp16", "*fp8e4nv", "*u8"):
        mixed = {**fp32, "signature": {"x": pointer, "out": "*fp32"}}
        assert "spills" in gate_problems(mixed, 90, cold)[0], pointer
    for change, words in ((dict(shared=232449), "shared memory"), (dict(hgmma=0, hmma=8), "mma.sync"),
                          (dict(ldgsts=0), "cp.async")):
        assert any(words in p for p in gate_problems(variant, 90, {**clean, **change})), change
    # programmatic dependent launch: a PDL kernel waits before touching global memory, no other kernel waits
    pdl = {**variant, "constexprs": {"PDL": True}}
    assert gate_problems(pdl, 90, dict(clean, pdl_wait=1, pdl_wait_first=True)) == []
    assert "before its grid-dependency wait" in gate_problems(pdl, 90, dict(clean, pdl_wait=1, pdl_wait_first=False))[0]
    assert "launched without PDL" in gate_problems(variant, 90, dict(clean, pdl_wait=1, pdl_wait_first=True))[0]
    assert gate_problems({**variant, "tables": ("ampere",)}, 90, dict(stats)) == []  # not a Hopper pick
    assert gate_problems(variant, 80, dict(stats)) == []  # sm_80 is reported, not gated
    assert gate_problems(variant, 89, dict(stats)) == []  # sm_89 gates the Ada table's picks only
    ada = {"signature": {"a": "*fp8e4nv", "out": "*bf16"}, "constexprs": {}, "tables": ("ada",), "main_loop": "gemm"}
    clean89 = dict(clean, hgmma=0, qmma=16)
    assert gate_problems(ada, 89, dict(clean89, stack=8, stl=1, ldl=1))  # FP8: no spill at all, cold or not
    assert gate_problems(ada, 89, clean89) == []
    assert gate_problems(ada, 90, dict(stats)) == []  # an Ada-only tile is not gated on sm_90
    both = {**ada, "tables": ("hopper", "ada")}
    assert gate_problems(both, 89, clean89) == [] and gate_problems(both, 89, dict(clean89, qmma=0))
    for change, words in ((dict(stack=16, stl=4), "spills"), (dict(shared=101377), "shared memory"),
                          (dict(qmma=0), "QMMA"), (dict(ldgsts=0), "cp.async")):
        assert any(words in p for p in gate_problems(ada, 89, {**clean89, **change})), change
    # a compile above the prune's shared-memory estimate for the gated family: the prune could pick a misfit
    estimated = {**both, "smem_estimate": {"hopper": 999, "ada": 1000}}
    assert gate_problems(estimated, 89, clean89) == []
    assert "above the prune's estimate 1000 B" in gate_problems(estimated, 89, dict(clean89, shared=1001))[0]
    assert "above the prune's estimate 999 B" in gate_problems(estimated, 90, dict(clean, shared=1000))[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prune_drops_the_hopper_tiles_that_spill(monkeypatch, dtype):
    """On a Hopper device the autotuner never benchmarks a tile the report shows spilling for that kind of launch;
    Ampere keeps its own table."""
    import triton

    from vit_fast.kernels import _common

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in _common.gemm_aot_configs()]
    class FakeCudaTensor:  # what the prune reads of the A operand: its device index and dtype
        device = torch.device("cuda", 0)

    a = FakeCudaTensor()
    a.dtype = dtype
    monkeypatch.setattr(_common, "shared_memory_bytes", lambda index: 232448)
    elem = torch.empty((), dtype=dtype).element_size()
    for family in ("hopper", "ampere"):
        monkeypatch.setattr(_common, "gpu_family", lambda index: family)
        for kind, switches in (("ln", dict(ROW_STATS=True, ACTIVATION=0)),
                               ("ln_act", dict(ROW_STATS=True, ACTIVATION=1)),
                               ("plain", dict(ROW_STATS=False, HAS_RESIDUAL=True)),
                               ("patch", dict(kind="patch"))):
            kept = _common.prune_gemm_configs(configs, {"a_ptr": a, "M_BUCKET": 1 << 16}, **switches)
            rows = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
                    for c in kept}
            spills = set(_common.HOPPER_GEMM_SPILLS[(elem, kind)])
            assert rows and rows <= set(_common.GEMM_TABLES[family]), (family, kind, rows)
            if family == "hopper":
                assert not rows & spills, (kind, rows & spills)
                assert (64, 64, 64, 4, 4) in rows or (64, 64, 64, 4, 4) in spills
            else:
                assert rows & {(128, 128, 32, 4, 4), (64, 64, 32, 4, 4)}, rows  # no Hopper spill list on Ampere
                assert not rows & set(_common.AMPERE_GEMM_SPILLS.get((elem, kind), {})), (kind, rows)


def test_swiglu_prune_keeps_only_clean_tiles(monkeypatch):
    """SwiGLU (two accumulators) on Hopper: each engine's prune keeps only tiles with at most 128 accumulator
    registers per thread that the report shows clean (the spill lists), never the plain tables' largest tiles."""
    import triton

    from vit_fast.kernels import _common, gemm_fp8, gemm_tma

    class FakeCudaTensor:
        device = torch.device("cuda", 0)
        dtype = torch.bfloat16

        def element_size(self):
            return 2

    a = FakeCudaTensor()
    monkeypatch.setattr(_common, "shared_memory_bytes", lambda index: 232448)
    monkeypatch.setattr(_common, "gpu_family", lambda index: "hopper")
    monkeypatch.setattr(gemm_tma, "shared_memory_bytes", lambda index: 232448)
    monkeypatch.setattr(gemm_tma, "_sm_shared_memory", lambda index: 233472)
    monkeypatch.setattr(gemm_fp8, "shared_memory_bytes", lambda index: 232448)
    monkeypatch.setattr(gemm_fp8, "_family", lambda index: "hopper")
    swiglu = dict(ROW_STATS=True, ACTIVATION=_common.SWIGLU)
    def rows(kept):
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
                for c in kept}

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in _common.gemm_aot_configs()]
    pointer = rows(_common.prune_gemm_configs(configs, {"a_ptr": a, "M_BUCKET": 1 << 16}, **swiglu))
    assert pointer == {(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
                       (64, 32, 64, 4, 4)}, pointer
    tma_configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPI_SPLIT": e},
                                 num_warps=w, num_stages=s) for bm, bn, bk, w, s, e in gemm_tma.HOPPER_TMA]
    tma = rows(gemm_tma._prune(tma_configs, {"a": a, "M_BUCKET": 1 << 16}, **swiglu))
    assert tma == {(128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4)}, tma
    # fp32 operands (VITFAST_GEMM_ENGINE=tma forces them) count 4 bytes per element: 128x64 no longer fits
    a.element_size = lambda: 4
    tma32 = rows(gemm_tma._prune(tma_configs, {"a": a, "M_BUCKET": 1 << 16}, **swiglu))
    a.element_size = lambda: 2
    assert tma32 and tma32 < tma and (128, 64, 64, 4, 4) not in tma32, tma32
    fp8_rows = dict.fromkeys(gemm_fp8.HOPPER_FP8 + gemm_fp8.ADA_FP8 + gemm_fp8.SWIGLU_FP8)
    fp8_configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
                   for bm, bn, bk, w, s in fp8_rows]
    fp8 = rows(gemm_fp8._prune(fp8_configs, {"a_ptr": a, "M_BUCKET": 1 << 16}, ACTIVATION=_common.SWIGLU))
    assert fp8 == {(64, 128, 128, 8, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4)}, fp8
    # and a GELU launch still sees the whole Hopper table (the switch is per launch)
    gelu = rows(gemm_tma._prune(tma_configs, {"a": a, "M_BUCKET": 1 << 16}, ROW_STATS=True, ACTIVATION=1))
    assert len(gelu) == len(gemm_tma.HOPPER_TMA)


def test_fp8_prune_on_ada_keeps_every_tile_that_fits(monkeypatch):
    """The FP8 prune on an Ada GPU (99 KB per block) keeps every Ada tile, 128x128x128 included: it compiles to
    98,304 B there (the static report), which a former estimate (163,840 B) refused; SwiGLU the Ada tiles of its
    table. On Hopper every tile, and for grouped A (FC2) those whose K step stays within a group."""
    import triton

    from vit_fast.kernels import gemm_fp8

    class FakeCudaTensor:
        device = torch.device("cuda", 0)
        element_size = staticmethod(lambda: 1)

    monkeypatch.setattr(gemm_fp8, "shared_memory_bytes", lambda index: 101376)
    monkeypatch.setattr(gemm_fp8, "_family", lambda index: "ada")
    rows = dict.fromkeys(gemm_fp8.HOPPER_FP8 + gemm_fp8.ADA_FP8 + gemm_fp8.SWIGLU_FP8)  # _configs() on a GPU
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in rows]

    def kept(**switches):
        return {gemm_fp8._row(c) for c in gemm_fp8._prune(configs, {"a_ptr": FakeCudaTensor(), "M_BUCKET": 1 << 16},
                                                          **switches)}

    assert kept() == set(gemm_fp8.ADA_FP8) == kept(A_GROUPED=True)
    assert kept(ACTIVATION=SWIGLU) == set(gemm_fp8.ADA_FP8) & set(gemm_fp8.SWIGLU_FP8)
    monkeypatch.setattr(gemm_fp8, "shared_memory_bytes", lambda index: 232448)
    monkeypatch.setattr(gemm_fp8, "_family", lambda index: "hopper")
    assert kept() == set(gemm_fp8.HOPPER_FP8)
    assert kept(A_GROUPED=True) == {t for t in gemm_fp8.HOPPER_FP8 if t[2] <= 128}


def test_spills_in_loops_reads_back_edges():
    """nvdisasm's layout: a loop runs from a label to a later branch back to it; forward branches make no loop; an
    unreadable listing (no addresses, an indirect jump, a subroutine call) gives None when there are spills."""
    from benchmarks.sass import opcodes, spills_in_loops

    sass = """
        /*0000*/                   STL [R1], R0 ;
        /*0010*/               @P0 BRA `(.L_x_1) ;
.L_x_0:
        /*0020*/                   LDL R2, [R1+0x4] ;
        /*0030*/                   FFMA R3, R2, R2, R3 ;
.L_x_4:
.L_x_2:
        /*0040*/                   STL.64 [R1+0x8], R4 ;
        /*0050*/             @!UP1 BRA.U `(.L_x_4) ;
        /*0060*/              @!P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0070*/                   LDL.LU R7, [R1] ;
        /*0080*/                   EXIT ;
.L_x_3:
        /*0090*/                   BRA `(.L_x_3);
"""
    assert opcodes(sass).count("STL") == 2 and opcodes(sass).count("LDL") == 2
    assert spills_in_loops(sass) == 2  # the outer loop's LDL and the nested loop's STL.64 (first of its loop)
    assert spills_in_loops(sass.replace("@!P0 BRA `(.L_x_0)", "NOP")) == 1
    assert spills_in_loops(sass.replace("@!UP1 BRA.U `(.L_x_4)", "@!PT BRA `(.L_x_2)")) == 2  # either label
    # an out-of-line block after EXIT that branches back into the loop: everything between counts (the safe side)
    tail = "        /*00a0*/                   BRA `(.L_x_0) ;\n"
    assert spills_in_loops(sass.replace("@!P0 BRA `(.L_x_0)", "NOP") + tail) == 3
    for unreadable in ("/*0030*/                   BRX R6 -0xa0 ;", "/*0030*/                   JMP R4 ;"):
        assert spills_in_loops(sass.replace("/*0030*/                   FFMA R3, R2, R2, R3 ;", unreadable)) is None
    # an indirect branch that lists its targets (a warp-specialized kernel's dispatch to its partitions): readable,
    # and a listed target seen already closes a loop
    table = '/*0030*/                   BRX R6 -0xa0 (*"BRANCH_TARGETS .L_x_1,.L_x_3"*) ;'
    assert spills_in_loops(sass.replace("/*0030*/                   FFMA R3, R2, R2, R3 ;", table)) == 2
    back = table.replace(".L_x_1,", ".L_x_1,.L_x_0,").replace("/*0030*/", "/*0065*/")
    assert spills_in_loops(sass.replace("@!P0 BRA `(.L_x_0)", "NOP").replace(
        "        /*0070*/", f"        {back}\n        /*0070*/")) == 2
    assert spills_in_loops(sass.replace("/*0000*/", "")) is None  # a listing without addresses
    # a subroutine the kernel calls (listed after it): spills there are unplaced, a clean one changes nothing
    kernel = "        .type           k,@function\nk:\n" + sass.replace(
        "/*0030*/                   FFMA R3, R2, R2, R3 ;", "/*0030*/                   CALL.REL.NOINC `($div) ;")
    routine = ("        .type           $div,@function\n$div:\n"
               "        /*00a0*/                   IADD3 R2, R2, 0x1, RZ ;\n"
               "        /*00b0*/                   RET.REL.NODEC R4 `(k) ;\n")
    assert spills_in_loops(kernel + routine) == 2
    spilling = routine.replace("IADD3 R2, R2, 0x1, RZ", "STL [R1+0x10], R2")
    assert spills_in_loops(kernel + spilling) is None
    no_spill = "        /*0000*/                   JMP R4 ;\n        /*0010*/                   EXIT ;\n"
    assert spills_in_loops(no_spill) == 0  # nothing to place: no spill, whatever the listing


def test_pdl_wait_first():
    """A PDL kernel's grid-dependency wait (ACQBULK) must come before the first instruction that touches global
    memory; reading the kernel's parameters (LDC) or shared memory before it is fine."""
    from benchmarks.sass import opcodes, pdl_wait_first

    def sass(*ops):
        return "".join(f"        /*{16 * i:04x}*/                   {op} ;\n" for i, op in enumerate(ops))

    assert pdl_wait_first(opcodes(sass("LDC R1, c[0x0][0x28]", "ACQBULK", "PREEXIT", "LDG.E R2, desc[UR4][R2.64]")))
    assert pdl_wait_first(opcodes(sass("S2R R0, SR_TID.X", "STS [R0], RZ", "ACQBULK", "UTMALDG.2D [UR8], [UR4]")))
    for first in ("LDG.E R2, desc[UR4][R2.64]", "STG.E desc[UR4][R2.64], R0", "UTMALDG.2D [UR8], [UR4]",
                  "ATOMG.E.ADD.STRONG.GPU PT, R0, desc[UR4][R2.64], R5", "UTMACCTL.IV [UR4]", "LDGSTS.E [R3], [R4.64]"):
        assert not pdl_wait_first(opcodes(sass(first, "ACQBULK"))), first
    assert not pdl_wait_first(opcodes(sass("LDC R1, c[0x0][0x28]", "EXIT")))  # no wait at all


def test_mma_drains_in_loops():
    """A pipelined main loop waits with one wgmma group in flight (0x1); a drain to 0x0 right after a group inside
    the loop (what ptxas injects when the loop reads an in-flight accumulator, as FP8 promotion does) counts, and so
    does each wgmma that starts from a zero accumulator there; a drain after a branch (a persistent kernel's
    per-tile epilogue) or after the loop does not."""
    from benchmarks.sass import mma_drains_in_loops, zero_started_mmas_in_loops

    sass = """
.L_x_0:
        /*1c10*/                   WARPGROUP.ARRIVE ;
        /*1c20*/                   QGMMA.64x128x32.F32.E4M3.E4M3 R24, gdesc[UR8], RZ, !UPT ;
        /*1d10*/                   QGMMA.64x128x32.F32.E4M3.E4M3 R24, gdesc[UR8], R24, gsb0 ;
        /*1d18*/                   IADD3 R2, R2, 0x1, RZ ;
        /*1d20*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*1d30*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*1d38*/               @P1 BRA `(.L_x_1) ;
        /*1d3c*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
.L_x_1:
        /*1d40*/              @!P0 BRA `(.L_x_0) ;
        /*1d50*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*1d60*/                   EXIT ;
"""
    assert mma_drains_in_loops(sass) == 1 and zero_started_mmas_in_loops(sass) == 1
    drain = "        /*1d20*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;\n"
    assert mma_drains_in_loops(sass.replace(drain, "")) == 0  # pipelined
    assert mma_drains_in_loops(sass.replace(drain, ".L_x_9:\n" + drain)) == 0  # another block: a branch target
    assert mma_drains_in_loops(sass.replace("R24, gsb0 ;", "R24 ;")) == 0  # not the group's last wgmma
    assert zero_started_mmas_in_loops(sass.replace("RZ, !UPT", "R24")) == 0
    assert mma_drains_in_loops(sass.replace("@!P0 BRA `(.L_x_0)", "NOP")) == 0  # no loop
    assert zero_started_mmas_in_loops(sass.replace("@!P0 BRA `(.L_x_0)", "NOP")) == 0
    assert mma_drains_in_loops(sass.replace("/*1c10*/", "")) is None  # a listing without addresses
    twice = sass.replace("        /*1d30*/", "        /*1d2c*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;\n"
                                             "        /*1d30*/")
    assert mma_drains_in_loops(twice) == 1  # one group, one drain


def test_gate_requires_fp8_promotion():
    """On sm_90 an FP8 GEMM compiled with PRECISE_ACC=1 must start each dot's partial sum from zero in its loop
    (SwiGLU: gate and up, two), else the compiler dropped the promotion; an unreadable listing fails too."""
    from benchmarks.kernels_static import gate_problems

    def fp8(**constexprs):
        return {"signature": {"a": "*fp8e4nv", "out": "*bf16"}, "constexprs": constexprs, "tables": ("hopper",),
                "main_loop": "gemm"}

    clean = dict(registers=128, stack=0, shared=1000, hgmma=0, qgmma=4, hmma=0, ldgsts=8, utmaldg=0, stl=0, ldl=0,
                 spills_in_loops=0, mma_drains_in_loops=1, zero_started_mmas_in_loops=1)
    assert gate_problems(fp8(PRECISE_ACC=True, ACTIVATION=1), 90, clean) == []
    assert "not promoted" in gate_problems(fp8(PRECISE_ACC=True), 90, dict(clean, zero_started_mmas_in_loops=0))[0]
    assert "unreadable" in gate_problems(fp8(PRECISE_ACC=True), 90, dict(clean, zero_started_mmas_in_loops=None))[0]
    assert gate_problems(fp8(PRECISE_ACC=False), 90, dict(clean, zero_started_mmas_in_loops=0)) == []
    assert "expected at least 2" in gate_problems(fp8(PRECISE_ACC=True, ACTIVATION=SWIGLU), 90, clean)[0]
    assert gate_problems(fp8(PRECISE_ACC=True, ACTIVATION=SWIGLU), 90, dict(clean, zero_started_mmas_in_loops=2)) == []
    ada = {**fp8(PRECISE_ACC=True), "tables": ("ada",)}  # Ada's mma.sync: no promotion to read
    assert gate_problems(ada, 89, dict(clean, qgmma=0, qmma=8, zero_started_mmas_in_loops=0)) == []


def test_autotune_first_keeps_one_config(monkeypatch):
    """VITFAST_AUTOTUNE=first (the GPU test step) hands every autotuned kernel only the first config its prune
    keeps; "all" (the default) and "compile" the prune's whole choice; another value is one clear error. Every
    autotuned kernel goes through autotune.autotuned: its prune scoped, its timer autotune_bench."""
    import triton

    from vit_fast.kernels import _common, autotune

    configs = [triton.Config({"BLOCK_M": m}, num_warps=4) for m in (16, 32, 64)]
    scoped = autotune.autotune_scope(lambda configs, named_args, **kw: configs[1:])
    monkeypatch.delenv(_common.AUTOTUNE_ENV, raising=False)
    assert [c.kwargs["BLOCK_M"] for c in scoped(configs, {})] == [32, 64]
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "first")
    assert [c.kwargs["BLOCK_M"] for c in scoped(configs, {})] == [32]
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "compile")  # every kept config is compiled (benchmarks/prewarm.py)
    assert [c.kwargs["BLOCK_M"] for c in scoped(configs, {})] == [32, 64]
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "fast")
    with pytest.raises(ValueError, match=r"^VITFAST_AUTOTUNE: expected all \| first \| compile, got 'fast'$"):
        scoped(configs, {})
    autotuned = {"attention": "_attn_fwd_kernel", "gemm": "fused_gemm_kernel", "gemm_fp8": "fp8_gemm_kernel",
                 "gemm_tma": "tma_gemm_kernel", "gemm_fp8_tma": "fp8_tma_gemm_kernel",
                 "layer_norm": "layer_norm_kernel",
                 "patch_embed": "patch_embed_kernel", "quant_fp8": "quant_rows_fp8_kernel"}
    for module, name in autotuned.items():  # every autotuned kernel's prune goes through the switch
        kernel = getattr(importlib.import_module(f"vit_fast.kernels.{module}"), name)
        assert getattr(kernel, "early_config_prune", None) is not None, name
        assert kernel.early_config_prune.__code__ is scoped.__code__, name
        assert kernel.do_bench is autotune.autotune_bench, name  # and is timed by the project's timer
        assert kernel in autotune.AUTOTUNED, name
    assert len(autotune.AUTOTUNED) == len(autotuned)
    kernels = Path(autotune.__file__).parent  # no kernel module calls triton.autotune by itself
    assert [f.name for f in kernels.glob("*.py") if "triton.autotune(" in f.read_text()] == ["autotune.py"]


def test_compile_mode_keeps_untimed_choices_off_the_disk_cache(monkeypatch):
    """Under VITFAST_AUTOTUNE=compile the prune turns its autotuner's disk cache off before Triton consults it (in
    any process, not only the prewarm's), and back on for "all"; an autotuner built without one stays without."""
    import triton

    from vit_fast.kernels import _common, autotune

    configs = [triton.Config({"BLOCK_M": m}, num_warps=4) for m in (16, 32)]
    for cached in (True, False):
        tuner = type("Tuner", (), {"cache_results": cached})()
        holder = {"tuner": tuner, "cache_results": cached}
        scoped = autotune.autotune_scope(lambda configs, named_args, **kw: configs, holder)
        monkeypatch.setenv(_common.AUTOTUNE_ENV, "compile")
        assert len(scoped(configs, {})) == 2 and tuner.cache_results is False
        monkeypatch.setenv(_common.AUTOTUNE_ENV, "all")
        scoped(configs, {})
        assert tuner.cache_results is cached
    tuner = autotune.AUTOTUNED[0]  # the real wiring: the holder of every registered autotuner is its own
    prune = tuner.early_config_prune
    assert any(c.cell_contents.get("tuner") is tuner for c in prune.__closure__ if isinstance(c.cell_contents, dict))


def test_autotune_bench_times_only_where_timing_chooses(monkeypatch):
    """The autotuners' timer returns equal times without running the kernel under the interpreter (triton 3.6 times
    even a lone pruned config, through a GPU driver a CPU lacks) and with VITFAST_AUTOTUNE=first, launches once with
    "compile"; elsewhere it is triton's benchmarker, called as the autotuner calls it, and for a key whose first
    config runs faster than GRAPH_TIMED_BELOW_MS there, triton's CUDA-graph benchmarker for that config and every
    later config of the key (one timer a key); a capture that fails keeps the events' time, with a warning."""
    import triton.runtime
    import triton.testing

    from vit_fast.kernels import _common, autotune

    def never_run():
        raise AssertionError("the kernel ran")

    quantiles = (0.5, 0.2, 0.8)
    monkeypatch.delenv(_common.AUTOTUNE_ENV, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert autotune.autotune_bench(never_run, quantiles=quantiles) == [0.0, 0.0, 0.0]
    events, graphs, times = [], [], {}

    class Driver:  # what triton.runtime.driver.active.get_benchmarker() hands a GPU autotuner
        class active:
            @staticmethod
            def get_benchmarker():
                return lambda fn, quantiles: events.append((fn, quantiles)) or [times[fn]] * 3

    def graph(fn, quantiles):
        graphs.append((fn, quantiles))
        if times[fn] is None:
            raise RuntimeError("")  # an empty message too
        return [times[fn] / 4] * 3

    monkeypatch.setattr(triton.runtime, "driver", Driver)
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", graph)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "first")
    assert autotune.autotune_bench(never_run, quantiles=quantiles) == [0.0, 0.0, 0.0] and events == []
    launched = []
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "compile")  # launched once (compiled), not timed
    assert autotune.autotune_bench(lambda: launched.append(1), quantiles=quantiles) == [0.0, 0.0, 0.0]
    assert launched == [1] and events == []
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "all")
    scoped = autotune.autotune_scope(lambda configs, named_args, **kw: configs)

    def tune(*configs):  # one key: the prune, then each config timed in turn
        events.clear(), graphs.clear()
        scoped([], {})
        return [autotune.autotune_bench(c, quantiles=quantiles)[0] for c in configs]

    slow, short, shorter = (lambda: 0), (lambda: 1), (lambda: 2)
    times.update({slow: 1.5, short: autotune.GRAPH_TIMED_BELOW_MS * 0.99, shorter: 0.02})
    assert tune(slow, short) == [1.5, times[short]] and graphs == []  # the first config decides: events for all
    assert tune(short, slow) == [times[short] / 4, 1.5 / 4]  # graphs for all, events only for the first
    assert [fn for fn, _ in events] == [short] and [fn for fn, _ in graphs] == [short, slow]
    times[slow] = None  # cannot be captured: from then on the key keeps the events' times
    with pytest.warns(UserWarning, match=r"^autotune: CUDA-graph timing failed \(RuntimeError\); kept the events' "
                                         r"time$"):
        assert tune(shorter, slow, short) == [0.02 / 4, None, times[short]]



def test_two_programs_per_sm_rows(monkeypatch):
    """A PER_SM row (two co-resident programs per SM, so one's epilogue overlaps the other's MMAs) is kept by the
    TMA prune only where two fit the SM's shared memory (QKV and FC1; not a launch with a residual's staging
    buffer, nor an SM with less shared memory); the gate checks co-residency on the compiled shared memory and
    registers."""
    from benchmarks.kernels_static import gate_problems
    from vit_fast.kernels import gemm_tma

    assert gemm_tma.PER_SM
    for row, programs in gemm_tma.PER_SM.items():
        assert programs == 2 and row in gemm_tma.HOPPER_TMA
        assert gemm_tma.tile_allowed(row, 232448)
        assert not gemm_tma.tile_allowed(row, 232448, has_residual=True)
        assert not gemm_tma.tile_allowed(row, 232448, sm_smem=233472 - 4096)
    variant = {"signature": {"a": "*bf16", "out": "*bf16"}, "constexprs": {}, "tables": ("hopper",),
               "main_loop": "gemm", "num_warps": 4, "programs_per_sm": 2}
    clean = dict(registers=226, stack=0, shared=115224, hgmma=8, qgmma=0, hmma=0, ldgsts=0, utmaldg=6, stl=0, ldl=0,
                 spills_in_loops=0, mma_drains_in_loops=0, zero_started_mmas_in_loops=0)
    assert gate_problems(variant, 90, clean) == []
    assert "2 programs per SM need" in gate_problems(variant, 90, dict(clean, shared=116000))[0]
    assert "registers" in gate_problems({**variant, "num_warps": 8}, 90, clean)[0]
    assert gate_problems({**variant, "programs_per_sm": 1}, 90, dict(clean, shared=200000)) == []


def test_fp8_tma_variants_cover_every_table_row(variants):
    """Every tile the FP8 TMA prune can pick, for QKV, FC1 writing codes and the out-projection on e4m3 rows
    (promoted and not) and FC2 on grouped codes (promoted by construction), has a Hopper variant, so the report
    compiles and gates it; the promoted 128x256 row is shown but never picked (it spills)."""
    from vit_fast.kernels import gemm_fp8_tma

    have = {}
    for _, sig, c, w, s, tables, _ in variants["gemm_fp8_tma"]:
        if not c["HOST_DESC"]:  # the device-side descriptors' comparison variant: a switch, not what a launch picks
            continue
        kind = ("fc2" if c["A_GROUPED"] else "proj" if c["HAS_RESIDUAL"] else "fc1" if c["GROUP_OUT"] else "qkv")
        tile = (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], w, s, c["EPI_SPLIT"])
        assert c["PER_SM"] == gemm_fp8_tma.PER_SM.get(tile, 1)
        have.setdefault((kind, c["PRECISE_ACC"], tile), set()).update(tables)
    for kind, residual, a_grouped, group_out, out_bytes in (
            ("qkv", False, False, False, 2), ("fc1", False, False, True, 1), ("proj", True, False, False, 2),
            ("fc2", True, True, False, 2)):
        for precise in (True,) if a_grouped else (True, False):
            for tile in gemm_fp8_tma.HOPPER_FP8_TMA:
                if gemm_fp8_tma.tile_allowed(tile, 232448, residual, precise, out_bytes, a_grouped=a_grouped,
                                             group_out=group_out):
                    assert "hopper" in have.get((kind, precise, tile), ()), (kind, precise, tile)
    spill = next(iter(gemm_fp8_tma.PROMOTED_SPILLS))
    assert have[("fc1", True, spill)] == set() and "hopper" in have[("fc1", False, spill)]
