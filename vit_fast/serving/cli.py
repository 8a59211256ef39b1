"""The `vit-fast serve` and `vit-fast infer` sub-commands (the main `vit-fast` parser adds them from here).

Ray is imported only when one of the commands runs, so `vit-fast --help` and the other commands work without it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Optional

from .. import dtype_names


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="model to load (vit_fast, timm or Hugging Face checkpoint, local or a Hugging Face Hub "
                        "repository org/name[@revision]); default: random weights")
    p.add_argument("--model", default="vit_b_16", help="preset built with random weights when no --checkpoint")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "sdpa", "torch"))
    p.add_argument("--device", default=None, choices=("cuda", "cpu"),
                   help="default: one GPU per replica/worker when the Ray cluster has GPUs, else the CPU")
    p.add_argument("--dtype", default=None, type=dtype_names.argument("float32", "float16", "bfloat16", "fp8"),
                   metavar="{float32,float16,bfloat16,fp8}",
                   help="default: bfloat16 on GPU, float32 on CPU; fp8: FP8 GEMMs (needs sm_89/sm_90); short names "
                        "(fp32, fp16, bf16) too")
    from vit_fast.cli import add_fp8_exclude_arg

    add_fp8_exclude_arg(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto or ray://head:10001); default: start Ray on this machine")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a Ray instance started on this machine")


class Refused(Exception):
    """Something checked before Ray starts is wrong: reported as one line, exit code 2."""


def _require(*modules: str) -> None:
    """Refuse before any model work when the serve extra is missing: `ray` and its serve or data part, pyarrow (a
    bare `ray` folder, such as Ray's session folder /tmp/ray seen from the working directory, is not the package;
    finding `ray.serve` imports `ray`, not Ray Serve)."""
    import importlib.util

    def found(name):
        try:
            return getattr(importlib.util.find_spec(name), "origin", None) is not None
        except ImportError:  # the parent of a dotted name is missing
            return False

    missing = []
    for m in modules:
        if m.split(".")[0] not in missing and not found(m):  # ray missing: not ray.serve as well
            missing.append(m)
    if missing:
        names = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
        raise Refused(f"needs {names}, which {'is' if len(missing) == 1 else 'are'} not installed here: "
                      "pip install 'vit-fast[serve]'")


def _positive(args, *names) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise Refused(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _start_ray(args) -> None:
    import logging

    import ray

    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)  # Ray's logs stay in its session folder
    if args.address:
        ray.init(address=args.address, **quiet)
        return
    # a Ray started here ships this checkout to its workers even if vit_fast is not pip-installed
    root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **quiet)


def _check_model(args) -> None:
    """Everything about the model that can be checked on this machine, before Ray: the device exists, the
    checkpoint (or preset) loads, the backend can run, --fp8-exclude names its layers. With --address the paths may
    only exist on the cluster. Warnings are printed once nothing was refused (a refusal stays one line).
    `args.checkpoint` then names what the replicas load: on this machine exactly what was checked, an absolute path
    or a Hub name pinned to the commit just downloaded (`org/name@<commit>`); with --address a Hub name pinned to the
    commit it points to now (only its configs downloaded), a path as given."""
    notes = []
    _refuse_model(args, notes)
    for note in notes:  # the replicas' own warning stays in Ray's logs
        print(f"vit-fast: warning: {note}", file=sys.stderr)


def _refuse_model(args, notes: list) -> None:
    import torch

    import vit_fast
    from vit_fast.backends import fp8_cli_check, triton_unavailable_reason

    local = not args.address
    if local and args.device == "cuda" and not torch.cuda.is_available():
        raise Refused("--device cuda, but CUDA is not available on this machine; use --device cpu")
    if local and args.backend == "triton" and args.device != "cuda":
        reason = triton_unavailable_reason(None if args.device is None else torch.device(args.device))
        if reason:
            raise Refused(f"--backend triton cannot run: {reason}")
    def check_fp8(why):  # FP8 kernels on a GPU older than sm_89: the replicas would fail one by one inside Ray
        refusal, note = fp8_cli_check(args.backend, args.device, "fp8", why=why)
        if refusal:
            raise Refused(refusal)
        if note:
            notes.append(note)

    from vit_fast.cli import fp8_exclude_misuse

    misuse = fp8_exclude_misuse(args.fp8_exclude, args.dtype)
    if misuse:
        raise Refused(misuse)
    if local and args.dtype == "fp8":
        check_fp8("--dtype fp8")
    if args.checkpoint is None:
        try:
            config = vit_fast.get_config(args.model)  # an unknown preset name lists the known ones
            if args.fp8_exclude:
                from vit_fast.fp8 import excluded_names, layer_names

                excluded_names(layer_names(config.depth), args.fp8_exclude)
        except ValueError as e:
            raise Refused(str(e)) from None
        print(f"vit-fast: no --checkpoint given: using {args.model} with RANDOM weights "
              "(predictions are meaningless)", file=sys.stderr)
        return
    from vit_fast.loading import hub

    try:
        named = hub.name_of(args.checkpoint)  # a Hub repository or a timm model name
    except ValueError as e:
        raise Refused(f"--checkpoint {args.checkpoint}: {e}") from None
    if named is None and not Path(args.checkpoint).expanduser().exists():
        if local:
            raise Refused(f"checkpoint not found: {args.checkpoint}{hub.missing_hint(args.checkpoint)}")
        return  # a path on the cluster's nodes
    if named is not None and not local:  # each node downloads it, at the commit the name points to now
        args.checkpoint, note = hub.pin_for_replicas(args.checkpoint)
        if note:
            notes.append(note)
        return
    try:  # a named checkpoint is downloaded here, before Ray starts
        if named is None:
            where = Path(args.checkpoint).expanduser().resolve()
            model = vit_fast.load(where, backend="torch")
        else:
            source, _, where = hub.fetch(args.checkpoint, named)  # the replicas load this commit
            model = vit_fast.load(source, backend="torch")
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        from vit_fast.cli import one_line

        raise Refused(f"cannot load --checkpoint {args.checkpoint}: {one_line(e)}") from None
    if args.fp8_exclude:
        from vit_fast.cli import UsageError, check_fp8_exclude_names

        try:
            check_fp8_exclude_names(model, f"--checkpoint {args.checkpoint}", args.fp8_exclude)
        except UsageError as e:
            raise Refused(str(e)) from None
    if local and model.is_fp8 and args.dtype != "fp8":  # an FP8 checkpoint: the same checks as --dtype fp8
        check_fp8(f"--checkpoint {args.checkpoint} (an FP8 model)")
    if local:  # messages above name it as it was given; a cluster's nodes read paths as they were given
        args.checkpoint = str(where)


def _check_port(host: str, port: int) -> None:
    """The port is a port, and nothing listens on it yet (as the HTTP proxy binds it: SO_REUSEADDR, so a port
    in TIME_WAIT after a previous server still counts as free)."""
    import socket

    if not 1 <= port <= 65535:
        raise Refused(f"--port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Refused(f"--host {host!r} does not resolve: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except PermissionError:
            raise Refused(f"cannot listen on {host}:{port}: permission denied (ports below 1024 need root)") from None
        except OSError as e:
            raise Refused(f"cannot listen on {host}:{port}: {e.strerror} (another server is using it? pick "
                          "another --port)") from None


def _with_deployment_messages(error: BaseException) -> str:
    """Serve's exception says only "Failed to update the deployments [...]"; the replica's traceback is in the
    status of each deployment: both, as one text."""
    text = str(error)
    try:
        from ray import serve

        for app in serve.status().applications.values():
            for deployment in app.deployments.values():
                text += "\n" + (deployment.message or "")
    except Exception:  # noqa: BLE001 - the status is a best effort; the exception's own text remains
        pass
    return text


def _on_sigterm() -> None:
    """SIGTERM (docker stop, kill, systemd) ends the command as Ctrl-C does, so Ray is shut down, not orphaned."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@contextlib.contextmanager
