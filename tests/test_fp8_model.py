"""FP8 at the model level: vit_fast.quantize / model.to_fp8(), the triton backend against the torch emulation of a
quantized model, the emulation's error against fp32 on models with outlier channels, and the dtype switches
(Predictor, CLI, benchmark rows)."""
import copy
import json

import pytest
import torch

import vit_fast
from vit_fast.kernels._common import fp8_unsupported_reason
from tests.conftest import DEVICE
from tests.helpers import randomize_
from tests.tolerances import assert_fp8_model_matches_emulation, rel_err
from vit_fast import fp8, fp8_accuracy

TINY = dict(img_size=(32, 48), patch_size=16, embed_dim=64, num_heads=2, mlp_dim=128, depth=2)


def _tiny(**kw):
    return randomize_(vit_fast.create("vit_ti_16", backend="torch", num_classes=7, **{**TINY, **kw}))


def test_quantize_converts_the_four_gemms_in_place():
    model = _tiny()
    dense = copy.deepcopy(model)
    out = vit_fast.quantize(model, "fp8")
    assert out is model and model.is_fp8 and not dense.is_fp8
    for block in model.blocks:
        for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            assert isinstance(layer, fp8.Fp8Linear)
            assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
            assert layer.weight.shape == (layer.out_features, layer.in_features)
    assert isinstance(model.head, torch.nn.Linear) and model.patch_embed.proj.weight.dtype == torch.float32
    # per-channel scales: every dequantized row within half an e4m3 step (2^-4 relative) of the original
    w = dense.blocks[0].mlp.fc1.weight
    deq = model.blocks[0].mlp.fc1.dequantized_weight()
    assert ((deq - w).abs() <= w.abs().amax(1, keepdim=True) / 448 * 16 + w.abs() / 16).all()
    # idempotent, and model.to(dtype) leaves the FP8 weights and their fp32 scales alone
    scale = model.blocks[0].attn.qkv.weight_scale.clone()
    model.to_fp8()
    model.to(torch.bfloat16)
    qkv = model.blocks[0].attn.qkv
    assert qkv.weight.dtype == torch.float8_e4m3fn and torch.equal(qkv.weight_scale, scale)
    assert qkv.bias.dtype == torch.bfloat16


def test_quantize_errors():
    with pytest.raises(ValueError, match="unknown quantization scheme 'int8'; expected one of fp8"):
        vit_fast.quantize(_tiny(), "int8")
    with pytest.raises(TypeError, match="expects a vit_fast VisionTransformer"):
        vit_fast.quantize(torch.nn.Linear(4, 4))


def _kinds(model) -> dict:
    """layer name -> "fp8" or "dense"."""
    return {n: "fp8" if isinstance(getattr(p, leaf), fp8.Fp8Linear) else "dense"
            for n, (p, leaf) in fp8.quantized_linears(model).items()}


def test_exclude_keeps_kinds_and_patterns_dense():
    model = _tiny(depth=3)
    dense = copy.deepcopy(model)
    vit_fast.quantize(model, "fp8", exclude=("fc2", "blocks.0.attn.*"))
    kinds = _kinds(model)
    assert model.is_fp8 and [n for n, k in kinds.items() if k == "dense"] == [
        "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc2", "blocks.1.mlp.fc2", "blocks.2.mlp.fc2"]
    assert torch.equal(model.blocks[1].mlp.fc2.weight, dense.blocks[1].mlp.fc2.weight)  # untouched, same dtype
    assert _kinds(_tiny(depth=3).to_fp8(exclude="blocks.*.mlp.fc1, qkv")) == {
        n: "dense" if n.endswith(("fc1", "qkv")) else "fp8" for n in kinds}
    assert set(_kinds(_tiny().to_fp8(exclude=None)).values()) == {"fp8"}  # None keeps none, as () and ""
    model.to_fp8(exclude="fc2,blocks.0.attn.*")  # idempotent with the same exclusion, and without one: an FP8
    vit_fast.quantize(model, "fp8")  # model (checkpoint) keeps its kept layers when the Predictor or convert ask
    assert _kinds(model) == kinds
    with pytest.raises(ValueError, match=r"the model is FP8 already, with 5 of 12 GEMM layers kept \(\['blocks.0"):
        model.to_fp8(exclude="fc2")  # another mix needs the unquantized model
    assert _kinds(model) == kinds


