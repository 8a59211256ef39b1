"""benchmarks/prewarm.py: the lease's compile-ahead of the headline's vit_fast kernels. On the CPU: its arguments,
its rows (the headline's vit_fast rows, split into parts), and a tiny run in the interpreter that leaves every
autotuner without a disk cache (untimed choices must never reach the cache the headline reads)."""
import os
import re
from pathlib import Path

import pytest

from benchmarks import headline, prewarm
from vit_fast.kernels import _common

REPO = Path(__file__).resolve().parent.parent


def test_rows_are_the_headlines_vit_fast_rows_then_the_side_by_side_steps_split_into_parts():
    rows = prewarm.parse_args([]).rows
    plain = [(m, b, d) for m, b, d, switches in rows if not switches]
    assert sorted(plain) == sorted((m, b, d) for m, b, d, backend in headline.ROWS if backend == "vit_fast")
    assert rows[:len(plain)] == [(m, b, d, {}) for m, b, d in plain]  # the headline's first
    steps = Path(REPO, "benchmarks", "gpu_steps.sh").read_text()
    for model, batch, dtype, switches in rows[len(plain):]:  # each as its step runs it first (FIRST=(...) there)
        (name, value), = switches.items()
        step = re.search(rf"\n    (\w+)\)[^\n]*\n(?:(?!\n    \w+\)).)*?FIRST=\({name}={value}\)", steps, re.S)
        assert step, (name, value)
        body = steps[step.start():step.end()]
        assert f"--models {model} --batch-sizes {batch} --dtypes {'bfloat16,float8' if dtype == 'float8' else dtype}" \
            in body, (step.group(1), model, batch, dtype)
    parts = [prewarm.parse_args(["--part", f"{k}/3"]).rows for k in (1, 2, 3)]
    assert sum(map(len, parts)) == len(rows) and [p[0][:3] for p in parts] == [
        ("vit_l_16", 256, "bfloat16"), ("vit_l_16", 256, "float8"), ("vit_b_16", 256, "bfloat16")]
    assert prewarm.parse_args(["--rows", "vit_b_16:1,vit_l_16:256:float8"]).rows == [
        ("vit_b_16", 1, "bfloat16", {}), ("vit_l_16", 256, "float8", {})]


@pytest.mark.parametrize("argv, message", [
    (["--rows", "vit_b_16"], "expected MODEL:BATCH[:DTYPE] (e.g. vit_l_16:256:float8), got 'vit_b_16'"),
    (["--rows", "vit_b_16:0"], "got 'vit_b_16:0'"),
    (["--rows", "vit_b_16:8:int4"], "unknown dtype 'int4' in 'vit_b_16:8:int4'; expected one of bfloat16, float16, "
                                    "float32, float8"),
    (["--part", "4/3"], "expected K/N with 1 <= K <= N (e.g. 2/3), got '4/3'"),
])
def test_bad_arguments_say_what_was_expected(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        prewarm.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_unknown_model_and_tiny_without_the_interpreter_are_one_line(capsys, monkeypatch):
    assert prewarm.main(["--rows", "vit_q_16:1"]) == 2
    assert capsys.readouterr().err.startswith("prewarm: error: unknown model 'vit_q_16'; known models: ")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "all")
    assert prewarm.main(["--tiny"]) == 2
    assert capsys.readouterr().err == ("prewarm: error: --tiny runs the kernels in Triton's interpreter: set "
                                       "TRITON_INTERPRET=1\n")


def test_tiny_run_compiles_under_the_compile_setting(capsys, monkeypatch):
    from vit_fast.kernels import autotune

    monkeypatch.setenv(_common.AUTOTUNE_ENV, "all")  # main sets compile; monkeypatch restores this afterwards
    for tuner in autotune.AUTOTUNED:  # keys an earlier test tuned in this process are tuned again
        monkeypatch.setattr(tuner, "cache", {})
    settings = []
    real = autotune.autotune_setting
    monkeypatch.setattr(autotune, "autotune_setting", lambda: settings.append(real()) or settings[-1])
    assert prewarm.main(["--tiny", "--rows", "vit_b_16:2,vit_ti_16:1:float8", "--part", "1/1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(": ", 1)[0] for line in lines] == ["prewarm 1/1: vit_b_16 b2 bfloat16",
                                                          "prewarm 1/1: vit_ti_16 b1 float8"], lines
    assert settings and set(settings) == {"compile"}  # every key's prune saw it (no disk cache, all configs)


def test_rows_past_the_deadline_are_skipped(capsys, monkeypatch):
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "all")
    assert prewarm.main(["--tiny", "--rows", "vit_b_16:2", "--deadline", "1"]) == 0
    assert capsys.readouterr().out == "prewarm 1/1: vit_b_16 b2 bfloat16: skipped, past the deadline\n"


def test_a_rows_switches_hold_for_that_row_only_and_a_failure_is_one_line(capsys, monkeypatch):
    from benchmarks import builders

    monkeypatch.setenv(_common.AUTOTUNE_ENV, "all")
    monkeypatch.delenv("VITFAST_SPLIT_K", raising=False)
    monkeypatch.setenv("VITFAST_GELU", "fitted")
    seen, builds = [], builders.build
    rows = [("vit_ti_16", 1, "bfloat16", {"VITFAST_SPLIT_K": "1", "VITFAST_GELU": "libdevice"}),
            ("vit_ti_16", 2, "float8", {"VITFAST_SPLIT_K": "2"}), ("vit_ti_16", 1, "bfloat16", {})]

    def build(backend, master, dtype, device, mode, preset):
        seen.append((dtype, os.environ.get("VITFAST_SPLIT_K"), os.environ["VITFAST_GELU"]))
        if dtype == builders.FP8:
            raise RuntimeError("no FP8\nhere")
        return builds(backend, master, dtype, device, mode, preset=preset)

    monkeypatch.setattr(builders, "build", build)
    monkeypatch.setattr(prewarm, "parse_args", lambda argv: type("Args", (), dict(
        rows=rows, part=(1, 1), deadline=None, resolution=32, tiny=True))())
    assert prewarm.main([]) == 0
    bf16, fp8 = "torch.bfloat16", "torch.float8_e4m3fn"
    assert [(str(d), k, g) for d, k, g in seen] == [(bf16, "1", "libdevice"), (fp8, "2", "fitted"),
                                                    (bf16, None, "fitted")]
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"prewarm 1/1: vit_ti_16 b1 bfloat16 VITFAST_SPLIT_K=1 VITFAST_GELU=libdevice: [0-9.]+ s",
                        out[0]), out
    assert re.fullmatch(r"prewarm 1/1: vit_ti_16 b2 float8 VITFAST_SPLIT_K=2: failed after [0-9.]+ s: no FP8 here",
                        out[1]), out
    assert os.environ.get("VITFAST_SPLIT_K") is None and os.environ["VITFAST_GELU"] == "fitted"
