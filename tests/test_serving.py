"""Serving with real Ray, started on this machine with 2 CPUs (no mocks, no GPU needed): the Ray Serve endpoint
under concurrent requests and bad requests, and the Ray Data batch job over a folder holding a corrupt file.
A tiny checkpoint keeps it quick; module-scoped fixtures shut Serve and Ray down at the end."""
import base64
import concurrent.futures
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit_fast
from helpers import randomize_
from tolerances import MODEL_TOL
from vit_fast.predictor import Predictor

ray = pytest.importorskip("ray", reason="needs the serve extra: pip install vit-fast[serve]")
serve = pytest.importorskip("ray.serve")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
TOP_K = 3
LABELS = [f"kind {i}" for i in range(10)]


def _png(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _random_png(fmt="PNG"):
    h, w = np.random.randint(16, 70, size=2)
    return _png(np.random.randint(0, 256, (h, w, 3), dtype=np.uint8), fmt)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model saved to disk (so replicas and actors load it by path) and a local predictor on it."""
    model = randomize_(vit_fast.create("vit_ti_16", img_size=(32, 48), input_size=(32, 32), depth=1, num_classes=10,
                                       labels=LABELS, backend="sdpa"))
    path = tmp_path_factory.mktemp("ckpt")
    vit_fast.save(model, path)
    return str(path), Predictor(model, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def ray_local():
    # CPU-only even on a GPU machine: the expected values come from a float32 CPU predictor
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    if "TRITON_INTERPRET" in os.environ:
        env["TRITON_INTERPRET"] = os.environ["TRITON_INTERPRET"]
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=128 << 20, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def server(ray_local, checkpoint):
    from vit_fast.serving.deployment import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # num_cpus=0 leaves both CPUs to the Ray Data test, which runs while this fixture is still alive
        app = build_app(checkpoint=checkpoint[0], backend="sdpa", max_batch_size=8, batch_wait_timeout_s=0.05,
                        top_k=TOP_K, num_cpus=0, num_threads=2, device="cpu", dtype="float32")
        serve.run(app, name="vit_fast_test", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _request(url, data=None, content_type=None, method=None):
    req = urllib.request.Request(url, data=data, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _multipart(files, fields):
    boundary = "vitfastboundary7d1e"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for i, data in enumerate(files):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="img{i}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _assert_same(got, want, with_embedding=False):
    """An HTTP/Parquet prediction equals the direct predictor call (scores compared by value: near-ties may swap)."""
    atol, rtol = MODEL_TOL[torch.float32]
    assert got["labels"] == [LABELS[i] for i in got["indices"]]
    torch.testing.assert_close(torch.tensor(got["scores"], dtype=torch.float32), torch.tensor(want["scores"]),
                               atol=atol, rtol=rtol)
    if got["indices"] != want["indices"]:
        gap = min(abs(a - b) for a, b in zip(want["scores"], want["scores"][1:]))
        assert gap < 10 * atol, (got, want)
    if with_embedding:
        torch.testing.assert_close(torch.tensor(got["embedding"], dtype=torch.float32),
                                   torch.tensor(want["embedding"]), atol=atol, rtol=rtol)


def test_importing_vit_fast_does_not_import_ray():
    code = ("import sys, vit_fast, vit_fast.predictor, vit_fast.serving, vit_fast.serving.cli; "
            "assert 'ray' not in sys.modules, 'ray imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_cli_parsers():
    import argparse

    from vit_fast.serving.cli import add_infer_parser, add_serve_parser

    parser = argparse.ArgumentParser(prog="vit-fast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_infer_parser(sub)
    args = parser.parse_args(["serve", "--checkpoint", "ck", "--port", "9001", "--max-batch-size", "16"])
    assert (args.checkpoint, args.port, args.max_batch_size, args.host) == ("ck", 9001, 16, "127.0.0.1")
    args = parser.parse_args(["infer", "imgs/*.jpg", "--out", "p.parquet", "--embeddings", "--address", "auto"])
    assert (args.source, args.out, args.embeddings, args.address) == ("imgs/*.jpg", "p.parquet", True, "auto")
    missing = parser.parse_args(["infer", "imgs", "--checkpoint", "/no/such/checkpoint"])
    assert missing.func(missing) == 2  # refused before Ray starts


def test_list_images(tmp_path):
    from vit_fast.serving.batch import list_images

    (tmp_path / "sub").mkdir()
    for name in ("a.PNG", "sub/b.jpg", "sub/c.jpeg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = list_images(str(tmp_path))
    assert [Path(p).name for p in found] == ["a.PNG", "b.jpg", "c.jpeg"] and all(os.path.isabs(p) for p in found)
    assert [Path(p).name for p in list_images(str(tmp_path / "**" / "*.jp*g"))] == ["b.jpg", "c.jpeg"]
    assert list_images("s3://bucket/images/") == "s3://bucket/images/"
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images(str(tmp_path / "*.gif"))
    assert list_images([tmp_path / "a.PNG", str(tmp_path / "sub" / "b.jpg")]) == [str(tmp_path / "a.PNG"),
                                                                                  str(tmp_path / "sub" / "b.jpg")]
    with pytest.raises(ValueError, match="expected a folder, a glob, a file or a non-empty list of file paths; the "
                                         "list holds int"):
        list_images(["a.png", 3])
    with pytest.raises(ValueError, match="expected a folder, a glob, a file or a list of file paths, got dict"):
        list_images({"a": 1})


def test_health(server):
    status, body = _request(server + "/health")
    assert status == 200 and body["status"] == "ok" and body["num_classes"] == 10 and body["device"] == "cpu"
    assert body["random_weights"] is False and body["backend"] == "sdpa" and body["fp8"] is None
    assert body["threads"] == 2  # torch threads set in the replica as asked
    assert body["img_size"] == [32, 48] and body["input_size"] == [32, 32]  # the table's, and what images run at


def test_concurrent_requests_match_direct_calls(server, checkpoint):
    predictor = checkpoint[1]
    images = [_random_png("PNG" if i % 2 else "JPEG") for i in range(12)]
    want = predictor.predict(images, top_k=5, return_embeddings=True)

    def b64(i):
        return base64.b64encode(images[i]).decode()

    jobs = []  # (url, body, content type, image indices, top_k, embedding)
    for i in range(0, 12, 3):
        jobs.append((server + "/predict", json.dumps({"image": b64(i)}).encode(), "application/json", [i], TOP_K,
                     False))
        jobs.append((server + "/predict?top_k=2", images[i + 1], "image/png", [i + 1], 2, False))
        body, ctype = _multipart([images[i + 2]], {"top_k": "5", "embedding": "true"})
        jobs.append((server + "/predict", body, ctype, [i + 2], 5, True))
    jobs.append((server + "/predict", json.dumps({"images": [b64(i) for i in (3, 0, 11)], "top_k": 4}).encode(),
                 "application/json", [3, 0, 11], 4, False))
    body, ctype = _multipart([images[5], images[6]], {})
    jobs.append((server + "/predict", body, ctype, [5, 6], TOP_K, False))

    before = _request(server + "/health")[1]["batching"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: _request(job[0], job[1], job[2]), jobs))
    after = _request(server + "/health")[1]["batching"]
    print("batching:", after)
    assert after["images"] - before["images"] == 17
    assert 2 <= after["largest_batch"] <= 8, after  # concurrent requests were batched together, within the cap
    for (_, _, _, indices, k, emb), (status, body) in zip(jobs, answers):
        assert status == 200, body
        assert len(body["predictions"]) == len(indices)
        for got, i in zip(body["predictions"], indices):
            assert len(got["labels"]) == k and ("embedding" in got) == emb
            ref = {key: want[i][key][:k] for key in ("labels", "scores", "indices")}
            ref["embedding"] = want[i]["embedding"]
            _assert_same(got, ref, with_embedding=emb)


def test_normalized_embeddings(server, checkpoint):
    predictor = checkpoint[1]
    image = _random_png("PNG")
    want = torch.tensor(predictor.predict([image], return_embeddings=True)[0]["embedding"])
    status, body = _request(server + "/predict?embedding=true&normalize=true", image, "image/png")
    assert status == 200, body
    got = torch.tensor(body["predictions"][0]["embedding"])
    torch.testing.assert_close(got, want / want.norm(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "path, data, content_type, method, status, fragment",
    [
        ("/predict", b"{not json", "application/json", None, 400, "not valid JSON"),
        ("/predict", b'{"image": "%%%"}', "application/json", None, 400, "invalid base64"),
        ("/predict", b'{"images": []}', "application/json", None, 400, "no image"),
        ("/predict", b'{"picture": "abc"}', "application/json", None, 400, '"image"'),
        ("/predict", b"this is not an image", "image/jpeg", None, 400, "not a recognized image format"),
        ("/predict?top_k=0", None, "image/png", None, 400, "top_k"),
        ("/predict?normalize=true", None, "image/png", None, 400, "normalize applies to embeddings"),
        ("/predict", b"hello", "text/plain", None, 415, "Content-Type"),
        ("/predict", None, None, "GET", 405, "POST"),
        ("/nowhere", None, None, "GET", 404, "/health"),
        ("/predict", b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json", None, 400,
         "nested too deeply"),
        ("/predict", b'{"image": "abc", "topk": 1}', "application/json", None, 400, "unknown fields ['topk']"),
        ("/predict", b'{"image": "abc", "top_k": "' + b"9" * 5000 + b'"}', "application/json", None, 400,
         "... (5002 characters)"),
        ("/predict", _multipart([b"x"], {"foo": "bar"})[0], _multipart([], {})[1], None, 400,
         "unknown form field 'foo'"),
    ],
)
def test_bad_requests_get_4xx_and_serving_continues(server, path, data, content_type, method, status, fragment):
    if data is None and method is None:
        data = _random_png()
    got_status, body = _request(server + path, data, content_type, method)
    assert got_status == status and fragment in body["error"], body
    image = _random_png()
    status, body = _request(server + "/predict", image, "application/octet-stream")
    assert status == 200 and len(body["predictions"][0]["labels"]) == TOP_K


def test_base64_as_clients_write_it_and_head_health(server, checkpoint):
    """Base64 wrapped at 76 columns (GNU base64, MIME) and in the URL-safe alphabet decode to the same image; options
    sent as multipart file parts are options; HEAD /health answers 200 for load balancers."""
    predictor = checkpoint[1]
    image = _random_png("PNG")
    want = predictor.predict([image], top_k=3)[0]
    for text in (base64.encodebytes(image).decode(), base64.urlsafe_b64encode(image).decode()):
        assert any(c in text for c in "\n-_")  # what a strict decoder refuses
        status, body = _request(server + "/predict", json.dumps({"image": text, "top_k": 3}).encode(),
                                "application/json")
        assert status == 200, body
        _assert_same(body["predictions"][0], want)
    data, ctype = _multipart([image], {})
    boundary = ctype.split("=")[1]
    option = (f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"; filename="k.txt"\r\n\r\n3\r\n'
              .encode())
    status, body = _request(server + "/predict", option + data, ctype)
    assert status == 200 and len(body["predictions"]) == 1 and len(body["predictions"][0]["labels"]) == 3, body
    with urllib.request.urlopen(urllib.request.Request(server + "/health", method="HEAD"), timeout=60) as resp:
        assert resp.status == 200


def test_one_bad_image_among_several_gets_its_own_error(server, checkpoint):
    """The same per-image behaviour as `predict` and `infer`: the bad image gets an error entry in its place."""
    predictor = checkpoint[1]
    images = [_random_png(), b"not an image at all", _random_png("JPEG")]
    want = predictor.predict(images, top_k=TOP_K)
    assert want[1]["error"] and want[0]["error"] is None
    body, ctype = _multipart(images, {})
    status, answer = _request(server + "/predict", body, ctype)
    assert status == 200, answer
    got = answer["predictions"]
    assert len(got) == 3 and got[0]["error"] is None and got[2]["error"] is None
    assert got[1]["labels"] == [] and got[1]["indices"] == [] and "image 1: cannot decode" in got[1]["error"]
    _assert_same(got[0], want[0])
    _assert_same(got[2], want[2])
    payload = {"images": [base64.b64encode(images[0]).decode(), "%%%"], "embedding": True}
    status, answer = _request(server + "/predict", json.dumps(payload).encode(), "application/json")
    assert status == 200 and "invalid base64" in answer["predictions"][1]["error"]
    assert answer["predictions"][1]["embedding"] is None and len(answer["predictions"][0]["embedding"]) == 192
    # no image usable at all: a client error, still with the per-image entries
    body, ctype = _multipart([b"junk", b"more junk"], {})
    status, answer = _request(server + "/predict", body, ctype)
    assert status == 400 and "image 0" in answer["error"] and len(answer["predictions"]) == 2


@pytest.fixture
def hog(ray_local):
    """An actor holding CPUs of the 2-CPU cluster, as a Serve app would; `release()` kills it."""
    handles = []

    def take(cpus):
        @ray.remote(num_cpus=cpus)
        class Hog:
            def ready(self):
                return True

        handles.append(Hog.remote())
        ray.get(handles[-1].ready.remote(), timeout=60)

    def release():
        while handles:
            ray.kill(handles.pop())

    take.release = release
    yield take
    release()


def test_batch_job_on_a_busy_cluster_fails_within_its_timeout(ray_local, checkpoint, tmp_path, hog, capfd):
    from vit_fast.serving.batch import run_batch_inference

    (tmp_path / "a.png").write_bytes(_random_png())
    hog(1.5)  # 0.5 CPU left: not enough for a worker and the reads
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"waited 3 s for 2 CPUs \(1 for a worker, 1 for reading files\), but "
                                           r"only 0.5 of 2 CPUs are free"):
        run_batch_inference(str(tmp_path), str(tmp_path / "p.parquet"), checkpoint=checkpoint[0], device="cpu",
                            progress=False, wait_timeout_s=3)
    assert time.monotonic() - start < 15
    assert "waiting up to 3 s for 2 CPUs" in capfd.readouterr().err  # it said what it was waiting for
    assert not (tmp_path / "p.parquet").exists()


def test_batch_job_over_a_folder_with_a_corrupt_file(ray_local, checkpoint, tmp_path, hog, capfd):
    from vit_fast.serving.batch import run_batch_inference

    predictor = checkpoint[1]
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    expected = {}
    for i in range(9):
        name = folder / ("nested" if i % 3 == 0 else "") / f"img{i}.{'png' if i % 2 else 'jpg'}"
        data = _random_png("PNG" if i % 2 else "JPEG")
        name.write_bytes(data)
        expected[str(name)] = predictor.predict([data], top_k=TOP_K, return_embeddings=True,
                                                normalize_embeddings=True)[0]
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(7, 207)))  # a JPEG marker, then no JPEG
    (folder / "README.txt").write_text("not an image, not listed")
    (folder / "alias.png").symlink_to(folder / "img1.png")  # listed under its own name, as found
    expected[str(folder / "alias.png")] = expected[str(folder / "img1.png")]
    unreadable = folder / "unreadable.png"  # opens, but reading fails (EIO): Ray's reader would fail the job
    unreadable.symlink_to("/proc/self/mem")
    out = tmp_path / "out" / "predictions.parquet"

    # the cluster is busy when the job starts and frees up while it waits: it waits, says so, then runs
    hog(2)
    import threading

    threading.Timer(2.0, hog.release).start()
    start = time.time()
    summary = run_batch_inference(str(folder), str(out), checkpoint=checkpoint[0], backend="sdpa", top_k=TOP_K,
                                  embeddings=True, batch_size=4, workers=1, cpus_per_worker=1, device="cpu",
                                  progress=False, normalize_embeddings=True, wait_timeout_s=60)
    print(f"batch job: {time.time() - start:.1f}s")
    assert "waiting up to 60 s for 2 CPUs" in capfd.readouterr().err
    assert summary == {"rows": 12, "errors": 2, "out": str(out)}
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted([*expected, str(corrupt), str(unreadable)])
    for row in rows:
        if row["path"] == str(corrupt):
            assert row["labels"] == [] and row["embedding"] is None and "cannot decode" in row["error"]
        elif row["path"] == str(unreadable):
            assert row["labels"] == [] and row["error"].startswith("OSError: ")
        else:
            assert row["error"] is None
            _assert_same(row, expected[row["path"]], with_embedding=True)
    assert not out.with_name(out.name + ".partial").exists()