@pytest.mark.parametrize("exclude, message", [
    (("fc3",), "'fc3' names no FP8 layer; expected a GEMM kind (qkv, proj, fc1, fc2) or a pattern over the layer "
               "names (blocks.0.attn.qkv ... blocks.1.mlp.fc2)"),
    ("blocks.7.*", "'blocks.7.*' names no FP8 layer"),
    (("qkv", "proj", "fc1", "fc2"), "keeps every one of the 8 FP8 layers in the model dtype: nothing would be FP8"),
])
def test_exclude_errors_say_what_was_expected(exclude, message):
    model = _tiny()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
                       .replace(".", r"\.")):
        model.to_fp8(exclude=exclude)
    assert not model.is_fp8 and set(_kinds(model).values()) == {"dense"}  # nothing half-quantized
    fp8_model = _tiny().to_fp8()
    with pytest.raises(ValueError, match=r"the model is FP8 already, with 0 of 8 GEMM layers kept \(none\)"):
        fp8_model.to_fp8(exclude="fc2")


@pytest.mark.parametrize("exclude", [5, ["fc2", 3], {"fc2": 1}])
def test_exclude_of_another_type_is_a_type_error(exclude):
    model = _tiny()
    with pytest.raises(TypeError, match="exclude expects GEMM kinds or layer-name patterns: a string"):
        vit_fast.quantize(model, "fp8", exclude=exclude)
    assert not model.is_fp8


@pytest.mark.skipif(fp8_unsupported_reason(torch.device(DEVICE)) is not None, reason="needs sm_89+/interpreter")
@pytest.mark.parametrize("exclude, passes", [
    # (kept dense, quantization passes: ln_qkv, ln_linear, linear_residual, quantize_fp8_groups, attention
    # storing e4m3 codes)
    ("proj", (1, 1, 0, 0, 0)),  # a dense out-projection: attention stores bf16
    ("fc2", (1, 1, 0, 0, 1)),  # FC1 in FP8 storing bf16, FC2 dense
    ("fc1", (1, 0, 0, 1, 1)),  # a dense FC1 writes bf16 rows: FC2's input is quantized per group in a pass
    ("qkv", (0, 1, 1, 0, 0)),  # the folded dense LN+QKV: no input scales to bound attention with, so the FP8
    # out-projection quantizes attention's bf16 rows in a pass
])
def test_triton_equals_emulation_with_layers_excluded(exclude, passes, device, monkeypatch):
    monkeypatch.setenv("VITFAST_FP8_ENGINE", "pointer")  # the passes counted are the pointer engine's (sm_89's)
    model = vit_fast.quantize(_tiny(depth=1).to(device), "fp8", exclude=exclude)
    out, emulated, calls = _tokens_both_ways(model, torch.randn(2, 3, 32, 48, device=device), monkeypatch)
    assert tuple(calls.values()) == passes, calls
    assert_fp8_model_matches_emulation(out, emulated)


def _tokens_both_ways(model, x, monkeypatch):
    """(tokens on the kernels, written over NaN; the torch emulation's; the kernels' quantization passes)."""
    with torch.no_grad():
        emulated = model.set_backend("torch").forward_features(x)
        calls = _count_quant_passes(monkeypatch)
        out = torch.full_like(emulated, float("nan"))
        out.copy_(model.set_backend("triton").forward_features(x))
    return out, emulated, calls


