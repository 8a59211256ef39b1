"""Offline batch inference with Ray Data: a folder (or glob, or remote URI) of images -> one Parquet file.

Files are read as raw bytes by `ray.data.read_binary_files`, so decoding happens inside the inference actors
where a corrupt file becomes a recorded error row instead of a failed read task. The model runs in a fixed pool
of stateful `map_batches` actors, each holding one `Predictor`: one actor per GPU when the cluster has GPUs,
otherwise CPU actors sized to leave a CPU for the read tasks. Results stream back to the driver, which writes a
single Parquet file (to a temporary name, renamed at the end) with one row per image:

    path: string, labels: list<string>, scores: list<float>, indices: list<int32>,
    embedding: list<float> (only with embeddings=True; null for failed images), error: string (null if fine)

The same code runs on the local machine or, after `ray.init(address=...)`, on a cluster (the input paths and
the checkpoint must then be readable from every node, e.g. a shared file system or object storage).
"""
from __future__ import annotations

import glob
import os
import stat
import sys
import time
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from ..predictor import Predictor, check_fp8_exclude

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm", "pbm")


def output_schema(embeddings: bool) -> pa.Schema:
    fields = [
        pa.field("path", pa.string()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("indices", pa.list_(pa.int32())),
    ]
    if embeddings:
        fields.append(pa.field("embedding", pa.list_(pa.float32())))
    return pa.schema(fields + [pa.field("error", pa.string())])


def list_images(source):
    """Absolute paths of the images under a folder (recursively, by extension), matching a glob, the one file, or
    the files of a list; a URI ("s3://...", "gs://...") is returned as it is for Ray to list. Paths stay as found
    (a symlink keeps its own name), so the rows join back to the inputs."""
    if isinstance(source, (list, tuple)):
        bad = [f for f in source if not isinstance(f, (str, os.PathLike))]
        if bad or not source:
            raise ValueError(f"expected a folder, a glob, a file or a non-empty list of file paths; the list holds "
                             f"{type(bad[0]).__name__ if bad else 'nothing'}")
        return sorted({os.path.abspath(os.path.expanduser(f)) for f in source})
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"expected a folder, a glob, a file or a list of file paths, got {type(source).__name__}")
    source = str(source)
    if "://" in source:
        return source
    path = Path(source).expanduser()
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p)]
    if not files:
        raise FileNotFoundError(f"no image files found at {source!r} (a folder is searched recursively for "
                                f"{', '.join(IMAGE_EXTENSIONS)} files; a glob like 'imgs/**/*.jpg' is also accepted)")
    return sorted(os.path.abspath(p) for p in files)


def unreadable(files: list) -> dict:
    """{path: why} for the listed files that cannot be opened (permissions, special files): Ray's reader would fail
    the whole job on them, so they become error rows instead."""
    out = {}
    for f in files:
        try:
            if not stat.S_ISREG(os.stat(f).st_mode):  # a FIFO given in a list would block the open below
                out[f] = "OSError: not a regular file"
                continue
            with open(f, "rb") as handle:
                handle.read(1)
        except FileNotFoundError:
            continue  # gone: Ray skips it (ignore_missing_paths) and it is recorded as lost
        except OSError as e:
            out[f] = f"{type(e).__name__}: {e.strerror or e}"
    return out


