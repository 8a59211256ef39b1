"""The `vit-fast` command (also `python -m vit_fast`): predict, info, convert, demo, bench, serve, infer, validate.

Errors a user can cause print one readable line and exit non-zero; tracebacks are for bugs.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from . import dtype_names

ASSETS = Path(__file__).parent / "assets"
SAMPLE_IMAGES = sorted(str(p) for p in ASSETS.glob("*.jpg"))


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported as one line."""


def fp8_exclude_misuse(fp8_exclude, dtype):
    """The one line for `--fp8-exclude` without `--dtype fp8` (None when the pair is fine)."""
    if fp8_exclude and dtype != "fp8":
        return f"--fp8-exclude applies to --dtype fp8 only, got {f'--dtype {dtype}' if dtype else 'no --dtype'}"
    return None


def check_fp8_exclude_names(model, named: str, fp8_exclude) -> None:
    """`--fp8-exclude` against a loaded model, in command-line terms (UsageError): a pattern naming no layer, or an FP8
    checkpoint asked for another mix than the one it was written with. `named`: how the command line names the
    checkpoint ("--checkpoint DIR", or convert's SRC)."""
    from .fp8 import check_exclude, kept_layers

    try:
        check_exclude(model, fp8_exclude)
    except ValueError as e:
        if not model.is_fp8:
            raise UsageError(str(e)) from None
        kept = kept_layers(model)
        raise UsageError(f"{named} is an FP8 model that keeps {len(kept)} GEMM layer(s) out of FP8 "
                         f"({', '.join(kept[:3]) or 'none'}{' ...' if len(kept) > 3 else ''}), not what "
                         f"--fp8-exclude {fp8_exclude} asks: leave out --fp8-exclude, or write that mix from the "
                         "unquantized weights with vit-fast convert --dtype fp8 --fp8-exclude") from None


def add_fp8_exclude_arg(p: argparse.ArgumentParser, kept_in: str = "the model dtype", more: str = "") -> None:
    """`--fp8-exclude`, one definition for every command that takes `--dtype fp8`."""
    p.add_argument("--fp8-exclude", default="", metavar="LAYERS",
                   help=f"with --dtype fp8: GEMMs kept in {kept_in}, comma-separated kinds (qkv, proj, fc1, fc2) or "
                        f"layer patterns (blocks.0.*), as vit_fast.quantize(model, 'fp8', exclude=...){more}")


def _parse_overrides(items) -> dict:
    """`--set key=value` pairs; values are JSON where they parse (numbers, lists, booleans), else strings."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _predictor(args):
    from . import create, load
    from .predictor import Predictor, _default_device

    from .backends import fp8_cli_check

    overrides = _parse_overrides(getattr(args, "set", None))
    _default_device(args.device)  # a device that cannot be used is refused before any model is built
    refusal, _ = fp8_cli_check(args.backend, args.device, getattr(args, "dtype", None))  # auto warns when it runs
    if refusal:
        raise UsageError(refusal)
    misuse = fp8_exclude_misuse(getattr(args, "fp8_exclude", None), getattr(args, "dtype", None))  # demo: neither
    if misuse:
        raise UsageError(misuse)
    if args.checkpoint is None:
        if getattr(args, "fp8_exclude", None):  # the preset's layer names, before a model is built (as serve does)
            from . import get_config
            from .fp8 import excluded_names, layer_names

            excluded_names(layer_names(get_config(args.model, **overrides).depth), args.fp8_exclude)
        model = create(args.model, backend=args.backend, **overrides)
        print(f"note: no --checkpoint given: {args.model} with RANDOM weights; the labels below mean nothing",
              file=sys.stderr)
    else:
        model = load(args.checkpoint, backend=args.backend, **overrides)
        if getattr(args, "fp8_exclude", None):
            check_fp8_exclude_names(model, f"--checkpoint {args.checkpoint}", args.fp8_exclude)
    predictor = Predictor(model, device=args.device, dtype=getattr(args, "dtype", None),
                          fp8_exclude=getattr(args, "fp8_exclude", None) or None)
    predictor.random_weights = args.checkpoint is None
    return predictor


def _print_predictions(paths, results) -> int:
    """Each image's labels on stdout; an image that could not be read as one line on stderr (the others are still
    printed), and then exit code 1."""
    failures = 0
    for path, result in zip(paths, results):
        if result.get("error"):
            failures += 1
            error = result["error"]
            print(f"vit-fast: error: {error if str(path) in error else f'{path}: {error}'}", file=sys.stderr)
            continue
        print(path)
        for label, score in zip(result["labels"], result["scores"]):
            print(f"  {score:7.4f}  {label}")
    return 1 if failures else 0


def _check_image_files(paths) -> None:
    """predict's images exist and are files: checked before a model is built."""
    for path in paths:
        if Path(path).is_dir():
            raise UsageError(f"predict takes image files, got the folder {str(path)!r} (vit-fast infer reads "
                             "folders)")
        if not Path(path).is_file():
            raise UsageError(f"image file not found: {str(path)!r}")


