"""The static kernel report: how every kernel variant the launchers can pick will run on Hopper, Ada (FP8) and
Ampere, read from the compiled code on a machine without a GPU.

Every `aot_variants()` of the `vit_fast.kernels` package (the contract is in tests/kernels/aot_compile.py) is
compiled for sm_90, sm_89 and sm_80 with the JIT's specialization (tt.divisibility=16 on pointers and on the integer
arguments each variant declares `divisible`), identical compiles once, and read back from the cubin: registers,
spill bytes (STACK) and spill instructions (STL/LDL), shared memory against the device limit, tensor-core kind
(wgmma = HGMMA, mma = HMMA, FP8: QGMMA on sm_90, QMMA on sm_89), async copies (cp.async = LDGSTS, TMA = UTMALDG),
the ViT presets that can pick the variant, and a roofline time for the ViT-B/16 batch-256 launches it would run,
from its tile config:
    per launch  max(waves · FLOPs per program / (peak / SMs), compulsory bytes / bandwidth),  waves = ⌈programs / SMs⌉
with the FLOPs the tiles execute (padding included), 16-bit dots at the tensor-core peak and fp32 (ieee) dots at
the FMA peak. A variant is compiled for the targets of the GPU families whose tables can pick it (hopper -> sm_90,
ada -> sm_89: the FP8 engine's Ada table, ampere and fallback -> sm_80; no family -> sm_90 and sm_80). By default
("ci", the committed report and the CI gate) all the sm_90 and sm_89 compiles are made, and for sm_80 a
representative sample (per kernel and dtype, the fewest variants that take every value of every boolean switch);
`--full` makes every sm_80 compile too, `--all-targets` compiles every variant for every target.

Gate (`--check`, and tests/kernels/test_static_gate.py): on sm_90, every variant the Hopper tables can pick has no
spills (an all-fp32 variant may keep a cold one: at most 32 B of stack and no STL/LDL inside a loop) and fits
shared memory; its 16-bit dots are wgmma (no HMMA; variants marked "wgmma": False, dots under 64 rows, are exempt);
its GEMM main loop (main_loop == "gemm") has cp.async or TMA loads; a variant launched with programmatic dependent
launch (constexpr PDL, kernels/pdl.py) executes its grid-dependency wait (ACQBULK) before any instruction that touches
global memory, and no other variant has one. On sm_89, every FP8 variant the Ada table can
pick has no spills, fits 99 KB, and its GEMM loop has FP8 mma (QMMA) and cp.async. On both, a variant that states
the prune's shared-memory estimate (`smem_estimate`, the FP8 engine) compiles within it, and one launched with
several programs per SM (`programs_per_sm`, the TMA engines' PER_SM rows) fits that many in an SM's shared memory
and registers.

    python -m benchmarks.kernels_static             # writes benchmarks/static/report.md and report.json
    python -m benchmarks.kernels_static --check     # the same, exit 1 on a compile failure or a gate problem
    python -m benchmarks.kernels_static --full      # every variant on every target its families use (long)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .signature import element_types

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "static"
PRESETS = [f"vit_{s}_{p}" for s in ("b", "l", "h") for p in (14, 16, 32)]
BATCHES = (1, 256)
ROOFLINE_PRESET, ROOFLINE_BATCH = "vit_b_16", 256
FAMILY_TARGET = {"hopper": 90, "ada": 89, "ampere": 80, "fallback": 80}
NO_FAMILY_TARGETS = (90, 80)  # a variant no table picks: shown where the 16-bit engines run
GATED = {90: "hopper", 89: "ada"}  # the targets the gate checks, and the family whose picks it checks there
# A spill the gate lets pass in an fp32 variant: this many stack bytes at most, every STL/LDL outside every loop
# (see cold_spill_ok). Measured (benchmarks/NOTES.md, "Cold spills"): fp32 attention parks 8-16 B across its loop
# under triton 3.6 at 64-128 registers; real register pressure spills hundreds of bytes, most of it in the loop.
COLD_SPILL_BYTES = 32
# Per target: shared memory limit (opt-in, per block; sm_smem: per SM, what co-resident blocks share), SMs, 16-bit
# tensor-core peak, fp32 FMA peak, DRAM bandwidth.
# H100 SXM: 800 TFLOP/s as benchmarks/roofline.py (about the measured bf16 matmul peak), datasheet for the rest;
# A100 SXM: datasheet (312 TFLOP/s bf16, 19.5 TFLOP/s fp32, 2.04 TB/s); L40S (sm_89, the FP8 engine's Ada table):
# datasheet (362 TFLOP/s bf16 dense, 91.6 TFLOP/s fp32, 864 GB/s), 99 KB of shared memory per block.
CTA_RESERVED_SMEM = 1024  # shared memory CUDA reserves per resident block (co-resident programs each pay it; the
# TMA engines' prunes use the same figure, vit_fast/kernels/gemm_tma.py, not imported here: importing the kernels
# before _aot() clears TRITON_INTERPRET would build them for the interpreter)
SM_REGISTERS = 65536  # 32-bit registers per SM on sm_80, sm_89 and sm_90
DEVICES = {
    90: {"name": "H100 SXM", "smem": 232448, "sm_smem": 233472, "sms": 132, "tensor": 800e12, "fma": 67e12,
         "bandwidth": 3.35e12},
    89: {"name": "L40S", "smem": 101376, "sms": 142, "tensor": 362e12, "fma": 91.6e12, "bandwidth": 0.864e12},
    80: {"name": "A100 SXM", "smem": 166912, "sms": 108, "tensor": 312e12, "fma": 19.5e12, "bandwidth": 2.04e12},
}


def _aot():
    """tests/kernels/aot_compile.py, the contract and the compile machinery (a script, not a package module)."""
    if "aot_compile" in sys.modules:
        return sys.modules["aot_compile"]
    os.environ.pop("TRITON_INTERPRET", None)  # compile for real targets, never the interpreter shim
    spec = importlib.util.spec_from_file_location("aot_compile", ROOT / "tests" / "kernels" / "aot_compile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["aot_compile"] = module
    spec.loader.exec_module(module)
    return module


def compile_job(job):
    """Process-pool entry point (importable by spawned workers, unlike the script's own functions)."""
    return _aot().compile_one(job)


def is_fp8(variant) -> bool:
    return "fp8e4nv" in element_types(variant["signature"])


def is_16bit(variant) -> bool:
    """Dots on 16-bit operands (an FP8 GEMM with a bf16 output is not)."""
    kinds = element_types(variant["signature"])
    return "fp8e4nv" not in kinds and ("bf16" in kinds or "fp16" in kinds)


def dtype_of(variant) -> str:
    """The data arguments' dtypes ("bf16/fp32": pointers and host tensor descriptors); int32 pointers (split-K
    counters) are not data."""
    return "/".join(element_types(variant["signature"], counters=False))


def tile_of(variant) -> str:
    c = variant["constexprs"]
    dims = variant.get("tile") or "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_D") if k in c)
    return f"{dims} w{variant['num_warps']}s{variant['num_stages']}"