def _count_quant_passes(monkeypatch):
    """{op module: calls of its quantization pass (quant_fp8.launch_quant_rows)}, counted from now on, and the
    number of attention launches that store e4m3 codes."""
    import sys

    calls = {"ln_qkv": 0, "ln_linear": 0, "linear_residual": 0, "quantize": 0, "attention codes": 0}
    for name in ("ln_qkv", "ln_linear", "linear_residual", "quantize"):
        # the package re-exports the op function under the module's name
        module = sys.modules[f"vit_fast.kernels.{name}"]

        def counted(*args, _name=name, _launch=module.launch_quant_rows, **kwargs):
            calls[_name] += 1
            return _launch(*args, **kwargs)

        monkeypatch.setattr(module, "launch_quant_rows", counted)
    attention = sys.modules["vit_fast.kernels.attention"]

    def attention_fwd(*args, _launch=attention._attention_fwd, **kwargs):
        calls["attention codes"] += kwargs.get("codes") is not None
        return _launch(*args, **kwargs)

    monkeypatch.setattr(attention, "_attention_fwd", attention_fwd)
    return calls


@pytest.mark.skipif(fp8_unsupported_reason(torch.device(DEVICE)) is not None, reason="needs sm_89+/interpreter")
@pytest.mark.parametrize("mlp", [{}, dict(mlp_type="swiglu", mlp_dim=40)], ids=["gelu", "swiglu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_fp8_equals_torch_emulation(dtype, mlp, device, monkeypatch):
    monkeypatch.setenv("VITFAST_FP8_ENGINE", "pointer")  # sm_89's engine (the TMA one: below)
    model = vit_fast.quantize(_tiny(depth=1, **mlp).to(device), "fp8").to(dtype)
    # fp32: two images, at most one may meet a rounding flip (assert_fp8_model_matches_emulation). bf16: eight, so the
    # whole-output error averages over enough tokens (over 200 draws: <= 2.6 % with 8 images, up to 4.5 % with 2)
    x = torch.randn(2 if dtype == torch.float32 else 8, 3, 32, 48, device=device, dtype=dtype)
    with torch.no_grad():
        emulated = model.set_backend("torch")(x).float()
        calls = _count_quant_passes(monkeypatch)
        fast = model.set_backend("triton")(x).float()  # the block pruned to the [CLS] query: the sliced rows path
        # only the two LayerNorms quantize in a pass (QKV, FC1); attention stores the out-projection's input as
        # e4m3 codes, and FC1 (SwiGLU too: the gate is FC1's epilogue) FC2's, per 128 channels
        assert calls == {"ln_qkv": 1, "ln_linear": 1, "linear_residual": 0, "quantize": 0,
                         "attention codes": 1}, calls
        if dtype == torch.float32:
            fast_tokens = model.forward_features(x)  # every token: the unpruned path
            assert calls == {"ln_qkv": 2, "ln_linear": 2, "linear_residual": 0, "quantize": 0,
                             "attention codes": 2}, calls
            ref_tokens = model.set_backend("torch").forward_features(x)
    if dtype == torch.float32:
        assert_fp8_model_matches_emulation(fast, emulated)
        assert_fp8_model_matches_emulation(fast_tokens, ref_tokens)
    else:  # the eager emulation rounds LayerNorm and FC1 outputs to bf16 (the model's modules), the kernels do not:
        # different values quantized, so some elements land one FP8 step apart
        assert torch.isfinite(fast).all() and rel_err(fast, emulated) < 5e-2


@pytest.mark.skipif(fp8_unsupported_reason(torch.device(DEVICE)) is not None, reason="needs sm_89+/interpreter")
@pytest.mark.parametrize("switch", ["tma", "auto", "ws"])
def test_triton_fp8_on_the_tma_engine_equals_torch_emulation(switch, device, monkeypatch):
    """The four FP8 GEMMs on the FP8 TMA engine (gemm_fp8_tma.py), forced (VITFAST_FP8_ENGINE=tma) or as auto picks it
    on sm_90 (faked under the interpreter, for the model's device only): the out-projection's input from attention's
    codes, FC2's from FC1's epilogue: no pass but the two LayerNorms'. With =ws all four run on the warp-specialized
    engine (gemm_fp8_ws.py), FC1 writing FC2's codes there; Gluon needs an sm_90 GPU, so under the interpreter the
    TMA engine's promoted launch stands in for its kernel and the test checks that every launch reaches it."""
    import sys

    from vit_fast.kernels import gemm_fp8_tma, gemm_fp8_ws

    if device == "cuda" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engines need an sm_90 GPU")
    monkeypatch.setenv("VITFAST_FP8_ENGINE", switch)
    if switch == "auto" and device == "cpu":
        monkeypatch.setattr(gemm_fp8_tma, "_auto_picks_tma", lambda d: d == torch.device(device))
    if switch == "ws" and device == "cpu":
        monkeypatch.setattr(gemm_fp8_tma, "gluon_runs", lambda: True)
        monkeypatch.setattr(gemm_fp8_ws, "launch_fp8_ws_gemm", lambda *a, _launch=gemm_fp8_tma.launch_fp8_tma_gemm,
                            **k: _launch(*a, precise_acc=True, **k))
    model = vit_fast.quantize(_tiny(depth=1).to(device), "fp8")
    x = torch.randn(2, 3, 32, 48, device=device)
    with torch.no_grad():
        emulated = model.set_backend("torch")(x).float()
        calls = _count_quant_passes(monkeypatch)
        ops, engine_calls = [], []  # the op module launching; (op module, engine) of each FP8 GEMM that ran
        for name in ("ln_qkv", "ln_linear", "linear_residual"):
            module = sys.modules[f"vit_fast.kernels.{name}"]

            def launcher(engine, _name=name, _get=module.fp8_launcher):
                launch = _get(engine)

                def run(*args, **kwargs):
                    ops.append(_name)
                    return launch(*args, **kwargs)

                return run

            monkeypatch.setattr(module, "fp8_launcher", launcher)
        for engine, home in (("tma", gemm_fp8_tma), ("ws", gemm_fp8_ws)):
            def counted(*args, _engine=engine, _launch=getattr(home, f"launch_fp8_{engine}_gemm"), **kwargs):
                engine_calls.append((ops[-1], _engine))
                return _launch(*args, **kwargs)

            monkeypatch.setattr(home, f"launch_fp8_{engine}_gemm", counted)
        fast = model.set_backend("triton")(x).float()
    assert calls == {"ln_qkv": 1, "ln_linear": 1, "linear_residual": 0, "quantize": 0, "attention codes": 1}, calls
    engine = "ws" if switch == "ws" else "tma"
    assert sorted(engine_calls) == [("linear_residual", engine), ("linear_residual", engine), ("ln_linear", engine),
                                    ("ln_qkv", engine)], engine_calls
    assert_fp8_model_matches_emulation(fast, emulated)


@pytest.mark.skipif(fp8_unsupported_reason(torch.device(DEVICE)) is not None, reason="needs sm_89+/interpreter")
@pytest.mark.parametrize("engine", ["pointer", "tma"])
def test_fc2_input_is_quantized_per_128_channels(engine, device, monkeypatch):
    """FC2's input is quantized per token and 128 channels in the emulation (Fp8Linear.input_group) and in the
    kernels (FC1's epilogue writes the codes, FC2 reads them: no pass between), on both FP8 engines; H = 320 is
    three groups, the last 64 wide. The grouping is visible: the same model with per-token FC2 inputs differs."""
    if engine == "tma" and device == "cuda" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA engines need an sm_90 GPU")
    monkeypatch.setenv("VITFAST_FP8_ENGINE", engine)
    model = vit_fast.quantize(_tiny(depth=1, mlp_dim=320).to(device), "fp8")
    mlp = model.blocks[0].mlp
    assert (mlp.fc2.input_group, mlp.fc1.input_group, model.blocks[0].attn.qkv.input_group) == (128, 0, 0)
    assert "per-token and 128-channel" in repr(mlp.fc2)
    x = torch.randn(2, 3, 32, 48, device=device)
    out, emulated, calls = _tokens_both_ways(model, x, monkeypatch)
    mlp.fc2.input_group = 0
    with torch.no_grad():
        per_token = model.set_backend("torch").forward_features(x)
    assert calls["quantize"] == 0 and calls["linear_residual"] == 0, calls
    assert_fp8_model_matches_emulation(out, emulated)
    assert rel_err(per_token, emulated) > 1e-3


def test_emulation_on_a_trained_outlier_model_within_the_readme_figures():
    """A tiny model trained here (a short schedule of the benchmark's recipe) with outlier channels: the FP8
    emulation against fp32 on fresh task images, at bounds below what benchmarks/fp8/accuracy.json records for the
    fully trained models (a smaller sample and a shorter schedule here). Seeded: the same draw every run."""
    row = fp8_accuracy.measure("tiny_avgpool", outliers=True, n_images=512, seed=3, setting="trained", steps=200)
    assert row["residual_outlier_ratios"][0] > 10, row  # the outlier channels are there after training
    assert row["task_accuracy"]["fp32"] > 0.5, row  # it learned the task (32 classes: chance is 3 %)
    a, b = row["fp8_vs_fp32"], row["bf16_vs_fp32"]
    assert a["sqnr_db"] > 35 and a["top1_agree"] >= 0.97, row
    assert b["sqnr_db"] > a["sqnr_db"], row  # FP8 is the coarser format (bf16 also rounds pixels, LN, softmax)
    assert abs(row["task_accuracy"]["fp8"] - row["task_accuracy"]["fp32"]) < 0.02, row


def test_per_token_scales_beat_one_scale_per_tensor_on_outlier_tokens():
    model, size = fp8_accuracy.build_random("tiny_avgpool", True, 3)
    x = fp8_accuracy.images(16, size, torch.Generator().manual_seed(0))
    tokens = model.patch_embed(x).flatten(0, 1)
    q, s = fp8.quantize_rows(tokens)
    amax = tokens.abs().max()
    inv = torch.full_like(amax, 448.0) / amax  # tensor / tensor, as the kernels and quantize_rows compute it
    per_tensor = (tokens * inv).to(torch.float8_e4m3fn).float() * (amax / 448)
    assert rel_err(fp8.dequantize(q, s), tokens) <= rel_err(per_tensor, tokens)
    # the benchmark's per-tensor contrast quantizes exactly that way, and only inside its context
    with fp8_accuracy.per_tensor_activations():
        q_t, s_t = fp8.quantize_rows(tokens)
    assert torch.equal(fp8.dequantize(q_t, s_t), per_tensor) and fp8.quantize_rows(tokens)[1].shape == s.shape


def test_accuracy_file_backs_the_readme():
    from pathlib import Path

    data = json.loads((Path(__file__).parents[1] / "benchmarks/fp8/accuracy.json").read_text())
    keys = {(r["setting"], r["model"], r["outliers"]) for r in data["rows"]}
    assert keys == {(s, m, o) for s in fp8_accuracy.SETTINGS for m in fp8_accuracy.MODELS for o in (False, True)}
    assert data["outliers"]["gain"] == fp8_accuracy.OUTLIER_GAIN and data["task_classes"] == fp8_accuracy.TASK_CLASSES
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for setting in fp8_accuracy.SETTINGS:
        assert fp8_accuracy.markdown_table(data, setting) in readme, f"README's {setting} table is not the file's"


def test_predictor_fp8_on_cpu_runs_the_emulation():
    predictor = vit_fast.Predictor(_tiny(img_size=32), device="cpu", dtype="fp8", cuda_graphs=False)
    assert predictor.fp8 and predictor.model.is_fp8 and predictor.dtype == torch.float32
    assert "fp8 GEMMs" in repr(predictor)
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16 or fp8"):
        vit_fast.Predictor(_tiny(), device="cpu", dtype="fp9")


def test_predictor_fp8_exclude(monkeypatch):
    """Predictor(..., dtype="fp8", fp8_exclude=...) is quantize's exclude; misuse is refused before the model is
    moved or quantized."""
    model = _tiny(img_size=32)
    with monkeypatch.context() as m:
        m.setattr(model, "to", lambda *a, **k: pytest.fail("the model was moved before the check"))
        with pytest.raises(ValueError, match="fp8_exclude applies to dtype 'fp8' only, got dtype None"):
            vit_fast.Predictor(model, device="cpu", fp8_exclude="fc2", cuda_graphs=False)
        with pytest.raises(ValueError, match="'fc9' names no FP8 layer"):
            vit_fast.Predictor(model, device="cpu", dtype="fp8", fp8_exclude="fc9", cuda_graphs=False)
    assert not model.is_fp8  # nothing quantized
    with pytest.raises(TypeError, match=r"model must be a vit_fast model \(vit_fast.load, vit_fast.create\), got "
                                        "Sequential"):
        vit_fast.Predictor(torch.nn.Sequential(), device="cpu", dtype="fp8", cuda_graphs=False)
    dense = copy.deepcopy(model)
    predictor = vit_fast.Predictor(model, device="cpu", dtype="fp8", fp8_exclude="fc2", cuda_graphs=False)
    kinds = _kinds(predictor.model)
    assert kinds == {n: "dense" if n.endswith("fc2") else "fp8" for n in kinds}
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    got = predictor.predict([image], top_k=3)[0]
    with torch.no_grad():  # the same as quantizing with that exclude by hand
        want = vit_fast.quantize(dense, "fp8", exclude="fc2")(predictor.prepare(image)[None]).softmax(-1)[0]
    torch.testing.assert_close(torch.tensor(got["scores"]), want.topk(3).values, rtol=1e-5, atol=1e-6)
    # an FP8 model (a checkpoint) with that mix is served as it is; another mix is refused
    again = vit_fast.Predictor(predictor.model, device="cpu", dtype="fp8", fp8_exclude="fc2", cuda_graphs=False)
    assert _kinds(again.model) == kinds
    with pytest.raises(ValueError, match=r"the model is FP8 already, with 2 of 8 GEMM layers kept"):
        vit_fast.Predictor(predictor.model, device="cpu", dtype="fp8", fp8_exclude="qkv", cuda_graphs=False)


def test_cli_predict_dtype_fp8(tmp_path, capsys):
    from vit_fast import cli
    from vit_fast.cli import SAMPLE_IMAGES

    rc = cli.main(["predict", SAMPLE_IMAGES[0], "--model", "vit_ti_16", "--set", "depth=1", "--set", "img_size=32",
                   "--device", "cpu", "--backend", "sdpa", "--dtype", "fp8", "--top-k", "2"])
    assert rc == 0
    assert SAMPLE_IMAGES[0] in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["predict", SAMPLE_IMAGES[0], "--dtype", "int4"])
    tiny = ["predict", SAMPLE_IMAGES[0], "--model", "vit_ti_16", "--set", "depth=1", "--set", "img_size=32",
            "--device", "cpu"]
    assert cli.main([*tiny, "--dtype", "fp8", "--fp8-exclude", "fc2"]) == 0
    assert SAMPLE_IMAGES[0] in capsys.readouterr().out
    for extra, message in ((["--fp8-exclude", "fc2"], "--fp8-exclude applies to --dtype fp8 only, got no --dtype"),
                           (["--dtype", "fp8", "--fp8-exclude", "fc9"], "'fc9' names no FP8 layer")):
        assert cli.main([*tiny, *extra]) == 2
        lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if "RANDOM weights" not in ln]
        assert len(lines) == 1 and message in lines[0], lines


