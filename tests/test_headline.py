"""benchmarks/headline.py: the priority rows a device lease measures first, resumed across the calls of one lease,
a row started only when the time left covers one of its kind, and the targets of issues 10 and 13 judged from the
rows (synthetic numbers here: the real ones come only from a GPU run)."""
import json

import pytest

from benchmarks import headline, schema


def _main(tmp_path, *args):
    return headline.main(["--out", str(tmp_path), "--tiny", "--repeats", "1", "--warmup", "0", *args])


def test_rows_not_run_for_lack_of_time_are_measured_on_resume(tmp_path, capsys):
    only = "vit_b_16:1:sdpa,vit_ti_16:2:eager"
    assert _main(tmp_path, "--only", only, "--time-budget", "0.001") == 0
    first = json.loads((tmp_path / "results.json").read_text())
    seed = json.loads((tmp_path / "setup.json").read_text())["seed"]
    assert [r["error"].split(":")[0] for r in first["rows"]] == ["not run", "not run"]
    assert "a bfloat16 sdpa row takes about 20 s" in first["rows"][0]["error"]

    assert _main(tmp_path, "--only", only, "--resume") == 0
    assert "2 of 2 rows to run (resumed)" in capsys.readouterr().out
    again = json.loads((tmp_path / "results.json").read_text())
    setup = json.loads((tmp_path / "setup.json").read_text())
    assert schema.validate(again) == [] and setup["seed"] == seed
    assert [s["triton_kernels_compiled"] for s in setup["rows"]] == [None, None]  # counted for vit_fast rows only
    assert [(r["model"], r["backend"], r["error"]) for r in again["rows"]] == [("vit_b_16", "sdpa", None),
                                                                                 ("vit_ti_16", "eager", None)]
    assert again["matmul_peak_tflops"] == first["matmul_peak_tflops"]

    assert _main(tmp_path, "--only", only, "--resume") == 0  # nothing left: the measured rows are kept as they are
    assert "0 of 2 rows to run (resumed)" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == again["rows"]


def test_a_fresh_run_ignores_earlier_rows_without_resume(tmp_path, capsys):
    assert _main(tmp_path, "--only", "vit_ti_16:1:eager") == 0
    assert _main(tmp_path, "--only", "vit_ti_16:2:eager") == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [2]


def test_plan_expands_model_batch_items_and_keeps_the_priority_order():
    args = headline.parse_args(["--out", "x"])
    gpu = headline.plan(args, gpu=True)
    assert gpu == headline.ROWS
    assert gpu.index(("vit_l_16", 256, "float8", "vit_fast")) < gpu.index(("vit_l_16", 256, "bfloat16", "compile"))
    assert all(b != "compile" for *_, b in headline.plan(args, gpu=False))
    args = headline.parse_args(["--out", "x", "--only", "vit_h_14:64,vit_l_16:256:vit_fast:float8"])
    assert headline.plan(args, gpu=True) == [("vit_h_14", 64, "bfloat16", b) for b in headline.BACKENDS] + [
        ("vit_l_16", 256, "float8", "vit_fast")]
    args = headline.parse_args(["--out", "x", "--only", "vit_h_14:64", "--backends", "vit_fast"])
    assert headline.plan(args, gpu=True) == [("vit_h_14", 64, "bfloat16", "vit_fast")]


def test_every_row_but_compile_replays_cuda_graphs_on_a_gpu():
    """As Predictor serves a model, and as compile's max-autotune mode does by itself: graphs at batch 256 too."""
    import torch

    args = headline.parse_args(["--out", "x"])
    rows = headline.plan(args, gpu=True)
    settings = headline._settings(args, torch.device("cuda"), rows, seed=1)
    for model, batch, dtype, backend in rows:
        assert headline._graphs(settings, batch, backend) == (backend != "compile"), (model, batch, backend)
    assert not any(headline._graphs(headline._settings(args, torch.device("cpu"), rows, 1), b, k)
                   for _, b, _, k in rows)


