"""Timing primitives shared by the harness: per-call latencies and the matmul peak that MFU is measured against.

On CUDA each call is bracketed by CUDA events, so the numbers are device time; the host only reads them after a
synchronize. On CPU the host clock is read around each call. Warm-up calls (compilation, autotuning, allocator
growth) are always made first and never recorded. Inputs rotate over several buffers so repeated calls do not
keep reading the same cache-resident tensor.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (q in [0, 100]) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_calls(fn: Callable, inputs: Sequence, warmup: int, repeats: int, device, before_call=None,
               after_warmup=None) -> list[float]:
    """Call `fn(inputs[i % len(inputs)])` `warmup` times untimed, then `repeats` times timed; return ms per call.

    `before_call`, when given, runs before every call outside the timed region (used to mark a new CUDA-graph
    step for torch.compile's graph trees); `after_warmup` runs once between warm-up and timing (after a sync).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    k = len(inputs)
    for i in range(warmup):
        if before_call:
            before_call()
        fn(inputs[i % k])
    sync(device)
    if after_warmup:
        after_warmup()
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            if before_call:
                before_call()
            starts[i].record()
            fn(inputs[i % k])
            ends[i].record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    times = []
    for i in range(repeats):
        if before_call:
            before_call()
        t0 = time.perf_counter()
        fn(inputs[i % k])
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def matmul_peak_tflops(device, dtype: torch.dtype | None = None, size: int | None = None,
                       warmup: int | None = None, repeats: int | None = None) -> tuple[float, str]:
    """Measure a dense matmul rate on `device`; returns (TFLOP/s, description).

    CUDA: bf16 8192³ products timed with events (median of 20), the ceiling MFU refers to.
    CPU: see `cpu_matmul_peak_tflops` (the given dtype, default fp32).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if not cuda:
        return cpu_matmul_peak_tflops(dtype or torch.float32)
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    size = size or (8192 if cuda else 2048)
    warmup = warmup if warmup is not None else (5 if cuda else 1)
    repeats = repeats or (20 if cuda else 5)
    gen = torch.Generator(device=device).manual_seed(1234)
    # two operand pairs, alternated; random, never zeros (a zero matmul can run faster than real data)
    pairs = [(torch.randn(size, size, device=device, dtype=dtype, generator=gen),
              torch.randn(size, size, device=device, dtype=dtype, generator=gen)) for _ in range(2)]
    out = torch.empty(size, size, device=device, dtype=dtype)
    times = time_calls(lambda ab: torch.matmul(ab[0], ab[1], out=out), pairs, warmup, repeats, device)
    ms = percentile(times, 50)
    tflops = 2 * size ** 3 / (ms * 1e-3) / 1e12
    name = str(dtype).replace("torch.", "")
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    return tflops, f"{name} {size}x{size}x{size} torch.matmul on {where}, median of {repeats}"


def cpu_matmul_peak_tflops(dtype: torch.dtype, sizes=(256, 512, 1024, 2048), budget_s: float = 0.3,
                           repeats: int = 3) -> tuple[float, str]:
    """The CPU's matmul rate in `dtype` with all of torch's threads: square products of each size, repeated for
    `budget_s` (at least `repeats` calls), and the fastest call of any size counts. A peak is a best case: on a
    shared machine a long product is preempted and under-reads the peak by up to 10x, so many short calls are
    timed, not a few long ones. A size whose one call exceeds the budget ends the search (fp16 runs a thousand
    times slower than fp32 on most CPUs)."""
    gen = torch.Generator().manual_seed(1234)
    best, best_size = 0.0, sizes[0]
    for size in sizes:
        a = torch.randn(size, size, generator=gen).to(dtype)
        b = torch.randn(size, size, generator=gen).to(dtype)
        out = torch.empty(size, size, dtype=dtype)
        torch.matmul(a, b, out=out)  # warm: thread pool, packing buffers
        calls, start = 0, time.perf_counter()
        while calls < repeats or time.perf_counter() - start < budget_s:
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            rate = 2 * size**3 / (time.perf_counter() - t0) / 1e12
            if rate > best:
                best, best_size = rate, size
            calls += 1
        if (time.perf_counter() - start) / calls > budget_s:
            break
    name = str(dtype).replace("torch.", "")
    return best, (f"{name} torch.matmul on the CPU, {torch.get_num_threads()} threads, fastest call over sizes "
                  f"{sizes[0]}-{size} (best at {best_size})")
