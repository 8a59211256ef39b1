"""Ahead-of-time compile check: build every kernel variant for real GPU targets on a machine without a GPU, the way
Triton's JIT builds it on the GPU.

The interpreter accepts code the GPU compiler rejects (non-constexpr globals, dots under 16, host-only helpers), so
CI compiles the `aot_variants()` of every module in the `vit_fast.kernels` package down to a cubin. Modules are
found with pkgutil, so a new kernel module is checked without editing this file; a public module that defines Triton
kernels but no `aot_variants()` is a failure. The same variants feed the static report and its gate
(`python -m benchmarks.kernels_static`, tests/kernels/test_static_gate.py).

THE CONTRACT (every engine follows it to appear in the report and the gate)
---------------------------------------------------------------------------
A module of `kernels` that defines a @triton.jit kernel defines `aot_variants(exhaustive: bool = False) -> list[dict]`,
one dict per compile, describing the launch exactly as the JIT would specialize it on a GPU:

  fn          the @triton.jit function (`kernels._common.jit_fn(k)` unwraps autotune/heuristics wrappers), or a
              @gluon.jit one with `gluon` True
  signature   {arg name: type} for EVERY argument of fn: "*bf16" / "*fp16" / "*fp32" / "*u8" / "*fp8e4nv" pointers,
              "tensordesc<bf16[128, 64]>" host tensor descriptors (element type and box, as the JIT specializes one),
              "i32" / "i64" / "fp32" scalars, "constexpr" for constexprs and for integer args the JIT turns into
              constants (a unit stride is specialized to 1: declare it "constexpr" with value 1)
  constexprs  {arg name: value} for every "constexpr" entry of the signature (tiles, switches, unit strides)
  num_warps, num_stages   as in the triton.Config the autotuner would launch
Optional keys:
  tile        the report's tile ("128x128x128") where the block shape is no constexpr (a Gluon kernel reads it
              from its descriptors). Default: BLOCK_M x BLOCK_N x BLOCK_K (x BLOCK_D) from constexprs.
  promoted    for an FP8 GEMM that promotes its partial sums by construction (no PRECISE_ACC constexpr): how many
              dots its loops start from zero (kernels/gemm_fp8_ws.py: one per math warpgroup, 2); the gate checks
              them as it checks PRECISE_ACC=1 variants. Default None.
  gluon       True for a @gluon.jit kernel (compiled through Gluon's front end; its descriptors' signature names
              their shared layout: "tensordesc<fp8e4nv[128,128],NVMMASharedLayout(...)>"). Default False.
  divisible   tuple of integer argument names that every real launch makes a multiple of 16: row strides of
              contiguous rows, N, K, D, 3D, head dims. They get `tt.divisibility=16`, as the JIT gives them. Never M
              nor anything that varies with the batch (B·197 is odd) — those are also `do_not_specialize` in the
              kernel. Every pointer argument always gets the attribute (launchers pass 16-byte aligned tensors;
              a launcher that cannot promise it must not use this contract's variants). Default ().
  tables      the GPU families ("hopper", "ampere", "fallback": kernels._common.gpu_family values; "ada" for the FP8
              engine's sm_89 table, kernels.gemm_fp8) whose autotune tables, after the prune's dtype/shared-memory
              rules, can pick this variant's config — for GEMMs kernels._common.gemm_families(row, elem). The gate
              applies the sm_90 rules to every variant whose tables contain "hopper" (default ("hopper",): gated),
              and the sm_89 rules to those with "ada". A tile pruned from a table because it spills keeps its
              variant with that family left out, so the report still shows it.
  op          the op the variant serves ("ln_linear", "ln_qkv", "linear_residual", "patch_embed", "attention",
              "layer_norm", "linear_fp8", ...): report grouping and roofline. Default: the module name.
  main_loop   "gemm" when the kernel streams K tiles through a loop that must be pipelined on sm_90: the gate then
              demands cp.async (LDGSTS) or TMA (UTMALDG) in its SASS. Default None (no demand).
  vit         callable(cfg, batch) -> list of launches this variant runs for the ViT preset `cfg`
              (vit_fast.get_config(name)) at that batch, [] when the launcher cannot pick it there (other dtype is
              handled by the report; use it for shape-dependent switches such as EVEN_K, BLOCK_D, tiles the prune
              drops). A launch is {"name": str, "flops": FLOPs the tiles execute (padding included), "useful_flops":
              the problem's FLOPs, "bytes": compulsory DRAM bytes, "programs": grid size}; persistent kernels give
              "programs" as the number of output tiles. kernels._common.gemm_vit_launches builds them for GEMM ops.
              Without it a variant is listed for every preset, with no roofline.
  wgmma       False for a variant whose dots cannot be wgmma (fewer than 64 rows: a wgmma covers 64 rows per
              warpgroup, e.g. attention's 16-row tile for [CLS]-only queries); default True.
  smem_estimate  {family: bytes} the prune assumes the variant's config takes (kernels.gemm_fp8.smem_bytes): the
              gate flags a compile above it for the gated family (the prune could pick a tile that does not fit),
              and the report shows it. Default: none stated.
  programs_per_sm  programs the launcher keeps resident per SM with this config (the TMA engines' PER_SM rows):
              the gate checks that many fit the SM's shared memory and registers. Default 1.
  ungated     a one-line reason why the gate's rules do not apply (the report still shows the variant and the
              reason): validation paths that no default picks (fp32 ieee attention: backend "auto" sends fp32
              models to sdpa), or a known limitation with an open item (patch_embed P=14, K=588). Default None.
Families map to compile targets: "hopper" -> sm_90, "ada" -> sm_89, "ampere" and "fallback" -> sm_80 (a variant
with no family is compiled for sm_90 and sm_80, and flagged as picked by none).
Rules the gate enforces on sm_90 for variants whose tables contain "hopper" (tests/kernels/test_static_gate.py):
no spill (STACK 0, no STL/LDL; a variant whose pointers are all fp32 may keep a cold spill: at most 32 B of stack
and no STL/LDL inside a loop), shared memory <= 232,448 B and programs_per_sm x (shared + 1,024 B) <= 233,472 B;
every tensor-core dot of a 16-bit variant is wgmma (no HMMA); main_loop == "gemm" -> LDGSTS or UTMALDG present;
a PDL=True variant (kernels/pdl.py) waits (ACQBULK) before its first global memory instruction, no other one waits.
On sm_89 for variants whose tables contain "ada": no spill, shared memory <= 101,376 B, an FP8 GEMM main loop has
QMMA and LDGSTS. Every variant must compile for the targets it is sent to (FP8 variants start at sm_89).
Identical compiles (same fn, signature, constexprs, attributes, warps, stages, target) are compiled once.

Default (the CI budget): every variant for sm_90, and for sm_80 a representative subset: per (kernel, pointer
dtypes), the fewest variants that between them take every value of every boolean constexpr. `--full` compiles every
variant for every target; `--exhaustive` asks modules that offer it for their longer list.

Usage: python tests/kernels/aot_compile.py [--cc 90 80] [--subset-cc 80 | --full] [--jobs N] [--only a,b]
Prints one line per (variant, target) and a per-module summary; exits 1 listing the failures.
"""
import argparse
import importlib
import inspect
import multiprocessing
import os
import pkgutil
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

