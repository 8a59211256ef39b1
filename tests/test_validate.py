"""`vit-fast validate` end to end on a tiny model (width 160, head dim 80, 1 layer, a non-square 7-token grid): the
kernels run under the Triton interpreter on CPU (on a GPU for real), judged by the suite's own budgets."""
import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

import kernels
import vit_fast
from tests.helpers import randomize_
from vit_fast import numerics
from vit_fast import validate as validate_mod
from vit_fast.cli import main
from vit_fast.validate import ops

README = Path(__file__).resolve().parents[1] / "README.md"
OPS = ["patch_embed", "ln_qkv", "attention", "linear_residual[proj]", "ln_linear[fc1]", "linear_residual[fc2]",
       "layer_norm[final]"]
TINY = ["--model", "vit_ti_16", "--set", "depth=1", "--set", "embed_dim=160", "--set", "num_heads=2",
        "--set", "mlp_dim=192", "--set", "patch_size=8", "--set", "img_size=[16,24]", "--set", "num_classes=10"]


@pytest.fixture
def checkpoint(tmp_path):
    model = randomize_(vit_fast.create("vit_ti_16", depth=1, embed_dim=160, num_heads=2, mlp_dim=192,
                                       patch_size=8, img_size=(16, 24), num_classes=10))
    return vit_fast.save(model, tmp_path / "ckpt")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name, (h, w) in {"a.png": (40, 57), "sub/b.jpg": (64, 33), "c.png": (16, 24)}.items():
        Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not listed")
    return folder


