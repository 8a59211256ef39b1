"""A thread-safe image classifier / embedder around a `VisionTransformer`, the unit every serving path runs.

Ray Serve replicas, Ray Data actors and `vit-fast predict` all need the same steps: decode whatever the user
sent, resize it the checkpoint's way, batch, run the model, turn logits into top-k labels. `Predictor` does
exactly that and nothing else:

- `predict(images, top_k=5, return_embeddings=False)` takes a list of inputs (paths, bytes, PIL images, uint8
  arrays/tensors, see `vit_fast.preprocess.load_image`) and returns one dict per input, in order:
  {"labels": [str], "scores": [float], "indices": [int], "error": None} (+ "embedding": [float] on request).
  An input that cannot be decoded gets {"labels": [], "scores": [], "indices": [], "error": "<message>"}; the
  other inputs are still predicted. Scores are softmax probabilities; labels come from `config.labels`, or
  "class_<i>". The embedding is the pooled pre-logits vector `model.forward_head(features, pre_logits=True)`,
  or, for a model whose head is an embedding projection (`config.embedding_head`: CLIP's image_embeds), the
  head's output; such a model reports no labels. `normalize_embeddings=True` scales each to unit L2 norm (what
  CLIP retrieval compares by cosine similarity).
- Valid inputs are stacked into batches of at most `max_batch_size`. On CUDA a batch is zero-padded up to the
  next bucket (powers of two, capped at `max_batch_size`) so only a handful of shapes ever run; with
  `cuda_graphs=True` each (bucket, with/without embeddings) is captured once, lazily, as a `torch.cuda.CUDAGraph`
  and replayed afterwards, which removes the per-kernel launch overhead that dominates small batches. If a
  capture fails the predictor warns once and runs that bucket eagerly. On CPU batches run eagerly, unpadded.
- Thread safety: decoding and resizing run in the calling thread, in parallel with other callers; the model
  call (and a graph's static buffers) is guarded by one lock, and outputs are copied out before it is released.

- Warm-up: on CUDA the constructor runs every bucket once (`warmup=True`), so the Triton autotuning (persisted on
  disk by triton across processes), the JIT compiles and the graph captures happen at load time, never under the
  lock while requests wait. `warmup()` can be called again, e.g. after `set_backend`.

`prepare` and `predict_prepared` expose the two halves separately, so a server can reject undecodable requests
before they enter its batching queue.
"""
from __future__ import annotations

import functools
import numbers
import os
import threading
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .config import ViTConfig
from .cuda_graphs import CudaGraphRunner
from .dtype_names import kind_of
from .preprocess import ImageError, preprocess

__all__ = ["Predictor"]

# Per-item failures a bad input may raise while being decoded/resized; anything else is a bug and propagates.
_INPUT_ERRORS = (ValueError, TypeError, OSError)


def _default_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise RuntimeError(f"device {str(device)!r} requested, but CUDA is not available here ({why}); "
                           "use the CPU (--device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {str(device)!r} requested, but only {torch.cuda.device_count()} GPU(s) exist")
    return device


def _default_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):  # any spelling the command lines take (dtype_names)
        kind = kind_of(dtype)
        if kind not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be one of float32, float16, bfloat16 or fp8 (or their short names bf16, "
                             f"fp16, fp32), got {dtype!r}")
        return getattr(torch, kind)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
    return dtype


def _is_fp8(dtype) -> bool:
    return kind_of(dtype) == "fp8" if isinstance(dtype, str) else dtype is torch.float8_e4m3fn


def check_fp8_exclude(fp8_exclude, dtype) -> None:
    """fp8_exclude (the GEMMs an FP8 model keeps in the model dtype) only with dtype "fp8": checked by the Predictor,
    and up front by the Serve and Ray Data entry points, before any replica or actor is started."""
    if fp8_exclude and not _is_fp8(dtype):
        raise ValueError(f"fp8_exclude applies to dtype 'fp8' only, got dtype {dtype!r}")


def _check_fp8_device(device: torch.device, backend: str, why: str = "dtype 'fp8'") -> None:
    """An FP8 model runs the FP8 kernels with backend triton (sm_89 / sm_90, or the CPU interpreter), else the torch
    emulation: "auto" on an older GPU falls back to it with a warning (backends.resolve); "triton" there is refused
    here, before the model is moved or quantized. why: what made it FP8, as the message names it."""
    if backend == "triton":
        from .backends import fp8_unavailable_reason

        reason = fp8_unavailable_reason(device)
        if reason is not None:
            raise ValueError(f"{why} with backend 'triton': {reason}")


def _buckets(max_batch_size: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch_size]