def cmd_predict(args) -> int:
    if args.normalize and not args.embeddings:
        raise ValueError("--normalize applies to embeddings: add --embeddings")
    if args.top_k < 1:
        raise UsageError(f"--top-k expects a positive number of labels, got {args.top_k}")
    _check_image_files(args.images)
    predictor = _predictor(args)
    if args.embeddings:
        return _print_embeddings(args.images, predictor.predict(args.images, return_embeddings=True,
                                                                normalize_embeddings=args.normalize))
    if not predictor.classifies:  # nothing to print but the file names
        what = ("an embedding head (CLIP's projection)" if predictor.config.embedding_head
                else "no classifier head (num_classes 0)")
        raise UsageError(f"this model has {what}, so it has no labels to predict: add --embeddings")
    results = predictor.predict(args.images, top_k=args.top_k)
    return _print_predictions(args.images, results)


def _print_embeddings(paths, results) -> int:
    """One JSON line per image: {"image", "embedding"} or {"image", "error"}."""
    failures = 0
    for path, result in zip(paths, results):
        if result.get("error"):
            failures += 1
            print(json.dumps({"image": str(path), "error": result["error"]}))
        else:
            print(json.dumps({"image": str(path), "embedding": result["embedding"]}))
    return 1 if failures else 0


def cmd_info(args) -> int:
    from . import __version__
    from .switches import switch_settings
    from .backends import available_backends, triton_interpreting, triton_unavailable_reason

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device = f"cuda: {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        device = f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = {
        "vit-fast": __version__,
        "device": device,
        "backends": ", ".join(available_backends()),
        "python": platform.python_version(),
        "torch": torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""),
        "triton": triton_version + (" (interpreter on)" if triton_interpreting() else ""),
    }
    for optional in ("transformers", "timm", "ray"):
        try:
            lines[optional] = __import__(optional).__version__
        except Exception:  # noqa: BLE001 - an optional package that fails to import is simply absent
            lines[optional] = "not available"
    reason = triton_unavailable_reason(None)
    if reason:
        lines["triton backend"] = f"unavailable: {reason}"
    try:
        lines["kernel switches"] = switch_settings() or "defaults"
    except ValueError as e:
        lines["kernel switches"] = f"error: {e}"
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_convert(args) -> int:
    from . import from_hf, from_timm, load, save

    misuse = fp8_exclude_misuse(args.fp8_exclude, args.dtype)
    if misuse:
        raise UsageError(misuse)
    overrides = _parse_overrides(args.set)
    from .loading.checkpoint import check_destination

    check_destination(args.dst)  # before the source loads
    readers = {"auto": load, "timm": from_timm, "hf": from_hf}
    model = readers[args.format](args.src, **overrides)
    if args.dtype == "float32" and model.is_fp8:
        raise UsageError(f"{args.src} is an FP8 model: its float32 weights are gone (convert the checkpoint it was "
                         "quantized from), or leave out --dtype to copy it as FP8")
    if args.dtype == "fp8":
        if args.fp8_exclude:
            check_fp8_exclude_names(model, args.src, args.fp8_exclude)
        model.to_fp8(exclude=args.fp8_exclude)  # quantized once here; vit_fast.load(dst) gives these bits back
    dst = save(model, args.dst)
    cfg = model.config
    fp8 = ""
    if model.is_fp8:
        from .fp8 import fp8_layers, quantized_linears

        fp8 = f", FP8 GEMM weights ({len(fp8_layers(model))} of {len(quantized_linears(model))} GEMM layers)"
    # an FP8 layer keeps its weight in a buffer (raw bits), not a parameter
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for k, b in model.named_buffers()
                                                         if k.endswith(".weight_bits"))
    print(f"wrote {dst}{fp8} ({n:,} parameters; {cfg.depth} layers, width "
          f"{cfg.embed_dim}, {cfg.num_heads} heads, patch {cfg.patch_size}, {cfg.img_size[0]}x{cfg.img_size[1]}, "
          f"{cfg.num_classes} classes); load it with vit_fast.load({str(dst)!r})")
    return 0


