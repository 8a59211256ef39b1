"""Ray Serve deployment: an HTTP/JSON image-classification endpoint with dynamic request batching.

Each replica holds one `Predictor` (one GPU per replica when the cluster has GPUs, CPUs otherwise). Requests are
decoded in the replica's worker threads, so a bad image is refused before it enters the batching queue; valid
images from concurrent requests are then grouped by `@serve.batch` (up to `max_batch_size` images, waiting at
most `batch_wait_timeout_s` for a batch to fill) and run through the model together.

HTTP API (paths are relative to the application's route prefix, "/" by default):

- `GET /health` -> 200 {"status": "ok", "model": ..., "device": ..., "dtype": ..., "backend": (the one running:
  "auto" made concrete), "fp8": null or {"fp8", "gemms", "kept"} (FP8 GEMM layers, all GEMM layers, the names kept
  in the activation dtype), "random_weights": ..., "batching": {"batches", "images", "largest_batch"}} (this
  replica's counts so far), and the model's num_classes, img_size (its position table's), input_size (what
  images are preprocessed to), max_batch_size, torch threads
- `POST /predict` with one of
    * a JSON body {"image": "<base64>"} or {"images": ["<base64>", ...]} (a "data:image/...;base64," prefix is
      accepted), optional "top_k" (int), "embedding" (bool) and "normalize" (bool: unit-L2 embeddings, as CLIP
      retrieval compares them);
    * a raw image body (Content-Type image/* or application/octet-stream);
    * a multipart/form-data upload: every file part (or part with a Content-Type) is an image, the fields
      "top_k", "embedding" and "normalize" are options; any other field is refused.
  Base64 may be wrapped in lines or URL-safe; a JSON field other than those named is refused. The options may
  also be given as query parameters. `HEAD /health` answers 200 with no body. Answer: 200
  {"predictions": [{"labels": [...], "scores": [...], "indices": [...], "embedding": [...]?, "error": null}, ...]},
  one per image in request order. An image that cannot be decoded gets its own entry with empty lists and "error"
  set, and the others are still answered (as `vit-fast predict` and `infer` do); when no image of the request
  could be decoded the answer is 400 with {"error": ..., "predictions": [...]}. Bad requests get a 4xx JSON
  {"error": "<what was wrong>"}: 400 malformed body, 404 unknown path, 405 wrong method, 413 too many images or
  too large a body, 415 unsupported media type.

`build_app(...)` returns the bound application for `serve.run`; `app_builder` lets `serve run
vit_fast.serving.deployment:app_builder checkpoint=...` and Serve config files build it too.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Optional

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..predictor import Predictor, check_fp8_exclude

logger = logging.getLogger("ray.serve")

MAX_IMAGES_PER_REQUEST = 256
MAX_BODY_BYTES = 64 << 20
_OPTION_FIELDS = ("top_k", "embedding", "normalize")


class BadRequest(ValueError):
    """A client error: answered with `status` and a JSON {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _shown(value) -> str:
    """A client's value as an error message quotes it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}... ({len(text)} characters)"


def _parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise BadRequest(400, f"{name} must be a boolean (true/false), got {_shown(value)}")


def _unit(vector: list) -> list:
    """The vector scaled to unit L2 norm (zero stays zero)."""
    import torch

    return torch.nn.functional.normalize(torch.tensor(vector), dim=0).tolist()


def _parse_top_k(value) -> int:
    try:
        top_k = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        top_k = None
    if top_k is None or top_k < 1:
        raise BadRequest(400, f"top_k must be a positive integer, got {_shown(value)}")
    return top_k


_URL_SAFE = str.maketrans("-_", "+/")


def _b64decode(text, index: int) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(400, f"image {index}: expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())  # line breaks: GNU base64 and MIME wrap at 76 columns
    if "-" in text or "_" in text:  # the URL-safe alphabet
        text = text.translate(_URL_SAFE)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(400, f"image {index}: invalid base64 ({e})") from e


def _parse_json(body: bytes) -> tuple[list, dict]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(400, f"request body is not valid JSON: {e}") from e
    except RecursionError:
        raise BadRequest(400, "request body is not valid JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise BadRequest(400, 'expected a JSON object such as {"image": "<base64>"}')
    unknown = sorted(set(payload) - {"image", "images", *_OPTION_FIELDS})
    if unknown:  # a misspelt option ("topk") would silently fall back to its default
        raise BadRequest(400, f"unknown fields {_shown(unknown)} in the JSON object; expected \"image\" or "
                              f"\"images\" and the options {', '.join(_OPTION_FIELDS)}")
    if ("image" in payload) == ("images" in payload):
        raise BadRequest(400, 'the JSON object needs exactly one of "image" (base64 string) or "images" (list)')
    encoded = [payload["image"]] if "image" in payload else payload["images"]
    if not isinstance(encoded, list):
        raise BadRequest(400, f'"images" must be a list of base64 strings, got {type(encoded).__name__}')
    options = {k: payload[k] for k in _OPTION_FIELDS if k in payload}
    blobs = []
    for i, text in enumerate(encoded):
        try:
            blobs.append((i, _b64decode(text, i)))
        except BadRequest as e:  # one bad image among several: its own error, the others are still answered
            blobs.append((i, e))
    return blobs, options


def _parse_multipart(content_type: str, body: bytes) -> tuple[list, dict]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=policy.default).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest(400, "malformed multipart/form-data body")
    blobs, options = [], {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name in _OPTION_FIELDS:  # an option, sent as a field or as a file part
            options[name] = payload.decode("utf-8", "replace").strip()
        elif part.get_filename() is not None or part.get_content_type() != "text/plain":  # a file, or typed bytes
            blobs.append((len(blobs), payload))
        else:  # a plain form field would otherwise be taken for an image and shift the others' positions
            raise BadRequest(400, f"unknown form field {_shown(name)}: send images as file parts and only the "
                                  f"options {', '.join(_OPTION_FIELDS)} as fields")
    return blobs, options


@serve.deployment
class ViTDeployment:
    """One replica: a `Predictor` behind the HTTP API described in the module docstring."""

    def __init__(self, checkpoint: Optional[str] = None, name: str = "vit_b_16", backend: str = "auto",
                 max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005, top_k: int = 5,
                 device: Optional[str] = None, dtype: Optional[str] = None, cuda_graphs: bool = True,
                 num_threads: Optional[int] = None, fp8_exclude: Optional[str] = None):
        import torch

        if num_threads:  # as many torch threads as CPUs reserved for this replica
            torch.set_num_threads(int(num_threads))
        self.predictor = Predictor.from_checkpoint(checkpoint, name=name, device=device, dtype=dtype,
                                                   backend=backend, max_batch_size=max_batch_size,
                                                   cuda_graphs=cuda_graphs, fp8_exclude=fp8_exclude)
        self.model_name = checkpoint or name
        self.default_top_k = _parse_top_k(top_k)
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.stats = {"batches": 0, "images": 0, "largest_batch": 0}  # what @serve.batch has grouped so far

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list) -> list:
        """requests: (uint8 image tensor, top_k, embedding, normalize) per image, from any number of HTTP
        requests."""
        self.stats["batches"] += 1
        self.stats["images"] += len(requests)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(requests))
        top_k = max(r[1] for r in requests)
        embeddings = any(r[2] for r in requests)
        results = await asyncio.to_thread(self.predictor.predict_prepared, [r[0] for r in requests], top_k,
                                          embeddings)
        out = []
        for (_, k, want_embedding, normalize), result in zip(requests, results):
            item = {key: result[key][:k] for key in ("labels", "scores", "indices")}
            if want_embedding:
                item["embedding"] = _unit(result["embedding"]) if normalize else result["embedding"]
            out.append(item)
        return out

    def _prepare_all(self, blobs: list) -> list:
        """(tensor, None) or (None, "image i: what was wrong") per image, in order."""
        out = []
        for index, data in blobs:
            if isinstance(data, BadRequest):
                out.append((None, data.message))
                continue
            try:
                out.append((self.predictor.prepare(data), None))
            except (ValueError, TypeError, OSError) as e:
                out.append((None, f"image {index}: {e}"))
        return out

    async def _predict(self, request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body of {length} bytes exceeds the limit of {MAX_BODY_BYTES}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        if media == "application/json":  # parsed off the event loop: a large body must not stall /health
            blobs, options = await asyncio.to_thread(_parse_json, body)
        elif media == "multipart/form-data":
            blobs, options = await asyncio.to_thread(_parse_multipart, content_type, body)
        elif media.startswith("image/") or media in ("application/octet-stream", ""):
            blobs, options = [(0, body)], {}
        else:
            raise BadRequest(415, f"unsupported Content-Type {media!r}: send application/json (base64 images), "
                                  "multipart/form-data, or raw image bytes (image/* or application/octet-stream)")
        options = {**{k: v for k, v in request.query_params.items() if k in _OPTION_FIELDS}, **options}
        top_k = _parse_top_k(options.get("top_k", self.default_top_k))
        embedding = _parse_bool(options.get("embedding", False), "embedding")
        normalize = _parse_bool(options.get("normalize", False), "normalize")
        if normalize and not embedding:
            raise BadRequest(400, "normalize applies to embeddings: add embedding=true")
        if not blobs:
            raise BadRequest(400, "the request contains no image")
        if len(blobs) > MAX_IMAGES_PER_REQUEST:
            raise BadRequest(413, f"{len(blobs)} images in one request, the limit is {MAX_IMAGES_PER_REQUEST}")
        prepared = await asyncio.to_thread(self._prepare_all, blobs)
        done = iter(await asyncio.gather(*(self.predict_batch((t, top_k, embedding, normalize))
                                           for t, _ in prepared if t is not None)))
        predictions = []
        for tensor, error in prepared:  # per-image errors, as `predict` and `infer` give them
            if tensor is not None:
                predictions.append({**next(done), "error": None})
            else:
                failed = {"labels": [], "scores": [], "indices": [], "error": error}
                predictions.append({**failed, "embedding": None} if embedding else failed)
        if all(error is not None for _, error in prepared):  # nothing to answer: a client error
            return JSONResponse({"error": prepared[0][1], "predictions": predictions}, status_code=400)
        return JSONResponse({"predictions": predictions})

    async def _health(self, request: Request) -> JSONResponse:
        import torch

        p = self.predictor
        return JSONResponse({"status": "ok", "model": str(self.model_name), "device": str(p.device),
                             "dtype": str(p.dtype).replace("torch.", ""), "backend": p.backend,
                             "fp8": p.fp8_mix(), "random_weights": p.random_weights,
                             "num_classes": p.config.num_classes, "img_size": list(p.config.img_size),
                             "input_size": list(p.config.eval_size),
                             "max_batch_size": p.max_batch_size, "threads": torch.get_num_threads(),
                             "batching": dict(self.stats)})

    async def __call__(self, request: Request) -> JSONResponse:
        root = request.scope.get("root_path", "")
        path = request.url.path
        path = (path[len(root):] if root and path.startswith(root) else path).rstrip("/") or "/"
        routes = {"/health": ("GET", self._health), "/predict": ("POST", self._predict)}
        try:
            if path not in routes:
                raise BadRequest(404, f"no route {path!r}: use GET /health or POST /predict")
            method, handler = routes[path]
            if path == "/health" and request.method == "HEAD":  # load balancers' checks: the status alone
                return Response(status_code=200)
            if request.method != method:
                raise BadRequest(405, f"{path} accepts {method}, got {request.method}")
            return await handler(request)
        except BadRequest as e:
            return JSONResponse({"error": e.message}, status_code=e.status)
        except Exception as e:  # a bug or a model failure: answer JSON too, keep the traceback in the replica log
            logger.exception("request to %s failed", path)
            return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)


def replica_resources(num_replicas: int, num_gpus: Optional[float], num_cpus: Optional[float],
                      device: Optional[str]) -> tuple:
    """(GPUs, CPUs) of each replica, as build_app's docstring says they are chosen."""
    import ray

    if num_gpus is None:
        wants_gpu = device is None or str(device).startswith("cuda")
        num_gpus = 1 if wants_gpu and ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    if num_cpus is None:
        node_cpus = 1
        if ray.is_initialized():
            node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
        num_cpus = 1 if num_gpus else max(1, int(node_cpus) // num_replicas)
    return num_gpus, num_cpus


def build_app(checkpoint: Optional[str] = None, name: str = "vit_b_16", backend: str = "auto",
              max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005, top_k: int = 5,
              num_replicas: int = 1, num_gpus: Optional[float] = None, num_cpus: Optional[float] = None,
              device: Optional[str] = None, dtype: Optional[str] = None, cuda_graphs: bool = True,
              num_threads: Optional[int] = None, fp8_exclude: Optional[str] = None, pin: bool = True):
    """The bound Serve application. num_gpus None: one GPU per replica if the Ray cluster has any (and `device`
    is not "cpu"), else 0; `device`/`dtype` None: the replica's GPU in bfloat16, or the CPU in float32.
    num_cpus None: 1 with a GPU, else the largest node's CPUs divided among the replicas (all of them for one).
    num_threads None: torch threads = the replica's CPUs (when at least 1). pin: a Hub repository or timm model
    `checkpoint` is pinned to the commit it names now (`org/name@<commit>`), so replicas started later (autoscaling,
    a restart) load the same weights as the first; False hands every replica the name as given."""
    import ray

    check_fp8_exclude(fp8_exclude, dtype)  # here, not in every replica
    if pin:
        from ..loading.hub import pin_for_replicas

        checkpoint, note = pin_for_replicas(checkpoint)
        if note:
            logger.warning("vit-fast: %s", note)
    from ..loading.hub import name_of

    if isinstance(checkpoint, str) and name_of(checkpoint) is None and not Path(checkpoint).expanduser().exists():
        # Serve's own failure names no cause; the path may still exist on a cluster's nodes
        logger.warning("vit-fast: no checkpoint at %s on this machine: the replicas fail to start unless it exists "
                       "where they run", checkpoint)
    num_gpus, num_cpus = replica_resources(num_replicas, num_gpus, num_cpus, device)
    if num_threads is None and num_cpus >= 1:
        num_threads = int(num_cpus)
    actor_options = {"num_gpus": num_gpus, "num_cpus": num_cpus}
    deployment = ViTDeployment.options(
        num_replicas=num_replicas,
        ray_actor_options=actor_options,
        # enough requests in flight per replica for @serve.batch to fill whole batches
        max_ongoing_requests=max(2 * max_batch_size, 8),
    )
    return deployment.bind(checkpoint=checkpoint, name=name, backend=backend, max_batch_size=max_batch_size,
                           batch_wait_timeout_s=batch_wait_timeout_s, top_k=top_k, device=device, dtype=dtype,
                           cuda_graphs=cuda_graphs, num_threads=num_threads, fp8_exclude=fp8_exclude)


def app_builder(args: dict):
    """Entry point for `serve run vit_fast.serving.deployment:app_builder key=value ...` and Serve config files."""
    conversions = {"max_batch_size": int, "top_k": int, "num_replicas": int, "batch_wait_timeout_s": float,
                   "num_gpus": float, "num_cpus": float, "num_threads": int,
                   "cuda_graphs": lambda v: _parse_bool(v, "cuda_graphs"), "pin": lambda v: _parse_bool(v, "pin")}
    return build_app(**{k: conversions[k](v) if k in conversions and isinstance(v, str) else v
                        for k, v in args.items()})