def _run(argv, capsys):
    code = main(["validate", "--no-progress", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_passes_on_a_checkpoint_and_images(checkpoint, images, tmp_path, capsys):
    report_path = tmp_path / "out" / "report.json"
    code, out, _ = _run(["--checkpoint", str(checkpoint), "--images", str(images), "--batch", "3",
                         "--json", str(report_path)], capsys)
    report = json.loads(report_path.read_text())
    assert code == 0, out
    assert "PASS" in out and "report written" in out
    # the schema a user scripts against
    assert set(report) >= {"model", "dtype", "batch", "device", "rule", "kernels", "ops", "whole_model", "passed",
                           "failures", "seconds"}
    assert report["model"]["tokens"] == 7 and report["model"]["head_dim"] == 80 and report["dtype"] == "bf16"
    kernels_ran = report["kernels"]["ran"]
    assert kernels_ran  # interpreter on CPU (conftest), the GPU on CUDA
    assert [r["op"] for r in report["ops"]] == OPS
    for row in report["ops"]:
        assert row["status"] == "pass" and row["dtype"] == "bfloat16", row
        assert 0 < row["kernel_err"] <= row["budget"] == pytest.approx(2 * row["torch_err"] + 1e-4)
    assert report["ops"][0]["shape"] == [3, 3, 16, 24] and report["ops"][1]["shape"] == [3, 7, 160]
    whole = report["whole_model"]
    assert whole["num_images"] == 3 and whole["candidate"] == "triton bfloat16" and whole["baseline"] == "sdpa bfloat16"
    assert [s["image"] for s in whole["skipped_images"]] == ["broken.jpg"]
    metrics = whole["metrics"]
    assert set(metrics) == {"logits_rel_err_max", "logits_rel_err_mean", "embedding_rel_err_max",
                            "embedding_rel_err_mean", "embedding_cosine_min", "embedding_cosine_mean",
                            "top1_agreement", "top5_agreement"}
    for name in numerics.MODEL_RULE_METRICS:
        m = metrics[name]
        assert m["status"] == "pass" and 0 < m["candidate"] <= m["budget"], (name, m)
    assert 0.99 < metrics["embedding_cosine_min"]["candidate"] <= 1.0 + 1e-9
    assert {w["image"] for w in whole["worst"]} == {"a.png", "c.png", str(Path("sub") / "b.jpg")}
    worst = [w["logits_rel_err"] for w in whole["worst"]]
    assert worst == sorted(worst, reverse=True) and worst[0] == metrics["logits_rel_err_max"]["candidate"]


def test_a_kernel_that_is_off_fails(checkpoint, monkeypatch, tmp_path, capsys):
    """FC1 + GELU off by 2^-4 (relative) at the model's shapes: its row and the whole model fail, exit code 1."""
    exact, exact_folded = kernels.ln_linear, kernels.ln_linear_folded  # the op check calls the first, the model the second
    monkeypatch.setattr(kernels, "ln_linear", lambda *a, **k: exact(*a, **k) * (1 + 2.0**-4))
    monkeypatch.setattr(kernels, "ln_linear_folded", lambda *a, **k: exact_folded(*a, **k) * (1 + 2.0**-4))
    code, out, _ = _run(["--checkpoint", str(checkpoint), "--random", "4", "--batch", "4",
                         "--json", str(tmp_path / "r.json")], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 1 and not report["passed"], out
    status = {r["op"]: r["status"] for r in report["ops"]}
    assert status.pop("ln_linear[fc1]") == "fail" and set(status.values()) == {"pass"}
    assert report["whole_model"]["metrics"]["embedding_rel_err_max"]["status"] == "fail"
    assert "FAIL" in out and "ln_linear[fc1] (block 0): kernel error" in out


def test_without_kernels_compares_sdpa(monkeypatch, capsys):
    """No GPU and no interpreter: the op rows are skipped with the reason, the model check is sdpa vs eager."""
    if torch.cuda.is_available():
        pytest.skip("the kernels always run on a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, out, _ = _run([*TINY, "--random", "3", "--batch", "2", "--dtype", "fp16"], capsys)
    assert code == 0, out
    assert "per-op: skipped: the Triton kernels need a CUDA GPU and this machine has none" in out
    assert "candidate sdpa float16, PyTorch torch float16" in out


def test_fp8_plugs_into_quantize(monkeypatch, tmp_path, capsys):
    """`--dtype fp8` calls vit_fast.quantize(model, "fp8"); the ops that stay bf16 are checked in bf16, an op with
    an FP8 entry in the table runs that entry, the other GEMMs are skipped, the model is judged by the FP8
    minimums; per-block ops are checked in the first and the last block. (Stand-ins for quantize and the entry.)"""
    calls = []

    def quantize(model, kind):
        calls.append(kind)
        return model

    monkeypatch.setattr(vit_fast, "quantize", quantize, raising=False)
    bf16_ln_qkv = next(c for c in ops.OP_CHECKS if c.name == "ln_qkv")
    fp8_entry = dataclasses.replace(bf16_ln_qkv, dtypes={"fp8": torch.bfloat16})
    monkeypatch.setattr(ops, "OP_CHECKS", ops.OP_CHECKS + [fp8_entry])
    code, out, _ = _run([*TINY, "--set", "depth=2", "--dtype", "fp8", "--random", "1", "--batch", "1", "--json",
                         str(tmp_path / "r.json")], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and calls == ["fp8"], out
    assert len(report["ops"]) == 2 + 2 * 5  # one row per op and block: the fp8 ln_qkv replaced the skipped one
    status = {(r["op"], r["block"]): r["status"] for r in report["ops"]}
    assert status == {("patch_embed", None): "pass", ("layer_norm[final]", None): "pass",
                      **{(op, block): "pass" if op in ("attention", "ln_qkv") else "skipped"
                         for block in (0, 1) for op in OPS if op not in ("patch_embed", "layer_norm[final]")}}
    metrics = report["whole_model"]["metrics"]
    assert metrics["top1_agreement"]["budget"] == numerics.FP8_MODEL_MINIMUMS["top1_agreement"]
    assert metrics["logits_rel_err_max"]["status"] == "info"


@pytest.mark.parametrize("argv,match", [
    (["--batch", "0"], "--batch expects a positive number"),
    (["--random", "-3"], "--random expects a positive number"),
    (["--dtype", "int8"], "--dtype expects one of fp32, fp16, bf16, fp8, got 'int8'"),
    (["--images", "/nonexistent/imgs"], "--images expects a folder of images; '/nonexistent/imgs' is not there"),
    (["--images", "EMPTY"], "no image files under"),
    (["--checkpoint", "/nonexistent/ckpt"], "no checkpoint at '/nonexistent/ckpt'"),
    (["--model", "vit_q_16"], "unknown model 'vit_q_16'"),
    (["--set", "oops"], "--set expects key=value"),
    (["--set", "embed_dim=100"], "embed_dim 100 is not divisible by num_heads 12"),
    (["--json", "DIR"], "--json expects a file name"),
    (["--device", "tpu"], "--device expects cuda or cpu, got 'tpu'"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "CUDA is not available")]))
def test_bad_arguments_are_one_line_before_loading(argv, match, tmp_path, monkeypatch, capsys):
    argv = [str(tmp_path) if a in ("EMPTY", "DIR") else a for a in argv]
    monkeypatch.setattr(validate_mod, "_load", lambda *a: pytest.fail("loaded a model before checking arguments"))
    code, out, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("vit-fast: error:") and match in lines[0], lines


def test_readme_examples(checkpoint, images, monkeypatch, tmp_path, capsys):
    """The README's `vit-fast validate` lines as written, run where `ckpt/` and `my_images/` exist. On CPU without
    the interpreter, as a user without a GPU runs them."""
    lines = [line.split("#")[0].strip() for line in README.read_text().splitlines()
             if line.startswith("vit-fast validate ")]
    assert len(lines) == 2, "README lost its `vit-fast validate` examples"
    work = tmp_path / "work"
    work.mkdir()
    checkpoint.rename(work / "ckpt")
    images.rename(work / "my_images")
    monkeypatch.chdir(work)
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for line in lines:
        argv = shlex.split(line)[1:]
        assert main(argv) == 0, line
        assert "PASS" in capsys.readouterr().out
        report = json.loads((work / argv[argv.index("--json") + 1]).read_text())
        expected = int(argv[argv.index("--random") + 1]) if "--random" in argv else 3  # broken.jpg is skipped
        assert report["passed"] and report["whole_model"]["num_images"] == expected


def test_budget_rule():
    ref = torch.randn(64, dtype=torch.float64)
    torch_out = (ref + 1e-3 * torch.randn(64, dtype=torch.float64)).float()
    torch_err = (torch_out.double() - ref).abs().max().item()
    b = numerics.kernel_budget(ref.float(), ref, torch_out, torch.bfloat16)
    assert b.passed and b.budget == pytest.approx(2 * torch_err + numerics.KERNEL_FLOOR[torch.bfloat16])
    off = ref.float() + 2.5 * torch_err + 2e-4
    assert not numerics.kernel_budget(off, ref, torch_out, torch.bfloat16).passed
    nan = ref.float().clone()
    nan[3] = float("nan")
    assert not numerics.kernel_budget(nan, ref, torch_out, torch.bfloat16).passed
    assert not numerics.model_budget(float("nan"), 0.1, torch.float16).passed


def test_tolerance_bound():
    ref = torch.tensor([1.0, -2.0, 100.0], dtype=torch.float64)
    atol, rtol = numerics.KERNEL_TOL[torch.float16]
    inside = ref + (atol + rtol * ref.abs()) * 0.99
    assert numerics.within_tol(inside, ref, torch.float16)
    assert not numerics.within_tol(ref + (atol + rtol * ref.abs()) * 1.01, ref, torch.float16)
    assert not numerics.within_tol(torch.tensor([1.0, float("nan"), 100.0]), ref, torch.float16)
