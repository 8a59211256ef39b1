"""The benchmark harness (benchmarks/): FLOP counts against the anchors, the results.json schema, and a tiny
end-to-end run through `python -m benchmarks` (subprocess, so TRITON_INTERPRET from conftest does not leak in:
on a CPU the vit_fast rows must then say that triton needs a GPU). On a CUDA machine the same run also times the
triton backend and CUDA graphs."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import flops, merge, readme, report, runner, schema
from benchmarks.cli import _overrides, add_arguments
from benchmarks.timing import percentile

REPO = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
TINY = "depth=1,embed_dim=64,num_heads=2,mlp_dim=128"


@pytest.mark.parametrize("name, gflop", [("vit_b_16", 35.1), ("vit_l_16", 123.1), ("vit_h_14", 334.6),
                                         ("vit_b_32", 8.8)])
def test_flops_match_anchor_table(name, gflop):
    import vit_fast

    assert round(flops.vit_gflops(vit_fast.get_config(name)), 1) == gflop


def test_flops_formula_general():
    # 2 layers, N = 4 + 1 tokens, D = 8, mlp 24 (not 4*D), 2 channels, patch 2, pre-logits 6, 10 classes
    cfg = dict(img_size=(4, 4), patch_size=2, in_chans=2, embed_dim=8, depth=2, mlp_dim=24, num_classes=10,
               representation_size=6)
    n, d = 5, 8
    layer = 8 * n * d * d + 4 * n * d * 24 + 4 * n * n * d
    expect = 2 * layer + 2 * (n - 1) * 2 * 4 * d + 2 * d * 6 + 2 * 6 * 10
    assert flops.vit_flops(cfg) == expect
    assert flops.vit_tokens(cfg, img_size=(8, 4)) == 9
    with pytest.raises(ValueError, match="multiple of the patch size"):
        flops.vit_tokens(cfg, img_size=5)


def test_percentile_and_compare():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    ref = torch.randn(4, 10, dtype=torch.float64) + 0.1
    out = ref.clone()
    out[2] += 0.01 * ref[2].norm() / 10**0.5  # only image 2 is off
    err, agree = runner.compare(out, ref)
    assert err == pytest.approx(0.01, rel=1e-6)
    assert agree == 1.0
    with pytest.raises(FloatingPointError):
        runner.compare(torch.full_like(ref, float("nan")), ref)


def test_schema_rejects_malformed_results():
    row = schema.empty_row("vit_b_16", 8, "bfloat16", "sdpa", False, "boom")
    good = {"env": {k: None for k in schema.ENV_KEYS}, "matmul_peak_tflops": 1.0, "rows": [row]}
    assert schema.validate(good) == []
    bad_row = dict(row, error=None)  # a successful row without metrics
    assert schema.validate(dict(good, rows=[bad_row]))
    assert schema.validate({**good, "extra": 1})
    assert schema.validate(dict(good, rows=[{k: v for k, v in row.items() if k != "mfu"}]))
    # env: "settings" (the kernel switches of the run) may be there or not; nothing else may
    assert schema.validate(dict(good, env={**good["env"], "settings": "VITFAST_FP8_PRECISE_ACC=0"})) == []
    assert schema.validate(dict(good, env={**good["env"], "extra": "x"}))
    assert schema.validate(dict(good, env={k: None for k in schema.ENV_KEYS[1:]}))


def test_runs_with_other_kernel_switches_are_labelled_and_never_merged(monkeypatch):
    from benchmarks import env as bench_env
    from benchmarks.merge import merge

    monkeypatch.delenv("VITFAST_GEMM_ENGINE", raising=False)
    monkeypatch.delenv("VITFAST_AUTOTUNE", raising=False)
    monkeypatch.setenv("VITFAST_FP8_PRECISE_ACC", "0")
    assert bench_env.collect("cpu")["settings"] == "VITFAST_FP8_PRECISE_ACC=0"
    monkeypatch.setenv("VITFAST_GEMM_ENGINE", "pointer")
    assert bench_env.collect("cpu")["settings"] == "VITFAST_GEMM_ENGINE=pointer, VITFAST_FP8_PRECISE_ACC=0"
    monkeypatch.setenv("VITFAST_GEMM_ENGINE", "auto")  # a default spelled out is no setting
    monkeypatch.setenv("VITFAST_FP8_PRECISE_ACC", "1")
    assert bench_env.collect("cpu")["settings"] is None
    row = schema.empty_row("vit_b_16", 8, "float8", "vit_fast", False, "boom")
    plain = {"env": {k: "x" for k in schema.ENV_KEYS}, "matmul_peak_tflops": 1.0, "rows": [row]}
    assert merge([plain, dict(plain, env={**plain["env"], "settings": None})])["rows"] == [row]
    switched = dict(plain, env={**plain["env"], "settings": "VITFAST_FP8_PRECISE_ACC=0"})
    with pytest.raises(ValueError, match="different kernel settings"):
        merge([plain, switched])
    changed = dict(plain, env={**plain["env"], "config": "depth=2"})  # other architectures under the same names
    with pytest.raises(ValueError, match=r"different model configs \['None', 'depth=2'\]"):
        merge([plain, changed])


def test_cli_parsing():
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--models", "vit_b_16,vit_l_16", "--batch-sizes", "1,8", "--config-overrides", TINY])
    assert args.models == ["vit_b_16", "vit_l_16"] and args.batch_sizes == [1, 8]
    assert args.config_overrides == {"depth": 1, "embed_dim": 64, "num_heads": 2, "mlp_dim": 128}
    assert _overrides("qkv_bias=false,layer_norm_eps=1e-5,global_pool=avg") == {
        "qkv_bias": False, "layer_norm_eps": 1e-5, "global_pool": "avg"}


def test_failing_backend_becomes_an_error_row(monkeypatch):
    """A backend that raises (here: sdpa at build time) yields error rows; the others are still measured."""
    from benchmarks import builders

    real_build = builders.build

    def build(backend, *a, **k):
        if backend == "sdpa":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
        return real_build(backend, *a, **k)

    monkeypatch.setattr(builders, "build", build)
    settings = runner.Settings(models=["vit_ti_16"], batch_sizes=[2], dtypes=["float32"], backends=["eager", "sdpa"],
                               device=torch.device("cpu"), resolution=32, repeats=1, warmup=0, progress=False,
                               overrides=_overrides(TINY), seed=1)
    rows = runner.run_grid(settings, peak_tflops=1.0)
    by_backend = {r["backend"]: r for r in rows}
    assert by_backend["eager"]["error"] is None and by_backend["eager"]["max_rel_err"] == 0.0
    assert "out of memory" in by_backend["sdpa"]["error"] and by_backend["sdpa"]["images_per_s"] is None


def test_time_budget_marks_rows_not_run():
    settings = runner.Settings(models=["vit_ti_16"], batch_sizes=[1, 2], dtypes=["float32"],
                               backends=["eager", "compile"], device=torch.device("cpu"), resolution=32, repeats=1,
                               warmup=0, progress=False, overrides=_overrides(TINY), seed=1, time_budget=0)
    rows = runner.run_grid(settings, peak_tflops=1.0)
    assert len(rows) == 4 and all("time budget" in r["error"] for r in rows)


def _have(module):
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001
        return False


def test_harness_end_to_end(tmp_path):
    out = tmp_path / "bench"
    device = "cuda" if HAS_CUDA else "cpu"
    # on a GPU one dtype keeps Triton's compile-and-autotune time of the vit_fast rows small
    models, batches = ["vit_ti_16", "vit_s_32"], [1, 3]
    dtypes = ["bfloat16"] if HAS_CUDA else ["float32", "bfloat16"]
    backends = ["eager", "sdpa", "vit_fast", "timm", "hf"]
    cmd = [sys.executable, "-m", "benchmarks", "--device", device, "--models", ",".join(models),
           "--resolution", "64", "--batch-sizes", ",".join(map(str, batches)), "--dtypes", ",".join(dtypes),
           "--backends", ",".join(backends), "--repeats", "2", "--warmup", "1", "--config-overrides", TINY,
           "--no-progress", "--cpu-threads", "1", "--seed", "7"]  # no --out: under the current directory
    if HAS_CUDA:
        cmd.append("--cuda-graphs")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = list((tmp_path / "bench-results").glob("*/results.json"))
    assert len(written) == 1, proc.stdout[-2000:]
    out.parent.mkdir(exist_ok=True)
    written[0].parent.rename(out)

    results = json.loads((out / "results.json").read_text())
    assert schema.validate(results) == []
    assert list(results) == list(schema.TOP_KEYS)
    from benchmarks.env import kernel_settings  # None here; VITFAST_AUTOTUNE=first in the GPU test step

    assert list(results["env"]) == [*schema.ENV_KEYS, "settings", "config"]
    assert results["env"]["config"] == TINY.replace(",", ", ")  # the presets were changed: the file says how
    assert results["env"]["settings"] == kernel_settings()
    assert all(list(r) == list(schema.ROW_KEYS) for r in results["rows"])
    assert results["matmul_peak_tflops"] > 0
    rows = {(r["model"], r["dtype"], r["batch"], r["backend"]): r for r in results["rows"]}
    assert len(rows) == len(results["rows"]) == len(models) * len(batches) * len(dtypes) * len(backends)

    bound = {"float32": 1e-4, "bfloat16": 0.1}
    for (model, dtype, batch, backend), r in rows.items():
        if backend in ("eager", "sdpa") or (backend == "hf" and _have("transformers")) or HAS_CUDA and (
                backend == "vit_fast"):
            assert r["error"] is None, r
            assert r["images_per_s"] > 0 and r["latency_ms_p90"] >= r["latency_ms_p50"] > 0
            # MFU against a peak measured in the row's own dtype with all threads: never above 1
            assert r["tflops"] > 0 and 0 < r["mfu"] <= 1 and 0 <= r["top1_agree"] <= 1, r
            assert r["max_rel_err"] < bound[dtype], r
            if backend == "hf" and dtype == "float32":  # the converted HF model computes the same function
                assert r["max_rel_err"] < 1e-5, r
            assert r["cuda_graphs"] == (HAS_CUDA and batch <= 8)
            assert (r["peak_mem_gb"] is not None) == HAS_CUDA
        if backend == "vit_fast" and not HAS_CUDA:
            assert r["error"] and "GPU" in r["error"], r
        if backend == "timm" and not _have("timm"):
            assert r["error"] and "timm" in r["error"], r
    assert "triton" in proc.stdout or HAS_CUDA  # the reason the triton backend is skipped is printed

    md = (out / "results.md").read_text()
    assert "## vit_ti_16" in md and "## vit_s_32" in md and "vs compile" in md
    if _have("matplotlib"):
        assert (out / "throughput_vit_ti_16.png").stat().st_size > 0
        assert (out / "speedup_vit_fast_vs_compile_bfloat16.png").stat().st_size > 0

    # regenerate the report from the JSON alone
    (out / "results.md").unlink()
    assert report.main([str(out), "--no-plots"]) == 0
    assert (out / "results.md").read_text() == md

    # two runs merge into one (same rows here: the later run's rows win, MFU against the median peak)
    merged = merge.merge([results, results])
    assert schema.validate(merged) == [] and len(merged["rows"]) == len(results["rows"])
    # a later run that did not measure a row (not run, failed) keeps the earlier measurement
    measured = next(r for r in results["rows"] if r["error"] is None)
    later = dict(results, rows=[schema.empty_row(measured["model"], measured["batch"], measured["dtype"],
                                                 measured["backend"], measured["cuda_graphs"], "not run")])
    kept = next(r for r in merge.merge([results, later])["rows"] if r["backend"] == measured["backend"]
                and (r["model"], r["batch"], r["dtype"]) == (measured["model"], measured["batch"], measured["dtype"]))
    assert kept["error"] is None and kept["images_per_s"] == measured["images_per_s"]

    # the README section comes from the JSON, between the markers, leaving the rest alone
    page = tmp_path / "README.md"
    page.write_text(f"# t\n\nbefore\n{readme.START}\nstale\n{readme.END}\nafter\n")
    readme.update_readme(page, out)
    text = page.read_text()
    assert "stale" not in text and text.startswith("# t\n\nbefore\n") and text.endswith("after\n")
    assert results["env"]["gpu"] in text and results["env"]["date"] in text
    assert f"| vit_ti_16 | {dtypes[0]} | 1 |" in text

    stored = readme.store(out, root=tmp_path / "results")
    assert stored.name.startswith(results["env"]["date"][:10]) and (stored / "results.json").is_file()
    assert readme.newest_results(tmp_path / "results") == stored / "results.json"


@pytest.mark.parametrize("argv, fragment", [
    (["--resolution", "100"], "--resolution 100 is not a multiple of the patch size of vit_ti_16 (patch 16: e.g. 96 or 112)"),
    (["--resolution", "8"], "patch 16"),
    (["--models", "vit_ti_14,vit_ti_16", "--resolution", "128"], "of vit_ti_14 (patch 14: e.g. 126 or 140)"),
])
def test_resolution_not_a_multiple_of_the_patch_is_an_error(tmp_path, capsys, argv, fragment):
    from benchmarks.cli import main

    assert main(["--device", "cpu", "--models", "vit_ti_16", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m benchmarks: error: ") and fragment in err[0], err
    assert not (tmp_path / "x").exists()  # refused before measuring anything


def test_a_bad_kernel_switch_is_an_error_before_measuring(tmp_path, capsys, monkeypatch):
    """A VITFAST_* switch set to a value it does not take would fail every vit_fast row: one line, nothing measured."""
    from benchmarks.cli import main

    monkeypatch.setenv("VITFAST_GEMM_ENGINE", "cublas")
    assert main(["--device", "cpu", "--models", "vit_ti_16", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == ("python -m benchmarks: error: VITFAST_GEMM_ENGINE: expected auto | tma "
                                               "| pointer | ws, got 'cublas'")
    assert not (tmp_path / "x").exists()


def test_dtypes_take_every_spelling():
    from benchmarks.cli import resolve

    args = add_arguments(argparse.ArgumentParser()).parse_args(["--device", "cpu", "--models", "vit_ti_16",
                                                                "--dtypes", "bf16,fp16,float32,fp8,bfloat16"])
    assert resolve(args).dtypes == ["bfloat16", "float16", "float32", "float8"]


def test_a_run_that_measures_no_row_says_so(tmp_path, capsys, monkeypatch):
    """Every row failed (the only backend asked for raises at build time): the files say why and the last line that
    nothing was measured. Failures are rows, not an exit code: the lease's steps record a refused engine that way."""
    from benchmarks import builders
    from benchmarks.cli import main

    real_build = builders.build

    def build(backend, *a, **k):
        if backend == "sdpa":
            raise RuntimeError("sdpa broke")
        return real_build(backend, *a, **k)

    monkeypatch.setattr(builders, "build", build)
    argv = ["--device", "cpu", "--models", "vit_ti_16", "--config-overrides", TINY, "--resolution", "32",
            "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--no-plots", "--no-progress"]
    assert main([*argv, "--backends", "sdpa", "--out", str(tmp_path / "x")]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == "note: no row was measured (the reasons are above)"
    rows = json.loads((tmp_path / "x" / "results.json").read_text())["rows"]
    assert rows and all("sdpa broke" in r["error"] for r in rows), rows
    assert main([*argv, "--backends", "sdpa,eager", "--out", str(tmp_path / "y")]) == 0
    assert "no row was measured" not in capsys.readouterr().err


def test_cpu_peak_is_per_dtype_and_mfu_is_left_out_above_it():
    from benchmarks.timing import cpu_matmul_peak_tflops

    peak, how = cpu_matmul_peak_tflops(torch.float32, sizes=(64, 128), budget_s=0.05)
    assert peak > 0 and "float32 torch.matmul" in how and "threads" in how
    settings = runner.Settings(models=["vit_ti_16"], batch_sizes=[2], dtypes=["float32"], backends=["eager"],
                               device=torch.device("cpu"), resolution=32, repeats=1, warmup=0, progress=False,
                               overrides=_overrides(TINY), seed=1)
    row = runner.run_grid(settings, {"float32": 1e-12})[0]  # a "peak" every row beats: no MFU, not MFU > 1
    assert row["error"] is None and row["tflops"] > 0 and row["mfu"] is None
    results = {"env": {k: None for k in schema.ENV_KEYS}, "matmul_peak_tflops": 1e-12, "rows": [row]}
    assert schema.validate(results) == []
    assert schema.validate(dict(results, rows=[dict(row, mfu=1.5)]))  # MFU > 1 is a schema error