# The interpreter would turn @triton.jit into a CPU shim: unset it before triton or any kernel module is imported.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the current default, stated (silences triton 3.9's warning)
_TEMP_CACHE = None
if __name__ == "__main__" and "TRITON_CACHE_DIR" not in os.environ:
    # A throw-away cache, so that every run really compiles; spawned workers inherit it.
    _TEMP_CACHE = os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="vitfast-aot-")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from benchmarks.sass import mma_loop_counts, opcodes, pdl_wait_first, spills_in_loops  # noqa: E402
from benchmarks.signature import element_types  # noqa: E402


def discover(only=()):
    """[(name, module or None, import traceback or None)] for every module of the `vit_fast.kernels` package."""
    from vit_fast import kernels
    found = []
    for info in sorted(pkgutil.iter_modules(kernels.__path__), key=lambda i: i.name):
        if only and info.name not in only:
            continue
        try:
            found.append((info.name, importlib.import_module(f"vit_fast.kernels.{info.name}"), None))
        except Exception:
            found.append((info.name, None, traceback.format_exc(limit=3)))
    return found


def defines_kernels(module):
    """True when the module itself (not an import) defines a @triton.jit kernel, possibly autotuned."""
    for obj in vars(module).values():
        while isinstance(obj, (triton.runtime.Autotuner, triton.runtime.Heuristics)):
            obj = obj.fn
        if isinstance(obj, triton.runtime.JITFunction) and obj.fn.__module__ == module.__name__:
            return True
    return False


def variants_of(module, exhaustive=False):
    """module.aot_variants(), asking for the exhaustive list where the module offers one."""
    if exhaustive and "exhaustive" in inspect.signature(module.aot_variants).parameters:
        return module.aot_variants(exhaustive=True)
    return module.aot_variants()


def _pointer_types(variant):
    return tuple(sorted(element_types(variant["signature"])))


