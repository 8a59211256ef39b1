"""The `vit-fast` command: predict, info, convert, and one-line errors."""
import json
import subprocess
from pathlib import Path
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import vit_fast
from tests.helpers import randomize_
from tests.tolerances import LOADER_REL_ERR, rel_err
from vit_fast.cli import SAMPLE_IMAGES, main


@pytest.fixture
def tiny_checkpoint(tmp_path):
    model = randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=4,
                                       labels=["cat", "dog", "cup", "rocket"]))
    return model, vit_fast.save(model, tmp_path / "ckpt")


def test_sample_images_are_shipped():
    assert len(SAMPLE_IMAGES) >= 3
    for path in SAMPLE_IMAGES:
        Image.open(path).verify()


def test_predict_with_checkpoint(tiny_checkpoint, tmp_path, capsys):
    model, ckpt = tiny_checkpoint
    image = tmp_path / "img.png"
    Image.fromarray(torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8).numpy()).save(image)
    assert main(["predict", str(image), SAMPLE_IMAGES[0], "--checkpoint", str(ckpt), "--top-k", "2"]) == 0
    out = capsys.readouterr()
    assert "RANDOM" not in out.err
    lines = out.out.splitlines()
    assert lines[0] == str(image) and lines[3] == SAMPLE_IMAGES[0]
    assert all(line.split()[1] in {"cat", "dog", "cup", "rocket"} for line in lines[1:3] + lines[4:6])
    # the printed top-1 is the model's own top-1 on the same preprocessing
    from vit_fast.preprocess import preprocess

    with torch.no_grad():
        logits = model(preprocess(str(image), model.config).unsqueeze(0))
    assert lines[1].split()[1] == model.config.labels[logits.argmax().item()]


