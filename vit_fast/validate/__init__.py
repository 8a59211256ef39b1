"""`vit-fast validate`: does the fast path change my results? Checks a user's model, on their GPU and their images.

1. Per op: each Triton kernel at the model's shapes against its eager composition (`ops.OP_CHECKS`).
2. Whole model: the candidate (Triton kernels in the chosen dtype; an FP8 model for `--dtype fp8`; PyTorch's sdpa
   when the kernels cannot run) and PyTorch's own path in the same dtype, both against the fp32 eager model, on the
   user's images (decoded and resized as the checkpoint's config says) or on random pixels.
3. Budgets: `vit_fast.numerics` (the suite's definitions): 2x PyTorch's own error in that dtype; FP8 models keep
   the minimums of `FP8_MODEL_MINIMUMS`. Exit code 0 when every check is within budget, 1 when one is exceeded,
   2 for bad arguments (checked before any model is loaded).
"""
from __future__ import annotations

import contextlib
import copy
import sys
import time
from pathlib import Path

import torch

from .report import LABELS, format_report, where, write_json

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.bfloat16}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm", "pbm")
# Above this width the Triton interpreter takes minutes per op: say so before starting.
_INTERPRETER_WIDTH_HINT = 256


def add_parser(sub, add_model_args) -> None:
    p = sub.add_parser(
        "validate", help="check the Triton kernels and the whole model against fp32 PyTorch on your GPU and images",
        description="Per op: each Triton kernel at the model's shapes against its eager composition; whole model: "
                    "logits and embeddings against the fp32 PyTorch model on your images (or random pixels). "
                    "Budget: 2x PyTorch's own error in the same dtype. Exit code 1 when a budget is exceeded.")
    add_model_args(p)
    p.add_argument("--dtype", default="bf16",
                   help=f"dtype to validate: {', '.join(DTYPES)} (default bf16; torch's names too: bfloat16, ...)")
    from ..cli import add_fp8_exclude_arg

    add_fp8_exclude_arg(p, "bf16")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="folder of images (searched recursively); default: random pixels")
    p.add_argument("--random", type=int, default=32, metavar="N",
                   help="number of random images when --images is not given (default 32)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass and per-op batch (8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images (default 0)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON to OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# ----- argument checks: all before any model is loaded ----------------------------------------------------------

def _list_images(folder: str) -> list:
    from ..cli import UsageError

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UsageError(f"--images expects a folder of images; {folder!r} is "
                         f"{'a file' if path.exists() else 'not there'}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    if not files:
        raise UsageError(f"no image files under {folder!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def _check_args(args) -> dict:
    """Everything that can be wrong with the command line, found before anything expensive starts."""
    from .. import PRESETS, get_config
    from ..backends import triton_unavailable_reason
    from ..cli import UsageError, _parse_overrides, fp8_exclude_misuse
    from ..dtype_names import canonical
    from ..loading.checkpoint import is_fp8_checkpoint

    try:  # any spelling (bfloat16, float8, ...) as this command's name
        args.dtype = canonical(args.dtype, {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "fp8": "fp8"})
    except ValueError:
        raise UsageError(f"--dtype expects one of {', '.join(DTYPES)}, got {args.dtype!r}") from None
    for flag in ("batch", "random"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} expects a positive number of images, got {getattr(args, flag)}")
    checked = {"overrides": _parse_overrides(args.set)}
    misuse = fp8_exclude_misuse(args.fp8_exclude, args.dtype)
    if misuse:
        raise UsageError(misuse)
    if args.checkpoint is not None:
        checked["checkpoint"], folder = _checkpoint(args.checkpoint)
        if is_fp8_checkpoint(folder):
            raise UsageError(f"--checkpoint {args.checkpoint} is an FP8 model; validate measures FP8 against the "
                             "fp32 model, so pass the checkpoint it was quantized from, with --dtype fp8")
    if args.checkpoint is None:
        if args.model not in PRESETS:
            raise UsageError(f"unknown model {args.model!r}; known models: {', '.join(sorted(PRESETS))}")
        cfg = get_config(args.model, **checked["overrides"])  # a bad --set fails here, before any weights exist
        if args.fp8_exclude:
            from ..fp8 import excluded_names, layer_names

            excluded_names(layer_names(cfg.depth), args.fp8_exclude)  # a checkpoint's: when it is loaded
    checked["images"] = _list_images(args.images) if args.images is not None else None
    if args.json is not None:
        out = Path(args.json).expanduser()
        if out.is_dir():
            raise UsageError(f"--json expects a file name, got the folder {args.json!r}")
        from ..paths import check_output_file

        try:  # a folder in the way, or no permission: found now, not after the whole run
            check_output_file(args.json, "--json", "validate.json")
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        raise UsageError(f"--device expects cuda or cpu, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    checked["device"] = device
    reason = triton_unavailable_reason(device)
    if reason is not None and device.type == "cpu":
        reason = ("the Triton kernels need a CUDA GPU and this machine has none (TRITON_INTERPRET=1 runs them in "
                  "Triton's CPU interpreter: slow, for a tiny model)")
    if reason is None and args.dtype == "fp8":
        from ..backends import fp8_unavailable_reason

        reason = fp8_unavailable_reason(device)  # a GPU older than sm_89: no FP8 tensor cores
    fallback = "the FP8 torch emulation with PyTorch's sdpa" if args.dtype == "fp8" else "PyTorch's sdpa"
    checked["kernel_reason"] = None if reason is None else f"{reason}; the whole model below is {fallback}"
    return checked


def _checkpoint(given: str):
    """(what to load, the local folder or file) for --checkpoint. A named checkpoint (a Hugging Face Hub repository,
    a timm model name) is downloaded here, before anything runs, and loaded from that folder; a timm model name is
    loaded by its name again, pinned to the commit downloaded (from the cache), which builds the architecture it
    names."""
    from ..cli import UsageError, one_line
    from ..loading import hub

    try:
        named = hub.name_of(given)
        if named is not None:
            source, folder, _ = hub.fetch(given, named)
            return source, folder
    except (OSError, ValueError) as e:
        raise UsageError(f"--checkpoint {given}: {one_line(e)}") from None
    where = Path(given).expanduser()
    if not where.exists():
        raise UsageError(f"no checkpoint at {given!r}{hub.missing_hint(given)}")
    return where, where


# ----- inputs ---------------------------------------------------------------------------------------------------

def _batches(args, files, config):
    """(names, uint8 (n, C, H, W) batch or None, skipped [{"image", "error"}]) per batch, decoded lazily."""
    from ..preprocess import preprocess

    if files is None:
        gen = torch.Generator().manual_seed(args.seed)
        h, w = config.eval_size  # the size the images are preprocessed to
        for start in range(0, args.random, args.batch):
            n = min(args.batch, args.random - start)
            pixels = torch.randint(0, 256, (n, config.in_chans, h, w), dtype=torch.uint8, generator=gen)
            yield [f"random[{start + i}]" for i in range(n)], pixels, []
        return
    root = Path(args.images).expanduser()
    names, tensors, skipped = [], [], []
    for i, f in enumerate(files):
        name = str(f.relative_to(root))
        try:
            tensors.append(preprocess(str(f), config))
            names.append(name)
        except (ValueError, OSError) as e:  # listed in the report, the rest still runs
            skipped.append({"image": name, "error": f"{type(e).__name__}: {e}"})
        if len(tensors) == args.batch or i == len(files) - 1:  # full batches of decoded images
            yield names, (torch.stack(tensors) if tensors else None), skipped
            names, tensors, skipped = [], [], []


def _num_batches(args, files) -> int:
    """Batches of the progress bar (a guess with undecodable files: they shorten the run)."""
    n = args.random if files is None else len(files)
    return -(-n // args.batch)


# ----- the run --------------------------------------------------------------------------------------------------

def _load(args, checked):
    from .. import create, load

    if args.checkpoint is None:
        return create(args.model, backend="torch", **checked["overrides"]), args.model, True
    return load(checked["checkpoint"], backend="torch", **checked["overrides"]), str(args.checkpoint), False


def _models(model, args, device, kernels_run: bool):
    """(candidate, its backend, baseline, its backend): the model in the checked dtype, kernels or sdpa, and
    PyTorch's own path in that dtype (sdpa beside the kernels; eager attention beside sdpa)."""
    import vit_fast

    low = copy.deepcopy(model).to(DTYPES[args.dtype])
    cand_backend, base_backend = ("triton", "sdpa") if kernels_run else ("sdpa", "torch")
    base = low.set_backend(base_backend)
    if args.dtype == "fp8":
        cand = vit_fast.quantize(copy.deepcopy(low), "fp8", exclude=args.fp8_exclude)
    else:
        cand = copy.deepcopy(low)  # its own module: the two backends never share cached tensors
    return cand.to(device).set_backend(cand_backend), cand_backend, base.to(device), base_backend


def _judge(summary: dict, dtype_name: str) -> dict:
    """Each whole-model metric with its budget and status ("pass", "fail" or "info" when it has no budget)."""
    from .. import numerics

    judged = {}
    for name, values in summary.items():
        entry = {**values, "budget": None, "status": "info"}
        if dtype_name == "fp8":
            minimum = numerics.FP8_MODEL_MINIMUMS.get(name)
            if minimum is not None:
                entry.update(budget=minimum, status="pass" if values["candidate"] >= minimum else "fail")
        elif name in numerics.MODEL_RULE_METRICS:
            b = numerics.model_budget(values["candidate"], values["baseline"], DTYPES[dtype_name])
            entry.update(budget=b.budget, status="pass" if b.passed else "fail")
        judged[name] = entry
    return judged


@contextlib.contextmanager
def _exact_fp32():
    """fp32 references mean fp32: no TF32 in matmuls or cuDNN convolutions while validating (restored after)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def validate(args) -> dict:
    """Run every check; returns the report (see the README for its fields)."""
    from tqdm import tqdm

    from .. import __version__
    from ..backends import triton_interpreting
    from ..switches import switch_settings
    from ..cli import UsageError
    from . import ops
    from .whole_model import Comparison, outputs

    checked = _check_args(args)
    device, files = checked["device"], checked["images"]
    kernels_run = checked["kernel_reason"] is None
    started = time.perf_counter()
    model, name, random_weights = _load(args, checked)
    model = model.to(device).eval().requires_grad_(False)
    cfg = model.config
    interpreted = kernels_run and device.type == "cpu" and triton_interpreting()
    if interpreted and cfg.embed_dim > _INTERPRETER_WIDTH_HINT:
        print(f"note: the kernels run in Triton's CPU interpreter; at width {cfg.embed_dim} that takes minutes",
              file=sys.stderr)
    cand, cand_backend, base, base_backend = _models(model, args, device, kernels_run)
    low_name = str(DTYPES[args.dtype]).replace("torch.", "")
    if args.dtype == "fp8":
        low_name = "fp8" if kernels_run else "fp8 (torch emulation)"
        if args.fp8_exclude:
            low_name += f", {args.fp8_exclude} kept in bf16"

    blocks = sorted({0, cfg.depth - 1})  # first and last block: activations grow with depth
    checks = ops.checks_for(args.dtype)
    n_ops = sum(len(blocks) if c.per_block else 1 for c in checks) if kernels_run else 0
    bar = tqdm(total=n_ops + _num_batches(args, files), desc="validate", unit="step", file=sys.stderr,
               disable=True if args.no_progress else None, leave=False)
    op_rows, comparison, skipped = [], Comparison(), []
    with torch.no_grad(), _exact_fp32():
        for names, pixels, bad in _batches(args, files, cfg):
            skipped += bad
            if pixels is not None:
                pixels = pixels.to(device)
                if kernels_run and not op_rows:  # per-op checks on the first batch's activations
                    for block in blocks:
                        acts = ops.capture(model, pixels, block)
                        for check in checks:
                            if check.per_block or block == blocks[0]:
                                bar.set_description(f"op {check.name}")
                                op_rows.append(_run_op(ops, check, acts, args.dtype))
                                bar.update()
                        del acts
                bar.set_description("whole model")
                comparison.add(names, outputs(model, pixels), outputs(cand, pixels), outputs(base, pixels))
            bar.update()
    bar.close()
    if not comparison.names:
        raise UsageError(f"none of the {len(files)} files under {args.images!r} could be decoded; first error: "
                         f"{skipped[0]['error']}")

    metrics = _judge(comparison.summary(), args.dtype)
    failures = [f"{where(r)}: {r['reason']}" for r in op_rows if r["status"] in ("fail", "error")]
    failures += [f"{LABELS.get(k, k)} {v['candidate']:.3g} vs budget {v['budget']:.3g}"
                 for k, v in metrics.items() if v["status"] == "fail"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        device_text = f"cuda: {props.name} (sm_{props.major}{props.minor})"
    else:
        device_text = "cpu"
    h, w = cfg.eval_size  # what the images were preprocessed to and the kernels ran on
    return {
        "vit_fast_version": __version__,
        "model": {"name": name, "random_weights": random_weights, "depth": cfg.depth, "embed_dim": cfg.embed_dim,
                  "num_heads": cfg.num_heads, "head_dim": cfg.head_dim, "mlp_dim": cfg.mlp_dim,
                  "tokens": cfg.num_prefix_tokens + (h // cfg.patch_size) * (w // cfg.patch_size),
                  "img_size": list(cfg.img_size), "input_size": [h, w], "patch_size": cfg.patch_size,
                  "num_classes": cfg.num_classes},
        "dtype": args.dtype,
        "batch": args.batch,
        "device": device_text,
        "torch": torch.__version__,
        "rule": "2 x PyTorch's own error in the same dtype + floor (vit_fast.numerics)",
        "kernels": {"ran": kernels_run, "interpreter": interpreted, "reason": checked["kernel_reason"],
                    "settings": switch_settings()},
        "ops": op_rows,
        "whole_model": {
            "inputs": "images" if files is not None else "random images",
            "num_images": len(comparison.names),
            "candidate": f"{cand_backend} {low_name}",
            "baseline": f"{base_backend} {str(DTYPES[args.dtype]).replace('torch.', '')}",
            "reference": "torch float32",
            "metrics": metrics,
            "worst": comparison.worst(),
            "skipped_images": skipped,
        },
        "passed": not failures,
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _run_op(ops, check, acts, dtype_name) -> dict:
    """One op row; a kernel that raises is a failed row with the error as its reason, not a crash."""
    try:
        return ops.run_check(check, acts, dtype_name)
    except Exception as e:  # noqa: BLE001 - reported in the row and counted as a failure
        row = ops.empty_row(check, acts)
        row.update(status="error", reason=f"{type(e).__name__}: {e}")
        return row


def run(args) -> int:
    report = validate(args)
    print(format_report(report))
    if args.json is not None:
        write_json(report, Path(args.json).expanduser())
        print(f"report written to {args.json}")
    return 0 if report["passed"] else 1
