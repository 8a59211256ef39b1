"""CUDA-graph capture and replay of a whole forward pass, one graph per input signature.

A ViT forward at small batch is dozens of short kernel launches; replaying a captured graph removes the launch
gaps. `CudaGraphRunner(fn)` replays the graph captured for an input's (shape, dtype, device) and runs anything else
eagerly; `capture_new=True` captures new signatures on first sight. `VisionTransformer.capture_cuda_graphs` is the
user-facing entry point.
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable, Iterable

import torch


def _clone(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    return type(out)(_clone(o) if o is not None else None for o in out)


class CudaGraphRunner:
    def __init__(self, fn: Callable, capture_new: bool = False, clone_outputs: bool = True, warmup: int = 2):
        self.fn = fn
        self.capture_new = capture_new
        self.clone_outputs = clone_outputs  # False: results alias the graph's static output buffers
        self.warmup = warmup
        self._graphs: dict = {}  # signature -> (graph, static input, static outputs), or None after a failure
        self._lock = threading.Lock()

    @staticmethod
    def signature(x: torch.Tensor) -> tuple:
        return tuple(x.shape), x.dtype, x.device, x.stride()

    @property
    def captured(self) -> list:
        """Shapes with a graph ready to replay."""
        return [key[0] for key, graph in self._graphs.items() if graph is not None]

    def capture(self, example: torch.Tensor) -> None:
        """Capture `fn` for inputs shaped like `example` (a CUDA tensor). Raises if capture fails."""
        if example.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA input; got one on {example.device}")
        with self._lock:
            self._graphs[self.signature(example)] = self._capture(example)

    def _capture(self, example: torch.Tensor):
        static_in = example.clone()
        # warm up on a side stream: Triton autotuning and lazy initialisation must not happen inside the capture
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(example.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.fn(static_in)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor):
        key = self.signature(x)
        with self._lock:
            if key not in self._graphs and self.capture_new and x.device.type == "cuda":
                try:
                    self._graphs[key] = self._capture(x)
                except Exception as e:  # an op that cannot be captured, OOM, ...: this shape runs eagerly
                    self._graphs[key] = None
                    warnings.warn(f"CUDA graph capture failed for input {key[0]}, running eagerly: {e}",
                                  RuntimeWarning, stacklevel=2)
            entry = self._graphs.get(key)
            if entry is None:
                return self.fn(x)
            graph, static_in, static_out = entry
            static_in.copy_(x)
            graph.replay()
            return _clone(static_out) if self.clone_outputs else static_out


def capture_model(model, batch_sizes: Iterable[int], image_size=None, dtype=None, channels_last: bool = False):
    """A `CudaGraphRunner` over `model` with graphs captured for each batch size; see
    `VisionTransformer.capture_cuda_graphs`."""
    param = next(model.parameters())
    if param.device.type != "cuda":
        raise ValueError(f"capture_cuda_graphs needs the model on a CUDA device; it is on {param.device}")
    h, w = image_size or model.config.eval_size  # what preprocess makes of an image
    dtype = dtype or param.dtype
    runner = CudaGraphRunner(model)
    for b in batch_sizes:
        shape = (b, h, w, model.config.in_chans) if channels_last else (b, model.config.in_chans, h, w)
        example = (torch.randint(0, 256, shape, dtype=torch.uint8, device=param.device) if dtype == torch.uint8
                   else torch.randn(shape, dtype=dtype, device=param.device))
        runner.capture(example)
    return runner