def test_bench_float8_rows_give_reasons(monkeypatch):
    from benchmarks import builders, runner

    settings = runner.Settings(models=["vit_ti_16"], batch_sizes=[1], dtypes=["float8"],
                               backends=["eager", "sdpa"], device=torch.device("cpu"), resolution=32, repeats=1,
                               warmup=0, progress=False, overrides=dict(depth=1, embed_dim=64, num_heads=2,
                                                                        mlp_dim=64), seed=1)
    rows = {(r["dtype"], r["backend"]): r for r in runner.run_grid(settings, peak_tflops=1.0)}
    assert len(rows) == 2
    for backend in ("eager", "sdpa"):
        assert "float8 runs on vit_fast only" in rows[("float8", backend)]["error"]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = builders.fp8_skip_reason("vit_fast", torch.device("cpu"))
    assert reason.startswith("float8 unavailable") and "compute capability 8.9 or 9.0" in reason


def test_readme_fp8_example_runs():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- fp8-example -->")[1].split("<!-- /fp8-example -->")[0]
    code = block.split("```python")[1].split("```")[0]
    scope = {}
    exec(compile(code, "README.md (FP8 example)", "exec"), scope)
    assert scope["model"].is_fp8 and scope["logits"].shape == (2, 1000) and torch.isfinite(scope["logits"]).all()


