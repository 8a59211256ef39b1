"""`vit-fast serve` and `vit-fast infer` refuse bad input before Ray starts (one line, exit code 2, in well under
Ray's start-up time), and `serve` started for real stops cleanly on SIGTERM, Ray's processes included."""
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import vit_fast
from tests.helpers import randomize_
from vit_fast.cli import main

pytest.importorskip("ray", reason="needs the serve extra: pip install vit-fast[serve]")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray fails the test: everything below must be refused before that."""
    from vit_fast.serving import cli as serving_cli

    def start(args):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(serving_cli, "_start_ray", start)


@pytest.fixture
def checkpoints(tmp_path):
    good = vit_fast.save(randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=3)),
                         tmp_path / "good")
    bad = vit_fast.save(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=3), tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    return good, bad


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _refused(argv, capsys, command):
    capsys.readouterr()
    start = time.monotonic()
    code = main([str(a) for a in argv])
    took = time.monotonic() - start
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert took < 10, took  # Ray alone takes longer than this to start
    errors = [line for line in lines if not line.startswith("vit-fast: no --checkpoint")]
    assert len(errors) == 1 and errors[0].startswith(f"vit-fast {command}: "), lines
    import ray

    assert not ray.is_initialized()
    return errors[0]


@pytest.mark.parametrize("extra, fragment", [
    (["--port", "70000"], "--port must be in 1..65535, got 70000"),
    (["--port", "0"], "--port must be in 1..65535, got 0"),
    (["--top-k", "0"], "--top-k must be >= 1, got 0"),
    (["--cpus-per-replica", "0"], "--cpus-per-replica must be >= 1, got 0"),
    (["--num-cpus", "0"], "--num-cpus must be >= 1, got 0"),  # Ray would start with no CPU and never serve
    (["--batch-wait-ms", "-5"], "--batch-wait-ms must be >= 0, got -5"),  # Ray Serve takes it as given
    (["--model", "vit_q_16"], "unknown model 'vit_q_16'"),
    (["--host", "no-such-host.invalid"], "does not resolve"),
])
def test_serve_refuses_bad_options_before_ray(no_ray, capsys, extra, fragment):
    assert fragment in _refused(["serve", "--model", "vit_ti_16", *extra], capsys, "serve")


@pytest.mark.parametrize("command, hidden, namespace, fragment", [
    ("serve", ("ray", "ray.serve"), False, "needs ray, which is not installed here"),
    ("serve", ("ray",), True, "needs ray, which is not installed here"),  # a bare ray/ folder on sys.path
    ("serve", ("ray.serve",), False, "needs ray.serve, which is not installed here"),  # ray without its serve extra
    ("infer", ("pyarrow",), False, "needs pyarrow, which is not installed here"),
    ("infer", ("ray.data", "pyarrow"), False, "needs ray.data and pyarrow, which are not installed here"),
    ("infer", ("ray", "ray.data", "pyarrow"), False, "needs ray and pyarrow, which are not installed here"),
])
def test_missing_serve_extra_is_one_line_before_model_work(no_ray, capsys, monkeypatch, tmp_path, command, hidden,
                                                           namespace, fragment):
    import importlib.machinery
    import importlib.util

    from vit_fast.serving import cli as serving_cli

    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name not in hidden:
            return real(name, *args)
        if namespace:
            return importlib.machinery.ModuleSpec(name, None, is_package=True)
        if "." in name and name.split(".")[0] in hidden:  # what find_spec does when the parent is missing
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")
        return None

    def model_work(args):
        raise AssertionError("the model was checked before the missing extra")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(serving_cli, "_check_model", model_work)
    argv = ["serve"] if command == "serve" else ["infer", tmp_path]
    line = _refused([*argv, "--model", "vit_ti_16"], capsys, command)
    assert line == f"vit-fast {command}: {fragment}: pip install 'vit-fast[serve]'"


def test_serve_refuses_bad_checkpoint_and_busy_port_before_ray(no_ray, capsys, checkpoints, busy_port):
    good, bad = checkpoints
    line = _refused(["serve", "--checkpoint", bad, "--port", "8123"], capsys, "serve")
    assert f"cannot load --checkpoint {bad}" in line and "expected a safetensors file" in line
    line = _refused(["serve", "--checkpoint", "/no/such/ckpt"], capsys, "serve")
    assert "checkpoint not found: /no/such/ckpt" in line
    line = _refused(["serve", "--checkpoint", good, "--port", busy_port], capsys, "serve")
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line and "in use" in line
    if not torch.cuda.is_available():
        line = _refused(["serve", "--checkpoint", good, "--device", "cuda"], capsys, "serve")
        assert "--device cuda, but CUDA is not available" in line


def test_infer_refuses_bad_paths_before_ray(no_ray, capsys, checkpoints, tmp_path):
    good, _ = checkpoints
    images = tmp_path / "images"
    images.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    from PIL import Image

    Image.new("RGB", (20, 20)).save(images / "a.png")
    line = _refused(["infer", images, "--out", tmp_path, "--checkpoint", good], capsys, "infer")
    assert f"--out {tmp_path} is a directory" in line and "predictions.parquet" in line
    line = _refused(["infer", empty, "--out", tmp_path / "p.parquet", "--checkpoint", good], capsys, "infer")
    assert "no image files found" in line
    line = _refused(["infer", images, "--out", images / "a.png" / "p.parquet", "--checkpoint", good], capsys, "infer")
    assert "is a file, not a folder" in line
    line = _refused(["infer", images, "--out", f"{tmp_path / 'new'}/", "--checkpoint", good], capsys, "infer")
    assert f"--out {tmp_path / 'new'}/ is a directory; expected a file path such as" in line  # not made yet
    line = _refused(["infer", images, "--out", tmp_path / "p.csv", "--checkpoint", good], capsys, "infer")
    assert "the results are written as Parquet, the only format; expected a .parquet file name" in line
    line = _refused(["infer", images, "--out", tmp_path / "p.parquet", "--wait-timeout", "0"], capsys, "infer")
    assert "--wait-timeout must be > 0" in line
    line = _refused(["infer", images, "--out", tmp_path / "p.parquet", "--num-cpus", "-1"], capsys, "infer")
    assert "--num-cpus must be >= 1, got -1" in line
    assert not (tmp_path / "p.parquet").exists() and not (tmp_path / "new").exists()


def test_batch_inference_of_unreadable_files_only_needs_no_ray(tmp_path, monkeypatch):
    """Files that cannot be read become error rows; when none is left for the workers, Ray is never started."""
    import ray

    from vit_fast.serving import batch

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    (tmp_path / "mem.png").symlink_to("/proc/self/mem")
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block: it is never opened
    summary = batch.run_batch_inference([tmp_path / "mem.png", tmp_path / "fifo.png"], str(tmp_path / "p.parquet"),
                                        name="vit_ti_16")
    assert summary == {"rows": 2, "errors": 2, "out": str(tmp_path / "p.parquet")}
    fifo, mem = __import__("pyarrow.parquet").parquet.read_table(tmp_path / "p.parquet").to_pylist()
    assert mem["path"] == str(tmp_path / "mem.png") and mem["error"] == "OSError: Input/output error"
    assert fifo["path"] == str(tmp_path / "fifo.png") and fifo["error"] == "OSError: not a regular file"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
    ({"workers": 0}, ValueError, "workers must be a positive int, got 0"),
    ({"cpus_per_worker": -1}, ValueError, "cpus_per_worker must be > 0, got -1"),
    ({"checkpoint": "/nonexistent/ckpt"}, FileNotFoundError, "no checkpoint at /nonexistent/ckpt"),
])
def test_batch_inference_api_refuses_before_ray(tmp_path, monkeypatch, kwargs, error, match):
    """The Python entry point checks what the CLI checks before it starts a local Ray."""
    import ray

    from vit_fast.serving import batch

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    with pytest.raises(error, match=match):
        batch.run_batch_inference(str(tmp_path), str(tmp_path / "p.parquet"), name="vit_ti_16", **kwargs)


def test_replica_failure_becomes_one_line():
    from vit_fast.serving.cli import replica_failure_line

    # the shape of Serve's report when a replica's constructor raises (abridged from a real one)
    report = ("Deploying application vit_fast failed: Failed to update the deployments ['ViTDeployment'].\n"
              "\x1b[36mray::ServeReplica:vit_fast:ViTDeployment.initialize_and_get_metadata()\x1b[39m "
              "(pid=1234, ip=10.0.0.1)\n  File \"/x/replica.py\", line 1, in initialize\n"
              "ray.exceptions.RayTaskError(ValueError): ray::ServeReplica...\n"
              "  File \"/x/predictor.py\", line 9, in __init__\n"
              "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    line = replica_failure_line(report)
    assert line == "the model replicas failed to start: torch.OutOfMemoryError: CUDA out of memory. Tried to " \
                   "allocate 2.00 GiB"
    assert "\n" not in replica_failure_line("something\nelse went wrong")
    # Ray 2.60: serve.run's exception names no cause; the deployment status message holds the replica traceback
    real = ("Deploying application x failed: Failed to update the deployments ['ViTDeployment'].\n"
            "Failed to start replica: Traceback (most recent call last):\n  File \"replica.py\", line 1928\n"
            "    raise RuntimeError(traceback.format_exc()) from None\n"
            "RuntimeError: Traceback (most recent call last):\n  File \"vit_fast/loading/checkpoint.py\", line 71\n"
            "    raise FileNotFoundError(f\"no checkpoint at {path}\")\n"
            "FileNotFoundError: no checkpoint at /nonexistent/ckpt")
    assert replica_failure_line(real) == ("the model replicas failed to start: FileNotFoundError: no checkpoint at "
                                          "/nonexistent/ckpt")


def _entry_point():
    script = Path(sys.executable).with_name("vit-fast")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vit_fast"]


def _env():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TRITON_INTERPRET", None)
    return env


def test_real_serve_refuses_a_bad_port_fast():
    start = time.monotonic()
    done = subprocess.run(_entry_point() + ["serve", "--port", "70000"], capture_output=True, text=True,
                          timeout=120, env=_env())
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines == ["vit-fast serve: --port must be in 1..65535, got 70000"], done.stderr
    assert time.monotonic() - start < 60


@pytest.mark.timeout(180)
def test_real_serve_refuses_replicas_that_cannot_be_placed():
    """Replicas the local Ray cannot place would wait forever: one line naming what was asked and what the machine
    has, exit code 1, Ray shut down."""
    start = time.monotonic()
    done = subprocess.run(_entry_point() + ["serve", "--model", "vit_ti_32", "--device", "cpu", "--num-cpus", "2",
                                            "--cpus-per-replica", "2", "--num-replicas", "2", "--port",
                                            str(_free_port())],
                          capture_output=True, text=True, timeout=170, env=_env())
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("vit-fast")]
    assert done.returncode == 1 and lines[-1] == (
        "vit-fast serve: the model replicas cannot start: 2 replica(s) of 2 CPUs each do not fit in this machine's "
        "Ray (2 CPUs); lower --num-replicas or --cpus-per-replica, or raise --num-cpus"), done.stderr
    assert time.monotonic() - start < 120


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_serve_uses_all_cores_and_stops_with_ray_on_sigterm(tmp_path):
    """A real `vit-fast serve`: one CPU replica gets the machine's cores as torch threads; SIGTERM ends it like
    Ctrl-C, and every process it started (Ray's GCS, raylet, agents, workers) is gone within a bound."""
    port = _free_port()
    cores = os.cpu_count()
    proc = subprocess.Popen(_entry_point() + ["serve", "--model", "vit_ti_32", "--device", "cpu", "--port", str(port),
                                              "--num-cpus", str(cores), "--backend", "sdpa"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(1)
        assert health is not None, proc.stderr.read() if proc.poll() is not None else "serve did not come up"
        assert health["threads"] == cores and health["device"] == "cpu"
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in started if p.is_running())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 0, proc.stderr.read()
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [" ".join(p.cmdline())[:100] for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("gpu", [None, (8, 0)], ids=["this machine", "A100"])
@pytest.mark.parametrize("command", ["serve", "infer"])
def test_fp8_exclude_is_checked_before_ray(no_ray, capsys, tmp_path, monkeypatch, command, gpu):
    """--fp8-exclude without --dtype fp8, a pattern naming no layer, or another mix than an FP8 checkpoint's: one
    line each, before Ray starts (a preset's layer names come from its config: no model is built). On a GPU
    without FP8 (an A100, as torch reports it here) --dtype fp8 with backend auto warns, but not beside a refusal."""
    from PIL import Image

    if gpu:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "A100")

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "a.png")
    argv = ["serve"] if command == "serve" else ["infer", tmp_path / "imgs", "--out", tmp_path / "p.parquet"]
    line = _refused([*argv, "--model", "vit_ti_16", "--fp8-exclude", "fc2"], capsys, command)
    assert line.endswith("--fp8-exclude applies to --dtype fp8 only, got no --dtype"), line
    line = _refused([*argv, "--model", "vit_ti_16", "--dtype", "fp8", "--fp8-exclude", "fc9"], capsys, command)
    assert "'fc9' names no FP8 layer; expected a GEMM kind (qkv, proj, fc1, fc2)" in line
    ckpt = vit_fast.save(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=3).to_fp8(exclude="fc2"),
                         tmp_path / "fp8")
    line = _refused([*argv, "--checkpoint", ckpt, "--dtype", "fp8", "--fp8-exclude", "qkv"], capsys, command)
    assert (f"--checkpoint {ckpt} is an FP8 model that keeps 1 GEMM layer(s) out of FP8 (blocks.0.mlp.fc2), not "
            "what --fp8-exclude qkv asks: leave out --fp8-exclude") in line


