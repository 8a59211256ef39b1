"""The benchmark harness on the model-family presets: timm and Hugging Face baseline modules that compute what
vit_fast computes (the HF row in the family's own HF class, with the same weights), `vit-fast bench` printing
those rows, and a one-line row where the installed transformers lacks a family's class."""
import json
import sys

import pytest
import torch

import vit_fast
from benchmarks.convert import Unsupported, to_hf, to_timm
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err
from vit_fast.loading.hf_export import family_of_preset

FAMILY_PRESETS = ["clip_b_16", "dinov2_s_14", "dinov2_b_14_reg4", "dinov2_g_14", "siglip_b_16",
                  "deit_ti_16_distilled"]


def _tiny(name):
    return randomize_(vit_fast.create(name, backend="sdpa", depth=1, img_size=28 if "_14" in name else 32))


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_timm_baseline_matches(name):
    pytest.importorskip("timm")
    model = _tiny(name)
    x = torch.randn(2, 3, *model.config.img_size)
    with torch.no_grad():
        assert rel_err(to_timm(model)(x), model(x)) <= LOADER_REL_ERR


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_hf_baseline_matches(name):
    """The bench's HF module for a family preset is HF's class for it, returning what vit_fast's model(x) does."""
    pytest.importorskip("transformers")
    model = _tiny(name)
    if name == "dinov2_g_14":  # SwiGLU: HF's width for an integer mlp_ratio (4 at 64: 2/3 of 256, rounded up to 8)
        model = randomize_(vit_fast.create(name, backend="sdpa", depth=1, embed_dim=64, num_heads=2, mlp_dim=176,
                                           img_size=28))
    baseline = to_hf(model, family=family_of_preset(name))
    expected = {"clip": "CLIPVisionModelWithProjection", "dinov2": "Dinov2",
                "siglip": "SiglipVisionModel", "deit": "DeiTForImageClassificationWithTeacher"}
    assert type(baseline.hf).__name__.startswith(expected[family_of_preset(name)])
    x = torch.randn(2, 3, *model.config.img_size)
    with torch.no_grad():
        assert rel_err(baseline(x), model(x)) <= LOADER_REL_ERR


def test_hf_baseline_without_family_is_the_classic_vit():
    pytest.importorskip("transformers")
    with pytest.raises(Unsupported, match=r"^ViTForImageClassification is the classic ViT; this model sets "
                                          r"\['pre_norm', 'patch_bias', 'act_layer', 'head_bias'\] \(a family preset's "
                                          r"HF row needs its family: clip, dinov2, siglip or deit\)$"):
        to_hf(_tiny("clip_b_16"))


def test_bench_cli_prints_hf_rows(tmp_path, capsys):
    """`vit-fast bench --models clip_b_16,dinov2_b_14_reg4` on the CPU: an HF row per model (its family's class,
    picked by the preset's name), the same function (fp32 error at rounding level), printed and in results.json."""
    pytest.importorskip("transformers")
    from vit_fast.cli import main

    models = ["clip_b_16", "dinov2_b_14_reg4"]  # the other families: test_hf_baseline_matches
    out = tmp_path / "bench"
    assert main(["bench", "--device", "cpu", "--models", ",".join(models), "--resolution", "112",
                 "--batch-sizes", "2", "--dtypes", "float32", "--backends", "eager,hf", "--repeats", "1",
                 "--warmup", "0", "--config-overrides", "depth=1,embed_dim=64,num_heads=2,mlp_dim=128",
                 "--no-progress", "--no-plots", "--cpu-threads", "1", "--seed", "3", "--out", str(out)]) in (0, None)
    printed = capsys.readouterr().out
    rows = {(r["model"], r["backend"]): r for r in json.loads((out / "results.json").read_text())["rows"]}
    for name in models:
        row = rows[(name, "hf")]
        assert row["error"] is None and row["images_per_s"] > 0 and row["max_rel_err"] < 1e-5, row
        assert any(line.split()[:4] == [name, "float32", "2", "hf"] for line in printed.splitlines()), name


def test_bench_row_names_a_family_class_missing_from_transformers(monkeypatch):
    """A transformers without the family's class: that row says so in one line; the others still run."""
    T = pytest.importorskip("transformers")
    from benchmarks import runner
    from benchmarks.cli import _overrides

    T.Dinov2WithRegistersModel  # noqa: B018 - the lazy import may put a new module object into sys.modules
    monkeypatch.setattr(sys.modules["transformers"], "Dinov2WithRegistersModel", None)
    settings = runner.Settings(models=["dinov2_b_14_reg4"], batch_sizes=[2], dtypes=["float32"],
                               backends=["eager", "hf"], device=torch.device("cpu"), resolution=28, repeats=1,
                               warmup=0, progress=False, overrides=_overrides("depth=1,embed_dim=64,num_heads=2,"
                                                                              "mlp_dim=128"), seed=1)
    by_backend = {r["backend"]: r for r in runner.run_grid(settings, peak_tflops=1.0)}
    assert by_backend["eager"]["error"] is None
    error = by_backend["hf"]["error"]
    assert "\n" not in error and error.endswith(
        f"transformers {T.__version__} has no Dinov2WithRegistersModel (the dinov2 family's Hugging Face class)")


def test_harness_accepts_family_presets():
    from benchmarks.cli import add_arguments, resolve
    import argparse

    args = add_arguments(argparse.ArgumentParser()).parse_args(["--models", "clip_l_14,dinov2_b_14", "--device", "cpu"])
    assert resolve(args).models == ["clip_l_14", "dinov2_b_14"]
