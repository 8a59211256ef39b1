"""`vit-fast validate` end to end on a tiny model (width 160, head dim 80, 1 layer, a non-square 7-token grid): the
kernels run under the Triton interpreter on CPU (on a GPU for real), judged by the suite's own budgets."""
import json
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from vit_fast import kernels
import vit_fast
from tests.helpers import randomize_
from vit_fast import numerics
from vit_fast import validate as validate_mod
from vit_fast.cli import build_parser, main

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
    exact, exact_folded = kernels.ln_linear, kernels.ln_linear_folded  # both: the op check and the model call the second
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


def test_the_report_gives_the_size_the_images_ran_at(monkeypatch, tmp_path, capsys):
    """A processor that crops smaller than the position table (HF's DINOv2): `tokens` counts the tokens the model
    ran on, `input_size` says the size, `img_size` stays the table's."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the sizes are the point here, not the kernels
    path = tmp_path / "r.json"
    code, out, _ = _run([*TINY, "--set", "input_size=[8,16]", "--random", "2", "--batch", "2", "--json", str(path)],
                        capsys)
    model = json.loads(path.read_text())["model"]
    assert code == 0, out
    assert (model["tokens"], model["input_size"], model["img_size"]) == (1 + 1 * 2, [8, 16], [16, 24])


FP8_OPS = ["ln_qkv", "attention", "linear_residual[proj]", "ln_linear[fc1]", "linear_residual[fc2]"]


@pytest.fixture
def fp8_checkpoint(tmp_path):
    """Two blocks (rows for the first and the last). Seeded: whether FP8 keeps top-1 agreement on random weights
    depends on the draw, and the outcome of a test must not."""
    torch.manual_seed(0)
    model = randomize_(vit_fast.create("vit_ti_16", depth=2, embed_dim=160, num_heads=2, mlp_dim=192,
                                       patch_size=8, img_size=(16, 24), num_classes=10))
    return vit_fast.save(model, tmp_path / "ckpt")


def test_fp8_rows_check_the_fp8_gemms(fp8_checkpoint, tmp_path, capsys):
    """`--dtype fp8`: the four GEMMs run their FP8 engines at the model's shapes, and attention stores the
    out-projection's e4m3 codes, against the unquantized op in float64, with 2x the torch emulation's error as the
    budget; patch embedding and the final norm stay bf16; the model is quantized by vit_fast.quantize and judged by
    the FP8 minimums."""
    code, out, _ = _run(["--checkpoint", str(fp8_checkpoint), "--dtype", "fp8", "--random", "4", "--batch", "4",
                         "--json", str(tmp_path / "r.json")], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0, out
    if not report["kernels"]["ran"]:
        pytest.skip(report["kernels"]["reason"])  # a CUDA GPU older than sm_89
    rows = {(r["op"], r["block"]): r for r in report["ops"]}
    assert [r["op"] for r in report["ops"]] == [*OPS, *OPS[1:-1]]  # table order: block 0 (and the model ops), block 1
    for (op, block), row in rows.items():
        assert row["status"] == "pass", row
        assert 0 < row["kernel_err"] <= row["budget"] == pytest.approx(2 * row["torch_err"] + 1e-4), row
        assert row["dtype"] == ("float8_e4m3fn" if op in FP8_OPS else "bfloat16"), row
        if op in FP8_OPS:  # the reference is the unquantized op: FP8's own error shows (bf16's is ~10x smaller)
            assert row["torch_err"] > 1e-3, row
    assert rows[("ln_qkv", 1)]["shape"] == [4, 7, 160] and rows[("linear_residual[fc2]", 0)]["shape"] == [4, 7, 192]
    whole = report["whole_model"]
    assert whole["candidate"] == "triton fp8" and whole["baseline"] == "sdpa bfloat16"
    metrics = whole["metrics"]
    for name, minimum in numerics.FP8_MODEL_MINIMUMS.items():
        assert metrics[name]["budget"] == minimum and metrics[name]["status"] == "pass", (name, metrics[name])
    assert metrics["logits_rel_err_max"]["status"] == "info"
    assert "float8_e4m3fn" in out and "PASS" in out


def test_an_fp8_kernel_that_is_off_fails(fp8_checkpoint, monkeypatch, tmp_path, capsys):
    """The FP8 out-projection and FC2 off by 2^-4 (relative): their rows fail, the bf16 ones and the other FP8
    GEMMs pass, exit code 1."""
    exact = kernels.linear_residual

    def off(*a, **k):
        out = exact(*a, **k)
        return out * (1 + 2.0**-4) if k.get("weight_scale") is not None else out

    monkeypatch.setattr(kernels, "linear_residual", off)
    code, out, _ = _run(["--checkpoint", str(fp8_checkpoint), "--dtype", "fp8", "--random", "2", "--batch", "2",
                         "--json", str(tmp_path / "r.json")], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    if not report["kernels"]["ran"]:
        pytest.skip(report["kernels"]["reason"])
    assert code == 1 and not report["passed"], out
    for row in report["ops"]:
        assert row["status"] == ("fail" if row["op"].startswith("linear_residual") else "pass"), row
    assert "FAIL" in out and "linear_residual[fc2] (block 1): kernel error" in out


def test_an_fp8_checkpoint_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    """An FP8 checkpoint has no fp32 model to compare with: one line, before the weights are read."""
    model = vit_fast.create("vit_ti_16", depth=1, embed_dim=64, num_heads=2, mlp_dim=64, img_size=32).to_fp8()
    ckpt = vit_fast.save(model, tmp_path / "fp8")
    monkeypatch.setattr(validate_mod, "_load", lambda *a: pytest.fail("loaded a model before checking arguments"))
    for path in (ckpt, ckpt / "model.safetensors"):
        code, out, err = _run(["--checkpoint", str(path), "--dtype", "fp8"], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert f"--checkpoint {path} is an FP8 model; validate measures FP8 against the fp32 model" in err


def test_fp8_without_kernels_runs_the_emulation(monkeypatch, capsys):
    """No GPU and no interpreter: `--dtype fp8` still runs end to end, the FP8 model on the torch emulation."""
    if torch.cuda.is_available():
        pytest.skip("the kernels run on a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, out, _ = _run([*TINY, "--random", "2", "--batch", "2", "--dtype", "fp8"], capsys)
    assert code in (0, 1), out  # top-1 agreement of a random-weight model is the draw's; the run is what is tested
    assert "per-op: skipped: the Triton kernels need a CUDA GPU and this machine has none" in out
    assert "the whole model below is the FP8 torch emulation with PyTorch's sdpa" in out
    assert "candidate sdpa fp8 (torch emulation), PyTorch torch bfloat16" in out


def test_fp8_exclude_keeps_layers_in_bf16(monkeypatch, tmp_path, capsys):
    """`--fp8-exclude fc2`: the whole model is quantized as `quantize(..., exclude="fc2")` and the report says so."""
    seen = []
    real = vit_fast.quantize
    monkeypatch.setattr(vit_fast, "quantize", lambda *a, **k: seen.append(k.get("exclude")) or real(*a, **k))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the emulation: the exclusion is what is tested
    code, out, _ = _run([*TINY, "--random", "2", "--batch", "2", "--dtype", "fp8", "--fp8-exclude", "fc2",
                         "--json", str(tmp_path / "r.json")], capsys)
    assert code in (0, 1) and seen == ["fc2"], out
    report = json.loads((tmp_path / "r.json").read_text())
    assert "fp8 (torch emulation), fc2 kept in bf16" in report["whole_model"]["candidate"]


def test_fp8_on_a_gpu_without_fp8_tensor_cores(monkeypatch):
    """On an sm_80 GPU the FP8 kernels cannot run: validate says why and compares the emulation instead (bf16
    still runs the kernels there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    parser = build_parser()
    checked = validate_mod._check_args(parser.parse_args(["validate", *TINY, "--device", "cuda", "--dtype", "fp8"]))
    reason = checked["kernel_reason"]
    assert "compute capability 8.9 or 9.0" in reason and "sm_80" in reason and "FP8 torch emulation" in reason
    checked = validate_mod._check_args(parser.parse_args(["validate", *TINY, "--device", "cuda", "--dtype", "bf16"]))
    assert checked["kernel_reason"] is None


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
    (["--json", "FILE/r.json"], "is a file, not a folder"),  # found before the run, not when writing after it
    (["--device", "tpu"], "--device expects cuda or cpu, got 'tpu'"),
    (["--fp8-exclude", "fc2"], "--fp8-exclude applies to --dtype fp8 only, got --dtype bf16"),
    (["--dtype", "fp8", "--fp8-exclude", "fc9"], "'fc9' names no FP8 layer"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "CUDA is not available")]))