def label(module_name, variant):
    consts = ",".join(f"{k}={v}" for k, v in variant["constexprs"].items())
    return (f"{module_name}.{variant['fn'].__name__} [{'/'.join(_pointer_types(variant))}] {consts} "
            f"w{variant['num_warps']}s{variant['num_stages']}")


def subset(variants):
    """Indices of a representative sample: per (kernel, pointer dtypes), a greedy cover of every value of every
    boolean constexpr (at least one variant per group)."""
    groups = defaultdict(list)
    for i, v in enumerate(variants):
        groups[(v["fn"].__name__, _pointer_types(v))].append(i)
    keep = []
    for indices in groups.values():
        features = {i: {(k, x) for k, x in variants[i]["constexprs"].items() if isinstance(x, bool)} for i in indices}
        needed = set().union(*features.values())
        chosen = [indices[0]]
        needed -= features[indices[0]]
        while needed:
            best = max(indices, key=lambda i: len(features[i] & needed))
            chosen.append(best)
            needed -= features[best]
        keep.extend(chosen)
    return sorted(set(keep))


def jit_attrs(variant):
    """The JIT's specialization as ASTSource attrs: tt.divisibility=16 on every pointer and on `divisible` ints."""
    fn, sig = variant["fn"], variant["signature"]
    names = [n for n, t in sig.items() if isinstance(t, str) and t.startswith("*")]
    for name in variant.get("divisible", ()):
        kind = sig.get(name)
        if kind is None or kind == "constexpr" or not kind.startswith(("i", "u")) or kind.startswith("*"):
            raise ValueError(f"{fn.__name__}: divisible names {name!r}, expected an integer argument, got {kind!r}")
        names.append(name)
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in names}


def _source(variant):
    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" not in params:  # the keyword exists since triton 3.3; setup.py asks for >= 3.4
        raise RuntimeError(f"unsupported triton {triton.__version__}: ASTSource{tuple(params)}")
    source = ASTSource
    if variant.get("gluon"):  # a @gluon.jit kernel (kernels/gemm_fp8_ws.py): Gluon's front end
        from triton.experimental.gluon._runtime import GluonASTSource as source
    return source(fn=variant["fn"], signature=variant["signature"], constexprs=variant["constexprs"],
                  attrs=jit_attrs(variant))