def _items(images) -> list:
    """The inputs of one predict call: a list or tuple as it is, a 4-D array or tensor split along its first axis,
    another iterable (a generator) consumed; anything else (a path, bytes, an image, a file object) is one input."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image, np.ndarray, torch.Tensor)) \
            or hasattr(images, "read") or not hasattr(images, "__iter__"):
        return [images]
    return list(images)


def _claim(model: torch.nn.Module, settings: tuple) -> None:
    """A Predictor converts its model in place (device, dtype, FP8 weights): a second one with other settings on the
    same model would change the first one's results under it. Refused; equal settings may share the model."""
    held = getattr(model, "_predictor_settings", None)
    if held is not None and held != settings:
        def said(s):
            return f"on {s[0]} in {s[1]}" + (f" with {s[2]}" if s[2] else "")

        raise ValueError(f"this model already runs in a Predictor {said(held)}; another one {said(settings)} would "
                         "convert it under the first (a Predictor converts its model in place): give it "
                         "copy.deepcopy(model), or load the model again")
    model._predictor_settings = settings


class Predictor:
    """Runs a `VisionTransformer` on raw images; see the module docstring for the contract. The model is converted
    in place (moved to the device, cast, FP8 weights), so it belongs to the Predictor from then on."""

    def __init__(self, model: torch.nn.Module, device=None, dtype=None, max_batch_size: int = 32,
                 cuda_graphs: bool = True, warmup: bool = True, fp8_exclude=None):
        if not isinstance(model, torch.nn.Module) or not isinstance(getattr(model, "config", None), ViTConfig):
            hint = ""
            if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
                hint = " (a checkpoint path: Predictor.from_checkpoint(path))"
            elif hasattr(model, "vit_fast"):
                hint = " (from_hf(..., hf_outputs=True): pass its .vit_fast)"
            raise TypeError(f"model must be a vit_fast model (vit_fast.load, vit_fast.create), got "
                            f"{type(model).__name__}{hint}")
        if model.config.in_chans != 3:
            raise ValueError(f"the Predictor decodes images to RGB, and this model takes {model.config.in_chans} "
                             "channels (in_chans): call the model on tensors of its own channels instead")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}")
        self.device = _default_device(device)
        # dtype="fp8": FP8 weights for the encoder GEMMs (vit_fast.quantize); activations stay in the default dtype;
        # fp8_exclude: the GEMMs kept in that dtype (quantize's `exclude`: kinds or layer-name patterns)
        asked = _is_fp8(dtype)
        self.fp8 = asked or bool(getattr(model, "is_fp8", False))  # asked for, or an FP8 checkpoint
        check_fp8_exclude(fp8_exclude, dtype)
        if self.fp8:
            from .fp8 import check_exclude

            check_exclude(model, fp8_exclude)  # a pattern naming no layer, or another mix than an FP8 model's
            _check_fp8_device(self.device, getattr(model, "backend", "auto"),
                              "dtype 'fp8'" if asked else "an FP8 model")
        self.dtype = _default_dtype(None if asked else dtype, self.device)
        _claim(model, (str(self.device), str(self.dtype).removeprefix("torch."),
                       "fp8" + (f" (fp8_exclude {fp8_exclude!r})" if fp8_exclude else "") if self.fp8 else None))
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        if self.fp8:
            from .fp8 import quantize

            quantize(self.model, "fp8", exclude=fp8_exclude)
        self.config = model.config
        self.max_batch_size = max_batch_size
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.buckets = _buckets(max_batch_size)
        self.random_weights = False
        n = 0 if self.config.embedding_head else self.config.num_classes
        self.classifies = n > 0
        labels = self.config.labels
        self.labels = (list(labels) if labels else [f"class_{i}" for i in range(n)]) if n else []
        self._lock = threading.Lock()
        self._graph_runners = {
            flag: CudaGraphRunner(functools.partial(self._forward, return_embeddings=flag), capture_new=True,
                                  clone_outputs=False)  # outputs are copied to the CPU under the lock
            for flag in (False, True)
        }
        if warmup and self.device.type == "cuda":
            self.warmup()

    def warmup(self, buckets: Optional[Sequence[int]] = None) -> list[int]:
        """Run one zero batch per bucket (default: every bucket on CUDA, none on CPU, where nothing is tuned or
        captured) through the model, for logits and for embeddings; returns the batch sizes run."""
        if buckets is None:
            buckets = self.buckets if self.device.type == "cuda" else []
        h, w = self.config.eval_size  # what preprocess makes of every image
        for b in buckets:
            batch = torch.zeros((int(b), 3, h, w), dtype=torch.uint8)
            for flag in (False, True):
                self._run(batch, return_embeddings=flag)
        return list(buckets)

    @classmethod
    def from_checkpoint(cls, path=None, name: str = "vit_b_16", device=None, dtype=None, backend: str = "auto",
                        **kw) -> "Predictor":
        """Load `path` with `vit_fast.load` (any format it detects), or build `name` with random weights when
        `path` is None (then `predictor.random_weights` is True). `kw` go to `Predictor` (max_batch_size,
        cuda_graphs, fp8_exclude)."""
        import vit_fast

        model = vit_fast.create(name, backend=backend) if path is None else vit_fast.load(path, backend=backend)
        predictor = cls(model, device=device, dtype=dtype, **kw)
        predictor.random_weights = path is None
        return predictor

    # ---------------------------------------------------------------- the two halves of predict

    def prepare(self, image) -> torch.Tensor:
        """Decode and resize one input to a uint8 (3, H, W) CPU tensor; raises ImageError/ValueError/OSError."""
        return preprocess(image, self.config)

    def predict_prepared(self, tensors: Sequence[torch.Tensor], top_k: int = 5,
                         return_embeddings: bool = False, normalize_embeddings: bool = False) -> list[dict]:
        """Run already `prepare`d tensors through the model; one result dict per tensor, in order."""
        top_k = self._check_top_k(top_k)
        results = []
        for start in range(0, len(tensors), self.max_batch_size):
            chunk = torch.stack(list(tensors[start:start + self.max_batch_size]))
            logits, emb = self._run(chunk, return_embeddings)
            if emb is not None and normalize_embeddings:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            results.extend(self._format(logits, emb, top_k))
        return results

    def predict(self, images, top_k: int = 5, return_embeddings: bool = False,
                normalize_embeddings: bool = False) -> list[dict]:
        """Predict a list of inputs (any iterable of them; a batch array or tensor (B, H, W, 3) / (B, 3, H, W) is B
        images; a single input is a list of one); see the module doc."""
        items = _items(images)
        top_k = self._check_top_k(top_k)
        if normalize_embeddings and not return_embeddings:
            raise ValueError("normalize_embeddings applies to embeddings: pass return_embeddings=True")
        prepared, errors = [], {}
        for i, item in enumerate(items):
            try:
                prepared.append(self.prepare(item))
            except _INPUT_ERRORS as e:  # our ImageError's message says what it is; others get their class
                errors[i] = str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
        done = iter(self.predict_prepared(prepared, top_k, return_embeddings, normalize_embeddings)
                    if prepared else [])
        return [self._error_result(errors[i], return_embeddings) if i in errors else next(done)
                for i in range(len(items))]

    __call__ = predict

    # ---------------------------------------------------------------- internals

    def _check_top_k(self, top_k) -> int:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:  # numpy ints too
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        return int(top_k)

    @staticmethod
    def _error_result(message: str, return_embeddings: bool) -> dict:
        result = {"labels": [], "scores": [], "indices": [], "error": message}
        if return_embeddings:
            result["embedding"] = None
        return result

    def _forward(self, x: torch.Tensor, return_embeddings: bool):
        if not return_embeddings:
            return self.model(x), None
        if self.config.embedding_head:
            emb = self.model(x)
            return emb, emb
        tokens = self.model.forward_features(x)
        emb = self.model.forward_head(tokens, pre_logits=True)
        logits = self.model.forward_head(tokens) if self.config.num_classes else emb
        return logits, emb

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _run(self, batch: torch.Tensor, return_embeddings: bool):
        """(n, 3, H, W) uint8 CPU batch -> (fp32 logits, fp32 embeddings or None) on the CPU."""
        n = batch.shape[0]
        if self.device.type == "cuda":
            bucket = self._bucket(n)
            if bucket > n:
                batch = torch.cat([batch, batch.new_zeros((bucket - n, *batch.shape[1:]))])
        with self._lock, torch.inference_mode():
            if self.device.type == "cuda":  # pinning calls into CUDA: never from another thread mid-capture
                batch = batch.pin_memory()
            x = batch.to(self.device, non_blocking=True)
            if self.cuda_graphs:  # one graph per (bucket, with embeddings), captured on first use
                logits, emb = self._graph_runners[return_embeddings](x)
            else:
                logits, emb = self._forward(x, return_embeddings)
            logits = logits[:n].float().cpu()
            emb = emb[:n].float().cpu() if emb is not None else None
        return logits, emb

    def _format(self, logits: torch.Tensor, emb: Optional[torch.Tensor], top_k: int) -> list[dict]:
        results = []
        if self.classifies:
            scores, indices = logits.softmax(dim=-1).topk(min(top_k, logits.shape[-1]), dim=-1)
            scores, indices = scores.tolist(), indices.tolist()
        else:  # a headless model only produces embeddings
            scores = indices = [[] for _ in range(logits.shape[0])]
        for row in range(logits.shape[0]):
            result = {"labels": [self.labels[i] for i in indices[row]], "scores": scores[row],
                      "indices": indices[row], "error": None}
            if emb is not None:
                result["embedding"] = emb[row].tolist()
            results.append(result)
        return results

    @property
    def backend(self) -> str:
        """The backend that runs the model here: the model's, with "auto" made concrete (backends.resolve; auto's
        FP8 fallback warns where the model runs, not here)."""
        return self.model._resolve_backend(self.device, warn=False)

    def fp8_mix(self) -> Optional[dict]:
        """None without FP8 GEMMs; else {"fp8": n, "gemms": total, "kept": [layers kept in the activation dtype]}."""
        if not self.fp8:
            return None
        from .fp8 import fp8_layers, kept_layers

        fp8, kept = fp8_layers(self.model), kept_layers(self.model)
        return {"fp8": len(fp8), "gemms": len(fp8) + len(kept), "kept": kept}

    def __repr__(self) -> str:
        fp8 = " (fp8 GEMMs)" if self.fp8 else ""
        return (f"Predictor(device={self.device}, dtype={self.dtype}{fp8}, max_batch_size={self.max_batch_size}, "
                f"cuda_graphs={self.cuda_graphs}, random_weights={self.random_weights})")