def test_fp8_exclude_reaches_the_replicas_and_the_workers(monkeypatch, tmp_path):
    """serve and infer hand --fp8-exclude to the deployment and the Ray Data actors (Ray stubbed out), whose
    Predictor keeps those GEMMs out of FP8."""
    from ray import serve

    from vit_fast import fp8
    from vit_fast.serving import batch, deployment
    from vit_fast.serving import cli as serving_cli

    seen = {}

    def build_app(**kwargs):
        seen["serve"] = kwargs
        raise KeyboardInterrupt  # serve returns 0 on Ctrl-C

    def run_batch_inference(source, out, **kwargs):
        seen["infer"] = kwargs
        return {"rows": 0, "errors": 0, "out": out}

    monkeypatch.setattr(serving_cli, "_start_ray", lambda args: None)
    monkeypatch.setattr(serve, "start", lambda **kwargs: None)
    monkeypatch.setattr(serve, "shutdown", lambda: None)
    monkeypatch.setattr(deployment, "build_app", build_app)
    monkeypatch.setattr(batch, "run_batch_inference", run_batch_inference)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--model", "vit_ti_16", "--device", "cpu", "--dtype", "fp8", "--fp8-exclude", "fc2,blocks.0.*"]
    ours = lambda signum, frame: None  # noqa: E731 - the calling process's own SIGTERM handler
    previous = signal.signal(signal.SIGTERM, ours)
    try:
        assert main(["serve", *common, "--port", str(port)]) == 0
        assert signal.getsignal(signal.SIGTERM) is ours  # the command's handler is gone once it returns
        (tmp_path / "a.png").write_bytes(b"")
        assert main(["infer", str(tmp_path), "--out", str(tmp_path / "p.parquet"), *common]) == 0
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen["serve"]["fp8_exclude"] == seen["infer"]["fp8_exclude"] == "fc2,blocks.0.*"
    # the Python entry points refuse misuse before any replica or actor starts
    monkeypatch.undo()
    with pytest.raises(ValueError, match="fp8_exclude applies to dtype 'fp8' only, got dtype 'bfloat16'"):
        deployment.build_app(name="vit_ti_16", dtype="bfloat16", fp8_exclude="fc2")
    with pytest.raises(ValueError, match="fp8_exclude applies to dtype 'fp8' only, got dtype None"):
        batch.run_batch_inference(str(tmp_path), str(tmp_path / "p.parquet"), fp8_exclude="fc2")
    # what a replica and an actor build from those arguments
    replica = deployment.ViTDeployment.func_or_class(name="vit_ti_16", backend="torch", device="cpu", dtype="fp8",
                                                     max_batch_size=2, fp8_exclude="fc2,blocks.0.*")
    actor = batch.PredictorActor(None, "vit_ti_16", "torch", 3, False, 2, device="cpu", dtype="fp8",
                                 fp8_exclude="fc2,blocks.0.*")
    for predictor in (replica.predictor, actor.predictor):
        layers = set(fp8.fp8_layers(predictor.model))
        assert predictor.fp8 and len(layers) == 12 * 4 - 12 - 3  # every FC2, and block 0's QKV, proj, FC1
        assert not any(n.endswith("fc2") or n.startswith("blocks.0.") for n in layers)
    # /health says what the replica runs: the FP8 mix and the backend
    health = json.loads(asyncio.run(replica._health(None)).body)
    assert health["backend"] == "torch" and health["dtype"] == "float32"
    kept = health["fp8"]["kept"]
    assert health["fp8"]["fp8"] == 33 and health["fp8"]["gemms"] == 48 and len(kept) == 15
    assert set(kept) == {f"blocks.{i}.mlp.fc2" for i in range(12)} | {"blocks.0.attn.qkv", "blocks.0.attn.proj",
                                                                         "blocks.0.mlp.fc1"}


@pytest.mark.parametrize("rows, errors, code", [(3, 3, 1), (3, 1, 0), (3, 0, 0)])
def test_infer_fails_only_when_no_image_could_be_read(monkeypatch, capsys, tmp_path, rows, errors, code):
    """Unreadable files are rows with an error and the job goes on; a job that read none of them exits 1."""
    import ray

    from vit_fast.serving import batch, cli as serving_cli

    monkeypatch.setattr(serving_cli, "_start_ray", lambda args: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(batch, "run_batch_inference",
                        lambda *a, **k: {"rows": rows, "errors": errors, "out": str(tmp_path / "p.parquet")})
    args = serving_cli.add_infer_parser(argparse.ArgumentParser().add_subparsers()).parse_args(
        [str(tmp_path), "--out", str(tmp_path / "p.parquet")])
    with serving_cli._sigterm_restored():  # as _infer runs it: the handler it installs goes away after
        assert serving_cli._infer_on_ray(args) == code
    err = capsys.readouterr().err
    assert f"wrote {rows} rows" in err and ("no image could be read" in err) == (code == 1)