class PredictorActor:
    """A Ray Data map_batches UDF: (path, bytes) rows in, prediction rows out (see the module docstring)."""

    def __init__(self, checkpoint, name, backend, top_k, embeddings, max_batch_size, device=None, dtype=None,
                 num_threads=None, normalize_embeddings=False, fp8_exclude=None):
        if num_threads:
            import torch

            torch.set_num_threads(int(num_threads))
        self.predictor = Predictor.from_checkpoint(checkpoint, name=name, backend=backend, device=device,
                                                   dtype=dtype, max_batch_size=max_batch_size,
                                                   fp8_exclude=fp8_exclude)
        self.top_k = top_k
        self.embeddings = embeddings
        self.normalize_embeddings = normalize_embeddings
        self.schema = output_schema(embeddings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch.column("path").to_pylist()
        results = self.predictor.predict(batch.column("bytes").to_pylist(), self.top_k, self.embeddings,
                                         normalize_embeddings=self.normalize_embeddings)
        return results_table(paths, results, self.schema)


def results_table(paths: list, results: list, schema: pa.Schema) -> pa.Table:
    columns = {"path": paths}
    for key in ("labels", "scores", "indices"):
        columns[key] = [r[key] for r in results]
    if "embedding" in schema.names:
        columns["embedding"] = [r.get("embedding") for r in results]
    columns["error"] = [r["error"] for r in results]
    return pa.Table.from_pydict(columns, schema=schema)


def check_output_path(out) -> str:
    """The absolute path of the Parquet file to write, checked before any work starts (vit_fast.paths)."""
    from ..paths import check_output_file

    suffix = Path(str(out)).suffix.lower()
    if suffix not in ("", ".parquet", ".pq"):  # "x.csv" would silently hold Parquet
        raise ValueError(f"--out {out}: the results are written as Parquet, the only format; expected a .parquet "
                         "file name")
    return check_output_file(out, "--out", "predictions.parquet")


def _pool_resources(workers: Optional[int], cpus_per_worker: Optional[float], use_gpus: bool,
                    wait_timeout_s: float, say=print) -> dict:
    """Actor pool size and per-actor resources, sized from what the cluster has *available* now (another job, a
    Serve app say, may hold part of it). While not even one actor fits, says what it waits for and polls; after
    `wait_timeout_s` raises TimeoutError naming what was needed and what was free."""
    deadline = time.monotonic() + wait_timeout_s
    announced = False
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        if use_gpus and total.get("GPU", 0) >= 1:
            need = {"GPU": 1, "CPU": cpus_per_worker or 1}
            fits = int(min(free.get("GPU", 0), free.get("CPU", 0) // need["CPU"]))
            pool = {"size": min(workers or fits, fits) if fits else 0, "num_gpus": 1, "num_cpus": need["CPU"]}
            what = f"1 GPU and {need['CPU']:g} CPU per worker"
        else:
            spare = int(free.get("CPU", 0)) - 1  # one CPU stays free for the read tasks, or the pipeline starves
            per_worker = cpus_per_worker or max(1, min(4, spare))
            fits = max(0, spare // per_worker)
            pool = {"size": min(workers or fits, fits), "num_gpus": 0, "num_cpus": per_worker}
            need = {"CPU": per_worker + 1}
            what = f"{per_worker + 1:g} CPUs ({per_worker:g} for a worker, 1 for reading files)"
        if pool["size"] >= 1:
            if workers and pool["size"] < workers:
                say(f"vit-fast infer: {workers} workers asked for, {pool['size']} fit in the free resources")
            return pool
        have = ", ".join(f"{free.get(k, 0):g} of {total.get(k, 0):g} {k}s" for k in need)
        if total.get("CPU", 0) < need["CPU"] or total.get("GPU", 0) < need.get("GPU", 0):
            raise ValueError(f"the Ray cluster is too small for one worker: it needs {what}, the cluster has {have}; "
                             "lower --cpus-per-worker or give Ray more CPUs (--num-cpus)")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {wait_timeout_s:g} s for {what}, but only {have} are free: other Ray jobs "
                               "(a Serve app?) hold the rest; stop them, lower --cpus-per-worker, or raise "
                               "--wait-timeout")
        if not announced:
            say(f"vit-fast infer: waiting up to {wait_timeout_s:g} s for {what}; free now: {have} (other Ray jobs "
                "hold the rest)")
            announced = True
        time.sleep(0.5)


def run_batch_inference(source, out: str, checkpoint: Optional[str] = None, name: str = "vit_b_16",
                        backend: str = "auto", top_k: int = 5, embeddings: bool = False, batch_size: int = 32,
                        workers: Optional[int] = None, cpus_per_worker: Optional[float] = None,
                        device: Optional[str] = None, dtype: Optional[str] = None, progress: bool = True,
                        normalize_embeddings: bool = False, wait_timeout_s: float = 60.0,
                        fp8_exclude: Optional[str] = None, pin: bool = True) -> dict:
    """Predict every image of `source` (a folder, a glob, a file, a list of files or a URI) into the Parquet file
    `out`; returns {"rows", "errors", "out"}.

    Connects to the Ray instance already initialised (or starts a local one). `device` None: the actor's GPU
    when the cluster has GPUs, else the CPU; "cpu" keeps the actors off GPUs. Undecodable images, files that cannot
    be opened, and listed files that disappeared before being read, get a row with an `error` message instead of
    failing the job.
    pin: a Hub repository or timm model `checkpoint` is pinned to the commit it names now, so every actor loads
    the same weights (False: each actor resolves the name as given).
    """
    from ray.data import DataContext

    for arg, value in (("top_k", top_k), ("batch_size", batch_size), ("workers", workers)):
        if value is None and arg == "workers":  # sized from the cluster
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if cpus_per_worker is not None and not cpus_per_worker > 0:
        raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker!r}")
    if normalize_embeddings and not embeddings:
        raise ValueError("normalize_embeddings applies to embeddings: pass embeddings=True")
    check_fp8_exclude(fp8_exclude, dtype)
    files = list_images(source)
    out = check_output_path(out)  # before any work: a bad --out must not cost a whole job
    refused = {} if isinstance(files, str) else unreadable(files)
    if refused:
        files = [f for f in files if f not in refused]
        if not files:  # nothing for the workers: the rows say why, without Ray
            schema = output_schema(embeddings)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            pq.write_table(_error_rows(sorted(refused), [refused[f] for f in sorted(refused)], schema), out)
            return {"rows": len(refused), "errors": len(refused), "out": out}
    if pin:
        from ..loading.hub import pin_for_replicas

        checkpoint, note = pin_for_replicas(checkpoint)
        if note:
            print(f"vit-fast: warning: {note}", file=sys.stderr, flush=True)
    if not ray.is_initialized():
        from ..loading.hub import name_of

        # a Ray started here runs on this machine: a checkpoint path that is not here never loads (on a cluster
        # joined before the call, a path may exist on its nodes only)
        if checkpoint is not None and name_of(checkpoint) is None and not Path(checkpoint).expanduser().exists():
            raise FileNotFoundError(f"no checkpoint at {checkpoint}")
        ray.init()
    context = DataContext.get_current()
    context.enable_progress_bars = False  # one bar, below, counting images
    pool = _pool_resources(workers, cpus_per_worker, use_gpus=device is None or str(device).startswith("cuda"),
                           wait_timeout_s=wait_timeout_s, say=lambda m: print(m, file=sys.stderr, flush=True))
    # if another job takes the resources between that check and the actors' start, fail instead of hanging
    # (the allowance covers the actors loading the model)
    context.wait_for_min_actors_s = int(wait_timeout_s) + 300
    read_args = {"include_paths": True}
    if isinstance(files, str):
        read_args["file_extensions"] = list(IMAGE_EXTENSIONS)
    else:
        read_args["ignore_missing_paths"] = True  # recorded below as errors instead
    ds = ray.data.read_binary_files(files, **read_args)
    ds = ds.map_batches(
        PredictorActor,
        fn_constructor_kwargs=dict(checkpoint=checkpoint, name=name, backend=backend, top_k=top_k,
                                   embeddings=embeddings, max_batch_size=batch_size, device=device, dtype=dtype,
                                   num_threads=None if pool["num_gpus"] else pool["num_cpus"],
                                   normalize_embeddings=normalize_embeddings, fp8_exclude=fp8_exclude),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool["size"]),
        num_gpus=pool["num_gpus"],
        num_cpus=pool["num_cpus"],
    )
    schema = output_schema(embeddings)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".partial"
    total = None if isinstance(files, str) else len(files)  # the refused files' rows come after these
    try:
        rows, errors = _write(ds, files, schema, tmp, total, progress, refused)
        os.replace(tmp, out)
    except ray.exceptions.GetTimeoutError as e:
        raise TimeoutError(f"the inference workers did not start within {context.wait_for_min_actors_s} s: "
                           "the cluster lacks the resources they need (other jobs took them?)") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"rows": rows, "errors": errors, "out": out}


def _error_rows(paths: list, reasons: list, schema: pa.Schema) -> pa.Table:
    failed = [{"labels": [], "scores": [], "indices": [], "embedding": None, "error": why} for why in reasons]
    return results_table(paths, failed, schema)


def _write(ds, files, schema, tmp, total, progress, refused: dict) -> tuple:
    from tqdm import tqdm

    rows = errors = 0
    seen = set()
    with pq.ParquetWriter(tmp, schema) as writer, \
            tqdm(total=total, unit="img", desc="vit-fast infer", disable=not progress) as bar:
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            table = table.select(schema.names).cast(schema)
            writer.write_table(table)
            rows += table.num_rows
            errors += table.num_rows - table.column("error").null_count
            if total is not None:
                seen.update(table.column("path").to_pylist())
            bar.update(table.num_rows)
            bar.set_postfix(errors=errors)
        missing = [] if total is None else [f for f in files if f not in seen]
        failed = {**{f: "FileNotFoundError: the file could not be read" for f in missing}, **refused}
        if failed:
            writer.write_table(_error_rows(sorted(failed), [failed[f] for f in sorted(failed)], schema))
            rows += len(failed)
            errors += len(failed)
    return rows, errors
