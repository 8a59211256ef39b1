"""The staggered start of the two-programs rows (kernels/stagger.py): when it applies (STAGGER), that every compiled
variant the static report lists carries the setting its launches get, and, compiled for sm_90 as the JIT compiles
it, that a STAGGER variant waits on the global timer before its tile loop while its twin without it does not. The
numerics of the staggered launches are the two-programs row tests' (test_gemm_tma.py, which on a GPU run enough
tiles for the wait); under the interpreter there is no timer, and no wait."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vit_fast.kernels.stagger import stagger_rule

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("interpret, per_sm, split, expected", [
    ("0", 2, 1, True),
    ("0", 1, 1, False),  # one program per SM: nothing to overlap
    ("0", 2, 2, False),  # split launches run about one unit a program
    ("1", 2, 1, False),  # the interpreter has no timer
])
def test_stagger_rule(interpret, per_sm, split, expected, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    assert stagger_rule({"PER_SM": per_sm, "SPLIT_K": split}) is expected
    if split == 1:  # the FP8 engine has no SPLIT_K argument
        assert stagger_rule({"PER_SM": per_sm}) is expected


# Run in a subprocess without the interpreter (under it `triton.jit` gives interpreted functions, which neither
# aot_variants() nor triton.compile take): prints each engine's variants as (PER_SM, SPLIT_K, STAGGER), then the PTX
# of the 16-bit engine's first STAGGER variant and of its twin without.
_COMPILE = """
import json, sys
sys.path.insert(0, 'tests/kernels')
import aot_compile, triton
from triton.backends.compiler import GPUTarget
from vit_fast.kernels import gemm_fp8_tma, gemm_tma
print(json.dumps({m.__name__: [(v['constexprs']['PER_SM'], v['constexprs'].get('SPLIT_K', 1),
                                v['constexprs']['STAGGER']) for v in m.aot_variants()] for m in (gemm_tma, gemm_fp8_tma)}))
variant = next(v for v in gemm_tma.aot_variants() if v['constexprs']['STAGGER'])
off = dict(variant, constexprs=dict(variant['constexprs'], STAGGER=False))
out = []
for v in (variant, off):
    c = triton.compile(aot_compile._source(v), target=GPUTarget('cuda', 90, 32),
                       options={'num_warps': v['num_warps'], 'num_stages': v['num_stages']})
    out.append(c.asm['ptx'])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", _COMPILE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    variants, ptx = (json.loads(line) for line in run.stdout.strip().splitlines()[-2:])
    return variants, ptx


def test_variants_carry_the_launch_setting(compiled):
    """Every compiled variant of both engines (the static report's) has the STAGGER its launches get on a GPU."""
    for module, variants in compiled[0].items():
        assert any(stagger for _, _, stagger in variants), f"{module}: no two-programs variant is compiled"
        for per_sm, split, stagger in variants:
            assert stagger is (per_sm > 1 and split == 1), (module, per_sm, split, stagger)


def test_compiled_wait_before_the_tile_loop(compiled):
    """sm_90: the STAGGER variant reads the global timer once, then in a loop that branches back to itself, all
    before the first wgmma; the same variant without STAGGER never reads it."""
    ptx, ptx_off = compiled[1]
    reads = [m.start() for m in re.finditer(r"mov\.u64\s+%rd\d+, %globaltimer;", ptx)]
    assert len(reads) == 2, "one read before the wait loop and one in it"
    label = re.findall(r"^(\$L__BB\d+_\d+):", ptx[:reads[1]], flags=re.M)[-1]  # the block of the second read
    branch = re.search(r"@%p\d+ bra\s+" + re.escape(label) + ";", ptx[reads[1]:])
    assert branch, "the second read sits in a loop that branches back to it"
    assert reads[1] + branch.end() < ptx.find("wgmma.mma_async"), "the wait comes before the first tile's MMAs"
    assert "%globaltimer" not in ptx_off
