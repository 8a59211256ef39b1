"""Every timm model the README's family table names, loaded by `vit_fast.from_timm` and compared with timm itself.

The table promises `vit_*_clip_*`, `vit_*_patch14_dinov2`, `vit_*_patch14_reg4_dinov2`, `vit_*_siglip_*` and
`deit_*_distilled_*`; the test suite checks tiny members of each family. This checks every name timm lists for
those patterns at its real size: built with random weights (no download; every 1-D parameter, LayerNorms and
biases, moved by N(0, 0.1) so that a wrong wiring shows), converted from the live module (nothing passed by hand),
run at timm's own input size in fp32 on the CPU, sdpa backend. Per model: relative error (||ours - timm|| /
||timm||) of `model(x)` against timm's `model(x)` and of `forward_features`, judged against the loaders' bound
(`vit_fast.numerics.LOADER_REL_ERR`). Rows are written as they finish; exit 1 if any model fails.
`--others` surveys every other name timm lists for `vit_*` and `deit*` instead (Eva, relative-position, hybrid
CNN stems, post-norm and parallel blocks, ...): each must match or be refused in one line (a ValueError); a model
that loads and differs, or fails any other way, fails the survey. `--hub` loads each model the way a user who
downloaded `timm/<model>` does: timm writes its checkpoint directory (`save_for_hf`: config.json + model.safetensors)
and `vit_fast.load` reads that directory, not the live module.

    python -m benchmarks.timm_coverage                      # every matching name (about 30 min on 2 CPU cores)
    python -m benchmarks.timm_coverage --models vit_so400m_patch14_siglip_384 --out /tmp/one.json
    python -m benchmarks.timm_coverage --others --skip '*large*,*huge*,*giant*' --out .../timm_coverage_others.json
    python -m benchmarks.timm_coverage --hub --skip '*giant*' --out .../timm_coverage_hub.json
"""
from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

PATTERNS = ("vit_*_clip_*", "vit_*_patch14_dinov2", "vit_*_patch14_reg4_dinov2", "vit_*_siglip_*",
            "deit_*_distilled_*")
DEFAULT_OUT = Path(__file__).resolve().parent / "families" / "timm_coverage.json"
OTHERS_OUT = DEFAULT_OUT.with_name("timm_coverage_others.json")
HUB_OUT = DEFAULT_OUT.with_name("timm_coverage_hub.json")


def _perturb_(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))


def _convert(vit_fast, ref, hub: bool):
    if not hub:
        return vit_fast.from_timm(ref, backend="sdpa")
    from timm.models._hub import save_for_hf

    with tempfile.TemporaryDirectory() as directory:
        save_for_hf(ref, directory, safe_serialization=True)
        return vit_fast.load(directory, backend="sdpa")


def check_model(timm, name: str, batch: int, seed: int, hub: bool = False) -> dict:
    """One model: build, perturb, convert (from the live module, or with `hub` from timm's checkpoint directory of
    it), compare. `status`: "match", "mismatch", "refused" (loading raised its one-line ValueError) or "error"
    (anything else; the run goes on)."""
    import vit_fast
    from vit_fast.numerics import LOADER_REL_ERR, rel_err

    start = time.perf_counter()
    row = {"model": name}
    try:
        torch.manual_seed(seed)  # timm's own initialization draws from the global generator
        generator = torch.Generator().manual_seed(seed)
        ref = timm.create_model(name, pretrained=False).eval()
        _perturb_(ref, generator)
        h, w = timm.data.resolve_data_config({}, model=ref)["input_size"][1:]
        row.update(params=sum(p.numel() for p in ref.parameters()), input=[batch, 3, h, w],
                   timm_class=type(ref).__name__)
        try:
            ours = _convert(vit_fast, ref, hub)
        except ValueError as e:
            row.update(status="refused", error=str(e)[:500], seconds=round(time.perf_counter() - start, 1))
            return row
        x = torch.randn(batch, 3, h, w, generator=generator)
        with torch.no_grad():
            row["out_rel_err"] = rel_err(ours(x), ref(x))
            row["features_rel_err"] = rel_err(ours.forward_features(x), ref.forward_features(x))
        row["grid"] = list(ours.config.grid_size)
        row["status"] = "match" if max(row["out_rel_err"], row["features_rel_err"]) <= LOADER_REL_ERR else "mismatch"
    except Exception as e:  # a crash is a finding, not the end of the survey
        row.update(status="error", error=f"{type(e).__name__}: {e}"[:500])
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timm_coverage", description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated timm names (default: every name timm "
                        "lists for " + ", ".join(PATTERNS) + ")")
    parser.add_argument("--others", action="store_true", help="every other vit_*/deit* name timm lists: each must "
                        "match or be refused in one line")
    parser.add_argument("--hub", action="store_true", help="load through timm's checkpoint directory of each "
                        "model (config.json + model.safetensors) instead of the live module")
    parser.add_argument("--skip", default="", help="comma-separated fnmatch patterns of names to leave out")
    parser.add_argument("--batch", type=int, default=2, help="images per comparison (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"JSON report (default in benchmarks/families/: "
                        f"{DEFAULT_OUT.name}, with --others {OTHERS_OUT.name}, with --hub {HUB_OUT.name})")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = OTHERS_OUT if args.others else HUB_OUT if args.hub else DEFAULT_OUT
    if args.batch < 1:
        print(f"error: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    try:
        import timm
    except Exception as e:  # ImportError, or torchvision failing to load its ops
        print(f"error: timm does not import here ({type(e).__name__}: {e}); install timm (with a torchvision that "
              "matches torch) to run the survey", file=sys.stderr)
        return 2
    known = set(timm.list_models())
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            print(f"error: timm {timm.__version__} has no models {unknown}", file=sys.stderr)
            return 2
    else:
        family = {n for p in PATTERNS for n in timm.list_models(p)}
        names = sorted(set(timm.list_models("vit_*") + timm.list_models("deit*")) - family if args.others else family)
    skip = [s for s in args.skip.split(",") if s]
    names = [n for n in names if not any(fnmatch.fnmatch(n, s) for s in skip)]

    from vit_fast.numerics import LOADER_REL_ERR
    from vit_fast.provenance import source_commit

    report = {
        "what": ("timm's other vit_*/deit* models: each matches or is refused in one line" if args.others else
                 "timm models of the README's families: vit_fast.from_timm against timm, fp32, CPU, sdpa backend"),
        "loaded_from": "timm checkpoint directory (save_for_hf) via vit_fast.load" if args.hub else "live module",
        "patterns": list(PATTERNS), "others": args.others, "skipped_patterns": skip, "bound": LOADER_REL_ERR, "batch": args.batch,
        "seed": args.seed, "commit": source_commit(), "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(), "rows": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names, 1):
        row = check_model(timm, name, args.batch, args.seed, hub=args.hub)
        row["ok"] = row["status"] == "match" or (args.others and row["status"] == "refused")
        report["rows"].append(row)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        detail = row.get("error") or f"out {row['out_rel_err']:.1e}, features {row['features_rel_err']:.1e}"
        print(f"[{i}/{len(names)}] {name}: {row['status']}{'' if row['ok'] else ' FAIL'} ({detail[:200]}, "
              f"{row['seconds']} s)",
              flush=True)
        gc.collect()
    failed = [r["model"] for r in report["rows"] if not r["ok"]]
    counts = {s: sum(r["status"] == s for r in report["rows"]) for s in ("match", "refused", "mismatch", "error")}
    print(f"{len(names)} models: {counts} (bound {LOADER_REL_ERR:g}); wrote {args.out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
