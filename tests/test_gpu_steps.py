"""The GPU session's steps (benchmarks/gpu_steps.sh) start and write their files: each step in its DRY mode on this
machine (toy sizes, CPU), the test subset list still collects, and the per-kernel grouping of benchmarks/breakdown
is right on synthetic profiler events shaped like vit_fast's and like torch.compile's."""
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks import breakdown, schema, store_lease
from benchmarks.breakdown import Dims, Kernel
from benchmarks.env import slug

REPO = Path(__file__).resolve().parent.parent
D, MLP, ROWS = 768, 3072, 256 * 197


def _steps(tmp_path, *args, timeout=240, **extra_env):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(tmp_path / "out"), DRY="1", PYTHON=sys.executable, VITFAST_GPU_CACHE=str(tmp_path / "cache"),
               **extra_env)
    proc = subprocess.run(["bash", "benchmarks/gpu_steps.sh", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, tmp_path / "out"


def test_subset_list_collects_and_leaves_out_the_aot_check():
    nodes = [line.strip() for line in (REPO / "tests" / "gpu_subset.txt").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "tests/kernels/test_model_shapes.py" == nodes[0] and not any("aot" in n for n in nodes)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *nodes],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert sum("test_ops_at_model_shapes[" in c for c in collected) == 18  # 3 models x 2 batches x 3 dtypes
    assert any("test_cuda_graph_capture_of_the_triton_model" in c for c in collected)
    assert any("test_cuda_graphs_match_eager_with_bucket_padding" in c for c in collected)


def test_bad_step_arguments_say_what_was_expected(tmp_path):
    for args, match in ((["nope"], "usage"), (["grid"], "slice number"), (["grid", "9"], "does not exist")):
        proc, _ = _steps(tmp_path, *args, timeout=30)
        assert proc.returncode == 2 and match in proc.stderr, proc.stderr
    proc, _ = _steps(tmp_path, "merge", timeout=30)
    assert proc.returncode == 2 and "run those steps first" in proc.stderr


def test_bad_lease_arguments_say_what_was_expected(tmp_path):
    for args, match in ((["lease", "9m"], "whole seconds, got '9m'"), (["lease", "60", "tests nope"], "'nope'")):
        proc, _ = _steps(tmp_path, *args, timeout=60)
        assert proc.returncode == 2 and match in proc.stderr, proc.stderr


@pytest.mark.parametrize("slice_", ["2", "3", "4"])
def test_dry_grid_slices_beyond_the_first_run(tmp_path, slice_):
    """Slices 2 and 3 start with a /32 model, 4 with the timm and HF backends: each runs its first model to a valid
    results file (the compile slices 5-6 differ from 1 only in the backend)."""
    proc, out = _steps(tmp_path, "grid", slice_, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = json.loads((out / f"grid-{slice_}" / "results.json").read_text())
    assert schema.validate(results) == [] and results["rows"]


def test_dry_fp8_profile(tmp_path):
    """profile8: the FP8 model's per-kernel breakdown (on a CPU, tiny, its kernels in Triton's interpreter), every
    part of a layer timed and the bf16 prediction beside it."""
    proc, out = _steps(tmp_path, "profile8", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    prof = json.loads((out / "profile8" / "breakdown.json").read_text())
    assert prof["dtype"] == "float8" and list(prof["backends"]) == ["vit_fast"], prof["backends"]
    groups = prof["backends"]["vit_fast"]["groups"]
    assert all(groups[g] > 0 for g in ("QKV", "attention", "out-proj", "FC1", "FC2")), groups
    assert "vitfast::ln_qkv_fp8" in (out / "profile8" / "breakdown.md").read_text()


def test_dry_batch1_profile(tmp_path):
    """profile1: the per-kernel breakdown at batch 1 (B/16 on a GPU, vit_fast beside sdpa; tiny eager and sdpa on a
    CPU), every part of a layer timed, and store_lease keeps it."""
    proc, out = _steps(tmp_path, "profile1", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    prof = json.loads((out / "profile1" / "breakdown.json").read_text())
    assert prof["batch"] == 1 and list(prof["backends"]) == ["eager", "sdpa"], prof["backends"]
    assert all(prof["backends"]["sdpa"]["groups"][g] > 0 for g in ("QKV", "attention", "FC1", "FC2"))
    # a lease that ran only this step stores it under the date, device and commit its breakdown records
    with tarfile.open(tmp_path / "runs.tar.gz", "w:gz") as tar:
        tar.add(out / "profile1", arcname="./profile1")
    assert store_lease.main([str(tmp_path / "runs.tar.gz"), "--root", str(tmp_path / "results"), "--readme", "",
                             "--no-plots"]) == 0
    stored = next((tmp_path / "results").iterdir())
    assert (stored / "lease" / "profile1" / "breakdown.md").is_file()


def _switched_then_shipped(tmp_path, step: str, setting: str, rows: set):
    """A step run alone that measures with one kernel switch, then as shipped (_check_switched)."""
    proc, out = _steps(tmp_path, step, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    _check_switched(out / step, setting, rows)


def _check_switched(step_dir, setting: str, rows: set):
    """A switched step's files: its results recording the switch, then as shipped (shipped/), recorded without it;
    the same (batch, backend) rows in both, each with a throughput."""
    first = json.loads((step_dir / "results.json").read_text())
    shipped = json.loads((step_dir / "shipped" / "results.json").read_text())
    assert schema.validate(first) == [] and first["env"]["settings"] == setting
    assert schema.validate(shipped) == [] and not shipped["env"]["settings"]
    for results in (first, shipped):
        assert {(r["batch"], r["backend"]) for r in results["rows"]} == rows, results["rows"]
        assert all(r["images_per_s"] for r in results["rows"]), results["rows"]


def test_dry_batch1_engine_step(tmp_path):
    """b1engine: batch 1 with the 16-bit GEMMs forced onto the pointer engine, then as shipped; vit_fast beside
    sdpa in both."""
    _switched_then_shipped(tmp_path, "b1engine", "VITFAST_GEMM_ENGINE=pointer", {(1, "vit_fast"), (1, "sdpa")})


def test_dry_batch1_split_step(tmp_path):
    """b1split: batch 1 with split-K off, then as shipped; vit_fast beside sdpa in both."""
    _switched_then_shipped(tmp_path, "b1split", "VITFAST_SPLIT_K=1", {(1, "vit_fast"), (1, "sdpa")})


def test_dry_steps_of_a_group_share_the_shipped_half(tmp_path):
    """In one lease: b1pdl measures batch 1 with programmatic dependent launch, then as shipped (without); b1desc, a
    later step of the same group (the same rows), measures batch 1 with the TMA descriptors built by each program and
    copies b1pdl's shipped half, saying whose it is; gelu, of another group, measures B/16's b256 row (toy: batch 2)
    with libdevice's erf in FC1's GELU, then its own shipped half. vit_fast beside sdpa at batch 1. The step that
    finds the shipped half measured needs one half's time less."""
    # a commit of its own: a tree with uncommitted changes shares nothing (its commit reads "<sha>+changes")
    proc, out = _steps(tmp_path, "lease", "560", "b1pdl b1desc gelu", timeout=560, VITFAST_SOURCE_COMMIT="0" * 40)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    log = (out / "lease" / "lease.log").read_text()
    work = tmp_path / "cache" / "lease-work"
    pdl, desc = work / "b1pdl", work / "b1desc"
    batch1 = {(1, "vit_fast"), (1, "sdpa")}
    _check_switched(pdl, "VITFAST_PDL=1", batch1)
    _check_switched(desc, "VITFAST_TMA_DESC=device", batch1)
    _check_switched(work / "gelu", "VITFAST_GELU=libdevice", {(2, "vit_fast")})
    assert json.loads((desc / "results.json").read_text())["env"]["settings"] == "VITFAST_TMA_DESC=device"
    shipped = (pdl / "shipped" / "results.json").read_text()
    assert (desc / "shipped" / "results.json").read_text() == shipped and not json.loads(shipped)["env"]["settings"]
    assert (desc / "shipped" / "shared.txt").read_text().startswith("measured by the b1pdl step")
    assert len(re.findall(r"=== b1(pdl|desc): .*-m benchmarks --out \S*/shipped ", log)) == 1, log
    assert "=== lease: b1pdl with" in log and re.search(r"=== lease: b1pdl with \d+ s left \(needs 90 s\)", log)
    assert re.search(r"=== lease: b1desc with \d+ s left \(needs 62 s\)", log), log  # one half's budget less
    assert re.search(r"b1desc: the shipped half as measured by the b1pdl", log)
    assert re.search(r"=== gelu: .*-m benchmarks --out \S*gelu/shipped ", log)  # another group: its own
    assert (work / "gelu" / "shipped" / "shared.txt").read_text().startswith("measured by the gelu step")
    # store_lease keeps the shared half with its note, under the step that copied it
    assert store_lease.main([str(out / "lease" / "runs.tar.gz"), "--root", str(tmp_path / "results"), "--readme", "",
                             "--no-plots"]) == 0
    stored = next((tmp_path / "results").iterdir()) / "lease" / "b1desc" / "shipped"
    assert (stored / "results.json").read_text() == shipped and (stored / "shared.txt").is_file()


def test_shared_shipped_half_is_per_group_commit_and_switches():
    """Where a switched step keeps its group's shipped half (gpu_steps.sh's shared_dir, run alone): one place per
    group, commit and VITFAST_* environment; none for steps outside the groups, nor for an unknown commit or one with
    uncommitted changes."""
    script = (REPO / "benchmarks" / "gpu_steps.sh").read_text()
    functions = "\n".join(re.search(rf"^{name}\(\) {{.*?^}}$", script, re.S | re.M).group(0)
                          for name in ("commit", "shared_dir"))

    def where(step, commit, **switches):
        env = {k: v for k, v in os.environ.items() if not k.startswith("VITFAST_")}
        env.update(STEP_COMMIT=commit, CACHE="/cache", **switches)
        return subprocess.run(["bash", "-c", f"{functions}\nshared_dir {step}"], env=env, capture_output=True,
                              text=True, check=True).stdout.strip()

    b1 = where("b1pdl", "a" * 40)
    assert re.fullmatch(r"/cache/shipped/b1-[0-9a-f]{16}", b1)
    assert where("b1desc", "a" * 40) == b1 and where("b1engine", "a" * 40) == b1
    assert where("gelu", "a" * 40).startswith("/cache/shipped/b256-")
    assert where("b1pdl", "b" * 40) != b1
    assert where("b1pdl", "a" * 40, VITFAST_TMA_DESC="device") != b1
    assert where("b1pdl", "a" * 7 + "+changes") == "" and where("b1pdl", "unknown") == ""
    assert where("headline", "a" * 40) == "" and where("fp8acc", "a" * 40) == ""


def test_dry_layer_norm_statistics_step(tmp_path):
    """lnstats: the headline's B/16 b256 vit_fast row (toy: batch 2) with a statistics launch per LayerNorm, then as
    shipped (merged partial statistics)."""
    _switched_then_shipped(tmp_path, "lnstats", "VITFAST_LN_PARTIALS=0", {(2, "vit_fast")})


def test_dry_stagger_step(tmp_path):
    """stagger: the same row with the two-programs rows' programs starting together, then as shipped (staggered)."""
    _switched_then_shipped(tmp_path, "stagger", "VITFAST_STAGGER=0", {(2, "vit_fast")})


def test_dry_ws16_step(tmp_path):
    """ws16: the B/16 b256 row with VITFAST_GEMM_ENGINE=ws (recorded), then as shipped (shipped/). Under the
    interpreter the switched row carries the dispatch's one-line error (Gluon needs an sm_90 GPU): the switch reached
    the GEMM ops, and the step still stores both halves."""
    _gluon_step_refused_then_shipped(tmp_path, "ws16", "VITFAST_GEMM_ENGINE", ("batch", 2), timeout=300)


@pytest.mark.parametrize("step, switched", [
    ("ablate256", ["VITFAST_GEMM_ENGINE=ws", "VITFAST_LN_PARTIALS=0", "VITFAST_GELU=libdevice", "VITFAST_STAGGER=0"]),
    ("ablate1", ["VITFAST_STATS_SLOT=128", "VITFAST_GEMM_ENGINE=pointer", "VITFAST_SPLIT_K=1",
                 "VITFAST_TMA_DESC=device", "VITFAST_PDL=1", "VITFAST_LN_PARTIALS=0"]),
    ("ablateL", ["dtype=float8", "VITFAST_GEMM_ENGINE=ws", "dtype=float8,VITFAST_FP8_PRECISE_ACC=0"]),
])
def test_dry_ablation_steps(tmp_path, step, switched):
    """ablate256 / ablate1 / ablateL: the shipped row and its group's switched rows in one process (toy sizes in the
    interpreter); the Gluon engine's row carries its one-line refusal, the others ran; store_lease keeps the files.
    The machine's test step passed the 16-bit engine's GPU comparison (its log says so), so that switch stays in; the
    FP8 one failed its tests, so ablateL leaves the FP8 engine's row out and still measures the FP8 model."""
    ws, ws8 = "tests/kernels/test_gemm_ws.py", "tests/kernels/test_gemm_fp8_ws.py"
    _test_log(tmp_path / "out" / "tests" / "tests.jsonl", [
        (f"{ws}::test_ws_engine_matches_the_tma_engine_and_eager[16421x1136x2096-torch.bfloat16]", "passed"),
        (f"{ws}::test_ws_switch_refuses_under_the_interpreter", "skipped"), ("tests/other.py::test_x", "failed"),
        (f"{ws8}::test_ws_engine_matches_the_tma_and_pointer_engines[a]", "failed")])
    proc, out = _steps(tmp_path, step, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads((out / step / "ablation.json").read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["shipped", *switched] and result["batch"] == 2
    assert result["model"] == ("vit_l_16" if step == "ablateL" else "vit_b_16")
    assert ("without dtype=float8,VITFAST_FP8_ENGINE=ws" in proc.stdout) == (step == "ablateL")
    for name, row in rows.items():
        if name == "VITFAST_GEMM_ENGINE=ws":
            assert "expected an sm_90 GPU" in row["error"]
            continue
        assert "error" not in row and row["images_per_s"] > 0, row
        assert row["parts_ms"]["FC1"] > 0, row  # its time per layer part
        if row["dtype"] == "float8":  # the FP8 model against the shipped fp32 one: FP8's error
            assert 1e-3 < row["max_rel_err"] < 0.5, row
        else:
            assert row["max_rel_err"] < 1e-4, row
    stored = _stored_alone(tmp_path, out, step)
    assert {p.name for p in (stored / "lease" / step).iterdir()} == {"ablation.json", "ablation.md", f"{step}.log"}


def _test_log(path, lines):
    """A test step's tests.jsonl at `path`: (node id, outcome) per test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"nodeid": n, "outcome": o, "when": "call", "seconds": 1.0}) + "\n"
                            for n, o in lines))


def test_gluon_steps_wait_for_their_tests(tmp_path):
    """After a test step on the machine, the steps that run a Gluon engine need its GPU comparison passed and nothing
    in its file failed: a hung test (no line) or a failed one keeps the engine out of the lease (a hang would take
    the call with it); a step run by itself with such a log leaves the engine's switch out."""
    ws, fp8 = "tests/kernels/test_gemm_ws.py", "tests/kernels/test_gemm_fp8_ws.py"
    _test_log(tmp_path / "cache" / "lease-work" / "tests" / "tests.jsonl", [
        (f"{ws}::test_ws_takes_launches_of_enough_nearly_full_waves[1]", "passed"),  # the comparison never ended
        (f"{fp8}::test_ws_engine_matches_the_tma_and_pointer_engines[a]", "passed"),
        (f"{fp8}::test_ws_engine_matches_the_tma_and_pointer_engines[b]", "failed")])
    proc, out = _steps(tmp_path, "lease", "100", "ablateL ws16 fp8ws", timeout=100)
    log = (out / "lease" / "lease.log").read_text()
    for step, tests in (("ws16", ws), ("fp8ws", fp8)):
        assert f"=== lease: {step} skipped: {tests} did not pass in this machine's test step" in log, log
    # ablateL has rows without a Gluon engine: the lease does not skip it for the tests (here: for the time left)
    assert "=== lease: ablateL skipped: " in log and "it needs 230 s" in log.split("ablateL skipped: ")[1], log
    _test_log(tmp_path / "out" / "tests" / "tests.jsonl", [
        (f"{ws}::test_ws_engine_matches_the_tma_engine_and_eager[a]", "passed"), (f"{ws}::test_other", "error"),
        (f"{fp8}::test_ws_engine_matches_the_tma_and_pointer_engines[a]", "passed")])
    # an ablation step keeps its other rows: every setting is listed (the 1 s budget prepares at most the first)
    proc, out = _steps(tmp_path, "ablateL", timeout=100, T_LIMIT="31")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "=== ablateL: without VITFAST_GEMM_ENGINE=ws" in proc.stdout
    assert "without dtype=float8,VITFAST_FP8_ENGINE=ws" not in proc.stdout
    rows = json.loads((out / "ablateL" / "ablation.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == ["shipped", "dtype=float8", "dtype=float8,VITFAST_FP8_ENGINE=ws",
                                            "dtype=float8,VITFAST_FP8_PRECISE_ACC=0"]


def _stored_alone(tmp_path, out, step):
    """store_lease on an archive that holds only `step`'s directory: the results directory it made."""
    archive = tmp_path / "runs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(out / step, arcname=step)
    assert store_lease.main([str(archive), "--root", str(tmp_path / "results"), "--readme", "", "--no-plots"]) == 0
    return next((tmp_path / "results").iterdir())


def test_dry_fp8_fast_accumulation_step(tmp_path):
    """fp8acc: the FP8 rows measured without the fp32 promotion, the switch recorded in the results it writes, then
    as shipped (promoted/), recorded without it."""
    proc, out = _steps(tmp_path, "fp8acc", timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = json.loads((out / "fp8acc" / "results.json").read_text())
    assert schema.validate(results) == [] and results["env"]["settings"] == "VITFAST_FP8_PRECISE_ACC=0"
    assert [(r["dtype"], r["backend"], r["error"]) for r in results["rows"]] == [("float8", "vit_fast", None)]
    assert "kernel switches VITFAST_FP8_PRECISE_ACC=0" in (out / "fp8acc" / "results.md").read_text()
    promoted = json.loads((out / "fp8acc" / "promoted" / "results.json").read_text())
    assert schema.validate(promoted) == [] and promoted["env"]["settings"] is None
    assert [(r["dtype"], r["error"]) for r in promoted["rows"]] == [("float8", None)]
    # a lease that measured only this is stored as it came, under its date and device, merged into nothing
    stored = _stored_alone(tmp_path, out, "fp8acc")
    assert stored.name.endswith("-cpu") and not (stored / "results.json").exists()
    assert json.loads((stored / "lease" / "fp8acc" / "results.json").read_text()) == results
    assert json.loads((stored / "lease" / "fp8acc" / "promoted" / "results.json").read_text()) == promoted


def test_dry_lease_runs_the_steps_and_resumes_on_a_warm_machine(tmp_path):
    """One lease runs tests, headline, profile and a grid slice into the machine's cache and brings them back in at
    most 8 files; a second lease on the same machine skips the tests and the finished steps and resumes the
    headline (nothing left to run); merge then takes the headline and grid results."""
    proc, out = _steps(tmp_path, "lease", "400", "tests headline profile grid1", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:]
    back = out / "lease"
    assert sorted(p.name for p in back.iterdir()) == ["headline.md", "lease.log", "runs.tar.gz", "tests.txt"]
    with tarfile.open(back / "runs.tar.gz") as tar:
        names = {Path(n).as_posix().lstrip("./") for n in tar.getnames()}
        tar.extractall(tmp_path / "back", filter="data")
    runs = tmp_path / "back"
    for f in ("tests/junit.xml", "headline/results.json", "headline/setup.json", "profile/breakdown.json",
              "grid-1/results.json", "autotune/autotune.json", "autotune/autotune.md"):
        assert f in names, names
    assert "tests: {'passed': 1}" in (back / "tests.txt").read_text()
    prewarm = (runs / "tests" / "prewarm.log").read_text()  # beside the tests: the headline's kernels compiled
    assert [re.sub(r": [0-9.]+ s$", "", line) for line in prewarm.splitlines()] == [
        "prewarm 1/1: vit_b_16 b2 bfloat16"], prewarm
    lines = [json.loads(s) for s in (runs / "tests" / "tests.jsonl").read_text().splitlines()]
    assert [(x["outcome"], x["when"]) for x in lines] == [("passed", "call")]

    results = json.loads((runs / "headline" / "results.json").read_text())
    assert schema.validate(results) == []
    order = [(r["model"], r["batch"], r["dtype"], r["backend"]) for r in results["rows"]]
    assert order[:2] == [("vit_b_16", 2, "bfloat16", "sdpa"), ("vit_b_16", 2, "bfloat16", "vit_fast")]
    assert ("vit_l_16", 2, "float8", "vit_fast") in order and order[-1][0] == "vit_h_14"
    assert results["rows"][0]["error"] is None and "GPU" in results["rows"][1]["error"]
    setup = json.loads((runs / "headline" / "setup.json").read_text())
    assert setup["rows"][0]["first_result_s"] >= 0 and setup["rows"][0]["row_s"] > 0
    text = (back / "headline.md").read_text()
    assert "## Targets (issue 10)" in text and "## Targets (issue 13: FP8)" in text

    grid = json.loads((runs / "grid-1" / "results.json").read_text())
    assert schema.validate(grid) == [] and {r["backend"] for r in grid["rows"]} == {"eager", "sdpa", "vit_fast"}
    prof = json.loads((runs / "profile" / "breakdown.json").read_text())
    for backend in ("eager", "sdpa"):
        groups = prof["backends"][backend]["groups"]
        assert all(groups[g] > 0 for g in ("QKV", "attention", "out-proj", "FC1", "FC2", "LayerNorm")), groups
    assert "| QKV |" in (runs / "profile" / "breakdown.md").read_text()

    # the evidence to commit: merged results (headline + grid), the lease's other files, the README table
    page = tmp_path / "README.md"
    page.write_text("# x\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    assert store_lease.main([str(back / "runs.tar.gz"), "--root", str(tmp_path / "results"), "--readme", str(page),
                             "--no-plots"]) == 0
    stored = next((tmp_path / "results").iterdir())
    assert stored.name.endswith("-cpu") and schema.validate(json.loads((stored / "results.json").read_text())) == []
    for f in ("results.md", "lease/headline/setup.json", "lease/headline/headline.md", "lease/tests/junit.xml",
              "lease/profile/breakdown.json", "lease/grid-1/results.json", "lease/autotune/autotune.md"):
        assert (stored / f).is_file(), f
    assert "| vit_b_16 | bfloat16 | 2 |" in page.read_text() and "old" not in page.read_text()
    # a second lease of the same commit and day adds to it; another commit's goes beside it (rows carry no commit)
    assert store_lease.main([str(back / "runs.tar.gz"), "--root", str(tmp_path / "results"), "--readme", "",
                             "--no-plots"]) == 0
    assert [p.name for p in (tmp_path / "results").iterdir()] == [stored.name]
    stored_rows = json.loads((stored / "results.json").read_text())
    commit = stored_rows["env"]["commit"]
    stored_rows["env"]["commit"] = "0ther"
    (stored / "results.json").write_text(json.dumps(stored_rows))
    assert store_lease.main([str(back / "runs.tar.gz"), "--root", str(tmp_path / "results"), "--readme", "",
                             "--no-plots"]) == 0
    short = commit[:7] if re.fullmatch(r"[0-9a-f]{40}", commit) else commit  # git's short form for a full sha
    beside = stored.with_name(f"{stored.name}-{slug(short)}")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted([stored.name, beside.name])
    assert json.loads((beside / "results.json").read_text())["env"]["commit"] == commit
    assert json.loads((stored / "results.json").read_text())["env"]["commit"] == "0ther"
    # --source-commit: the commit the lease ran, where the device copy's stale .git recorded another
    assert store_lease.main([str(back / "runs.tar.gz"), "--root", str(tmp_path / "told"), "--readme", "",
                             "--no-plots", "--source-commit", "feedface"]) == 0
    told = next((tmp_path / "told").iterdir())
    assert json.loads((told / "results.json").read_text())["env"]["commit"] == "feedface"
    assert json.loads((told / "lease" / "headline" / "results.json").read_text())["env"]["commit"] == commit

    # a step cut short (no .done marker) runs again on the same machine; finished ones do not
    (tmp_path / "cache" / "lease-work" / "grid-1" / ".done").unlink()
    proc, out = _steps(tmp_path, "lease", "400", "tests headline profile grid1", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "tests already ran on this machine" in proc.stdout and "=== grid-1:" in proc.stdout
    assert "=== headline:" not in proc.stdout and "=== profile:" not in proc.stdout

    proc, out = _steps(tmp_path, "merge")
    assert proc.returncode == 0, proc.stdout[-3000:]
    merged = json.loads((out / "merge" / "results.json").read_text())
    key = lambda r: (r["model"], r["dtype"], r["batch"], r["backend"])  # noqa: E731
    assert sorted(map(key, merged["rows"])) == sorted({key(r) for r in grid["rows"] + results["rows"]})
    assert schema.validate(merged) == []


def test_a_short_lease_skips_what_does_not_fit(tmp_path):
    """The README's example, through make: a lease too short for the profile skips it and still packs its files."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(tmp_path / "out"), DRY="1", PYTHON=sys.executable, VITFAST_GPU_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(["make", "-s", "gpu-step", "STEP=lease 100 headline profile"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "profile skipped" in proc.stdout and "it needs 300 s" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "lease").iterdir()) == ["headline.md", "lease.log",
                                                                               "runs.tar.gz"]


def test_a_step_at_its_limit_is_not_the_lease_timing_out(tmp_path):
    """A step killed at its own limit is logged, runs again in the next lease, and the lease exits 3, not the 124
    that the device tool would read as the whole call timing out."""
    env_tests = dict(os.environ, T_TESTS="1")
    env_tests.pop("TRITON_INTERPRET", None)
    env_tests.update(OUT=str(tmp_path / "out"), DRY="1", PYTHON=sys.executable,
                     VITFAST_GPU_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(["bash", "benchmarks/gpu_steps.sh", "lease", "200", "tests"], cwd=REPO, env=env_tests,
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 3 and "tests hit its time limit" in proc.stdout, proc.stdout[-2000:]
    assert not (tmp_path / "cache" / "lease-work" / "tests" / ".done").exists()
    assert (tmp_path / "out" / "lease" / "runs.tar.gz").is_file()


def test_store_refuses_an_archive_without_results(tmp_path, capsys):
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    assert store_lease.main([str(tmp_path / "junk.tar.gz"), "--root", str(tmp_path), "--readme", ""]) == 2
    assert "is not a lease archive" in capsys.readouterr().err
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        tar.add(tmp_path / "junk.tar.gz", arcname="tests/junit.xml")
    assert store_lease.main([str(empty), "--root", str(tmp_path), "--readme", ""]) == 2
    err = capsys.readouterr().err
    assert ("holds no headline, grid, fp8acc, fp8tma, fp8ws, b1engine, b1split, b1desc, b1pdl, lnstats, gelu, "
            "stagger, ws16, ablate256, ablate1, ablateL or profile results") in err


def _k(name, start, stack):
    return Kernel(name, 10.0, start, stack)


def test_grouping_by_vitfast_ops():
    dims = Dims(D, MLP, ROWS)
    x, h = [256, 197, D], [256, 197, MLP]
    kernels = [
        _k("patch_embed_kernel", 0, [("vitfast::patch_embed", [[256, 3, 224, 224]])]),
        _k("fused_gemm_kernel", 1, [("vitfast::ln_qkv", [x, [D], [D], [], [3 * D, D]])]),
        _k("_attn_fwd_kernel", 2, [("vitfast::attention", [[256, 12, 197, 64]] * 3)]),
        # the 16-bit model's residual GEMMs also write the next LayerNorm's statistics (the last FC2 does not)
        _k("fused_gemm_kernel", 3, [("vitfast::linear_residual_stats", [x, [D, D], [D], x])]),
        _k("fused_gemm_kernel", 4, [("vitfast::ln_linear", [x, [D], [D], [], [MLP, D], [MLP], []])]),
        _k("fused_gemm_kernel", 5, [("vitfast::linear_residual", [h, [D, MLP], [D], x])]),
        _k("layer_norm_kernel", 6, [("vitfast::layer_norm", [[256, 1, D], [D], [D], []])]),
        _k("Memset (Device)", 7, []),
    ]
    got = [g for _, g in breakdown.group(kernels, dims)]
    assert got == ["other", "QKV", "attention", "out-proj", "FC1", "FC2", "LayerNorm", "other"]
    fp8 = [  # the FP8 model's ops: quantizing LayerNorm + FP8 GEMM, attention storing e4m3 codes
        _k("quant_rows_fp8_kernel", 0, [("vitfast::ln_qkv_fp8", [x])]),
        _k("fp8_gemm_kernel", 1, [("vitfast::ln_qkv_fp8", [x])]),
        _k("_attn_fwd_kernel", 2, [("vitfast::attention_fp8", [[256, 12, 197, 64]] * 3)]),
        _k("fp8_gemm_kernel", 3, [("vitfast::linear_residual", [x, [D, D], [D], x])]),
        _k("fp8_gemm_kernel", 4, [("vitfast::ln_linear_fp8_groups", [x])]),
        _k("fp8_gemm_kernel", 5, [("vitfast::linear_residual", [h, [D, MLP], [D], x])]),
    ]
    assert [g for _, g in breakdown.group(fp8, dims)] == ["QKV", "QKV", "attention", "out-proj", "FC1", "FC2"]


def test_grouping_of_compiled_and_eager_kernels():
    dims = Dims(D, MLP, ROWS)
    a = [ROWS, D]
    kernels = [
        _k("triton_per_fused_native_layer_norm_0", 0, [("triton_per_fused_native_layer_norm_0", [a, [D], [D]])]),
        # an extern cuBLAS GEMM under aten::addmm: (K, N) from the mat2 shape
        _k("nvjet_hsh_256x128_2x1_v_bz_coopA_TNN", 1, [("aten::addmm", [[3 * D], a, [D, 3 * D]])]),
        _k("pytorch_flash::flash_fwd_kernel", 2, [("aten::_scaled_dot_product_flash_attention", [])]),
        # Inductor templates get the raw (N, K) weight; FC1 by its gelu epilogue, FC2 by its mlp-wide input
        _k("triton_tem_fused_addmm_1", 3, [("triton_tem_fused_addmm_1", [a, [D, D], [D], a])]),
        _k("triton_tem_fused_addmm_gelu_2", 4, [("triton_tem_fused_addmm_gelu_2", [a, [MLP, D], [MLP]])]),
        _k("triton_tem_fused_add_addmm_3", 5, [("triton_tem_fused_add_addmm_3", [[ROWS, MLP], [D, MLP], [D], a])]),
        # a GEMM kernel without shapes follows the layer order (after FC2 comes the next layer's QKV)
        _k("sm90_xmma_gemm_bf16bf16_bf16f32", 6, []),
        _k("triton_poi_fused_add_3", 7, [("triton_poi_fused_add_3", [a, a])]),
        _k("aten::bmm", 8, [("aten::bmm", [[3072, 197, 64], [3072, 64, 197]]), ("aten::matmul", [])]),
    ]
    got = [g for _, g in breakdown.group(kernels, dims)]
    assert got == ["LayerNorm", "QKV", "attention", "out-proj", "FC1", "FC2", "QKV", "other", "attention"]


def test_summary_and_prediction():
    import vit_fast

    cfg = vit_fast.get_config("vit_b_16")
    dims = Dims(cfg.embed_dim, cfg.mlp_dim, 256 * 197)
    grouped = breakdown.group([Kernel("k", 3000.0, i, [("vitfast::ln_qkv", [])]) for i in range(6)], dims)
    s = breakdown.summarize(grouped, forwards=3)
    assert s["groups"]["QKV"] == pytest.approx(6.0) and s["total_ms"] == pytest.approx(6.0)
    assert s["top_kernels"][0]["calls"] == 2
    pred = breakdown.predicted_ms(cfg, 256, peak_tflops=800.0, bandwidth_tbs=3.35)
    # QKV: 12 layers x 2 * 50432 * 768 * 2304 FLOPs at 800 TFLOP/s (compute-bound at batch 256)
    assert pred["QKV"] == pytest.approx(12 * 2 * 50432 * 768 * 2304 / 800e12 * 1e3, rel=1e-9)
    assert pred["FC1"] == pytest.approx(pred["FC2"]) and pred["FC1"] == pytest.approx(4 * pred["out-proj"])


def test_deadline_skips_late_tests_and_times_out_a_running_one(tmp_path):
    """tests/conftest.py's GPU-session hooks: past VITFAST_TEST_HARD_END a running test fails as a timeout, past
    VITFAST_TEST_DEADLINE the rest are skipped; junit and the per-test log are written either way."""
    pytest.importorskip("pytest_timeout")
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_late.py").write_text(
        "import os, time\n"
        "os.environ['VITFAST_TEST_DEADLINE'] = str(time.time() + 3)  # set at collection, read by the hooks\n"
        "os.environ['VITFAST_TEST_HARD_END'] = str(time.time() + 6)\n"
        "def test_slow():\n    time.sleep(60)\n"
        "def test_after():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITFAST_TEST")}
    env["VITFAST_TEST_LOG"] = str(tmp_path / "log.jsonl")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=120",
                           f"--junitxml={tmp_path / 'j.xml'}", "test_late.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Timeout" in proc.stdout, proc.stdout[-2000:]
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(x["nodeid"].split("::")[1], x["outcome"]) for x in lines] == [("test_slow", "failed"),
                                                                           ("test_after", "skipped")]
    assert "VITFAST_TEST_DEADLINE" in lines[1]["message"] and (tmp_path / "j.xml").is_file()


def test_dry_fp8_ws_engine_step(tmp_path):
    """fp8ws: the FP8 rows with VITFAST_FP8_ENGINE=ws (recorded), then as shipped (shipped/). Under the interpreter
    the switched row carries the dispatch's one-line error (Gluon needs an sm_90 GPU): the switch reached the FP8
    ops, and the step still stores both halves."""
    _gluon_step_refused_then_shipped(tmp_path, "fp8ws", "VITFAST_FP8_ENGINE", ("dtype", "float8"), timeout=200)


def _gluon_step_refused_then_shipped(tmp_path, step: str, switch: str, row: tuple, timeout: int):
    """A step run alone whose switched half sets `switch`=ws (a Gluon engine): its one row (`row`: a (key, value) it
    must have) the dispatch's refusal under the interpreter, its shipped row measured, both stored by store_lease."""
    proc, out = _steps(tmp_path, step, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    key, value = row
    results = json.loads((out / step / "results.json").read_text())
    assert schema.validate(results) == [] and results["env"]["settings"] == f"{switch}=ws"
    assert [(r[key], r["backend"]) for r in results["rows"]] == [(value, "vit_fast")]
    assert results["rows"][0]["error"] == (f"ValueError: {switch}=ws: device: expected an sm_90 GPU (Gluon kernels "
                                           "do not run under the interpreter), got TRITON_INTERPRET=1")
    shipped = json.loads((out / step / "shipped" / "results.json").read_text())
    assert shipped["env"]["settings"] is None and [(r[key], r["error"]) for r in shipped["rows"]] == [(value, None)]
    stored = _stored_alone(tmp_path, out, step)
    assert json.loads((stored / "lease" / step / "results.json").read_text()) == results
    assert json.loads((stored / "lease" / step / "shipped" / "results.json").read_text()) == shipped
    assert (stored / "lease" / step / f"{step}.log").is_file()


def test_dry_fp8_tma_engine_step(tmp_path):
    """fp8tma: the FP8 rows on the FP8 TMA engine (VITFAST_FP8_ENGINE=tma, recorded in the results), then also
    without the promotion (fast/); stored apart like fp8acc."""
    proc, out = _steps(tmp_path, "fp8tma", timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = json.loads((out / "fp8tma" / "results.json").read_text())
    assert schema.validate(results) == [] and results["env"]["settings"] == "VITFAST_FP8_ENGINE=tma"
    assert [(r["dtype"], r["backend"], r["error"]) for r in results["rows"]] == [("float8", "vit_fast", None)]
    fast = json.loads((out / "fp8tma" / "fast" / "results.json").read_text())
    assert fast["env"]["settings"] == "VITFAST_FP8_ENGINE=tma, VITFAST_FP8_PRECISE_ACC=0"
    assert [(r["dtype"], r["error"]) for r in fast["rows"]] == [("float8", None)]
    stored = _stored_alone(tmp_path, out, "fp8tma")
    assert json.loads((stored / "lease" / "fp8tma" / "fast" / "results.json").read_text()) == fast