@pytest.mark.parametrize("item, message", [
    ("vit_b_16", "expected MODEL:BATCH[:BACKEND[:DTYPE]]"), ("vit_b_16:0", "expected MODEL:BATCH"),
    ("vit_b_16:8:tensorrt", "unknown backend 'tensorrt'"), ("vit_b_16:8:vit_fast:int8", "unknown dtype 'int8'"),
])
def test_bad_rows_say_what_was_expected(item, message, capsys):
    with pytest.raises(SystemExit) as e:
        headline.parse_args(["--out", "x", "--only", item])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_time_needed_per_kind_comes_from_the_rows_seen(tmp_path):
    run = headline.Run(tmp_path, {}, 1.0, "", 0)
    assert run.need_s("vit_b_16", "bfloat16", "compile") == headline.START_GUESS_S["compile"]
    assert run.need_s("vit_b_16", "bfloat16", "eager") == headline.START_GUESS_OTHER_S
    run.write = lambda: None
    for batch, s in ((256, 90.0), (1, 40.0)):
        for backend in ("compile", "vit_fast"):
            row = schema.empty_row("vit_b_16", batch, "bfloat16", backend, False)
            row.update(images_per_s=1.0, latency_ms_p50=1.0, mfu=0.1, max_rel_err=0.0)
            run.add(row, 1.0, 1.0, s)
    assert run.need_s("vit_l_16", "bfloat16", "compile") == 90.0  # every compile row is a new build: the longest
    assert run.need_s("vit_b_16", "bfloat16", "vit_fast") == 40.0  # a model's later rows reuse what it built
    # another model's first row builds and autotunes again: at least the guess, or the shortest first row seen
    assert run.need_s("vit_l_16", "bfloat16", "vit_fast") == headline.START_GUESS_S["vit_fast"]
    assert run.need_s("vit_l_16", "float8", "vit_fast") == headline.START_GUESS_S["vit_fast"]


def test_a_deadline_sets_the_budget_from_the_wall_clock(tmp_path):
    import time

    assert _main(tmp_path, "--only", "vit_ti_16:1:eager", "--deadline", str(time.time() - 1)) == 0
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["error"].startswith("not run: -") and "time budget left" in row["error"], row


def test_resume_needs_the_same_commit_and_settings(tmp_path, monkeypatch, capsys):
    assert _main(tmp_path, "--only", "vit_ti_16:1:eager") == 0
    monkeypatch.setattr(headline.env_mod, "git_commit", lambda: "another")
    assert _main(tmp_path, "--only", "vit_ti_16:1:eager", "--resume") == 0
    out = capsys.readouterr().out
    assert "not resuming: the earlier results differ in commit" in out and "1 of 1 rows to run" in out
    assert _main(tmp_path, "--only", "vit_ti_16:1:eager", "--resume", "--repeats", "2") == 0
    assert "not resuming: the earlier results differ in settings" in capsys.readouterr().out


def _row(model, batch, dtype, backend, ips, err=1e-2, top1=0.99, p50=1.0, mfu=0.5, graphs=False):
    row = schema.empty_row(model, batch, dtype, backend, graphs)
    row.update(images_per_s=ips, latency_ms_p50=p50, latency_ms_p90=p50, tflops=1.0, mfu=mfu, max_rel_err=err,
               top1_agree=top1)
    return row


