"""Ahead-of-time compile check: build every kernel variant for real GPU targets on a machine without a GPU.

The interpreter accepts code the GPU compiler rejects (non-constexpr globals, dots under 16, host-only helpers), so
CI compiles the `aot_variants()` of every module in the `kernels` package down to a cubin. Modules are found with
pkgutil, so a new kernel module is checked without editing this file; a public module that defines Triton kernels
but no `aot_variants()` is a failure (the contract asks every kernel module for one).

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


def discover(only=()):
    """[(name, module or None, import traceback or None)] for every module of the `kernels` package."""
    import kernels
    found = []
    for info in sorted(pkgutil.iter_modules(kernels.__path__), key=lambda i: i.name):
        if only and info.name not in only:
            continue
        try:
            found.append((info.name, importlib.import_module(f"kernels.{info.name}"), None))
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
    return tuple(sorted({t[1:] for t in variant["signature"].values() if isinstance(t, str) and t.startswith("*")}))


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


def _source(variant):
    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" not in params:  # the keyword exists since triton 3.3; setup.py asks for >= 3.4
        raise RuntimeError(f"unsupported triton {triton.__version__}: ASTSource{tuple(params)}")
    return ASTSource(fn=variant["fn"], signature=variant["signature"], constexprs=variant["constexprs"])


def _cpu_seconds():
    """CPU time of this process and its finished children (ptxas): stable when the machine is shared."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def compile_one(job):
    """Compile one (module, variant index, cc, exhaustive) job -> (module, label, cc, cpu seconds, error or None)."""
    module_name, index, cc, exhaustive = job
    variant = variants_of(importlib.import_module(f"kernels.{module_name}"), exhaustive)[index]
    start = _cpu_seconds()
    try:
        compiled = triton.compile(_source(variant), target=GPUTarget("cuda", cc, 32),
                                  options={"num_warps": variant["num_warps"], "num_stages": variant["num_stages"]})
        error = None if compiled.asm.get("cubin") else "no cubin produced"
    except Exception as exc:  # report every failure and keep going
        lines = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return module_name, label(module_name, variant), cc, _cpu_seconds() - start, error


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
            failures.append(f"import kernels.{name}: {error.strip().splitlines()[-1]}")
            print(f"FAIL import kernels.{name}\n{error}", flush=True)
            continue
        if not hasattr(module, "aot_variants"):
            if defines_kernels(module) and not name.startswith("_"):
                failures.append(f"kernels.{name}: defines Triton kernels but no aot_variants()")
                print(f"FAIL kernels.{name}: defines Triton kernels but no aot_variants()", flush=True)
            else:
                print(f"skip kernels.{name} (no aot_variants)", flush=True)
            continue
        try:
            variants = variants_of(module, args.exhaustive)
            assert variants, "returned no variants"
        except Exception as exc:
            failures.append(f"kernels.{name}.aot_variants(): {type(exc).__name__}: {exc}")
            print(f"FAIL kernels.{name}.aot_variants()\n{traceback.format_exc(limit=3)}", flush=True)
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
