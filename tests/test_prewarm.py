"""benchmarks/prewarm.py: the lease's compile-ahead of the headline's vit_fast kernels. On the CPU: its arguments,
its rows (the headline's vit_fast rows, split into parts), and a tiny run in the interpreter that leaves every
autotuner without a disk cache (untimed choices must never reach the cache the headline reads)."""
import pytest

from benchmarks import headline, prewarm
from vit_fast.kernels import _common


def test_rows_default_to_the_headlines_vit_fast_rows_split_into_parts():
    rows = [(m, b, d) for m, b, d, backend in headline.ROWS if backend == "vit_fast"]
    assert prewarm.parse_args([]).rows == rows and ("vit_l_16", 256, "float8") in rows
    parts = [prewarm.parse_args(["--part", f"{k}/3"]).rows for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(rows) and parts[0][0] == rows[0]
    assert prewarm.parse_args(["--rows", "vit_b_16:1,vit_l_16:256:float8"]).rows == [
        ("vit_b_16", 1, "bfloat16"), ("vit_l_16", 256, "float8")]


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


def test_tiny_run_compiles_without_a_disk_cache(capsys, monkeypatch):
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "all")  # main sets compile; monkeypatch restores this afterwards
    for tuner in _common.AUTOTUNED:
        monkeypatch.setattr(tuner, "cache_results", True)  # as on a GPU (the interpreter turns it off itself)
    assert prewarm.main(["--tiny", "--rows", "vit_b_16:2,vit_ti_16:1:float8", "--part", "1/1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(": ", 1)[0] for line in lines] == ["prewarm 1/1: vit_b_16 b2 bfloat16",
                                                          "prewarm 1/1: vit_ti_16 b1 float8"], lines
    assert len(_common.AUTOTUNED) == 8 and not any(t.cache_results for t in _common.AUTOTUNED)
    assert _common.autotune_setting() == "compile"


def test_rows_past_the_deadline_are_skipped(capsys, monkeypatch):
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "all")
    assert prewarm.main(["--tiny", "--rows", "vit_b_16:2", "--deadline", "1"]) == 0
    assert capsys.readouterr().out == "prewarm 1/1: vit_b_16 b2 bfloat16: skipped, past the deadline\n"
