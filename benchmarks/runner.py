"""The benchmark grid: every (model, dtype, backend, batch) of a run measured into one results row.

Order of work: all backends but `compile` first, for every model, then the `compile` rows, whose max-autotune
compilation dominates a run's time. With a time budget (--time-budget) the first pass may use 60 % of it and the
compile pass the rest; rows not started in time are recorded as not run.
A failure in one row (out of memory, unsupported, missing package) becomes that row's "error"; the run goes on.
The fp32 reference logits are computed once per (model, batch), in chunks, with vit_fast's eager math backend.
"""
from __future__ import annotations

import copy
import gc
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import builders, flops, schema
from .timing import percentile, sync, time_calls

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
          "float8": builders.FP8}  # float8: FP8 GEMM weights (vit_fast.quantize), bfloat16 activations
REF_CHUNK = 32  # images per fp32 reference forward
INPUT_ROTATION_BYTES = 64 << 20  # aim for at least this much input data in rotation (2 to 8 buffers)
FIRST_PHASE_SHARE = 0.6  # with a time budget, the non-compile rows may use this share of it


@dataclass
class Settings:
    models: list
    batch_sizes: list
    dtypes: list
    backends: list
    device: torch.device
    resolution: int = 224
    repeats: int = 30
    warmup: int = 3
    cuda_graphs: bool = False
    graph_max_batch: int = 8
    compile_mode: str = "max-autotune"
    time_budget: Optional[float] = None  # seconds; rows not started by then are recorded as not run
    overrides: dict = field(default_factory=dict)  # ViTConfig overrides applied to every model (tests)
    seed: int = 0
    progress: bool = True


class Interrupted(Exception):
    pass


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory: " + str(exc).splitlines()[0][:300]
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:500]


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
        except Exception:  # noqa: BLE001 - a sticky CUDA error shows up in the next rows anyway
            pass
        torch.cuda.empty_cache()


def make_inputs(batch: int, resolution: int, dtype: torch.dtype, device: torch.device, seed: int,
                count: Optional[int] = None) -> list:
    """Random normalized images, regenerated identically from (seed, batch): buffer 0 is the reference input."""
    per_buffer = batch * 3 * resolution * resolution * torch.tensor([], dtype=dtype).element_size()
    if count is None:
        count = max(2, min(8, math.ceil(INPUT_ROTATION_BYTES / per_buffer)))
    gen = torch.Generator(device=device).manual_seed(seed * 7919 + batch)
    out = []
    for _ in range(count):
        x = torch.randn(batch, 3, resolution, resolution, device=device, generator=gen)
        out.append(x.to(dtype))
        del x
    return out


