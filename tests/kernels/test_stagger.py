"""The staggered start of the two-programs rows (kernels/stagger.py): when it applies (the STAGGER heuristic, the
VITFAST_STAGGER switch and its error), what the engines' launches pass, that every compiled variant the static
report lists carries the setting its launches get, and, compiled for sm_90 as the JIT compiles it, that a STAGGER
variant waits on the global timer, for one tile's main loop and only in the second program of an SM, before its
first MMA, while its twin without STAGGER does not. On a GPU, where a launch places its programs: what the wait
assumes (programs 0..#SMs-1 one per SM). The numerics of the staggered launches are the two-programs row tests'
(test_gemm_tma.py, which on a GPU run enough tiles for the wait); under the interpreter there is no timer."""
import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import smid

from vit_fast.kernels import gemm_fp8_tma, gemm_tma, stagger
from vit_fast.kernels._common import AUTOTUNE_ENV, ENGINE_ENV, STAGGER_ENV, is_interpreting
from vit_fast.kernels.gemm_tma import CTA_RESERVED_SMEM, SM90_SM_SMEM
from vit_fast.kernels.stagger import stagger_rule

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()


@triton.jit
def _placement_probe(sm_out, a_ptr, b_ptr, c_ptr):
    """Records the SM each program runs on. Its dot stages A (128x256) and B (256x64) bf16 in shared memory, 96 KB
    (sm_90), so that two programs fit an SM and three do not, as with the two-programs GEMM rows (115 KB)."""
    pid = tl.program_id(0)
    tl.store(sm_out + pid, smid())
    rm = tl.arange(0, 128)
    rk = tl.arange(0, 256)
    rn = tl.arange(0, 64)
    a = tl.load(a_ptr + rm[:, None] * 256 + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * 64 + rn[None, :])
    tl.store(c_ptr + pid * (128 * 64) + rm[:, None] * 64 + rn[None, :], tl.dot(a, b))


