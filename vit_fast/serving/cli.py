"""The `vit-fast serve` and `vit-fast infer` sub-commands (the main `vit-fast` parser adds them from here).

Ray is imported only when one of the commands runs, so `vit-fast --help` and the other commands work without it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="model to load (vit_fast, timm or Hugging Face checkpoint); default: random weights")
    p.add_argument("--model", default="vit_b_16", help="preset built with random weights when no --checkpoint")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "sdpa", "torch"))
    p.add_argument("--device", default=None, choices=("cuda", "cpu"),
                   help="default: one GPU per replica/worker when the Ray cluster has GPUs, else the CPU")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16", "fp8"),
                   help="default: bfloat16 on GPU, float32 on CPU; fp8: FP8 GEMMs (needs sm_89/sm_90)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto or ray://head:10001); default: start Ray on this machine")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a Ray instance started on this machine")


def _positive(p: argparse.ArgumentParser, args, *names) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _start_ray(args) -> None:
    import ray

    if args.address:
        ray.init(address=args.address)
        return
    # a Ray started here ships this checkout to its workers even if vit_fast is not pip-installed
    root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})


def _check_checkpoint(args) -> str | None:
    if args.checkpoint is not None and not args.address and not Path(args.checkpoint).expanduser().exists():
        return f"checkpoint not found: {args.checkpoint}"
    if args.checkpoint is None:
        print(f"vit-fast: no --checkpoint given: using {args.model} with RANDOM weights "
              "(predictions are meaningless)", file=sys.stderr)
    return None


# ---------------------------------------------------------------- serve

def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve the model over HTTP with Ray Serve",
        description="Start an HTTP endpoint (Ray Serve, dynamic batching): GET /health, POST /predict with "
                    'raw image bytes, multipart uploads or JSON {"image": "<base64>"}.')
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="images per model call")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--num-replicas", type=int, default=1, help="model replicas (one GPU each when there are GPUs)")
    p.set_defaults(func=lambda args: _serve(p, args))
    return p


def _serve(parser, args) -> int:
    _positive(parser, args, "top_k", "max_batch_size", "num_replicas", "port")
    problem = _check_checkpoint(args)
    if problem:
        print(f"vit-fast serve: {problem}", file=sys.stderr)
        return 2
    _start_ray(args)
    import ray
    from ray import serve

    from .deployment import build_app

    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        app = build_app(checkpoint=args.checkpoint, name=args.model, backend=args.backend,
                        max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_ms / 1000,
                        top_k=args.top_k, num_replicas=args.num_replicas, device=args.device, dtype=args.dtype)
        serve.run(app, name="vit_fast", route_prefix="/")
        print(f"vit-fast: serving on http://{args.host}:{args.port}  (GET /health, POST /predict; Ctrl-C stops)",
              file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:  # e.g. the replicas failed to start: Serve says why
        print(f"vit-fast serve: {e}", file=sys.stderr)
        return 1
    finally:
        serve.shutdown()
        ray.shutdown()


# ---------------------------------------------------------------- infer

def add_infer_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "infer", help="batch-predict a folder or glob of images into a Parquet file with Ray Data",
        description="Offline batch inference with Ray Data: one row per image (path, labels, scores, indices, "
                    "optional embedding, error). Unreadable images are recorded in the error column.")
    p.add_argument("source", help="folder (searched recursively), glob such as 'imgs/**/*.jpg', or s3:// URI")
    p.add_argument("--out", default="predictions.parquet", help="Parquet file to write")
    _add_model_args(p)
    p.add_argument("--embeddings", action="store_true", help="also store the pooled pre-logits embedding")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call")
    p.add_argument("--workers", type=int, default=None,
                   help="model actors (default: one per GPU, or CPU actors leaving a CPU for reading)")
    p.add_argument("--cpus-per-worker", type=int, default=None, help="CPU threads per CPU actor (default: <= 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=lambda args: _infer(p, args))
    return p


def _infer(parser, args) -> int:
    _positive(parser, args, "top_k", "batch_size", "workers", "cpus_per_worker")
    problem = _check_checkpoint(args)
    if problem:
        print(f"vit-fast infer: {problem}", file=sys.stderr)
        return 2
    from .batch import list_images, run_batch_inference

    try:
        list_images(args.source)  # fail before starting Ray when there is nothing to read
    except FileNotFoundError as e:
        print(f"vit-fast infer: {e}", file=sys.stderr)
        return 2
    _start_ray(args)
    import ray

    try:
        summary = run_batch_inference(args.source, args.out, checkpoint=args.checkpoint, name=args.model,
                                      backend=args.backend, top_k=args.top_k, embeddings=args.embeddings,
                                      batch_size=args.batch_size, workers=args.workers,
                                      cpus_per_worker=args.cpus_per_worker, device=args.device, dtype=args.dtype,
                                      progress=not args.no_progress)
    finally:
        ray.shutdown()
    print(f"vit-fast infer: wrote {summary['rows']} rows to {summary['out']} "
          f"({summary['errors']} unreadable image(s) recorded in the 'error' column)", file=sys.stderr)
    return 0
