"""Predictor: results equal direct model calls on the preprocessed batch, in input order, whatever the batching;
bad inputs get an error result without disturbing the others; thread safety; CUDA graphs equal eager on GPU."""
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import vit_fast
from helpers import randomize_
from tolerances import MODEL_TOL
from vit_fast.predictor import Predictor, _buckets
from vit_fast.preprocess import preprocess

HAS_CUDA = torch.cuda.is_available()


def _tiny(num_classes=10, labels=None, img_size=(32, 48)):
    model = vit_fast.create("vit_ti_16", img_size=img_size, depth=1, num_classes=num_classes, labels=labels,
                            backend="auto")
    return randomize_(model)


def _images(n):
    """Mixed kinds and odd, non-square sizes."""
    out = []
    for i in range(n):
        arr = np.random.randint(0, 256, (np.random.randint(20, 90), np.random.randint(20, 90), 3), dtype=np.uint8)
        if i % 3 == 0:
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            out.append(buf.getvalue())
        elif i % 3 == 1:
            out.append(Image.fromarray(arr))
        else:
            out.append(torch.from_numpy(arr))
    return out


@torch.inference_mode()
def _direct(model, images, device, dtype):
    """The reference: one eager call on the whole preprocessed batch."""
    model = model.to(device=device, dtype=dtype)
    x = torch.stack([preprocess(im, model.config) for im in images]).to(device)
    tokens = model.forward_features(x)
    probs = model.forward_head(tokens).float().softmax(-1).cpu()
    emb = model.forward_head(tokens, pre_logits=True).float().cpu()
    return probs, emb


def _check(results, probs, emb, top_k, labels, dtype):
    atol, rtol = MODEL_TOL[dtype]
    assert len(results) == probs.shape[0]
    for row, r in enumerate(results):
        assert r["error"] is None
        assert len(r["indices"]) == len(r["scores"]) == len(r["labels"]) == top_k
        assert r["labels"] == [labels[i] for i in r["indices"]]
        assert all(a >= b for a, b in zip(r["scores"], r["scores"][1:]))
        # scores are the reference's k largest probabilities, and belong to the classes reported
        # (compared by value so a near-tie that flips order within tolerance is not a failure)
        ref_top = probs[row].topk(top_k).values
        torch.testing.assert_close(torch.tensor(r["scores"]), ref_top, atol=atol, rtol=rtol)
        torch.testing.assert_close(probs[row, r["indices"]], torch.tensor(r["scores"]), atol=atol, rtol=rtol)
        if emb is not None:
            torch.testing.assert_close(torch.tensor(r["embedding"]), emb[row], atol=atol, rtol=rtol)


def test_buckets():
    assert _buckets(32) == [1, 2, 4, 8, 16, 32]
    assert _buckets(12) == [1, 2, 4, 8, 12]
    assert _buckets(1) == [1]


@pytest.mark.parametrize("max_batch_size", [3, 32])
def test_predict_matches_direct_model_call(max_batch_size, device):
    dtype = torch.float32
    labels = [f"label {i}" for i in range(10)]
    model = _tiny(labels=labels)
    images = _images(7)
    probs, emb = _direct(model, images, device, dtype)
    predictor = Predictor(model, device=device, dtype=dtype, max_batch_size=max_batch_size)
    _check(predictor.predict(images, top_k=4, return_embeddings=True), probs, emb, 4, labels, dtype)
    plain = predictor.predict(images, top_k=4)
    assert all("embedding" not in r for r in plain)
    _check(plain, probs, None, 4, labels, dtype)


def test_bad_items_get_errors_and_the_rest_still_succeed(tmp_path, device):
    model = _tiny()
    good = _images(4)
    probs, _ = _direct(model, good, device, torch.float32)
    predictor = Predictor(model, device=device, dtype=torch.float32, max_batch_size=2)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    inputs = [b"garbage", good[0], str(broken), good[1], np.zeros((5, 5), np.float32), good[2],
              str(tmp_path / "missing.png"), good[3], 42]
    results = predictor.predict(inputs, top_k=3)
    assert len(results) == len(inputs)
    bad = {0: "not a recognized image format", 2: "broken.jpg", 4: "uint8", 6: "not found", 8: "expected"}
    for i, fragment in bad.items():
        assert results[i]["labels"] == [] and results[i]["scores"] == [] and fragment in results[i]["error"], i
    _check([results[i] for i in (1, 3, 5, 7)], probs, None, 3, [f"class_{i}" for i in range(10)], torch.float32)
    alone = predictor.predict([b"garbage"])
    assert alone == [{"labels": [], "scores": [], "indices": [], "error": results[0]["error"]}]
    assert predictor.predict([]) == []