@pytest.mark.parametrize("interpret, per_sm, split, switch, expected", [
    ("0", 2, 1, "", True),
    ("0", 2, 1, "0", False),  # switched off
    ("0", 1, 1, "", False),  # one program per SM: nothing to overlap
    ("0", 2, 2, "", False),  # split launches run about one unit a program
    ("1", 2, 1, "1", False),  # the interpreter has no timer
])
def test_stagger_rule(interpret, per_sm, split, switch, expected, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    monkeypatch.setenv(STAGGER_ENV, switch)
    assert stagger_rule({"PER_SM": per_sm, "SPLIT_K": split}) is expected
    if split == 1:  # the FP8 engine has no SPLIT_K argument
        assert stagger_rule({"PER_SM": per_sm}) is expected


def test_bad_setting(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(STAGGER_ENV, "yes")
    with pytest.raises(ValueError, match="VITFAST_STAGGER.*1 \\| 0.*'yes'"):
        stagger_rule({"PER_SM": 2})


class _Recorder:
    """Stands in for a kernel's jit function under its heuristics: records (PER_SM, STAGGER), then launches with
    STAGGER off under the interpreter (which cannot read the timer)."""

    def __init__(self, fn):
        self.fn, self.launches = fn, []

    def run(self, *args, **kwargs):
        self.launches.append((kwargs["PER_SM"], kwargs["STAGGER"]))
        if CUDA:
            return self.fn.run(*args, **kwargs)
        return self.fn.run(*args, **dict(kwargs, STAGGER=False))


@pytest.mark.parametrize("switch", ["1", "0"])
def test_launches_pass_stagger(switch, monkeypatch, device):
    """A 16-bit and an FP8 launch on their engines' two-programs rows (pinned) and on a one-program row pass STAGGER
    exactly for the former with the switch on, the heuristic judging as on a GPU (its interpreter check patched)."""
    import triton

    from vit_fast import fp8 as fp8_ref
    from vit_fast.kernels.gemm_fp8_tma import launch_fp8_tma_gemm
    from vit_fast.kernels.gemm_tma import launch_tma_gemm

    if CUDA and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engines need an sm_90 GPU")
    monkeypatch.setattr(stagger, "is_interpreting", lambda: False)
    monkeypatch.setenv(STAGGER_ENV, switch)
    monkeypatch.setenv(ENGINE_ENV, "tma")
    monkeypatch.setenv(AUTOTUNE_ENV, "first")
    a = torch.randn(300, 160, device=device).bfloat16()
    w = torch.randn(256, 160, device=device).bfloat16()
    aq, a_scale = fp8_ref.quantize_rows(a.float())
    wq, w_scale = fp8_ref.quantize_rows(w.float())
    for kernel, launch in ((gemm_tma.tma_gemm_kernel, lambda: launch_tma_gemm(a, w, None, torch.empty(300, 256,
                            device=device, dtype=torch.bfloat16))),
                           (gemm_fp8_tma.fp8_tma_gemm_kernel, lambda: launch_fp8_tma_gemm(
                               aq, a_scale, wq, w_scale, None, torch.empty(300, 256, device=device,
                                                                           dtype=torch.bfloat16)))):
        recorder = _Recorder(kernel.fn.fn)
        monkeypatch.setattr(kernel.fn, "fn", recorder)
        row = next(iter(gemm_fp8_tma.PER_SM if kernel is gemm_fp8_tma.fp8_tma_gemm_kernel else gemm_tma.PER_SM))
        bm, bn, bk, warps, stages, epi = row
        for per_sm in (2, 1):
            monkeypatch.setattr(kernel, "configs", [triton.Config(
                {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPI_SPLIT": epi, "PER_SM": per_sm},
                num_warps=warps, num_stages=stages)])
            recorder.launches.clear()
            launch()
            assert recorder.launches and set(recorder.launches) == {(per_sm, per_sm == 2 and switch == "1")}, (
                kernel, recorder.launches)


@pytest.mark.skipif(not CUDA or is_interpreting(), reason="where programs run is a GPU's placement")
def test_launch_places_the_first_num_sms_programs_one_per_sm():
    """What the staggered start assumes: a launch of 2 x #SMs programs, two of which fit an SM, puts programs
    0..#SMs-1 one per SM (so the programs numbered #SMs and up are the second ones), two programs on every SM."""
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    sm = torch.full((2 * num_sms,), -1, dtype=torch.int32, device="cuda")
    a = torch.randn(128, 256, device="cuda").bfloat16()
    b = torch.randn(256, 64, device="cuda").bfloat16()
    c = torch.empty(2 * num_sms, 128, 64, device="cuda")
    runs = []
    for _ in range(3):  # the GPU test step shares the GPU between processes: a time slice could move a launch
        sm.fill_(-1)
        kernel = _placement_probe[(2 * num_sms,)](sm, a, b, c, num_warps=4, num_stages=1)
        smem = getattr(torch.cuda.get_device_properties(0), "shared_memory_per_multiprocessor", 0) or SM90_SM_SMEM
        if smem // (kernel.metadata.shared + CTA_RESERVED_SMEM) != 2:
            pytest.skip(f"the probe's {kernel.metadata.shared} B of shared memory do not make two programs an SM")
        placed = sm.tolist()
        assert min(placed) >= 0
        runs.append((len(set(placed[:num_sms])), sorted(collections.Counter(placed).values())))
        if runs[-1] == (num_sms, [2] * num_sms):
            return
    pytest.fail(f"in 3 launches, programs 0..{num_sms - 1} took (distinct SMs, programs per SM) = {runs}")


# Run in a subprocess without the interpreter (under it `triton.jit` gives interpreted functions, which neither
# aot_variants() nor triton.compile take; the op modules by name: the package exports functions of the same names).
# Prints every engine variant as (kernel, STAGGER, what stagger_rule gives for its constexprs, whether a preset's
# launches are credited to it: one without a "vit" rule is credited to all, as in the static report), then per engine
# the first STAGGER variant's NUM_SMS, PER_SM, BLOCK_M, BLOCK_N and PTX, and the PTX of its twin without STAGGER.
_COMPILE = """
import json, sys
sys.path.insert(0, 'tests/kernels')
import aot_compile, triton
from triton.backends.compiler import GPUTarget
import vit_fast
import importlib
from vit_fast.kernels import gemm_fp8_tma, gemm_tma
from vit_fast.kernels.stagger import stagger_rule
ops = [importlib.import_module('vit_fast.kernels.' + n) for n in ('ln_qkv', 'ln_linear', 'linear_residual')]
from benchmarks.kernels_static import BATCHES, PRESETS
configs = [vit_fast.get_config(p) for p in PRESETS]
print(json.dumps([(v['fn'].__name__, v['constexprs']['STAGGER'], stagger_rule(v['constexprs']),
                   'vit' not in v or any(v['vit'](c, b) for c in configs for b in BATCHES))
                  for m in (gemm_tma, *ops, gemm_fp8_tma) for v in m.aot_variants()
                  if 'STAGGER' in v['constexprs']]))
out = {}
for m in (gemm_tma, gemm_fp8_tma):
    variant = next(v for v in m.aot_variants() if v['constexprs']['STAGGER'])
    off = dict(variant, constexprs=dict(variant['constexprs'], STAGGER=False))
    ptx = [triton.compile(aot_compile._source(v), target=GPUTarget('cuda', 90, 32),
                          options={'num_warps': v['num_warps'], 'num_stages': v['num_stages']}).asm['ptx']
           for v in (variant, off)]
    out[m.__name__] = [[variant['constexprs'][k] for k in ('NUM_SMS', 'PER_SM', 'BLOCK_M', 'BLOCK_N')], *ptx]
import test_stagger
from triton.compiler import ASTSource
probe = ASTSource(test_stagger._placement_probe,
                  {'sm_out': '*i32', 'a_ptr': '*bf16', 'b_ptr': '*bf16', 'c_ptr': '*fp32'}, {},
                  {(i,): [['tt.divisibility', 16]] for i in range(4)})
out['probe_shared'] = triton.compile(probe, target=GPUTarget('cuda', 90, 32),
                                     options={'num_warps': 4, 'num_stages': 1}).metadata.shared
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled():
    if CUDA:  # as the static gate: the compiled-code checks are CI's (CPU); the GPU test step runs the code
        pytest.skip("compiled-code checks run where no GPU is")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", STAGGER_ENV)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", _COMPILE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.strip().splitlines()[-2:]]


def test_variants_carry_the_launch_setting(compiled):
    """Every compiled variant of both engines (the static report's, all ops) has the STAGGER its launches get on a
    GPU, but the VITFAST_STAGGER=0 twins of the two-programs rows, which no preset's launches are credited to."""
    for kernel in ("tma_gemm_kernel", "fp8_tma_gemm_kernel"):
        variants = [v[1:] for v in compiled[0] if v[0] == kernel]
        assert any(stagger for stagger, _, _ in variants), f"{kernel}: no two-programs variant is compiled"
        twins = [(stagger, credited) for stagger, rule, credited in variants if stagger is not rule]
        assert twins and twins == [(False, False)] * len(twins), (kernel, twins)


def test_placement_probe_fits_two_programs_an_sm(compiled):
    """On sm_90 the GPU test above is meaningful: two probe programs fit an SM's shared memory, three do not."""
    need = compiled[1]["probe_shared"] + CTA_RESERVED_SMEM
    assert SM90_SM_SMEM // need == 2, compiled[1]["probe_shared"]


@pytest.mark.parametrize("module", ["vit_fast.kernels.gemm_tma", "vit_fast.kernels.gemm_fp8_tma"])
def test_compiled_wait_before_the_tile_loop(compiled, module):
    """sm_90, each engine: before the timer is first read, the program id is compared with NUM_SMS, the tiles with
    two per program, and K scaled by the tile's BLOCK_M x BLOCK_N; the wait is a loop that sleeps, reads the timer and
    branches back, all before the first wgmma; the same variant without STAGGER never reads the timer."""
    (num_sms, per_sm, bm, bn), ptx, ptx_off = compiled[1][module]
    reads = [m.start() for m in re.finditer(r"mov\.u64\s+%rd\d+, %globaltimer;", ptx)]
    assert len(reads) >= 2, "a read before the wait and one in its loop"
    before = ptx[:reads[0]]
    # skipped when the program id is below NUM_SMS or the tiles under two a program
    pid = re.search(r"mov\.u32\s+(%r\d+), %ctaid\.x;", before).group(1)
    first = re.search(rf"setp\.lt\.u32\s+(%p\d+), {pid}, {num_sms};", before)
    tiles = re.search(rf"setp\.lt\.s32\s+(%p\d+), %r\d+, {2 * num_sms * per_sm};", before)
    assert first and tiles, "the two conditions"
    skip = re.search(rf"or\.pred\s+(%p\d+), {first.group(1)}, {tiles.group(1)};\s*\n(?:\s*\..*\n)*?\s*@\1 bra\s+"
                     r"(\$L__BB\d+_\d+);", before)
    assert skip, "either condition skips the wait"
    assert re.search(rf"mul\.wide\.s32\s+%rd\d+, %r\d+, {bm * bn};", before), "K x BLOCK_M x BLOCK_N"
    sleep = ptx.find("nanosleep.u32")
    label = re.findall(r"^(\$L__BB\d+_\d+):", ptx[:sleep], flags=re.M)[-1]  # the loop's block
    branch = re.search(r"@%p\d+ bra\s+" + re.escape(label) + ";", ptx[sleep:])
    assert branch and re.search(r"%globaltimer;", ptx[sleep:sleep + branch.start()]), "sleep, read, branch back"
    assert sleep + branch.end() < ptx.find("wgmma.mma_async"), "the wait comes before the first tile's MMAs"
    assert re.search(rf"^{re.escape(skip.group(2))}:", ptx[sleep + branch.end():], flags=re.M), "skip past the loop"
    assert "%globaltimer" not in ptx_off and "nanosleep" not in ptx_off
