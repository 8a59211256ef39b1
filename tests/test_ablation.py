"""benchmarks/ablation.py: several kernel-switch settings of one vit_fast row in one process. On this machine it runs
eagerly in Triton's interpreter at toy sizes; the checks are that every call of a setting, the timed ones included,
runs under that setting's switches (on a GPU its CUDA graph holds those launches), that a setting the device cannot
take is its own one-line row while the others run, and that bad switches stop it before anything is built."""
import importlib
import json
import os

import pytest
import torch

from benchmarks import ablation, breakdown
from vit_fast.kernels import gemm_fp8
from vit_fast.kernels._common import GELU_ENV, LN_PARTIALS_ENV, PRECISE_ACC_ENV

ln_linear = importlib.import_module("vit_fast.kernels.ln_linear")  # the package exports the op's function

TOY = ["--batch", "2", "--dtype", "float32", "--resolution", "32", "--rounds", "2", "--repeats", "1", "--warmup", "0",
       "--profile-forwards", "1", "--config-overrides", "embed_dim=64,num_heads=2,mlp_dim=128,depth=2"]


def test_each_setting_runs_under_its_switches(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(GELU_ENV, raising=False)
    monkeypatch.delenv(LN_PARTIALS_ENV, raising=False)
    seen = []  # the GELU switch at every FC1 launch

    def recording(code, _real=ln_linear.epilogue_activation):
        seen.append(os.environ.get(GELU_ENV, "fitted"))
        return _real(code)
    monkeypatch.setattr(ln_linear, "epilogue_activation", recording)
    out = tmp_path / "abl"
    assert ablation.main(["--out", str(out), *TOY, "--switch", f"{GELU_ENV}=libdevice",
                          "--switch", f"{LN_PARTIALS_ENV}=0", "--switch", "VITFAST_GEMM_ENGINE=ws"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["shipped", f"{GELU_ENV}=libdevice", f"{LN_PARTIALS_ENV}=0", "VITFAST_GEMM_ENGINE=ws"]
    # 2 FC1 launches a forward. The shipped setting is prepared (one forward), then profiled (one forward); each
    # switched one is prepared, timed in 2 rounds that alternate with the shipped one (one replay each), then
    # profiled; the ws setting fails at its first GEMM
    f, lib = ["fitted"] * 2, ["libdevice"] * 2
    assert seen == f + f + (lib + (f + lib) * 2 + lib) + (f + (f + f) * 2 + f), seen
    assert os.environ.get(GELU_ENV) is None and os.environ.get(LN_PARTIALS_ENV) is None  # restored
    for name in (f"{GELU_ENV}=libdevice", f"{LN_PARTIALS_ENV}=0"):
        row = rows[name]
        assert len(row["round_ms"]) == 2 and row["images_per_s"] > 0 and row["max_rel_err"] < 1e-4, row
        assert row["vs_shipped"] == pytest.approx(row["shipped_ms_p50"] / row["latency_ms_p50"])
    shipped = rows["shipped"]  # its replays beside both switched settings
    assert shipped["vs_shipped"] == 1.0 and shipped["images_per_s"] > 0 and shipped["max_rel_err"] < 1e-4
    # the Gluon engine refuses under the interpreter: its row says so in one line, the others still ran
    assert "expected an sm_90 GPU" in rows["VITFAST_GEMM_ENGINE=ws"]["error"]
    assert "\n" not in rows["VITFAST_GEMM_ENGINE=ws"]["error"]
    # each setting that ran has its time per layer part (on a CPU its ops' self time), a failed setting none
    for name in ("shipped", f"{GELU_ENV}=libdevice", f"{LN_PARTIALS_ENV}=0"):
        parts = rows[name]["parts_ms"]
        assert list(parts) == list(breakdown.GROUPS) and parts["FC1"] > 0 and parts["QKV"] > 0, (name, parts)
    assert "parts_ms" not in rows["VITFAST_GEMM_ENGINE=ws"]
    md = (out / "ablation.md").read_text()
    assert "| shipped |" in md and "expected an sm_90 GPU" in md
    assert "Per layer part, ms a forward (CPU self time of its ops" in md and md.count("| shipped | ") == 2


def test_a_dtype_setting_times_the_model_in_that_dtype(tmp_path, monkeypatch):
    """dtype=float8 settings: the same model quantized, timed against the shipped fp32 one, each with its own
    switches (the FP8 GEMM reads the promotion switch at every launch); FP8's logits error is FP8's, not fp32's."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(PRECISE_ACC_ENV, raising=False)
    seen = []  # the promotion switch at every FP8 GEMM launch

    def recording(_real=gemm_fp8.precise_acc_setting):
        seen.append(os.environ.get(PRECISE_ACC_ENV, "default"))
        return _real()
    monkeypatch.setattr(gemm_fp8, "precise_acc_setting", recording)
    timed = []  # the dtype of the inputs of each timed call: each side of a round on its own model's

    def timing_inputs(f, inputs, *args, _real=ablation.timing.time_calls):
        timed.append(inputs[0].dtype)
        return _real(f, inputs, *args)
    monkeypatch.setattr(ablation.timing, "time_calls", timing_inputs)
    out = tmp_path / "abl"
    assert ablation.main(["--out", str(out), *TOY, "--profile-forwards", "0", "--switch", "dtype=float8",
                          "--switch", f"dtype=float8,{PRECISE_ACC_ENV}=0"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["shipped", "dtype=float8", f"dtype=float8,{PRECISE_ACC_ENV}=0"]
    assert [r["dtype"] for r in rows.values()] == ["float32", "float8", "float8"]
    assert rows["dtype=float8"]["switches"] == {} and rows[f"dtype=float8,{PRECISE_ACC_ENV}=0"]["switches"] == {
        PRECISE_ACC_ENV: "0"}
    assert rows["shipped"]["max_rel_err"] < 1e-4
    for name in ("dtype=float8", f"dtype=float8,{PRECISE_ACC_ENV}=0"):
        row = rows[name]
        assert 1e-3 < row["max_rel_err"] < 0.5 and row["images_per_s"] > 0, row  # quantized: FP8's error
        assert row["vs_shipped"] == pytest.approx(row["shipped_ms_p50"] / row["latency_ms_p50"])
    # the shipped fp32 model launches no FP8 GEMM; each FP8 setting's 4 launches a block (2 blocks) ran under its
    # switch: prepared (one forward), then 2 timed rounds (one replay each)
    per_forward = 8
    assert seen == ["default"] * per_forward * 3 + ["0"] * per_forward * 3, seen
    assert os.environ.get(PRECISE_ACC_ENV) is None
    assert timed == [torch.float32, torch.bfloat16] * 4  # 2 rounds of (shipped, FP8) for each FP8 setting
    md = (out / "ablation.md").read_text()
    assert "A dtype= setting is the model in that dtype (under its switches, if any), timed against the shipped " \
           "float32 one" in md


def test_time_budget_leaves_later_settings_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "abl"
    assert ablation.main(["--out", str(out), *TOY, "--time-budget", "0", "--switch", f"{GELU_ENV}=libdevice"]) == 0
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert [r.get("error", "").split(":")[0] for r in rows] == ["not run", "not run"]


@pytest.mark.parametrize("switches, message", [
    (["VITFAST_GELU=erf"], "VITFAST_GELU: expected fitted | libdevice, got 'erf'"),
    (["VITFAST_NOPE=1"], "expected VITFAST_NAME=value or dtype=DTYPE (names: VITFAST_"),
    (["VITFAST_GELU"], "expected VITFAST_NAME=value"),
    (["dtype=float9"], "dtype: expected bfloat16 | float16 | float32 | float8, got 'float9'"),
    (["dtype=float8,VITFAST_GELU=libdevice,dtype=float32"], "dtype is given twice in 'dtype=float8,"),
    (["dtype=float32"], "a --switch is the shipped setting itself (dtype=float32, no switch)"),  # TOY: float32
    (["dtype=float8,VITFAST_GELU=libdevice", "VITFAST_GELU=libdevice,dtype=float8"], "a --switch is given twice"),
])
def test_bad_switches_are_one_line_before_anything_runs(switches, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        # toy sizes: a check that let one through would end in seconds, not run B/16 b256 in the interpreter
        ablation.main(["--out", str(tmp_path / "abl"), *TOY] + [a for s in switches for a in ("--switch", s)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err
    assert not (tmp_path / "abl").exists()


def test_a_stop_keeps_the_comparisons_already_made(tmp_path, monkeypatch):
    """The step's time limit (SIGTERM: runner.Interrupted) while a later setting is being prepared: the file keeps
    the comparison made before it, and says which settings did not run."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    real, calls = ablation._prepare, []

    def stopping(built, switches, *args):
        calls.append(switches)
        if len(calls) == 3:
            raise ablation.runner.Interrupted("signal 15")
        return real(built, switches, *args)
    monkeypatch.setattr(ablation, "_prepare", stopping)
    out = tmp_path / "abl"
    assert ablation.main(["--out", str(out), *TOY, "--switch", f"{GELU_ENV}=libdevice",
                          "--switch", f"{LN_PARTIALS_ENV}=0", "--switch", "VITFAST_STAGGER=0"]) == 0
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert rows[0]["vs_shipped"] == 1.0 and rows[1]["images_per_s"] > 0
    assert [r["error"] for r in rows[2:]] == ["not run: the run was interrupted (signal 15)",
                                              "not run: the run was interrupted (signal 15)"]