def reference_logits(master, batches: list, settings: Settings) -> dict:
    """batch -> fp32 logits (CPU) of the master on that batch's input buffer 0 (eager math attention, TF32 off),
    or the error text when the reference itself failed (one device copy of the fp32 weights for all batches)."""
    device = settings.device
    model = copy.deepcopy(master).to(device).eval()
    model.set_backend("torch")
    refs = {}
    for batch in batches:
        try:
            x = make_inputs(batch, settings.resolution, torch.float32, device, settings.seed, count=1)[0]
            with torch.inference_mode():
                refs[batch] = torch.cat([model(chunk).float().cpu() for chunk in x.split(REF_CHUNK)])
            del x
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001
            refs[batch] = f"the fp32 reference failed: {_error_text(e)}"
        _cleanup(device)
    del model
    _cleanup(device)
    return refs


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple:
    """(max over images of ||out-ref||/||ref||, fraction of images whose argmax agrees)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    if out.shape != ref.shape:
        raise ValueError(f"logits of shape {tuple(out.shape)}, reference {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        raise FloatingPointError("non-finite logits")
    per_image = (out - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp_min(1e-30)
    agree = (out.flatten(1).argmax(1) == ref.flatten(1).argmax(1)).double().mean()
    return per_image.max().item(), agree.item()


def measure(built: builders.Built, batch: int, dtype: torch.dtype, ref: torch.Tensor, model_flops: int,
            peak_tflops: float, use_graphs: bool, settings: Settings) -> dict:
    """Metrics of one row (raises on failure)."""
    device = settings.device
    cuda = device.type == "cuda"
    inputs = make_inputs(batch, settings.resolution, dtype, device, settings.seed)
    if cuda:
        _cleanup(device)

    def reset_peak():  # steady state: weights, inputs, activations, graph pools; not compile/autotune scratch
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)

    with torch.inference_mode():
        fn = built.fn
        if use_graphs:
            fn = builders.CudaGraphed(fn, inputs, warmup=max(1, settings.warmup))
        # at least one untimed call, so compilation and autotuning never land in the timed region
        times = time_calls(fn, inputs, max(1, settings.warmup), settings.repeats, device, built.before_call,
                           after_warmup=reset_peak)
        # judge exactly the path that was timed (graph replays, compiled code)
        built.before_call()
        out = fn(inputs[0]).float().clone()
        sync(device)
    peak_mem = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
    max_rel_err, top1 = compare(out, ref)
    p50, p90 = percentile(times, 50), percentile(times, 90)
    tflops = model_flops * batch / (p50 * 1e-3) / 1e12
    del fn, inputs, out
    return {
        "images_per_s": batch / (p50 * 1e-3),
        "latency_ms_p50": p50,
        "latency_ms_p90": p90,
        "tflops": tflops,
        # no MFU where the measured peak is no ceiling (the row beat it: the peak means nothing here)
        "mfu": tflops / peak_tflops if 0 < tflops <= peak_tflops else None,
        "peak_mem_gb": peak_mem,
        "max_rel_err": max_rel_err,
        "top1_agree": top1,
    }


def _sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


def run_grid(settings: Settings, peak_tflops, on_row: Optional[Callable] = None) -> list:
    """Measure the whole grid; returns the rows in canonical order. `on_row(rows_so_far)` after each row.
    `peak_tflops`: the MFU denominator, one number or a dict dtype name -> number (CPU: a peak per dtype)."""
    from tqdm import tqdm

    device = settings.device
    start = time.monotonic()
    rows: dict = {}
    refs: dict = {}
    interrupted: Optional[str] = None
    previous = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None

    def graphs_for(backend, batch):
        # compile (max-autotune) captures its own CUDA graphs; wrapping it again would nest captures
        return (settings.cuda_graphs and device.type == "cuda" and batch <= settings.graph_max_batch
                and backend != "compile")

    def record(model, batch, dtype, backend, metrics=None, error=None, graphs=False):
        row = schema.empty_row(model, batch, dtype, backend, graphs, error)
        if metrics:
            row.update(metrics)
        rows[(model, dtype, backend, batch)] = row
        if not settings.progress:  # a plain log line per row instead of the bars
            what = error if error else (f"{row['images_per_s']:,.1f} img/s, p50 {row['latency_ms_p50']:.3f} ms, "
                                        f"max_rel_err {row['max_rel_err']:.2e}")
            print(f"[{time.monotonic() - start:7.1f} s] {model} {dtype} batch {batch} {backend}"
                  f"{' (CUDA graphs)' if graphs else ''}: {what}", flush=True)
        if on_row:
            on_row(ordered())

    def ordered():
        key = lambda r: (settings.models.index(r["model"]), settings.dtypes.index(r["dtype"]),
                         settings.batch_sizes.index(r["batch"]), settings.backends.index(r["backend"]))
        return sorted(rows.values(), key=key)

    phases = [[b for b in settings.backends if b != "compile"], [b for b in settings.backends if b == "compile"]]
    phase_now = [0]

    def budget_left(expected: float = 0.0):
        """Whether a step expected to take `expected` seconds still fits in this phase's share of the budget."""
        if settings.time_budget is None:
            return True
        limit = settings.time_budget
        if phase_now[0] == 0 and phases[1]:
            limit *= FIRST_PHASE_SHARE  # keep time for the compile rows
        return time.monotonic() - start + expected < limit

    try:
        for phase, phase_backends in enumerate(phases):
            phase_now[0] = phase
            if not phase_backends:
                continue
            static = {b: builders.static_skip_reason(b, device) for b in phase_backends}
            for name in settings.models:
                total = len(settings.dtypes) * len(phase_backends) * len(settings.batch_sizes)
                bar = tqdm(total=total, desc=name + (" [compile]" if phase else ""), disable=not settings.progress,
                           leave=True, dynamic_ncols=True)
                try:
                    _run_model(name, phase_backends, static, settings, peak_tflops, refs, record, graphs_for,
                               budget_left, bar)
                finally:
                    bar.close()
    except (Interrupted, KeyboardInterrupt) as e:
        interrupted = f"not run: the benchmark was interrupted ({e or type(e).__name__})"
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for name in settings.models:  # anything not reached (interrupt) still gets its row
        for dtype in settings.dtypes:
            for backend in settings.backends:
                for batch in settings.batch_sizes:
                    if (name, dtype, backend, batch) not in rows:
                        rows[(name, dtype, backend, batch)] = schema.empty_row(
                            name, batch, dtype, backend, graphs_for(backend, batch),
                            interrupted or "not run")
    return ordered()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_model(name, phase_backends, static, settings, peak_tflops, refs, record, graphs_for, budget_left, bar):
    device = settings.device
    batches, dtypes = settings.batch_sizes, settings.dtypes

    def fail_all(backends_, dtypes_, error):
        for dtype in dtypes_:
            for backend in backends_:
                for batch in batches:
                    record(name, batch, dtype, backend, error=error, graphs=graphs_for(backend, batch))
                    bar.update(1)

    if not budget_left():
        fail_all(phase_backends, dtypes, _budget_msg(settings))
        return
    try:
        master = builders.build_master(name, settings.resolution, builders.model_seed(settings.seed, name),
                                       settings.overrides)
        model_flops = flops.vit_flops(master.config)
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001
        fail_all(phase_backends, dtypes, f"could not build the model: {_error_text(e)}")
        return
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for backend in phase_backends:
            if static[backend]:
                fail_all([backend], [dtype_name], static[backend])
                continue
            fp8_reason = builders.fp8_skip_reason(backend, device) if dtype == builders.FP8 else None
            if fp8_reason:
                fail_all([backend], [dtype_name], fp8_reason)
                continue
            if not budget_left():
                fail_all([backend], [dtype_name], _budget_msg(settings))
                continue
            bar.set_postfix_str(f"{dtype_name} {backend} (building)")
            try:
                built = builders.build(backend, master, dtype, device, settings.compile_mode, preset=name)
            except (Interrupted, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001
                _cleanup(device)
                fail_all([backend], [dtype_name], f"could not build: {_error_text(e)}")
                continue
            last_row_s = 0.0  # the previous batch's row of this backend predicts the next one (at least)
            for batch in batches:
                graphs = graphs_for(backend, batch)
                if not budget_left(last_row_s):
                    record(name, batch, dtype_name, backend, error=_budget_msg(settings), graphs=graphs)
                    bar.update(1)
                    continue
                bar.set_postfix_str(f"{dtype_name} {backend} batch {batch}")
                row_start = time.monotonic()
                try:
                    if name not in refs:
                        refs[name] = reference_logits(master, batches, settings)
                    ref = refs[name][batch]
                    if isinstance(ref, str):
                        raise RuntimeError(ref)
                    peak = peak_tflops[dtype_name] if isinstance(peak_tflops, dict) else peak_tflops
                    metrics = measure(built, batch, builders.input_dtype(dtype), ref, model_flops, peak, graphs,
                                      settings)
                    record(name, batch, dtype_name, backend, metrics=metrics, graphs=graphs)
                except (Interrupted, KeyboardInterrupt):
                    raise
                except Exception as e:  # noqa: BLE001
                    record(name, batch, dtype_name, backend, error=_error_text(e), graphs=graphs)
                finally:
                    _cleanup(device)
                last_row_s = time.monotonic() - row_start
                bar.update(1)
            del built
            if backend == "compile":
                torch.compiler.reset()  # drop compiled graphs (and their CUDA-graph pools) before the next model
            _cleanup(device)


def _budget_msg(settings: Settings) -> str:
    return f"not run: the {settings.time_budget:g} s time budget (--time-budget) was used up"
