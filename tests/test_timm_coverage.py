"""benchmarks/timm_coverage (the README's survey of every timm model of the family table): where timm imports, one
real model end to end and a forced failure; elsewhere (CI) the one-line error that says timm is needed."""
import json

import pytest

from benchmarks import timm_coverage

try:
    import timm  # noqa: F401

    HAS_TIMM = True
except Exception:  # ImportError, or torchvision failing to load its ops
    HAS_TIMM = False


@pytest.mark.skipif(HAS_TIMM, reason="timm imports here: the survey runs (next tests)")
def test_without_timm_one_line_error(capsys):
    assert timm_coverage.main(["--models", "deit_tiny_distilled_patch16_224"]) == 2
    assert "error: timm does not import here" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TIMM, reason="needs timm")
def test_one_model_end_to_end_and_a_forced_failure(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cov.json"
    assert timm_coverage.main(["--models", "deit_tiny_distilled_patch16_224", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["ok"] and row["status"] == "match" and row["grid"] == [14, 14]
    assert row["out_rel_err"] <= report["bound"]
    assert timm_coverage.main(["--models", "not_a_timm_model"]) == 2
    assert "has no models ['not_a_timm_model']" in capsys.readouterr().err
    # a structure from_timm refuses (test_vit3: attention pooling over a register): a pass among the others, a
    # failure among the families
    assert timm_coverage.main(["--others", "--models", "test_vit3", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "refused" and "pool_include_prefix" in row["error"]
    assert timm_coverage.main(["--models", "test_vit3", "--out", str(out)]) == 1
    monkeypatch.setattr("vit_fast.numerics.LOADER_REL_ERR", -1.0)  # nothing can pass
    assert timm_coverage.main(["--models", "deit_tiny_distilled_patch16_224", "--out", str(out)]) == 1
    assert "failed: deit_tiny_distilled_patch16_224" in capsys.readouterr().err


def test_bad_batch():
    assert timm_coverage.main(["--batch", "0"]) == 2


@pytest.mark.skipif(not HAS_TIMM, reason="needs timm")
def test_through_timm_checkpoint_directories(tmp_path):
    """--hub: timm writes each model's checkpoint directory and vit_fast.load reads it (timm's definition, built on
    the meta device, supplies what the weights do not record; a structure vit-fast does not run is refused)."""
    out = tmp_path / "hub.json"
    assert timm_coverage.main(["--hub", "--models", "deit_tiny_distilled_patch16_224", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert report["loaded_from"].startswith("timm checkpoint directory") and row["status"] == "match"
    assert timm_coverage.main(["--hub", "--others", "--models", "test_vit3", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "refused" and "(test_vit3): " in row["error"] and "pool_include_prefix" in row["error"]
