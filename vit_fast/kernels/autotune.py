"""How every kernel here is autotuned: `autotuned(configs, key, prune)`, triton.autotune with the project's prune
scope, disk cache and timer.

Why a module of its own: Triton's autotuner times each config with `do_bench` (an L2 flush, then one launch between
two CUDA events). When a launch's CPU path (autotuner, heuristics with host descriptors, Triton's launcher) outlasts
the flush on the GPU, the events time the launch, not the kernel: the third lease timed all five attention tiles of
B/16 batch 1 at 33-35 µs, where the second had timed them at 9.5-11 µs, a floor that made batch 1's picks noise.
`autotune_bench` times such keys from a CUDA graph instead, as the model's graphs replay them. And triton 3.6
(unlike 3.9) times even a lone kept config, which failed under its interpreter and wastes the GPU test step's time.

VITFAST_AUTOTUNE (read at each first launch of a kernel key): "all" times the whole pruned table; "first" keeps the
first config the prune allows and times nothing (runs that check numerics: the GPU test step); "compile" launches
every kept config once, which compiles it, times nothing, keeps the first, and writes no choice to the disk cache
(benchmarks/prewarm.py fills Triton's cache with the binaries ahead of the benchmark).
"""
import functools
import threading
import warnings

import triton

from ._common import AUTOTUNE_ENV, is_interpreting, switch_value

# A key whose first config runs under this median in `do_bench` is timed from a CUDA graph, all its configs alike
GRAPH_TIMED_BELOW_MS = 0.1
# Every autotuner autotuned() made, in import order
AUTOTUNED = []
_key = threading.local()  # the timer the key being tuned uses: None until its first config is timed


def autotune_setting() -> str:
    """VITFAST_AUTOTUNE: "all", "first" or "compile"."""
    return switch_value(AUTOTUNE_ENV)


def autotune_scope(prune, holder=None):
    """An early_config_prune around `prune` (Triton calls it once per new key, just before timing the key's configs):
    with VITFAST_AUTOTUNE=first it keeps only the first config `prune` keeps (one compile per key); it starts the
    key's timer choice afresh; and for the autotuner in `holder["tuner"]` it turns the disk cache off under
    "compile" (Triton reads the flag after the prune), so untimed choices never reach the cache others read."""
    @functools.wraps(prune)
    def scoped(configs, named_args, **kwargs):
        setting = autotune_setting()
        tuner = (holder or {}).get("tuner")
        if tuner is not None:
            tuner.cache_results = holder["cache_results"] and setting != "compile"
        _key.timer = None
        kept = prune(configs, named_args, **kwargs)
        return kept[:1] if setting == "first" else kept

    return scoped


def _graph_time(kernel_call, quantiles, events):
    """Triton's CUDA-graph benchmarker; a launch that cannot be captured keeps the events' time (with a warning), and
    so do the key's later configs."""
    import triton.testing

    try:
        return triton.testing.do_bench_cudagraph(kernel_call, quantiles=quantiles)
    except RuntimeError as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        warnings.warn(f"autotune: CUDA-graph timing failed ({why}); kept the events' time")
        _key.timer = "events"
        return events()


def autotune_bench(kernel_call, quantiles):
    """The autotuners' timer (the module docstring): per key, `do_bench` for the first config, and if that ran under
    GRAPH_TIMED_BELOW_MS, the CUDA-graph time of it and of every later config of the key; else `do_bench` for all.
    Under the interpreter and with VITFAST_AUTOTUNE=first it times nothing; with "compile" it launches once. Equal
    times there: the autotuner keeps the first config."""
    setting = autotune_setting()
    if is_interpreting() or setting == "first":
        return [0.0] * len(quantiles)
    if setting == "compile":
        kernel_call()
        return [0.0] * len(quantiles)
    from triton.runtime import driver

    def events():
        return driver.active.get_benchmarker()(kernel_call, quantiles=quantiles)

    timer = getattr(_key, "timer", None)
    if timer == "graph":
        return _graph_time(kernel_call, quantiles, events)
    times = events()
    if timer is None:
        _key.timer = "graph" if times[0] < GRAPH_TIMED_BELOW_MS else "events"
        if _key.timer == "graph":
            return _graph_time(kernel_call, quantiles, lambda: times)
    return times


def autotuned(configs, key, prune):
    """triton.autotune as every kernel here is tuned: `prune` scoped by autotune_scope, the choices cached on disk
    (Triton's cache dir, so a restarted server does not re-tune), timed by autotune_bench; registered in AUTOTUNED."""
    holder = {}
    tune = triton.autotune(configs=configs, key=key,
                           prune_configs_by={"early_config_prune": autotune_scope(prune, holder)},
                           cache_results=True, do_bench=autotune_bench)

    def register(fn):
        tuner = tune(fn)
        holder.update(tuner=tuner, cache_results=tuner.cache_results)  # False under the interpreter
        AUTOTUNED.append(tuner)
        return tuner

    return register
