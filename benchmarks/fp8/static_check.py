"""Static check of the FP8 kernels for sm_90 without a GPU: compile every aot_variants() entry of a kernels module
with the JIT's divisibility attributes (pointers and the variant's "divisible" integers), then print registers and
stack bytes (cuobjdump -res-usage), shared memory, FP8 warpgroup MMAs (QGMMA ... E4M3 in nvdisasm), cp.async
(LDGSTS) and spill stores (STL), one line per variant.

    python benchmarks/fp8/static_check.py gemm_fp8 > benchmarks/fp8/static_sm90_gemm_fp8.txt
"""
import importlib
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter's CPU shim
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def check(variant, cc=90) -> dict:
    sig = variant["signature"]
    attrs = {(j,): [["tt.divisibility", 16]] for j, name in enumerate(sig)
             if (isinstance(sig[name], str) and sig[name].startswith("*")) or name in variant.get("divisible", ())}
    src = ASTSource(fn=variant["fn"], signature=sig, constexprs=variant["constexprs"], attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                       options={"num_warps": variant["num_warps"], "num_stages": variant["num_stages"]})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", path], capture_output=True, text=True)
        sass = subprocess.run([os.path.join(BIN, "nvdisasm"), "-c", path], capture_output=True, text=True).stdout
    mma = sorted({m.group(0) for m in re.finditer(r"[HQ]GMMA\.\S+", sass)})
    return {"registers": int(re.search(r"REG:(\d+)", res.stdout).group(1)),
            "stack": int(re.search(r"STACK:(\d+)", res.stdout).group(1)),
            "shared": k.metadata.shared, "wgmma": len(re.findall(r"[HQ]GMMA", sass)), "wgmma_kinds": mma,
            "ldgsts": sass.count("LDGSTS"), "stl": sass.count("STL")}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    module = importlib.import_module("kernels." + args[0])
    print(f"# kernels.{args[0]} for sm_90, triton {triton.__version__}")
    for i, v in enumerate(module.aot_variants()):
        r = check(v)
        switches = {k: x for k, x in v["constexprs"].items() if k.isupper()}
        print(f"{i} {switches} w{v['num_warps']}s{v['num_stages']} REG {r['registers']} STACK {r['stack']} "
              f"smem {r['shared']} wgmma {r['wgmma']} {r['wgmma_kinds']} LDGSTS {r['ldgsts']} STL {r['stl']}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