def test_single_input_top_k_clamp_and_validation(device):
    model = _tiny(num_classes=3)
    predictor = Predictor(model, device=device, dtype=torch.float32)
    (result,) = predictor.predict(_images(1)[0], top_k=10)
    assert sorted(result["indices"]) == [0, 1, 2] and result["labels"][0].startswith("class_")
    assert abs(sum(result["scores"]) - 1.0) < 1e-4
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="top_k"):
            predictor.predict(_images(1), top_k=bad)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="max_batch_size"):
            Predictor(model, max_batch_size=bad)
    with pytest.raises(ValueError, match="dtype"):
        Predictor(model, dtype=torch.int8)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'meta'"):
        Predictor(model, device="meta")
    with pytest.raises(TypeError, match=r"got str \(a checkpoint path: Predictor.from_checkpoint\(path\)\)"):
        Predictor("ckpt/")
    with pytest.raises(ValueError, match="normalize_embeddings applies to embeddings"):
        predictor.predict(_images(1), normalize_embeddings=True)
    with pytest.raises(ValueError, match="this model takes 1 channels"):
        Predictor(vit_fast.create("vit_ti_16", depth=1, img_size=32, in_chans=1, image_mean=[0.5], image_std=[0.5]))


def test_hugging_face_models_are_refused_with_what_to_pass():
    transformers = pytest.importorskip("transformers")
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=16, num_labels=3))
    for wrong in (hf, vit_fast.from_hf(hf, hf_outputs=True)):  # HF's config is not a vit_fast ViTConfig
        with pytest.raises(TypeError, match=f"model must be a vit_fast model .*got {type(wrong).__name__}"):
            Predictor(wrong)
    with pytest.raises(TypeError, match=r"pass its \.vit_fast"):
        Predictor(vit_fast.from_hf(hf, hf_outputs=True))


def test_headless_model_gives_embeddings_only(device):
    model = _tiny(num_classes=0)
    images = _images(3)
    predictor = Predictor(model, device=device, dtype=torch.float32)
    results = predictor.predict(images, return_embeddings=True)
    x = torch.stack([preprocess(im, model.config) for im in images]).to(device)
    with torch.inference_mode():
        ref = model.forward_head(model.forward_features(x), pre_logits=True).float().cpu()
    for row, r in enumerate(results):
        assert r["labels"] == [] and r["error"] is None
        atol, rtol = MODEL_TOL[torch.float32]
        torch.testing.assert_close(torch.tensor(r["embedding"]), ref[row], atol=atol, rtol=rtol)


