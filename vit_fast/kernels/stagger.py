"""A staggered start for the persistent GEMM rows that run two programs per SM (gemm_tma's and gemm_fp8_tma's PER_SM
rows), so that one program's epilogue runs while the other's wgmmas do.

Why: two co-resident programs that start together stay in step. Both run their main loops at once, sharing the
tensor cores at half speed each, then both run their epilogues (folded LayerNorm, bias, GELU, store) at once while
the tensor cores idle: a pair of tiles takes 2W + E (W: one tile's main loop alone, E: its epilogue), what one
program with a tile twice as wide takes. An offset between them neither grows nor shrinks (whichever is ahead
runs its main loop alone while the other finishes its epilogue), so the offset they start with is the one they keep.
With the second program starting about W late, the first runs its first main loop alone and its epilogue overlaps the
second's main loop from then on: a pair takes max(2W, W + E). The third GPU lease timed the two-programs row
within 3 % of the 128x256 one-program tile on every key (`autotune.md`), as lockstep predicts; benchmarks/NOTES.md
("Staggered co-resident programs") has the model and the prediction.

How: the programs numbered NUM_SMS and up are the second ones on their SMs (a launch of NUM_SMS x 2 co-resident
programs is placed one per SM first, the way every persistent kernel with NUM_SMS programs relies on), and spin on
the global timer for W, estimated from the tile and K at a tensor-core rate per SM (MACS_PER_NS). Only launches whose
programs have at least two tiles each wait (at small batch the wait would be pure latency), never split launches,
and never under the interpreter (it has no timer). If the placement assumption fails on some SM, that SM's pair
starts in step or both late: today's timing plus at most one wait.
"""
import triton
import triton.language as tl
from triton.language.extra.cuda import globaltimer

from ._common import is_interpreting

# Tensor-core multiply-adds per nanosecond of one SM that a main loop sustains, H100/H200: 989 (16-bit) and 1979
# (FP8) dense TFLOP/s over 132 SMs at about 80 % (what the engines' best rows reached in the leases).
MACS_PER_NS_16BIT = tl.constexpr(3000)
MACS_PER_NS_FP8 = tl.constexpr(6000)


def stagger_rule(args) -> bool:
    """The STAGGER heuristic of the persistent engines: two programs per SM, K not split, on a GPU."""
    return args["PER_SM"] > 1 and args.get("SPLIT_K", 1) == 1 and not is_interpreting()


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
                pass


def aot_variants(exhaustive: bool = False):
    """None of its own: staggered_start is a helper compiled into its callers' two-programs variants (gemm_tma's and
    gemm_fp8_tma's, STAGGER=1), which the report and the gate list per op."""
    return []
