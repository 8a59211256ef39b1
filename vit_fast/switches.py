"""The VITFAST_* environment switches the kernels read at launch: the GEMM engines, FP8 accumulation, autotuning, and
the settings kept to compare one change with the code before it. One table of names and values, and the two readers:
`switch_value` (a kernel's launch) and `switch_settings` (every `vit-fast` command and the benchmark harness check all
of them before any work starts, and label what they report with the ones set). Plain Python, no torch or triton, so
a command that does not run kernels checks them too.
"""
import contextlib
import os

# each switch's name and what reads it (modules of vit_fast/kernels unless said), then SWITCHES: its values, the
# default first
ENGINE_ENV = "VITFAST_GEMM_ENGINE"  # which 16-bit/fp32 GEMM engine runs (gemm_tma.select_engine), to compare them
# (ws: the warp-specialized Gluon engine, gemm_ws.py, opt-in until a GPU lease measured it)
FP8_ENGINE_ENV = "VITFAST_FP8_ENGINE"  # which FP8 GEMM engine runs (gemm_fp8_tma.select_fp8_engine); auto: TMA on sm_90
# (ws: the warp-specialized Gluon engine, gemm_fp8_ws.py, likewise)
PRECISE_ACC_ENV = "VITFAST_FP8_PRECISE_ACC"  # FP8 partial sums promoted to fp32 every BLOCK_K, or not (gemm_fp8)
# the whole table timed, only the first config a prune keeps, or every kept config launched once and none timed
# (autotune.py; benchmarks/prewarm.py: the compiled binaries are what it is after)
AUTOTUNE_ENV = "VITFAST_AUTOTUNE"
# whether the model's folded LayerNorms merge the partial statistics the residual GEMMs write (1) or launch a
# statistics kernel of their own (0), to compare them (vit_fast.triton_path)
LN_PARTIALS_ENV = "VITFAST_LN_PARTIALS"
# split-K for launches whose tiles fill few SMs (split_k.py): auto, never (1), or forced into 2-4 parts
SPLIT_ENV = "VITFAST_SPLIT_K"
# the exact GELU's Phi: the fitted erfc every GEMM epilogue shares (gemm.gelu_erf), or libdevice's erf (the code
# before it), to compare them
GELU_ENV = "VITFAST_GELU"
# where the TMA engines' tensor descriptors come from: the launch (host) or each program's own build (device), to
# compare them (tma_desc.py)
DESC_ENV = "VITFAST_TMA_DESC"
# programmatic dependent launch for the kernels that take it (pdl.py): off until a GPU measured it, 1 to try it
PDL_ENV = "VITFAST_PDL"
# whether the second of two co-resident programs on an SM starts late (stagger.py): on, or 0 to compare
STAGGER_ENV = "VITFAST_STAGGER"
# the partial LayerNorm statistics' slot width (ln_fold.stats_slot): 64 columns at small batches (auto), or 128 at
# every batch (the code before), to compare them
STATS_SLOT_ENV = "VITFAST_STATS_SLOT"
SWITCHES = {ENGINE_ENV: ("auto", "tma", "pointer", "ws"), FP8_ENGINE_ENV: ("auto", "tma", "pointer", "ws"),
            PRECISE_ACC_ENV: ("1", "0"), AUTOTUNE_ENV: ("all", "first", "compile"), LN_PARTIALS_ENV: ("1", "0"),
            SPLIT_ENV: ("auto", "1", "2", "3", "4"), GELU_ENV: ("fitted", "libdevice"), DESC_ENV: ("host", "device"),
            PDL_ENV: ("0", "1"), STAGGER_ENV: ("1", "0"), STATS_SLOT_ENV: ("auto", "128")}


def switch_settings():
    """'NAME=value, ...' for each switch set to other than its default, or None at defaults; a switch set to a value
    it does not take is one clear error (switch_value's), so callers check every switch before any work starts."""
    given = [f"{name}={value}" for name, choices in SWITCHES.items() if (value := switch_value(name)) != choices[0]]
    return ", ".join(given) or None


def switch_value(name: str, expected: str = None) -> str:
    """The value of switch `name` in the environment (its default when unset or blank); another value is one
    clear error, saying `expected` (default: the values, "a | b")."""
    return checked_value(name, os.environ.get(name, ""), expected)


def checked_value(name: str, value: str, expected: str = None) -> str:
    """`value` of switch `name` as the kernels read it (stripped, lower case; blank: the default), or one clear
    error saying `expected` (default: the values, "a | b")."""
    choices = SWITCHES[name]
    value = value.strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"{name}: expected {expected or ' | '.join(choices)}, got {value!r}")
    return value


@contextlib.contextmanager
def switched(settings: dict):
    """The process environment with the switches `settings` ({name: value}) set, restored afterwards (the kernels
    read them at each launch)."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