def test_readme_fp8_exclude_example_runs(capsys):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- fp8-exclude-example -->")[1].split("<!-- /fp8-exclude-example -->")[0]
    code = block.split("```python")[1].split("```")[0]
    scope = {}
    exec(compile(code, "README.md (FP8 exclude example)", "exec"), scope)
    assert capsys.readouterr().out == "9 of 16 GEMMs in FP8\n" and scope["model"].is_fp8


def test_report_compares_float8_with_the_bf16_baselines():
    from benchmarks import report, schema

    def row(dtype, backend, ips):
        r = schema.empty_row("vit_l_16", 256, dtype, backend, False)
        r["images_per_s"] = ips
        return r

    rows = [row("bfloat16", "compile", 100.0), row("bfloat16", "vit_fast", 120.0), row("float8", "vit_fast", 170.0)]
    by_key = report.index(rows)
    assert report.speedup(by_key, rows[2], "compile") == pytest.approx(1.7)
    assert "float8" in schema.DTYPES


@pytest.mark.skipif(fp8_unsupported_reason(torch.device(DEVICE)) is not None, reason="needs sm_89+/interpreter")
def test_compile_fullgraph_fp8_model(device):
    """The FP8 ops (float8 weights, optional scales, FC1's second output) trace as opaque custom ops."""
    model = vit_fast.quantize(_tiny(depth=1, img_size=32).to(device), "fp8").set_backend("triton")
    x = torch.randn(2, 3, 32, 32, device=device)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() or fp8_unsupported_reason(torch.device("cuda")) is not None,
                    reason="CUDA graphs of the FP8 kernels need an sm_89/sm_90 GPU")
