"""A staggered start for the persistent GEMM rows that run two programs per SM (gemm_tma's and gemm_fp8_tma's PER_SM
rows), so that one program's epilogue runs while the other's wgmmas do.

Why: the third GPU lease timed the two-programs row within 6 % of the one-program 128x256 tile on every batch-256
key (`autotune.md`), where overlapping epilogues should have made it clearly faster. The likely reason: two
co-resident programs that start together stay in step. Both run their main loops at once, sharing the tensor cores
at half speed each, then both run their epilogues (folded LayerNorm, bias, GELU, store) at once while the tensor
cores idle: a pair of tiles takes 2W + E (W: one tile's main loop alone, E: its epilogue), what one program with a
tile twice as wide takes. An offset between the two neither grows nor shrinks (whichever is ahead runs its next main
loop alone while the other finishes its epilogue), so they keep the offset they start with. With the second program
starting about W late, the first runs its first main loop alone and its epilogue overlaps the second's main loop
from then on: a pair takes max(2W, W + E). benchmarks/NOTES.md ("Staggered co-resident programs") has the model
(`benchmarks/stagger_model.py`), the prediction and the other explanation it has to rule out.

How: the programs numbered NUM_SMS and up are the second ones on their SMs (a launch of NUM_SMS x 2 co-resident programs
is placed one per SM first, the way every persistent kernel with NUM_SMS programs relies on), and sleep on the global
timer for W, estimated from the tile and K at the rate the main loops sustain per SM (MACS_PER_NS). Only launches whose
programs have at least two tiles each wait (below that the wait cannot pay), never split launches, never under the
interpreter (it has no timer), and not with VITFAST_STAGGER=0. If the placement assumption fails on some SM, that SM's
pair starts in step or both late: the unstaggered timing plus at most one wait. The switch is not an autotune key (as
PDL's is not): with and without the wait a launch shares its tile, so the benchmark's `stagger` step, run after the
headline tuned, times the headline's picks both ways.
"""
import triton
import triton.language as tl
from triton.language.extra.cuda import globaltimer

from ._common import STAGGER_ENV, is_interpreting, switch_value

# Tensor-core multiply-adds per nanosecond of one SM that the engines' main loops sustain, H100/H200: about 710
# TFLOP/s over 132 SMs for 16-bit (the best bf16 rows ran 640-680 TFLOP/s with their epilogues, the measured matmul
# peak is 800) and twice that for FP8. The model (benchmarks/stagger_model.py) loses little from a wait 0.9-1.2 times
# the main loop and more below that.
MACS_PER_NS_16BIT = tl.constexpr(2700)
MACS_PER_NS_FP8 = tl.constexpr(5400)


def stagger_rule(args) -> bool:
    """The STAGGER heuristic of the persistent engines: two programs per SM, K not split, on a GPU, switch on. Read
    at every launch, like the other switches."""
    return (args["PER_SM"] > 1 and args.get("SPLIT_K", 1) == 1 and not is_interpreting()
            and switch_value(STAGGER_ENV) == "1")


@triton.jit
def _nap():
    """Sleep about 200 ns between polls of the timer: the waiting warps leave the issue slots to the other program."""
    tl.inline_asm_elementwise("nanosleep.u32 200; mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def staggered_start(K, num_tiles, NUM_SMS: tl.constexpr, PER_SM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, MACS_PER_NS: tl.constexpr, STAGGER: tl.constexpr):
    """The second program on each SM waits one tile's main loop (BLOCK_M x BLOCK_N x K multiply-adds at MACS_PER_NS)
    before its first tile, when every program has two tiles or more. Nothing without STAGGER."""
    if STAGGER:
        if (tl.program_id(0) >= NUM_SMS) & (num_tiles >= 2 * NUM_SMS * PER_SM):
            wait_ns = K.to(tl.int64) * (BLOCK_M * BLOCK_N) // MACS_PER_NS
            start = globaltimer()
            while globaltimer() - start < wait_ns:
                _nap()


def aot_variants(exhaustive: bool = False):
    """None of its own: staggered_start is a helper compiled into its callers' two-programs variants (gemm_tma's and
    gemm_fp8_tma's, STAGGER=1), which the report and the gate list per op."""
    return []
