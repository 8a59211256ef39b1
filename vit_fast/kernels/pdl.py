"""Programmatic dependent launch (PDL) for the kernels of the forward's chain that take it: the TMA GEMM engine
(gemm_tma.py) and attention. Off unless VITFAST_PDL=1: it has not run on a GPU yet (the benchmark's `b1pdl` step
measures it against the default).

Why: at batch 1 a B/16 forward is 64 short kernels in a row, and under a CUDA graph each still waits for the one
before it to finish and flush before its programs are even scheduled. With PDL (sm_90, CUDA 12.3+; Triton's
`launch_pdl`) a kernel is launched while its predecessor runs: its programs are placed, set up and then wait in
`griddepcontrol.wait` until the predecessor has completed and its memory is visible, so the launch gap and the
programs' start-up overlap the predecessor's tail.

The rule that keeps it correct: a kernel launched with PDL waits (`dependency_wait`, its first statement) before it
reads or writes any global memory, so nothing it touches can race with the kernel before it, and, since that one
waited for its own predecessor before completing, with any earlier one. It then lets its own dependents launch
(`griddepcontrol.launch_dependents`); they wait in turn. A kernel launched without PDL follows ordinary stream order.
The interpreter cannot run the instructions, so it never launches with PDL.
"""
import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ._common import PDL_ENV, is_interpreting, switch_value


def pdl_launch(device: torch.device) -> bool:
    """Whether a launch on `device` uses PDL: VITFAST_PDL=1 on an sm_90 or newer GPU, never under the interpreter
    (read at every launch, like the other switches)."""
    if switch_value(PDL_ENV) != "1" or is_interpreting() or device.type != "cuda":
        return False
    return _sm90_or_newer(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm90_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


@triton.jit
def dependency_wait(PDL: tl.constexpr):
    """A PDL kernel's first statement: wait for the previous kernel's completion and memory, then let the next
    kernel launch. Nothing without PDL."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