def test_targets_are_judged_from_the_rows():
    rows = [_row("vit_b_16", 256, "bfloat16", "sdpa", 1000.0, err=4e-3),
            _row("vit_b_16", 256, "bfloat16", "vit_fast", 1300.0, err=5e-3, mfu=0.61),
            _row("vit_b_16", 256, "bfloat16", "compile", 1000.0),
            _row("vit_b_16", 1, "bfloat16", "vit_fast", 1900.0, p50=0.52, graphs=True),
            _row("vit_l_16", 256, "bfloat16", "vit_fast", 400.0), _row("vit_l_16", 256, "float8", "vit_fast", 600.0),
            _row("vit_h_14", 256, "bfloat16", "vit_fast", 100.0), _row("vit_h_14", 256, "float8", "vit_fast", 130.0)]
    results = {"env": {"gpu": "test", "date": "today", "commit": "abc"}, "matmul_peak_tflops": 800.0, "rows": rows}
    setup = {"matmul_peak": "test", "rows": [{k: r[k] for k in ("model", "batch", "dtype", "backend")}
                                             | {"first_result_s": 1.0} for r in rows]}
    text = headline.summary(results, setup)
    assert "compiled kernels" not in text  # no row recorded the cache (an older setup.json)
    for i, s in enumerate(setup["rows"]):
        s["triton_kernels_compiled"] = i if s["backend"] == "vit_fast" else None
    text = headline.summary(results, setup)
    assert ("Triton kernels the vit_fast rows compiled before their first result (the rest came from its cache; a "
            "lease compiles the headline's kernels beside its tests, benchmarks/prewarm.py): vit_b_16 256 bfloat16 1, "
            "vit_b_16 1 bfloat16 3, vit_l_16 256 bfloat16 4, vit_l_16 256 float8 5, vit_h_14 256 bfloat16 6, "
            "vit_h_14 256 float8 7.") in text
    assert "- MET: vit_b_16 b256: vit_fast 1.30x compile (target >= 1.25x)" in text
    assert "- MET: vit_b_16 b256: vit_fast MFU 61.0% of the measured peak" in text
    assert "- NOT MET: vit_b_16 b1: vit_fast p50 0.520 ms with CUDA graphs (target <= 0.5 ms)" in text
    assert "- not measured: vit_l_16 b256 vit_fast vs compile" in text
    assert "- MET: vit_l_16 b256: float8 vit_fast 1.50x bf16 vit_fast (target >= 1.4x)" in text
    assert "- NOT MET: vit_h_14 b256: float8 vit_fast 1.30x bf16 vit_fast (target >= 1.4x)" in text
    assert "- MET: vit_b_16 b256: bf16 error vs fp32 5.00e-03, sdpa's 4.00e-03 (target <= 2x)" in text


def test_a_vit_fast_row_records_the_kernels_it_compiled(tmp_path, monkeypatch):
    """`triton_kernels_compiled`: how many finished compiles (`<hash>/__grp__*.json`) Triton's cache gained during a
    vit_fast row's first result; None for other backends, and when the cache cannot be read."""
    import triton

    cache = tmp_path / "cache"
    monkeypatch.setattr(triton.knobs.cache, "dir", str(cache))
    assert headline.triton_cached_kernels() == 0  # no cache directory yet
    for i, name in enumerate(("a/__grp__k.json", "b/__grp__k.json", "b/k.json", "c/k.autotune.json")):
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_text("{}")
    assert headline.triton_cached_kernels() == 2
    real = headline.Path.glob

    def compile_one(self, pattern):  # each count finds one more compile: the row "compiled" one kernel
        (cache / f"n{len(list(cache.iterdir()))}").mkdir()
        (cache / f"n{len(list(cache.iterdir())) - 1}" / "__grp__k.json").write_text("{}")
        return real(self, pattern)

    out = tmp_path / "run"
    monkeypatch.setattr(headline.Path, "glob", compile_one)
    assert _main(out, "--only", "vit_ti_16:2:vit_fast,vit_ti_16:2:eager") == 0
    monkeypatch.setattr(headline.Path, "glob", real)
    setup = json.loads((out / "setup.json").read_text())
    assert [(s["backend"], s["triton_kernels_compiled"]) for s in setup["rows"]] == [("vit_fast", 1),
                                                                                   ("eager", None)], setup

    def unreadable(self, pattern):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(headline.Path, "glob", unreadable)
    assert headline.triton_cached_kernels() is None
