"""vit_fast.fp8_budget: the per-GEMM FP8 error budget is the emulation's own error, taken apart consistently."""
import json

import pytest
import torch

from vit_fast import fp8, fp8_accuracy, fp8_budget


@pytest.fixture(scope="module")
def outlier_model():
    """fp8_accuracy's random-probe tiny_avgpool with outlier channels, on seeded images: the same draw every run."""
    model, size = fp8_accuracy.build_random("tiny_avgpool", True, 3)
    return model, fp8_accuracy.images(48, size, torch.Generator().manual_seed(0))


def test_mantissa_limit_is_e4m3_rounding_inside_the_normal_range():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 8
    normal = x.abs() >= 2**-6
    assert torch.equal(fp8_budget.mantissa_limit(x)[normal], x[normal].to(torch.float8_e4m3fn).float())
    big = torch.tensor([3000.0, -1e5])  # beyond e4m3's range: the limit still rounds the mantissa only
    assert torch.equal(fp8_budget.mantissa_limit(big), torch.tensor([3072.0, -98304.0]))


def test_gemm_budget_matches_the_rounding_of_its_operands(outlier_model):
    model, x = outlier_model
    table = fp8_budget.gemm_budget(model, x)
    assert set(table) == set(fp8_budget.KINDS)
    for kind, g in table.items():
        # e4m3 rounding of the operands: never better than 3-bit rounding at the same scales, and within 1 dB of it
        # (what subnormals cost); about 31.5 dB for the weights
        for op in ("weight", "activation"):
            assert g[f"{op}_limit_db"] - 1 < g[f"{op}_sqnr_db"] <= g[f"{op}_limit_db"] + 1e-6, (kind, op, g)
        assert 25 < g["weight_limit_db"] < 38, (kind, g)
        for mode in fp8_budget.MODES:  # the GEMM adds nothing: independent rounding errors predict its output error
            assert abs(g["output_sqnr_db"][mode] - g["output_predicted_db"][mode]) < 1.0, (kind, mode, g)
        assert g["output_sqnr_db"]["both"] < min(g["output_sqnr_db"]["w"], g["output_sqnr_db"]["a"])


def test_logits_budget_all_four_is_the_quantized_model(outlier_model):
    model, x = outlier_model
    out = fp8_budget.logits_budget(model, x, batch=16, draws=2)
    quantized = fp8.quantize(fp8_budget.copy.deepcopy(model), "fp8")
    ref, q = fp8_budget._logits(model, x, 16), fp8_budget._logits(quantized, x, 16)  # the same batches: exact
    assert out["all"]["both"]["sqnr_db"] == fp8_accuracy.sqnr_db(q, ref)
    for kind in fp8_budget.KINDS:  # one kind alone errs less than all four
        assert out[kind]["both"]["sqnr_db"] > out["all"]["both"]["sqnr_db"], (kind, out)
    parts = out["qkv_activation_error_on"]  # QKV's activation error split over q, k, v: each part errs less
    assert set(parts) == {"q", "k", "v"}
    assert all(p["sqnr_db"] > out["qkv"]["a"]["sqnr_db"] for p in parts.values()), (parts, out["qkv"])
    draws = out["weight_draws"]
    assert len(draws["draws"]) == 2 and draws["min_sqnr_db"] <= draws["mean_sqnr_db"] <= draws["max_sqnr_db"]
    assert draws["draws"][0] != draws["draws"][1]  # different roundings of the same weights
    for kind in fp8_budget.KINDS:  # one kind excluded: the product's quantize(exclude=...), three kinds' noise
        kept = fp8.quantize(fp8_budget.copy.deepcopy(model), "fp8", exclude=(kind,))
        assert out["all_but"][kind]["sqnr_db"] == fp8_accuracy.sqnr_db(fp8_budget._logits(kept, x, 16), ref)
        assert out["all_but"][kind]["sqnr_db"] > out["all"]["both"]["sqnr_db"], (kind, out)
        kept_draws = out["all_but_weight_draws"][kind]
        assert len(kept_draws["draws"]) == 2 and kept_draws["mean_sqnr_db"] > draws["mean_sqnr_db"], kind
    assert "| tiny" in fp8_budget.summary_table({"rows": [{"model": "tiny", "outliers": True, "logits": out,
                                                          "gemms": fp8_budget.gemm_budget(model, x[:8])}]})


def test_attention_sharpness_is_the_models_softmax(outlier_model):
    model, x = outlier_model
    stats = fp8_budget.attention_sharpness(model, x)
    assert len(stats) == len(model.blocks)
    attn, captured = model.blocks[0].attn, []
    hook = attn.qkv.register_forward_hook(lambda m, a, o: captured.append(o))
    with torch.no_grad():
        model.forward_features(x)
    hook.remove()
    b, n, _ = captured[0].shape
    q, k, _ = captured[0].reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    probs = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)
    assert stats[0]["max_probability"] == pytest.approx(probs.amax(-1).mean().item(), rel=1e-5)
    assert 1 / n < stats[0]["max_probability"] <= 1 and stats[0]["score_std"] > 0


def test_weight_draws_are_paired_across_exclusions(outlier_model):
    """A layer's draw is the same whether another kind is excluded: the draws compare like with like."""
    model, _ = outlier_model
    full, kept = fp8_budget.with_weight_draw(model, 5), fp8_budget.with_weight_draw(model, 5, ("qkv",))
    assert isinstance(kept.blocks[0].attn.qkv, torch.nn.Linear)
    assert torch.equal(full.blocks[0].mlp.fc2.weight_scale, kept.blocks[0].mlp.fc2.weight_scale)


def test_weight_draw_keeps_the_per_channel_recipe(outlier_model):
    model, _ = outlier_model
    drawn = fp8_budget.with_weight_draw(model, 0)
    dense, layer = model.blocks[0].mlp.fc1.weight.float(), drawn.blocks[0].mlp.fc1
    amax = dense.abs().amax(dim=1)
    ratio = amax / (layer.weight_scale * 448)  # the channel's max maps into (224, 448]: nothing clips
    assert bool(((ratio > 0.5 - 1e-6) & (ratio <= 1 + 1e-6)).all()) and not torch.equal(ratio, torch.ones_like(ratio))
    assert fp8_accuracy.sqnr_db(layer.dequantized_weight(), dense) > 28


def test_cli_writes_a_budget_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "budget.json"
    assert fp8_budget.main(["--models", "tiny_avgpool", "--setting", "random", "--images", "16", "--draws", "1",
                            "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["model"] == "tiny_avgpool" and row["outliers"] and set(row["gemms"]) == set(fp8_budget.KINDS)
    printed = capsys.readouterr().out
    assert "| fc2 |" in printed and "error kept on one of q / k / v" in printed and len(row["attention"]) == 1
    assert fp8_budget.main(["--models", "vit_z", "--images", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected --models from" in err[0] and "vit_z" in err[0]


def test_budget_file_backs_the_readme():
    """benchmarks/fp8/budget.json covers every outlier model of fp8_accuracy, and the README's table is generated
    from it."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    data = json.loads((root / "benchmarks/fp8/budget.json").read_text())
    assert {(r["model"], r["outliers"], r["setting"]) for r in data["rows"]} == {
        (m, True, "trained") for m in fp8_accuracy.MODELS}
    assert all(len(r["logits"]["weight_draws"]["draws"]) == data["draws"] for r in data["rows"])
    assert fp8_budget.summary_table(data) in (root / "README.md").read_text(), "README's budget table is not the file's"
