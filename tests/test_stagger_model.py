"""benchmarks/stagger_model.py, the model NOTES.md quotes for the staggered two-programs rows: in step without an
offset (a pair of tiles takes exactly 2W + E), max(2W, W + E) with the second program one main loop late, and the
table it prints."""
import pytest

from benchmarks import stagger_model


@pytest.mark.parametrize("w, e", [(4.0, 2.0), (4.0, 6.0)])
def test_lockstep_and_staggered_pairs(w, e):
    tiles = 6
    plain = stagger_model.simulate(w, e, 0.0, tiles=tiles, dt=0.01)
    assert plain == pytest.approx(tiles * (2 * w + e), rel=0.01)
    staggered = stagger_model.simulate(w, e, w, tiles=tiles, dt=0.01)
    # the first pair's wait, then a pair per max(2W, W + E)
    assert staggered == pytest.approx(w + tiles * max(2 * w, w + e), rel=0.05)
    assert stagger_model.simulate(w, e, 0.05 * w, tiles=tiles, dt=0.01) > 0.95 * plain  # a small offset gains little


def test_prints_the_table(capsys):
    assert stagger_model.main(["--e", "6.0", "--jitter", "0", "0.2", "--offsets", "1", "0.1", "--tiles", "6",
                               "--w", "4.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| W µs | E µs | epilogue jitter | unstaggered / (2W+E) | staggered 1W | staggered 0.1W |")
    assert len(lines) == 4 and lines[1] == "|---|---|---|---|---|---|"
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:4] == ["4.0", "6.0", "±0 %", "1.00"]
    assert float(cells[4]) == pytest.approx((4 + 6 * 10) / (6 * 14), abs=0.02)  # W + tiles x (W + E) over lockstep
    assert float(cells[5]) > 0.95
    assert lines[3].split("|")[3].strip() == "±10 %"
