"""Programmatic dependent launch (PDL) for the kernels of the forward's chain that take it: the 16-bit TMA GEMM
engine (gemm_tma.py; not the FP8 one) and attention (not when it stores FP8 codes). Off unless
VITFAST_PDL=1: it has not run on a GPU yet (the benchmark's `b1pdl` step measures it against the default).

Why: at batch 1 a B/16 forward is 64 short kernels in a row, and under a CUDA graph each one's programs are only
dispatched once the kernel before it has finished and flushed. With PDL (sm_90, CUDA 12.3+; Triton's `launch_pdl`) a
kernel is launched while its predecessor runs: its programs are dispatched to the SMs and wait in
`griddepcontrol.wait`, their first instruction, until the predecessor has completed and its memory is visible. The
launch gap and the dispatch overlap the predecessor's tail; the programs' own start-up does not (it follows the
wait).

The rule that keeps it correct: a kernel launched with PDL waits (`dependency_wait`, its first statement) before it
reads or writes any global memory (the static gate checks the compiled code: benchmarks/sass.pdl_wait_first), so
nothing it touches can race with the kernel before it, and, since that one waited for its own predecessor before
completing, with any earlier one. It then lets its dependents launch (`griddepcontrol.launch_dependents`): they are
dispatched once every one of its programs has passed that point or exited, and wait in turn. A kernel launched without
PDL follows ordinary stream order. The interpreter cannot run the instructions, so it never launches with PDL.
"""
import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ._common import PDL_ENV, is_interpreting, is_sm90, switch_value


def pdl_launch(device: torch.device) -> bool:
    """Whether a launch on `device` uses PDL: VITFAST_PDL=1 on an sm_90 GPU (the only target it was compiled and
    gated for), never under the interpreter (read at every launch, like the other switches)."""
    if switch_value(PDL_ENV) != "1" or is_interpreting() or device.type != "cuda":
        return False
    return is_sm90(device.index if device.index is not None else torch.cuda.current_device())


def launch_options(pdl: bool) -> dict:
    """The kernel arguments of a launch: PDL (the kernel's wait) and, only when set, Triton's launch_pdl (the launch
    attribute; other backends, e.g. AMD's, reject the option's name)."""
    return {"PDL": True, "launch_pdl": True} if pdl else {"PDL": False}


@triton.jit
def dependency_wait(PDL: tl.constexpr):
    """A PDL kernel's first statement: wait for the previous kernel's completion and memory, then let the next
    kernel launch. Nothing without PDL."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def aot_variants(exhaustive: bool = False):
    """None of its own: dependency_wait is a helper compiled into its callers' PDL=True variants (gemm_tma's
    tma_aot_variants, attention's aot_variants), which the report and the gate list per op."""
    return []