def _sigterm_restored():
    """The SIGTERM handler from before the command comes back when it returns (a process that calls `main`, such as
    a test run or a supervisor, keeps its own); `_on_sigterm` installs the command's within."""
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)


def replica_failure_line(message: str, what: str = "the model replicas failed to start") -> str:
    """One line naming the cause of a failed Serve deployment, out of Ray's multi-line report (the last
    `SomeError: text` line of the replica's traceback)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(message))  # ANSI colours
    causes = re.findall(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b:?.*)$", text, flags=re.MULTILINE)
    causes = [c.strip() for c in causes if not c.strip().startswith(("RayTaskError", "RayActorError"))]
    cause = causes[-1] if causes else " ".join(text.split())[:300]
    return f"{what}: {cause}"


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
    p.add_argument("--cpus-per-replica", type=int, default=None,
                   help="CPUs (and torch threads) per replica; default: on CPU replicas, the node's cores divided "
                        "among the replicas (all of them for one); with GPUs, 1")
    p.set_defaults(func=lambda args: _serve(p, args))
    return p


def _serve(parser, args) -> int:
    try:
        _require("ray", "ray.serve")
        _positive(args, "top_k", "max_batch_size", "num_replicas", "cpus_per_replica", "num_cpus")
        if not args.batch_wait_ms >= 0:  # Ray Serve takes a negative wait as given
            raise Refused(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms:g}")
        _check_port(args.host, args.port)
        _check_model(args)
    except Refused as e:
        print(f"vit-fast serve: {e}", file=sys.stderr)
        return 2
    with _sigterm_restored():
        return _serve_on_ray(args)


def _replicas_do_not_fit(args) -> Optional[str]:
    """Why the local Ray cannot place the replicas (each on one node), or None."""
    import ray

    from .deployment import replica_resources

    if not ray.is_initialized():
        return None
    gpus, cpus = replica_resources(args.num_replicas, None, args.cpus_per_replica, args.device)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = sum(int(min(n.get("CPU", 0) // cpus if cpus else args.num_replicas,
                       n.get("GPU", 0) // gpus if gpus else args.num_replicas)) for n in nodes)
    if fits >= args.num_replicas:
        return None
    each = f"{cpus:g} CPU{'s' if cpus != 1 else ''}" + (f" and {gpus:g} GPU" if gpus else "")
    have = ", ".join(f"{n.get('CPU', 0):g} CPUs" + (f" and {n.get('GPU', 0):g} GPUs" if gpus else "")
                     for n in nodes)
    return (f"the model replicas cannot start: {args.num_replicas} replica(s) of {each} each do not fit in this "
            f"machine's Ray ({have}); lower --num-replicas or --cpus-per-replica, or raise --num-cpus")


def _serve_on_ray(args) -> int:
    _on_sigterm()
    try:
        _start_ray(args)
    except KeyboardInterrupt:
        return 0
    _on_sigterm()  # again: Ray installs its own fatal-signal handler, which would abort and orphan its processes
    import logging

    import ray
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no INFO lines from Serve's driver side

    from .deployment import build_app

    stage = "Ray Serve's HTTP proxy failed to start"
    if not args.address:  # Ray started here: replicas it can never place would wait forever, silently
        too_small = _replicas_do_not_fit(args)
        if too_small:
            print(f"vit-fast serve: {too_small}", file=sys.stderr)
            ray.shutdown()
            return 1
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        stage = "the model replicas failed to start"
        app = build_app(checkpoint=args.checkpoint, name=args.model, backend=args.backend,
                        max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_ms / 1000,
                        top_k=args.top_k, num_replicas=args.num_replicas, device=args.device, dtype=args.dtype,
                        fp8_exclude=args.fp8_exclude or None, num_cpus=args.cpus_per_replica,
                        pin=False)  # _check_model pinned it
        serve.run(app, name="vit_fast", route_prefix="/")
        print(f"vit-fast: serving on http://{args.host}:{args.port}  (GET /health, POST /predict; Ctrl-C stops)",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, ray.exceptions.RayError) as e:  # the cause is in the deployments' status messages
        print(f"vit-fast serve: {replica_failure_line(_with_deployment_messages(e), stage)}", file=sys.stderr)
        return 1
    finally:
        try:
            serve.shutdown()
        finally:
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
    p.add_argument("--embeddings", action="store_true",
                   help="also store the embedding (pooled features; CLIP with projection: image_embeds)")
    p.add_argument("--normalize", action="store_true", help="with --embeddings: unit-L2 embeddings")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call")
    p.add_argument("--workers", type=int, default=None,
                   help="model actors (default: one per GPU, or CPU actors leaving a CPU for reading)")
    p.add_argument("--cpus-per-worker", type=int, default=None, help="CPU threads per CPU actor (default: <= 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--wait-timeout", type=float, default=60.0,
                   help="seconds to wait for free CPUs/GPUs when other Ray jobs hold them (default 60)")
    p.set_defaults(func=lambda args: _infer(p, args))
    return p


def _infer(parser, args) -> int:
    try:
        _require("ray", "ray.data", "pyarrow")
        from .batch import check_output_path, list_images

        _positive(args, "top_k", "batch_size", "workers", "cpus_per_worker", "num_cpus")
        if not args.wait_timeout > 0:
            raise Refused(f"--wait-timeout must be > 0 seconds, got {args.wait_timeout:g}")
        if args.normalize and not args.embeddings:
            raise Refused("--normalize applies to embeddings: add --embeddings")
        try:
            list_images(args.source)  # fail before starting Ray when there is nothing to read
            check_output_path(args.out)
        except (FileNotFoundError, ValueError) as e:
            raise Refused(str(e)) from None
        _check_model(args)
    except Refused as e:
        print(f"vit-fast infer: {e}", file=sys.stderr)
        return 2
    with _sigterm_restored():
        return _infer_on_ray(args)


def _infer_on_ray(args) -> int:
    _on_sigterm()
    import ray

    from .batch import run_batch_inference

    try:
        _start_ray(args)
        _on_sigterm()  # again: Ray installs its own fatal-signal handler
        summary = run_batch_inference(args.source, args.out, checkpoint=args.checkpoint, name=args.model,
                                      backend=args.backend, top_k=args.top_k, embeddings=args.embeddings,
                                      batch_size=args.batch_size, workers=args.workers,
                                      cpus_per_worker=args.cpus_per_worker, device=args.device, dtype=args.dtype,
                                      fp8_exclude=args.fp8_exclude or None,
                                      progress=not args.no_progress, wait_timeout_s=args.wait_timeout,
                                      normalize_embeddings=args.normalize, pin=False)  # _check_model pinned it
    except KeyboardInterrupt:
        print("vit-fast infer: interrupted", file=sys.stderr)
        return 130
    except (TimeoutError, ValueError) as e:
        print(f"vit-fast infer: {e}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    print(f"vit-fast infer: wrote {summary['rows']} rows to {summary['out']} "
          f"({summary['errors']} unreadable image(s) recorded in the 'error' column)", file=sys.stderr)
    if summary["rows"] and summary["errors"] == summary["rows"]:  # a job that predicted nothing did not succeed
        print("vit-fast infer: error: no image could be read", file=sys.stderr)
        return 1
    return 0