def _cpu_seconds():
    """CPU time of this process and its finished children (ptxas): stable when the machine is shared."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
SASS_COUNTS = {"hgmma": "HGMMA", "qgmma": "QGMMA", "hmma": "HMMA", "qmma": "QMMA", "ldgsts": "LDGSTS",
               "utmaldg": "UTMALDG", "stl": "STL", "ldl": "LDL", "pdl_wait": "ACQBULK"}
# QGMMA: Hopper's FP8 (e4m3/e5m2) warpgroup MMA; QMMA: Ada's FP8 mma.sync (sm_89)


def inspect_compiled(compiled):
    """What decides speed, read from the cubin with the cuobjdump/nvdisasm that ship with triton: registers, stack
    (spill) bytes, spill instructions (and how many sit inside a loop), dynamic shared memory, tensor-core and
    async-copy instruction counts, wgmma groups a loop drains at once (a serialized MMA pipeline) and wgmmas a loop
    starts from zero (promoted FP8 partial sums)."""
    import re
    import subprocess
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        res = subprocess.run([os.path.join(NVIDIA_BIN, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
        sass = subprocess.run([os.path.join(NVIDIA_BIN, "nvdisasm"), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK):(\d+)", res))
    stats = {"registers": int(usage.get("REG", 0)), "stack": int(usage.get("STACK", 0)),
             "shared": int(compiled.metadata.shared)}
    ops = opcodes(sass)
    for key, op in SASS_COUNTS.items():
        stats[key] = sum(1 for o in ops if o == op)
    stats["spills_in_loops"] = spills_in_loops(sass)
    stats["pdl_wait_first"] = pdl_wait_first(ops)
    stats.update(mma_loop_counts(sass))
    return stats


def variant_key(variant, cc):
    """Identity of a compile: variants equal under it produce the same cubin, so they are compiled once."""
    fn = variant["fn"]
    return repr((fn.__module__, fn.__name__, sorted(variant["signature"].items()),
                 sorted((k, repr(v)) for k, v in variant["constexprs"].items()), sorted(jit_attrs(variant)),
                 variant["num_warps"], variant["num_stages"], cc))


def compile_one(job):
    """Compile one (module, variant index, cc, exhaustive[, inspect]) job -> (module, label, cc, cpu seconds, error
    or None[, stats dict or None])."""
    module_name, index, cc, exhaustive, *rest = job
    variant = variants_of(importlib.import_module(f"vit_fast.kernels.{module_name}"), exhaustive)[index]
    start = _cpu_seconds()
    stats = None
    try:
        compiled = triton.compile(_source(variant), target=GPUTarget("cuda", cc, 32),
                                  options={"num_warps": variant["num_warps"], "num_stages": variant["num_stages"]})
        error = None if compiled.asm.get("cubin") else "no cubin produced"
        if error is None and rest and rest[0]:
            stats = inspect_compiled(compiled)
    except Exception as exc:  # report every failure and keep going
        lines = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    result = (module_name, label(module_name, variant), cc, _cpu_seconds() - start, error)
    return result + (stats,) if rest else result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", type=int, nargs="+", default=[90, 80], help="compute capabilities to compile for")
    parser.add_argument("--subset-cc", type=int, nargs="*", default=[80],
                        help="targets that get only the representative subset (default: 80)")
    parser.add_argument("--full", action="store_true", help="every variant on every target (no subset)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="pass exhaustive=True to aot_variants() where a module accepts it")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes")
    parser.add_argument("--only", default="", help="comma-separated module names (default: all)")
    args = parser.parse_args(argv)
    subset_cc = [] if args.full else args.subset_cc
    only = {m for m in args.only.split(",") if m}

    failures, jobs = [], []
    for name, module, error in discover(only):
        if error is not None:
            failures.append(f"import vit_fast.kernels.{name}: {error.strip().splitlines()[-1]}")
            print(f"FAIL import kernels.{name}\n{error}", flush=True)
            continue
        if not hasattr(module, "aot_variants"):
            if defines_kernels(module) and not name.startswith("_"):
                failures.append(f"vit_fast.kernels.{name}: defines Triton kernels but no aot_variants()")
                print(f"FAIL kernels.{name}: defines Triton kernels but no aot_variants()", flush=True)
            else:
                print(f"skip kernels.{name} (no aot_variants)", flush=True)
            continue
        try:
            variants = variants_of(module, args.exhaustive)
        except Exception as exc:
            failures.append(f"vit_fast.kernels.{name}.aot_variants(): {type(exc).__name__}: {exc}")
            print(f"FAIL kernels.{name}.aot_variants()\n{traceback.format_exc(limit=3)}", flush=True)
            continue
        if not variants:  # helpers compiled into their callers' variants (pdl, split_k, stagger), as kernels_static
            print(f"skip kernels.{name} (no variants of its own: its helpers compile into its callers')", flush=True)
            continue
        sample = subset(variants)
        for cc in args.cc:
            indices = sample if cc in subset_cc else range(len(variants))
            # a variant may name the oldest target it exists for ("min_cc": 89 for FP8 dots and casts)
            jobs.extend((name, i, cc, args.exhaustive) for i in indices if cc >= variants[i].get("min_cc", 0))

    start = time.perf_counter()
    if args.jobs > 1 and len(jobs) > 1:
        # spawn, not fork: every worker imports triton afresh
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            compiled, failures = _report(pool.map(compile_one, jobs), failures)
    else:
        compiled, failures = _report(map(compile_one, jobs), failures)
    print(f"AOT: {compiled} variant compiles OK, {len(failures)} failures, {time.perf_counter() - start:.1f}s wall "
          f"(triton {triton.__version__}, targets {args.cc}, subset on {subset_cc or 'none'}, {args.jobs} jobs)",
          flush=True)
    if failures:
        print("FAILURES:\n  " + "\n  ".join(failures), flush=True)
        return 1
    return 0


def _report(results, failures):
    """Print each result as it arrives, then one summary line per (target, module)."""
    compiled, stats = 0, defaultdict(lambda: [0, 0, 0.0])
    for module_name, name, cc, seconds, error in results:
        row = stats[(cc, module_name)]
        row[2] += seconds
        if error is None:
            compiled += 1
            row[0] += 1
            print(f"ok   sm_{cc} {seconds:5.2f}s cpu {name}", flush=True)
        else:
            row[1] += 1
            failures.append(f"sm_{cc} {name}: {error}")
            print(f"FAIL sm_{cc} {seconds:5.2f}s cpu {name}: {error}", flush=True)
    for (cc, module_name), (ok, bad, seconds) in sorted(stats.items()):
        print(f"summary sm_{cc} {module_name}: {ok} ok, {bad} failed, {seconds:.1f} cpu-s", flush=True)
    return compiled, failures


if __name__ == "__main__":
    try:
        status = main()
    finally:
        if _TEMP_CACHE:
            shutil.rmtree(_TEMP_CACHE, ignore_errors=True)
    sys.exit(status)