def test_bad_arguments_are_one_line_before_loading(argv, match, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    argv = [str(tmp_path) if a in ("EMPTY", "DIR") else a.replace("FILE", str(tmp_path / "file")) for a in argv]
    monkeypatch.setattr(validate_mod, "_load", lambda *a: pytest.fail("loaded a model before checking arguments"))
    code, out, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("vit-fast: error:") and match in lines[0], lines


@pytest.mark.parametrize("spelling, name", [("bfloat16", "bf16"), ("float32", "fp32"), ("half", "fp16"),
                                            ("float8", "fp8")])
def test_dtype_takes_torchs_names_too(spelling, name):
    checked_args = build_parser().parse_args(["validate", *TINY, "--dtype", spelling])
    validate_mod._check_args(checked_args)
    assert checked_args.dtype == name


def test_a_bad_kernel_switch_is_one_line_before_loading(monkeypatch, capsys):
    """Every VITFAST_* kernel switch is read before a model loads (here the GEMM engine's, misspelt)."""
    monkeypatch.setenv("VITFAST_GEMM_ENGINE", "WS2")
    monkeypatch.setattr(validate_mod, "_load", lambda *a: pytest.fail("loaded a model before checking the switches"))
    code, out, err = _run(TINY, capsys)
    assert code == 2 and out == ""
    assert err.strip() == "vit-fast: error: VITFAST_GEMM_ENGINE: expected auto | tma | pointer | ws, got 'ws2'"


def test_the_report_names_the_kernel_switches_set(monkeypatch, tmp_path, capsys):
    """A report made with a kernel switch set says so, on screen and in the JSON (None at the defaults): which
    engine ran is part of what was validated."""
    from vit_fast.switches import SWITCHES

    for name in SWITCHES:  # the GPU test step sets some
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VITFAST_LN_PARTIALS", "0")
    code, out, _ = _run([*TINY, "--random", "2", "--batch", "2", "--json", str(tmp_path / "r.json")], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0, out
    assert report["kernels"]["settings"] == "VITFAST_LN_PARTIALS=0"
    assert ("kernel switches: VITFAST_LN_PARTIALS=0" in out) == report["kernels"]["ran"]


@pytest.fixture
def seed0():
    """Requested first: the weights and images made by the fixtures after it are a fixed draw. Whether FP8 keeps
    top-1 agreement >= 99 % on a random-weight model depends on the draw; the outcome of a test must not."""
    torch.manual_seed(0)


def test_readme_examples(seed0, checkpoint, images, monkeypatch, tmp_path, capsys):
    """The README's `vit-fast validate` lines as written, run where `ckpt/` and `my_images/` exist. On CPU without
    the interpreter, as a user without a GPU runs them (`--dtype fp8`: the torch emulation)."""
    lines = [line.split("#")[0].strip() for line in README.read_text().splitlines()
             if line.startswith("vit-fast validate ")]
    assert len(lines) == 3 and any("--dtype fp8" in line for line in lines), \
        "README lost its `vit-fast validate` examples"
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


def test_fp8_ln_rows_allow_rounding_flips_only():
    """The tolerance reference of the FP8 LN+QKV / LN+FC1 rows: the GEMM on the rows the engine quantized when they
    are torch's up to a few one-step rounding flips (the engine's LayerNorm sums in another order), else torch's
    own rows, so a wrong quantizer still fails the row."""
    from vit_fast import fp8
    from vit_fast.validate import ops_fp8

    torch.manual_seed(1)
    d = 64
    i = {"x": torch.randn(2, 9, d).bfloat16(), "g": torch.randn(d).bfloat16(), "b": torch.randn(d).bfloat16(),
         "eps": 1e-6}
    ln = torch.nn.functional.layer_norm(i["x"].float().reshape(-1, d), (d,), i["g"].float(), i["b"].float(), 1e-6)
    ref_q, ref_s = fp8.quantize_rows(ln)

    def nudged(codes_delta, scale=1.0):
        def quantize(x2d, ln_params):
            codes = ref_q.view(torch.uint8).clone().view(-1)
            where = ((codes & 0x7F) < 0x70).nonzero().flatten()[: len(codes_delta)]  # away from the top (448)
            codes[where] = (codes[where].int() + torch.tensor(codes_delta)).to(torch.uint8)
            return codes.view(ref_q.shape).view(torch.float8_e4m3fn), ref_s * scale
        return quantize

    def taken(quantize):
        q, s = ops_fp8.engine_rows(i, quantize)
        return not torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)) or not torch.equal(s, ref_s)

    assert taken(nudged([1]))  # one neighbouring code (1 of 1,152 elements): the engine's rows
    assert not taken(nudged([2]))  # two steps off: torch's
    assert not taken(nudged([1], scale=1.01))  # another scale: torch's
    assert not taken(nudged([1] * 2))  # 2 of 1,152 elements flipped: more than FLIPS_ALLOWED
    assert ops_fp8.FLIPS_ALLOWED == 1e-3