def test_concurrent_callers_get_their_own_results(device):
    model = _tiny()
    predictor = Predictor(model, device=device, dtype=torch.float32, max_batch_size=4)
    batches = [_images(3 + i) for i in range(4)]
    expected = [_direct(model, b, device, torch.float32)[0] for b in batches]
    results = [None] * len(batches)

    def work(i):
        for _ in range(2):
            results[i] = predictor.predict(batches[i], top_k=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for probs, res in zip(expected, results):
        _check(res, probs, None, 2, [f"class_{i}" for i in range(10)], torch.float32)


def test_from_checkpoint(tmp_path):
    model = _tiny(labels=[chr(ord("a") + i) for i in range(10)])
    vit_fast.save(model, tmp_path)
    predictor = Predictor.from_checkpoint(tmp_path, device="cpu", max_batch_size=5)
    assert not predictor.random_weights and predictor.max_batch_size == 5
    assert predictor.dtype == torch.float32 and predictor.labels[2] == "c"
    images = _images(2)
    _check(predictor.predict(images, top_k=2), _direct(model, images, "cpu", torch.float32)[0], None, 2,
           predictor.labels, torch.float32)
    fresh = Predictor.from_checkpoint(name="vit_ti_16", device="cpu")
    assert fresh.random_weights and fresh.labels[999] == "class_999"


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_graphs_match_eager_with_bucket_padding(dtype):
    model = _tiny(img_size=(224, 224))
    images = _images(13)  # max_batch_size 8: a batch of 8, then 5 padded to the bucket of 8
    probs, emb = _direct(model, images, "cuda", dtype)
    # warmup=False: graphs captured on first use (the default warm-up captures every bucket at construction)
    graphed = Predictor(model, device="cuda", dtype=dtype, max_batch_size=8, cuda_graphs=True, warmup=False)
    labels = graphed.labels
    for _ in range(2):  # first call captures, second replays
        _check(graphed.predict(images, top_k=5, return_embeddings=True), probs, emb, 5, labels, dtype)
    assert [shape[0] for shape in graphed._graph_runners[True].captured] == [8]
    small = graphed.predict(images[:3], top_k=5)  # bucket 4, no embeddings: another graph
    _check(small, probs[:3], None, 5, labels, dtype)
    assert [shape[0] for shape in graphed._graph_runners[False].captured] == [4]
    eager = Predictor(model, device="cuda", dtype=dtype, max_batch_size=8, cuda_graphs=False)
    _check(eager.predict(images, top_k=5, return_embeddings=True), probs, emb, 5, labels, dtype)


def test_warmup_runs_every_bucket_before_serving(monkeypatch):
    """warmup() pushes one zero batch per bucket (logits and embeddings) through the model, so tuning, compiles
    and graph captures happen at load time; on CPU the constructor warms nothing up."""
    model = _tiny(img_size=(32, 48))
    calls = []
    real = Predictor._forward
    monkeypatch.setattr(Predictor, "_forward", lambda self, x, return_embeddings: calls.append(
        (tuple(x.shape), x.dtype, return_embeddings)) or real(self, x, return_embeddings))
    predictor = Predictor(model, device="cpu", dtype=torch.float32, max_batch_size=4)
    assert calls == []  # CPU: nothing to tune or capture
    assert predictor.warmup() == []
    assert predictor.warmup([1, 3]) == [1, 3]
    assert calls == [((b, 3, 32, 48), torch.uint8, flag) for b in (1, 3) for flag in (False, True)]


def test_a_model_is_shared_only_with_the_same_settings():
    """A Predictor converts its model in place: a second one in another dtype (or FP8) on the same model would change
    the first one's results, and is refused naming both; the same settings may share it."""
    model = randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=10)).eval()
    first = Predictor(model, device="cpu", dtype=torch.float32)
    image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8)
    before = first.predict([image])[0]["scores"]
    Predictor(model, device="cpu", dtype="fp32")
    for dtype, said in (("bf16", "in bfloat16"), ("fp8", "in float32 with fp8")):
        with pytest.raises(ValueError, match=f"this model already runs in a Predictor on cpu in float32; another one "
                                             f"on cpu {said} would convert it under the first"):
            Predictor(model, device="cpu", dtype=dtype)
    assert first.predict([image])[0]["scores"] == before and model.patch_embed.proj.weight.dtype == torch.float32


def test_inputs_as_services_hold_them(tmp_path):
    """File objects (BytesIO, an open file, a web framework's upload), a generator, a batch array or tensor of B
    images, and a numpy top_k give what the same images as a list give."""
    model = _tiny()
    predictor = Predictor(model, device="cpu", dtype=torch.float32)
    arrays = [np.random.randint(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    pngs = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        pngs.append(buf.getvalue())
    (tmp_path / "a.png").write_bytes(pngs[0])
    want = predictor.predict(pngs, top_k=2)
    with open(tmp_path / "a.png", "rb") as handle:
        got = predictor.predict([handle, io.BytesIO(pngs[1]), io.BytesIO(pngs[2])], top_k=np.int64(2))
    assert got == want
    assert predictor.predict(iter(pngs), top_k=2) == want
    assert predictor.predict(np.stack(arrays), top_k=2) == want
    assert predictor.predict(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), top_k=2) == want
    (alone,) = predictor.predict(io.BytesIO(pngs[0]), top_k=2)  # a batch of one: equal up to the GEMM's rounding
    assert alone["indices"] == want[0]["indices"] and np.allclose(alone["scores"], want[0]["scores"], atol=1e-6)
    with open(tmp_path / "a.png") as text:
        (result,) = predictor.predict(text)
    assert result["error"] == "expected a binary file object (opened with 'rb'), got one that reads str"