def test_predict_features_of_a_classifier(tiny_checkpoint, capsys):
    """`--set num_classes=0` loads the classifier's features (as timm's num_classes=0): --embeddings prints them;
    without it there are no labels to print, and it says so instead of printing file names alone."""
    model, ckpt = tiny_checkpoint
    assert main(["predict", SAMPLE_IMAGES[0], "--checkpoint", str(ckpt), "--set", "num_classes=0",
                 "--embeddings"]) == 0
    from vit_fast.preprocess import preprocess

    with torch.no_grad():
        ref = model.forward_head(model.forward_features(preprocess(SAMPLE_IMAGES[0], model.config)[None]),
                                 pre_logits=True)[0]
    assert rel_err(torch.tensor(json.loads(capsys.readouterr().out)["embedding"]), ref) <= LOADER_REL_ERR
    assert main(["predict", SAMPLE_IMAGES[0], "--checkpoint", str(ckpt), "--set", "num_classes=0"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip() == ("vit-fast: error: this model has no classifier head (num_classes 0), "
                                                 "so it has no labels to predict: add --embeddings")


def test_predict_without_checkpoint_says_weights_are_random(capsys):
    assert main(["predict", SAMPLE_IMAGES[0], "--model", "vit_ti_16", "--set", "depth=1", "--top-k", "1"]) == 0
    assert "RANDOM weights" in capsys.readouterr().err


def test_predict_bad_image_is_reported(tmp_path, tiny_checkpoint, capsys):
    """An undecodable file: one line on stderr naming it, the other images still on stdout, exit code 1."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(bad), SAMPLE_IMAGES[0], "--checkpoint", str(tiny_checkpoint[1])]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == SAMPLE_IMAGES[0] and str(bad) not in out.out
    assert out.err.strip().splitlines() == [f"vit-fast: error: cannot decode file {str(bad)!r}: not a recognized "
                                            "image format"]


@pytest.mark.parametrize("argv, match", [
    (["FOLDER"], "predict takes image files, got the folder"),
    (["missing.jpg"], "image file not found: 'missing.jpg'"),
    ([SAMPLE_IMAGES[0], "--top-k", "0"], "--top-k expects a positive number of labels, got 0"),
    ([SAMPLE_IMAGES[0], "--dtype", "fp8", "--fp8-exclude", "fc3"], "'fc3' names no FP8 layer"),
    ([SAMPLE_IMAGES[0], "--dtype", "fp8", "--fp8-exclude", "blocks.12.*"], "'blocks.12.*' names no FP8 layer"),
])
def test_predict_refuses_before_building_a_model(argv, match, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vit_fast, "create", lambda *a, **k: pytest.fail("built a model before checking arguments"))
    argv = [str(tmp_path) if a == "FOLDER" else a for a in argv]
    assert main(["predict", *argv, "--model", "vit_ti_16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vit-fast") and "error:" in err[0] and match in err[0], err


@pytest.mark.parametrize("spelling, dtype", [("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
                                             ("fp32", torch.float32), ("float", torch.float32)])
def test_every_dtype_spelling_is_taken(spelling, dtype, monkeypatch, capsys):
    """predict takes validate's short names and torch's, and passes the Predictor the same dtype for both."""
    seen = []
    real = vit_fast.Predictor.__init__

    def spy(self, model, **kwargs):
        seen.append(kwargs["dtype"])
        real(self, model, **kwargs)

    monkeypatch.setattr(vit_fast.Predictor, "__init__", spy)
    assert main(["predict", SAMPLE_IMAGES[0], "--model", "vit_ti_16", "--set", "depth=1", "--set", "img_size=32",
                 "--device", "cpu", "--dtype", spelling, "--top-k", "1"]) == 0
    assert [vit_fast.predictor._default_dtype(d, torch.device("cpu")) for d in seen] == [dtype]


@pytest.mark.parametrize("command", ["predict", "serve", "infer", "convert"])
def test_an_unknown_dtype_lists_the_commands_names(command, capsys):
    args = {"predict": ["x.jpg"], "serve": [], "infer": ["imgs/"], "convert": ["a", "b"]}[command]
    names = "float32, fp8" if command == "convert" else "float32, float16, bfloat16, fp8"
    with pytest.raises(SystemExit) as e:
        main([command, *args, "--dtype", "int4"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"vit-fast {command}: error: argument --dtype: expected one of {names}, got 'int4'")


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("device", "backends", "torch", "triton", "python"):
        assert key in out


def test_info_shows_the_kernel_switches_and_runs_without_triton(monkeypatch, capsys):
    """info names the VITFAST_* switches set, a bad one as its one-line error (the other commands refuse to start
    on it), and, like every command that runs no kernel, needs no triton (a subprocess where it cannot import)."""
    import subprocess
    import sys

    monkeypatch.setenv("VITFAST_GEMM_ENGINE", "cublas")
    assert main(["info"]) == 0
    assert "kernel switches  error: VITFAST_GEMM_ENGINE: expected auto | tma | pointer | ws, got 'cublas'" in (
        capsys.readouterr().out)
    assert main(["predict", "--model", "vit_ti_16", "x.png"]) == 2
    assert capsys.readouterr().err.strip() == ("vit-fast: error: VITFAST_GEMM_ENGINE: expected auto | tma | pointer "
                                               "| ws, got 'cublas'")
    monkeypatch.setenv("VITFAST_GEMM_ENGINE", "tma")
    code = "import sys; sys.modules['triton'] = None; from vit_fast.cli import main; sys.exit(main(['info']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "triton backend   unavailable" in proc.stdout and "kernel switches  VITFAST_GEMM_ENGINE=tma" in proc.stdout


def test_convert_timm_file(tmp_path, capsys):
    model = randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=2, num_classes=3))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    assert main(["convert", str(tmp_path / "timm.safetensors"), str(tmp_path / "out"), "--set", "layer_norm_eps=1e-6"]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = vit_fast.load(tmp_path / "out")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(loaded(x), model(x)) <= LOADER_REL_ERR


@pytest.mark.parametrize(
    "argv,match",
    [
        (["convert", "/nonexistent/w.safetensors", "/tmp/x"], "no checkpoint at"),
        (["predict", SAMPLE_IMAGES[0], "--checkpoint", "/nonexistent"], "no checkpoint at"),
        (["predict", SAMPLE_IMAGES[0], "--model", "vit_q_16"], "unknown model 'vit_q_16'"),
        (["predict", SAMPLE_IMAGES[0], "--set", "num_heads=0"], "num_heads 0: must be >= 1"),
        (["predict", SAMPLE_IMAGES[0], "--set", "layer_norm_eps=-1"],
         "layer_norm_eps must be > 0 and finite, got -1"),
        (["bench", "--models", "vit_b16"], "unknown models ['vit_b16']"),
        (["bench", "--dtypes", "bf16,int4"], "unknown dtypes ['int4']"),
        (["bench", "--compile-mode", "foo"], "--compile-mode expects one of default,"),
        (["bench", "--time-budget", "-1"], "--time-budget must be > 0 seconds, got -1"),
        (["bench", "--device", "xyz"], "--device: device must be 'cpu', 'cuda' or 'cuda:N', got 'xyz'"),
        (["bench", "--resolution", "-16"], "--resolution must be >= 1, got -16"),
        (["bench", "--out", "A_FILE"], "expected a directory for the results (--out), got the file"),
        (["demo", "--out", "A_FILE"], "expected a directory for the results (--out), got the file"),
        (["convert", "a", "b", "--set", "oops"], "--set expects key=value"),
    ],
)
def test_errors_are_one_line(argv, match, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    argv = [str(tmp_path / "a_file") if a == "A_FILE" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vit-fast: error:") and match in err[0]


@pytest.mark.parametrize("in_the_way", ["model.safetensors", "vit_fast.json"])
def test_convert_checks_its_destination_first_and_writes_whole_checkpoints(tmp_path, capsys, monkeypatch,
                                                                          in_the_way):
    """A destination that cannot take the checkpoint is refused before the source loads; a write that fails half way
    leaves neither file (nor a temporary one)."""
    model = randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=3))
    src = vit_fast.save(model, tmp_path / "src")
    (tmp_path / "dst" / in_the_way).mkdir(parents=True)
    monkeypatch.setattr(vit_fast, "load", lambda *a, **k: pytest.fail("loaded the source first"))
    assert main(["convert", str(src), str(tmp_path / "dst")]) == 2
    assert capsys.readouterr().err.strip() == (f"vit-fast: error: cannot write {tmp_path / 'dst' / in_the_way}: a "
                                               "folder of that name is in the way")
    monkeypatch.undo()
    from vit_fast.loading import checkpoint

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)  # the config, written after the weights
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(model, tmp_path / "half")
    assert list((tmp_path / "half").iterdir()) == []


def test_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "vit_fast", "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "backends" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "vit_fast", "convert", "/nonexistent", "/tmp/x"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_demo_runs_end_to_end(tmp_path, capsys):
    """What `make demo` runs, on a small preset: sample images classified, then the side-by-side timing."""
    assert main(["demo", "--model", "vit_ti_32", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(Path(p).name in out for p in SAMPLE_IMAGES)
    assert "img/s" in out and (tmp_path / "results.json").is_file()
    assert "config" not in json.loads((tmp_path / "results.json").read_text())["env"]


def test_demo_times_the_checkpoints_architecture(tiny_checkpoint, tmp_path, capsys):
    """demo --checkpoint: the header names the checkpoint, and the timing builds its architecture (not the preset's
    12 layers at 224 px), which results.json records."""
    _, ckpt = tiny_checkpoint
    assert main(["demo", "--checkpoint", str(ckpt), "--model", "vit_ti_16", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert f"with checkpoint {ckpt} (1 layers, width 192, patch 16, 32x32 px)" in out
    assert "throughput of this architecture" in out and "32x32 px" in out
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["env"]["config"].startswith("num_classes=4, depth=1")
    assert {r["model"] for r in results["rows"]} == {"vit_ti_16"}
    from benchmarks.flops import vit_flops

    flops = vit_flops(vit_fast.get_config("vit_ti_16", depth=1, num_classes=4, img_size=32))
    measured = [r for r in results["rows"] if r["error"] is None]
    assert measured and all(r["tflops"] * 1e12 * r["latency_ms_p50"] * 1e-3 / r["batch"] == pytest.approx(flops)
                            for r in measured)
    assert "every model with num_classes=4, depth=1" in (tmp_path / "o" / "results.md").read_text()


def test_readme_command_line_block(tmp_path, monkeypatch, capsys):
    """The README's `vit-fast` lines as written, in a folder holding what they name: tiny random stand-ins for
    timm_vit_b16.safetensors, hf_dir/, the Hub repository (a full CLIPModel, served by a stand-in downloader) and
    cat.jpg / dog.png. `bench` and `demo` are left to their own tests (test_bench.py, test_demo_runs_end_to_end):
    bench's B/16 rows at batch 64 would take minutes on a CPU."""
    import shlex

    T = pytest.importorskip("transformers")
    from tests.test_hub import FakeHub, huggingface_hub

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Command line", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]
    assert all(words[0] == "vit-fast" for words in lines) and len(lines) >= 6, block
    monkeypatch.chdir(tmp_path)
    for name in ("cat.jpg", "dog.png"):
        Image.fromarray(torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8).numpy()).save(name)
    timm_like = randomize_(vit_fast.create("vit_ti_16", img_size=32, depth=1, num_classes=4))
    save_file({k: v.contiguous() for k, v in timm_like.state_dict().items()}, "timm_vit_b16.safetensors")
    randomize_(T.ViTForImageClassification(T.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=96, image_size=32, patch_size=16,
                                                       num_labels=3))).save_pretrained("hf_dir")
    clip = T.CLIPModel(T.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        vision_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96,
                           image_size=32, patch_size=16), projection_dim=24))
    clip.save_pretrained(tmp_path / "repos" / "clip")
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        FakeHub(tmp_path / "hub-cache", {"openai/clip-vit-large-patch14": tmp_path / "repos" / "clip"}))
    ran = []
    for words in sorted(lines, key=lambda w: w[1] != "convert"):  # the converts write ckpt/, which predict reads
        if words[1] in ("bench", "demo"):
            continue
        assert main(words[1:]) == 0, (words, capsys.readouterr().err)
        ran.append(words[1])
    assert sorted(ran) == ["convert", "convert", "convert", "info", "predict"]
    assert vit_fast.load("ckpt").config.img_size == (384, 384)  # the last convert into ckpt/ wins
    assert vit_fast.load("clip_l").config.embedding_head
