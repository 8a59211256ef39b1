"""The models a run compares: one fp32 master per preset with seeded weights, and from it one callable per backend
(eager, sdpa, compile, vit_fast, timm, hf) in the row's dtype, plus the CUDA-graph wrapper for small batches.

Weights: vit_fast's own initialization (seeded), then biases, LayerNorm affine parameters and the class token made
non-trivial, so a kernel that drops a bias or a LayerNorm weight shows up in max_rel_err instead of hiding behind
zeros and ones.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from vit_fast.kernels._common import FP8_DTYPE as FP8  # the one definition of the FP8 dtype

from . import convert

# backend name in the harness -> vit_fast backend it runs with
VIT_FAST_BACKEND = {"eager": "torch", "sdpa": "sdpa", "compile": "sdpa", "vit_fast": "triton"}


def model_seed(run_seed: int, name: str) -> int:
    return (run_seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def build_master(name: str, resolution: int, seed: int, overrides: Optional[dict] = None) -> nn.Module:
    """The fp32 CPU model every backend of `name` copies its weights from (same seed -> same weights)."""
    import vit_fast

    torch.manual_seed(seed)  # vit_fast's own init draws from the global generator
    model = vit_fast.create(name, backend="torch", img_size=resolution, **(overrides or {}))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1 and "norm" in pname and pname.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:  # biases, LayerNorm shifts
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            elif pname == "cls_token":
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


def triton_skip_reason(device: torch.device) -> Optional[str]:
    """Why the vit_fast (triton) backend cannot be timed on `device`, or None."""
    from vit_fast import backends

    reason = backends.triton_unavailable_reason(device)
    return f"triton backend unavailable: {reason}" if reason else None


def static_skip_reason(backend: str, device: torch.device) -> Optional[str]:
    """Reasons known before building anything (missing packages, no GPU); None when worth trying."""
    if backend == "vit_fast":
        return triton_skip_reason(device)
    if backend == "timm":
        try:
            import timm  # noqa: F401
        except Exception as e:  # noqa: BLE001 - timm needs torchvision, which may be absent
            return f"timm is not importable ({type(e).__name__}: {e})"
    if backend == "hf":
        try:
            from transformers import ViTForImageClassification  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"transformers is not importable ({type(e).__name__}: {e})"
    return None


def input_dtype(dtype: torch.dtype) -> torch.dtype:
    """Images and activations of a row: bfloat16 for the float8 rows (only the GEMM weights/operands are FP8)."""
    return torch.bfloat16 if dtype == FP8 else dtype


def fp8_skip_reason(backend: str, device: torch.device) -> Optional[str]:
    """Why a float8 row cannot run: only vit_fast has FP8 kernels (the other backends of a quantized model would
    time the torch emulation, a numerics reference), and only on sm_89 / sm_90."""
    if backend != "vit_fast":
        return (f"float8 runs on vit_fast only: {backend} has no FP8 kernels (compare with its bfloat16 row; "
                "vit_fast.fp8's torch emulation is a numerics reference, not a speed path)")
    from vit_fast.kernels._common import fp8_unsupported_reason

    reason = fp8_unsupported_reason(device)
    return f"float8 unavailable: {reason}" if reason else None


def _allow_recompiles(n: int) -> None:
    """Let dynamo keep a compiled graph per batch size (its default limit is 8 per function)."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(dynamo_config, name) and getattr(dynamo_config, name) < n:
            setattr(dynamo_config, name, n)


@dataclass
class Built:
    fn: Callable  # images -> logits
    module: nn.Module
    graph_trees: bool = False  # torch.compile captured CUDA graphs itself (mode max-autotune / reduce-overhead)

    def before_call(self):
        if self.graph_trees:
            torch.compiler.cudagraph_mark_step_begin()


def build(backend: str, master: nn.Module, dtype: torch.dtype, device: torch.device, compile_mode: str,
          preset: Optional[str] = None) -> Built:
    """The callable for one (backend, dtype) from the master's weights; raises with a readable reason. `preset`
    (the master's preset name) picks the Hugging Face class of the hf backend: its family's (clip_l_14 ->
    CLIPVisionModelWithProjection), ViTForImageClassification for the classic presets."""
    if backend in VIT_FAST_BACKEND:
        module = copy.deepcopy(master).to(device=device, dtype=input_dtype(dtype)).eval()
        if dtype == FP8:
            module.to_fp8()
        module.set_backend(VIT_FAST_BACKEND[backend])
        if backend == "compile":
            graph_trees = device.type == "cuda" and compile_mode in ("max-autotune", "reduce-overhead")
            _allow_recompiles(64)
            # dynamic=False: one graph specialized (and autotuned) per batch size, as a deployment would compile
            return Built(torch.compile(module, mode=compile_mode, dynamic=False), module, graph_trees)
        return Built(module, module)
    if backend == "timm":
        module = convert.to_timm(master, device).to(device=device, dtype=dtype).eval()
        return Built(module, module)
    if backend == "hf":
        from vit_fast.loading.hf_export import family_of_preset

        family = family_of_preset(preset) if preset else None
        module = convert.to_hf(master, device, family).to(device=device, dtype=dtype).eval()
        return Built(module, module)
    raise ValueError(f"unknown backend {backend!r}")


class CudaGraphed:
    """Replays one captured CUDA graph per input buffer (inputs must be the very tensors given here).

    Each buffer gets its own graph so the timed loop rotates inputs without a copy into a static tensor.
    Returns the graph's static output tensor, overwritten by the next replay of the same graph.
    """

    def __init__(self, fn: Callable, inputs: list, warmup: int = 3):
        self.graphs, self.outputs = {}, {}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs recommends
            for _ in range(warmup):
                for x in inputs:
                    fn(x)
        torch.cuda.current_stream().wait_stream(stream)
        for x in inputs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn(x)
            self.graphs[x.data_ptr()] = graph
            self.outputs[x.data_ptr()] = out
        torch.cuda.synchronize()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = x.data_ptr()
        if key not in self.graphs:
            raise ValueError("CudaGraphed was called with a tensor it did not capture a graph for")
        self.graphs[key].replay()
        return self.outputs[key]