def switches_of(variant) -> str:
    skip = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_D", "GROUP_M", "UPCAST"}
    return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in variant["constexprs"].items()
                    if k not in skip and not k.startswith("stride_") and k not in ("SEQ", "HEAD_DIM"))


def targets_of(variant, all_targets: bool, ccs) -> list:
    tables = variant.get("tables", ("hopper",))
    wanted = {FAMILY_TARGET.get(t) for t in tables} - {None}
    if all_targets:
        wanted = set(ccs)
    elif not wanted:
        wanted = set(NO_FAMILY_TARGETS)
    # a variant may name the oldest target it exists for ("min_cc": 89 for FP8 dots and casts)
    return sorted((c for c in wanted if c in ccs and c >= variant.get("min_cc", 0)), reverse=True)


def roofline_us(launches, cc: int, sixteen_bit: bool) -> float:
    dev = DEVICES[cc]
    peak = dev["tensor"] if sixteen_bit else dev["fma"]
    total = 0.0
    for launch in launches:
        programs = max(1, launch["programs"])
        waves = -(-programs // dev["sms"])
        compute = waves * (launch["flops"] / programs) / (peak / dev["sms"])
        total += max(compute, launch["bytes"] / dev["bandwidth"])
    return total * 1e6


def cold_spill_ok(variant, stats) -> bool:
    """No spill, or, for a variant whose data are all fp32 (the FMA-dot validation path), a cold one: at most
    COLD_SPILL_BYTES of stack and no spill instruction inside a loop (ptxas parking a value or two across the main
    loop: stored before it, loaded after). 16-bit, FP8 and uint8 variants may not spill at all. Stats whose loop
    count is missing or unreadable (None) pass only without any spill."""
    if not (stats["stack"] or stats["stl"] or stats["ldl"]):
        return True
    return (dtype_of(variant) == "fp32" and stats.get("spills_in_loops") == 0
            and stats["stack"] <= COLD_SPILL_BYTES)


def promotion_problems(variant, stats) -> list:
    """An sm_90 FP8 GEMM compiled with PRECISE_ACC=1 (or promoting by construction: the variant's `promoted`, its dot
    count) must start a partial sum from zero in its main loop for each of its dots (two for SwiGLU: gate and up),
    or the compiler dropped the promotion (as Triton does for a dot whose A
    comes from registers when max_num_imprecise_acc asks for it)."""
    from vit_fast.kernels._common import SWIGLU

    started = stats.get("zero_started_mmas_in_loops")
    if started is None:
        return ["FP8 promotion unreadable: the SASS loops could not be read"]
    dots = variant.get("promoted") or (2 if variant["constexprs"].get("ACTIVATION") == SWIGLU else 1)
    if started < dots:
        return [f"FP8 partial sums not promoted (PRECISE_ACC=1): {started} zero-started wgmma(s) in the main loop, "
                f"expected at least {dots}"]
    return []


def gate_problems(variant, cc: int, stats) -> list:
    """The gate's rules for one compiled variant (empty when it passes or when the rules do not apply): on sm_90 for
    the Hopper tables' picks, on sm_89 for the Ada (FP8) table's."""
    if GATED.get(cc) not in variant.get("tables", ("hopper",)) or variant.get("ungated"):
        return []
    problems = []
    if not cold_spill_ok(variant, stats):
        hot = stats.get("spills_in_loops")
        where = ", where unread" if hot is None else f", {hot} in loops"
        problems.append(f"spills {stats['stack']} B (STL {stats['stl']}, LDL {stats['ldl']}{where})")
    if stats["shared"] > DEVICES[cc]["smem"]:
        problems.append(f"shared memory {stats['shared']} B > {DEVICES[cc]['smem']} B")
    estimate = variant.get("smem_estimate", {}).get(GATED[cc])
    if estimate is not None and stats["shared"] > estimate:  # the prune could pick a tile that does not fit
        problems.append(f"shared memory {stats['shared']} B above the prune's estimate {estimate} B")
    programs = variant.get("programs_per_sm", 1)
    sm_smem = DEVICES[cc].get("sm_smem")
    if programs > 1 and sm_smem and programs * (stats["shared"] + CTA_RESERVED_SMEM) > sm_smem:
        problems.append(f"{programs} programs per SM need {programs} x ({stats['shared']} + {CTA_RESERVED_SMEM}) B "
                        f"of shared memory, the SM has {sm_smem} B")
    threads = programs * variant.get("num_warps", 4) * 32
    if programs > 1 and threads * -(-stats["registers"] // 8) * 8 > SM_REGISTERS:  # allocated in units of 8 per thread
        problems.append(f"{programs} programs per SM need {threads} threads x {stats['registers']} registers, "
                        f"the SM has {SM_REGISTERS}")
    if cc == 89:  # Ada: FP8 mma.sync (QMMA), cp.async; no wgmma, no TMA
        if variant.get("main_loop") == "gemm":
            if is_fp8(variant) and not stats.get("qmma"):
                problems.append("no FP8 mma (QMMA) in an FP8 GEMM")
            if not stats["ldgsts"]:
                problems.append("GEMM main loop without cp.async")
        return problems
    if variant["constexprs"].get("PDL"):  # launched with programmatic dependent launch (kernels/pdl.py)
        if not stats.get("pdl_wait_first"):
            problems.append("PDL kernel touches global memory before its grid-dependency wait (ACQBULK)")
    elif stats.get("pdl_wait"):
        problems.append(f"{stats['pdl_wait']} grid-dependency waits (ACQBULK) in a kernel launched without PDL")
    if is_16bit(variant) and variant.get("wgmma", True) and stats["hmma"]:
        problems.append(f"16-bit dot as mma.sync ({stats['hmma']} HMMA), not wgmma")
    if variant.get("main_loop") == "gemm":
        if is_16bit(variant) and not stats["hgmma"]:
            problems.append("no wgmma in a 16-bit GEMM")
        if is_fp8(variant) and not stats.get("qgmma"):
            problems.append("no FP8 wgmma (QGMMA) in an FP8 GEMM")
        if is_fp8(variant) and (variant["constexprs"].get("PRECISE_ACC") or variant.get("promoted")):
            problems += promotion_problems(variant, stats)
        if not (stats["ldgsts"] or stats["utmaldg"]):
            problems.append("GEMM main loop without cp.async or TMA")
    return problems


def collect(aot, ci: bool, all_targets: bool, ccs, only=(), dtypes=()):
    """-> (failures, jobs, rows): one job per distinct compile, one row per (variant, target) sharing its result."""
    failures, jobs, rows, seen = [], [], [], {}
    for name, module, error in aot.discover(only):
        if error is not None:
            failures.append(f"import vit_fast.kernels.{name}: {error.strip().splitlines()[-1]}")
            continue
        if not hasattr(module, "aot_variants"):
            if aot.defines_kernels(module) and not name.startswith("_"):
                failures.append(f"vit_fast.kernels.{name}: defines Triton kernels but no aot_variants()")
            continue
        variants = module.aot_variants()
        ampere_like = [i for i, v in enumerate(variants) if set(v.get("tables", ("hopper",))) & {"ampere", "fallback"}]
        sample80 = {ampere_like[i] for i in aot.subset([variants[i] for i in ampere_like])} if ampere_like else set()
        for index, variant in enumerate(variants):
            if dtypes and dtype_of(variant) not in dtypes:
                continue
            for cc in targets_of(variant, all_targets, ccs):
                if ci and cc == 80 and index not in sample80:
                    continue
                key = aot.variant_key(variant, cc)
                if key not in seen:
                    seen[key] = len(jobs)
                    jobs.append((name, index, cc, False, True))
                rows.append({"module": name, "index": index, "cc": cc, "job": seen[key], "variant": variant})
    # Gated (sm_90, sm_89) compiles first, so a long run shows the gate's answer early; results go back by job index.
    order = sorted(range(len(jobs)), key=lambda j: (jobs[j][2] not in GATED, jobs[j][0] == "attention"))
    where = {old: new for new, old in enumerate(order)}
    for row in rows:
        row["job"] = where[row["job"]]
    return failures, [jobs[j] for j in order], rows


def describe(row, result) -> dict:
    """One report row: the variant, its compiled resources, the gate's findings and its ViT presets/roofline."""
    import vit_fast

    variant, cc = row["variant"], row["cc"]
    _, label, _, seconds, error, stats = result
    out = {"module": row["module"], "op": variant.get("op", row["module"]), "kernel": variant["fn"].__name__,
           "dtype": dtype_of(variant), "tile": tile_of(variant), "switches": switches_of(variant),
           "families": list(variant.get("tables", ("hopper",))), "target": f"sm_{cc}", "label": label,
           "cpu_s": round(seconds, 2), "error": error, "smem_limit": DEVICES[cc]["smem"]}
    if stats:
        out.update(stats)
        out["tensor_core"] = ("wgmma" if stats["hgmma"] else "wgmma e4m3" if stats.get("qgmma") else "mma"
                              if stats["hmma"] else "mma e4m3" if stats.get("qmma") else "none")
        # a zero-started wgmma is a promotion only in an FP8 GEMM (attention's S = QK^T starts from zero too)
        out["mma_loop"] = ", ".join(w for w, n in (
            ("promoted", is_fp8(variant) and stats.get("zero_started_mmas_in_loops")),
            ("drained", stats.get("mma_drains_in_loops"))) if n)
        out["async_copy"] = "+".join(k for k, n in (("cp.async", stats["ldgsts"]), ("TMA", stats["utmaldg"])) if n) \
            or "none"
        out["gate"] = gate_problems(variant, cc, stats)
        if variant.get("ungated"):
            out["ungated"] = variant["ungated"]
        if GATED.get(cc) in variant.get("smem_estimate", {}):
            out["smem_estimate"] = variant["smem_estimate"][GATED[cc]]
    vit = variant.get("vit")
    if vit is not None:
        out["presets"] = [p for p in PRESETS if any(vit(vit_fast.get_config(p), b) for b in BATCHES)]
        family = {**GATED, 80: "ampere"}[cc]
        launches = vit(vit_fast.get_config(ROOFLINE_PRESET), ROOFLINE_BATCH)
        if launches and family in variant.get("tables", ("hopper",)):
            out["roofline_us"] = round(roofline_us(launches, cc, is_16bit(variant)), 1)
            out["roofline_launches"] = len(launches)
            out["launch_names"] = ",".join(dict.fromkeys(x["name"] for x in launches))
            out["tflops_useful"] = sum(x["useful_flops"] for x in launches) / 1e12
    else:
        out["presets"] = list(PRESETS)
    return out


def markdown(report) -> str:
    lines = [
        "# Static kernel report", "",
        f"Generated by `python -m benchmarks.kernels_static` (triton {report['triton']}, {report['compiles']} distinct "
        f"compiles of {len(report['rows'])} (variant, target) rows, {report['profile']}). Do not edit: regenerate.", "",
        "Columns: **fam** GPU families whose autotune tables can pick the variant; **reg** registers/thread; "
        "**stack** spill bytes; **STL/LDL** spill stores/loads (and how many sit inside a loop); **smem** dynamic "
        "shared memory (limit 232,448 B sm_90, 101,376 B sm_89, 166,912 B sm_80); **TC** tensor-core kind (wgmma = "
        "HGMMA, wgmma e4m3 = QGMMA, Hopper FP8; mma = HMMA; mma e4m3 = QMMA, Ada FP8; *promoted*: an FP8 GEMM's "
        "loop starts wgmmas from a zero accumulator, partial sums added in fp32 each K step; *drained*: a loop "
        "waits for each wgmma group right after issuing it, so the tensor cores do not overlap the next step, which "
        "attention's softmax and the promotion cause); **async** "
        "cp.async (LDGSTS) / TMA (UTMALDG) loads; **presets** ViT presets (batch 1 or 256) whose launches can pick "
        "it; **roofline µs** ViT-B/16 batch-256 launches of this variant on the row's target (one forward, all "
        "layers; H100 SXM 800 TFLOP/s 16-bit, 67 TFLOP/s fp32 FMA, 3.35 TB/s, 132 SMs; A100 SXM 312 / 19.5 "
        "TFLOP/s, 2.04 TB/s, 108 SMs; max of wave-quantized tile FLOPs and compulsory bytes per launch); **gate** "
        f"the sm_90 rules (no spill, or in an fp32 variant a cold one: at most {COLD_SPILL_BYTES} B of stack and "
        "no STL/LDL inside a loop; smem fits, 16-bit dots are wgmma, GEMM loops use cp.async/TMA, FP8 GEMMs "
        "with PRECISE_ACC=1 promoted, a PDL kernel waits for its predecessor (ACQBULK) before its first global "
        "memory instruction and no other kernel waits) for variants "
        "the Hopper tables can pick; on sm_89 (L40S, 99 KB of shared memory per block) for the FP8 engine's Ada "
        "table: no spill, smem fits, FP8 dots are QMMA, GEMM loops use cp.async; on both, smem within the prune's "
        "estimate where the variant states one (the FP8 engine), so the prune never picks a tile that does not "
        "fit.", "",
    ]
    problems = [r for r in report["rows"] if r.get("gate") or r.get("error")]
    lines.append(f"**Gate: {'PASS' if not problems else f'{len(problems)} problem(s)'}**")
    lines += [f"- {r['target']} {r['label']}: {r.get('error') or '; '.join(r['gate'])}" for r in problems]
    lines.append("")
    lines.append(f"## Predicted time per op, {ROOFLINE_PRESET} batch {ROOFLINE_BATCH} (best gated Hopper variant)")
    lines.append("")
    lines.append("| op | launches | dtype | tile | launches per forward | roofline µs (sm_90) | useful TFLOP |")
    lines.append("|---|---|---|---|---|---|---|")
    for (op, names, dtype), r in sorted(best_per_op(report["rows"]).items()):
        lines.append(f"| {op} | {names} | {dtype} | {r['tile']} | {r['roofline_launches']} | {r['roofline_us']} | "
                     f"{r['tflops_useful']:.3f} |")
    lines.append("")
    for target in ("sm_90", "sm_89", "sm_80"):
        rows = [r for r in report["rows"] if r["target"] == target]
        if not rows:
            continue
        lines += [f"## {target}", "",
                  "| op | kernel | dtype | tile | switches | fam | reg | stack | STL/LDL | smem | TC | async | "
                  "presets | roofline µs | gate |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["op"], r["dtype"], r["tile"], r["switches"])):
            if r.get("error"):
                lines.append(f"| {r['op']} | {r['kernel']} | {r['dtype']} | {r['tile']} | {r['switches']} | "
                             f"{','.join(r['families'])} | FAILED: {r['error']} |||||||||")
                continue
            smem = f"{r['shared']:,}" + (" **over**" if r["shared"] > r["smem_limit"] else "")
            presets = ",".join(p[4:] for p in r["presets"]) or "—"
            cc = int(target[3:])
            gate = ("**" + "; ".join(r["gate"]) + "**") if r["gate"] else f"ungated: {r['ungated']}" \
                if r.get("ungated") and cc in GATED else "ok" if GATED.get(cc) in r["families"] else ""
            if gate == "ok" and r["stack"]:
                gate = f"ok (cold spill {r['stack']} B)"
            spills = f"{r['stl']}/{r['ldl']}" + (f" ({r['spills_in_loops']} in loops)" if r.get("spills_in_loops")
                                                 else "")
            lines.append(f"| {r['op']} | {r['kernel']} | {r['dtype']} | {r['tile']} | {r['switches']} | "
                         f"{','.join(r['families'])} | {r['registers']} | {r['stack']} | {spills} | "
                         f"{smem} | {r['tensor_core']}{f' ({loop})' if (loop := r.get('mma_loop')) else ''} | "
                         f"{r['async_copy']} | {presets} | "
                         f"{r.get('roofline_us', '')} | {gate} |")
        lines.append("")
    return "\n".join(lines)


def best_per_op(rows) -> dict:
    """(op, launch names, dtype) -> the sm_90 row with the lowest roofline among passing Hopper variants."""
    best = {}
    for r in rows:
        if r["target"] != "sm_90" or "roofline_us" not in r or r.get("gate") or "hopper" not in r["families"]:
            continue
        key = (r["op"], r["launch_names"], r["dtype"])
        if key not in best or r["roofline_us"] < best[key]["roofline_us"]:
            best[key] = r
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels_static", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for report.md and report.json")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes (default 2)")
    parser.add_argument("--cc", type=int, nargs="+", default=[90, 89, 80], choices=sorted(DEVICES))
    parser.add_argument("--full", action="store_true",
                        help="every variant on its families' targets (default, 'ci': every variant on sm_90 and "
                             "sm_89 and a representative sm_80 sample; the committed report and the CI gate)")
    parser.add_argument("--all-targets", action="store_true", help="every variant for every target")
    parser.add_argument("--only", default="", help="comma-separated kernel module names (default: all)")
    parser.add_argument("--dtype", default="", help="comma-separated pointer dtypes to keep, e.g. bf16 (default: all)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a compile fails or the gate finds a problem")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # compile for real targets, never the interpreter shim
    aot = _aot()
    import triton

    ci = not (args.full or args.all_targets)
    failures, jobs, rows = collect(aot, ci, args.all_targets, args.cc, {m for m in args.only.split(",") if m},
                                   {d for d in args.dtype.split(",") if d})
    if failures:
        print("FAILURES before compiling:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"{len(jobs)} distinct compiles for {len(rows)} (variant, target) rows, {args.jobs} jobs", flush=True)
    start = time.perf_counter()
    results = []
    if args.jobs > 1 and len(jobs) > 1:
        # spawn, not fork: every worker imports triton afresh (and without TRITON_INTERPRET)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, res in enumerate(pool.map(compile_job, jobs)):
                results.append(res)
                _progress(i, len(jobs), res)
    else:
        for i, job in enumerate(jobs):
            results.append(aot.compile_one(job))
            _progress(i, len(jobs), results[-1])
    report = {"triton": triton.__version__, "profile": "ci" if ci else "all targets" if args.all_targets
              else "each variant on its families' targets", "compiles": len(jobs),
              "wall_s": round(time.perf_counter() - start, 1), "rows": [describe(r, results[r["job"]]) for r in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / "report.md").write_text(text + "\n")
    print(text)
    bad = [r for r in report["rows"] if r.get("error") or r.get("gate")]
    print(f"static report: {len(jobs)} compiles in {report['wall_s']} s, {len(bad)} problem rows -> {args.out}",
          flush=True)
    return 1 if args.check and bad else 0


def _progress(i, total, result):
    module, label, cc, seconds, error, stats = result
    state = "FAIL " + error if error else f"reg {stats['registers']} stack {stats['stack']} smem {stats['shared']}"
    print(f"[{i + 1}/{total}] sm_{cc} {seconds:5.1f}s {label}: {state}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