def test_fp8_model_replays_in_a_cuda_graph():
    """The FP8 model captured as the headline and Predictor run it (the row quantizer's and the TMA engine's
    allocations inside the capture): replays equal eager calls on new inputs."""
    model = vit_fast.quantize(_tiny(depth=2).cuda(), "fp8").to(torch.bfloat16).set_backend("triton")
    graphed = model.capture_cuda_graphs([4])
    assert [shape[0] for shape in graphed.captured] == [4]
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(4, 3, 32, 48, device="cuda", dtype=torch.bfloat16)
            out = graphed(x)
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out, model(x), rtol=1e-2, atol=1e-2)  # the same kernels: one bf16 step at most


def test_out_projection_hooks_fire_on_the_bounded_path():
    """With QKV and the out-projection both FP8, the torch emulation quantizes the out-projection's input at the
    per-image bound (Fp8Linear.forward given the QKV layer): still through the module's call, so hooks see it, and
    its output differs from the per-token recipe's (the path is taken)."""
    model = vit_fast.quantize(_tiny(depth=1), "fp8")
    proj = model.blocks[0].attn.proj
    seen = []
    handle = proj.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get("qkv")), with_kwargs=True)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        bounded = model.set_backend("torch").forward_features(x)
    handle.remove()
    assert seen == [model.blocks[0].attn.qkv]
    per_token = proj.forward
    proj.forward = lambda x, qkv=None, qkv_input=None: per_token(x)  # the per-token recipe, for contrast
    with torch.no_grad():
        plain = model.forward_features(x)
    assert torch.isfinite(bounded).all() and rel_err(bounded, plain) > 1e-4