def _architecture_overrides(config, preset: str) -> dict:
    """The fields of `config` that differ from the preset's and shape the compute (labels, preprocessing and the
    image size left out: the harness times square inputs at --resolution)."""
    import dataclasses

    from . import get_config

    base = get_config(preset)
    skip = {"labels", "img_size", "image_mean", "image_std", "crop_pct", "resize_mode", "interpolation",
            "pos_embed_antialias", "input_size", "resize_size", "crop_offset"}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in skip and getattr(config, f.name) != getattr(base, f.name)}


def cmd_demo(args) -> int:
    """The quick start's main job: classify the shipped sample images, then a short side-by-side timing of the same
    architecture (a --checkpoint's or --set's, with random weights)."""
    from benchmarks import cli as bench_cli

    _bench_refusals(bench_cli.check_out_dir, args.out)  # before the model is built
    gpu = torch.cuda.is_available()
    print(f"vit-fast demo on {'GPU: ' + torch.cuda.get_device_name(0) if gpu else 'CPU'}")
    if not gpu:
        print("triton backend: needs a CUDA GPU (this machine has none), so the CPU runs the sdpa backend")
    args.backend = "auto"
    predictor = _predictor(args)
    cfg = predictor.model.config
    what = f"checkpoint {args.checkpoint}" if args.checkpoint else args.model
    if args.checkpoint or args.set:
        what += (f" ({cfg.depth} layers, width {cfg.embed_dim}, patch {cfg.patch_size}, "
                 f"{cfg.img_size[0]}x{cfg.img_size[1]} px)")
    print(f"\nclassifying {len(SAMPLE_IMAGES)} sample images with {what} on {predictor.device} "
          f"({str(predictor.dtype).replace('torch.', '')}, backend {predictor.model.backend}):")
    status = _print_predictions([Path(p).name for p in SAMPLE_IMAGES], predictor.predict(SAMPLE_IMAGES, top_k=3))

    overrides = _architecture_overrides(cfg, args.model)
    # the token rows of what predict feeds it (SigLIP so400m/14 at 384 px: 27 x 14 = 378; HF's DINOv2: 224)
    resolution = cfg.eval_size[0] // cfg.patch_size * cfg.patch_size
    print(f"\nthroughput of {'this architecture' if overrides or resolution != 224 else args.model}, backends side "
          f"by side (random weights and inputs, {resolution}x{resolution} px, warm-up excluded):")
    bench_args = ["--models", args.model, "--out", args.out, "--no-plots", "--no-progress",
                  "--resolution", str(resolution)]
    if gpu:
        bench_args += ["--batch-sizes", "1,64", "--dtypes", "bfloat16", "--backends", "eager,sdpa,vit_fast"]
    else:
        bench_args += ["--batch-sizes", "1,4", "--dtypes", "float32", "--backends", "eager,sdpa",
                       "--repeats", "3", "--warmup", "1"]
    parser = bench_cli.add_arguments(argparse.ArgumentParser(prog="vit-fast demo"))
    bench = parser.parse_args(bench_args)
    bench.config_overrides = overrides  # the rows keep the preset's name; results.json's env records these
    return _bench_refusals(bench_cli.run, bench) or status


def _bench_refusals(fn, *args):
    """fn(*args) of the benchmark harness, its one-line refusals (SystemExit("error: ...")) as this command's
    other errors."""
    try:
        return fn(*args)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        raise UsageError(e.code.removeprefix("error: ")) from None


