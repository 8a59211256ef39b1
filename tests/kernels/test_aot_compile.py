"""Runs tests/kernels/aot_compile.py --full (every listed kernel variant compiled for sm_90 and for sm_80) in a
subprocess without TRITON_INTERPRET, and checks that discovery found every kernel module and that nothing failed.
(`--exhaustive` adds the full tiles x switches cross product: 544 compiles, about 9 minutes on 2 cores.)"""
import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("aot_compile.py")
# Kernel modules of the contract; each must compile at least one variant per target.
MODULES = ("attention", "patch_embed", "ln_linear", "ln_qkv", "linear_residual", "layer_norm", "gemm", "gemm_tma", "ln_fold")
# attention alone: 3 dtypes x 4 head-dim blocks x EVEN_M x EVEN_N on sm_90.
MIN_ATTENTION_SM90 = 48


def test_aot_compile():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.pop("TRITON_CACHE_DIR", None)  # the script compiles into a fresh temporary cache
    proc = subprocess.run([sys.executable, str(SCRIPT), "--full"], env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout
    tail = out[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"AOT compile failed:\n{tail}"
    total = re.search(r"AOT: (\d+) variant compiles OK, 0 failures", out)
    assert total, tail
    print("\n".join(line for line in out.splitlines() if line.startswith(("summary", "AOT:"))))  # shown by -rP
    summary = {(int(cc), m): int(ok) for cc, m, ok in re.findall(r"summary sm_(\d+) (\w+): (\d+) ok", out)}
    for module in MODULES:
        for cc in (90, 80):
            assert summary.get((cc, module), 0) >= 1, f"no {module} variant compiled for sm_{cc}:\n{tail}"
    assert summary[(90, "attention")] >= MIN_ATTENTION_SM90 and summary[(80, "attention")] >= MIN_ATTENTION_SM90, tail
    assert int(total.group(1)) >= MIN_ATTENTION_SM90 + 2 * len(MODULES), tail