def cmd_bench(args) -> int:
    from benchmarks import cli as bench_cli

    return _bench_refusals(bench_cli.run, args)


def _add_model_args(p):
    p.add_argument("--checkpoint", default=None,
                   help="vit-fast directory/file, Hugging Face directory, timm directory (config.json + weights), "
                        "timm weight file, or a Hugging Face Hub repository holding one of those directories "
                        "(org/name[@revision], downloaded) (default: random weights)")
    p.add_argument("--model", default="vit_b_16", help="preset used when no checkpoint is given (default vit_b_16)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. --set num_heads=12")


def build_parser() -> argparse.ArgumentParser:
    from . import BACKENDS

    parser = argparse.ArgumentParser(prog="vit-fast", description="Fast Vision Transformer inference.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("images", nargs="+", help="image files (anything Pillow decodes)")
    _add_model_args(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--embeddings", action="store_true",
                   help="print one JSON line per image with its embedding (CLIP: image_embeds) instead of labels")
    p.add_argument("--normalize", action="store_true", help="with --embeddings: scale embeddings to unit L2 norm")
    p.add_argument("--dtype", default=None, type=dtype_names.argument("float32", "float16", "bfloat16", "fp8"),
                   metavar="{float32,float16,bfloat16,fp8}",
                   help="default: bfloat16 on GPU, float32 on CPU; fp8: FP8 GEMMs (sm_89/sm_90; CPU: torch emulation); "
                        "short names (fp32, fp16, bf16) too")
    add_fp8_exclude_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="device, available backends, versions")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="timm or Hugging Face weights -> a vit-fast checkpoint directory")
    p.add_argument("src", help="timm .safetensors/.pth file or directory (config.json + weights), Hugging Face "
                               "directory, vit-fast checkpoint, or a Hugging Face Hub repository holding one of those "
                               "directories (org/name[@revision], downloaded)")
    p.add_argument("dst", help="output directory (model.safetensors + vit_fast.json)")
    p.add_argument("--format", choices=("auto", "timm", "hf"), default="auto")
    p.add_argument("--dtype", type=dtype_names.argument("float32", "fp8"), metavar="{float32,fp8}", default=None,
                   help="default: as loaded (float32 weights; an FP8 checkpoint stays FP8). fp8: store the QKV, "
                        "out-projection, FC1 and FC2 weights as float8 e4m3 with per-channel scales "
                        "(vit_fast.quantize), the rest float32; vit_fast.load reads it back bit for bit")
    add_fp8_exclude_arg(p, "float32", "; the checkpoint records which layers are FP8")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override, e.g. --set num_heads=16 --set 'img_size=[384,384]'")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help="classify the bundled sample images and time the backends")
    _add_model_args(p)
    p.add_argument("--out", default="out/demo", help="where the timing results are written (default out/demo)")
    p.set_defaults(func=cmd_demo)

    from benchmarks import cli as bench_cli

    p = sub.add_parser("bench", help="benchmark backends side by side (see `vit-fast bench --help`)")
    bench_cli.add_arguments(p)
    p.set_defaults(func=cmd_bench)

    from .serving import cli as serving_cli

    serving_cli.add_serve_parser(sub)
    serving_cli.add_infer_parser(sub)

    from . import validate

    validate.add_parser(sub, _add_model_args)
    return parser


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"vit-fast: warning: {' '.join(str(message).split())}\n"


def main(argv=None) -> int:
    import warnings

    previous, warnings.formatwarning = warnings.formatwarning, _warning_line  # one line, no source line under it
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = previous


def _run(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .switches import switch_settings

        if args.func is not cmd_info:  # info shows them, a bad one included
            switch_settings()  # every VITFAST_* kernel switch read at launch, checked before a model loads
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vit-fast: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, RuntimeError, OSError, ImportError) as e:
        print(f"vit-fast: error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(e: BaseException) -> str:
    """An error message on one line (library messages sometimes span several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    plain = (UsageError, ValueError, RuntimeError, FileNotFoundError)  # ours say what they are
    return text if isinstance(e, plain) else f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
