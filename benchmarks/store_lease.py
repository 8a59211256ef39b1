"""Commit-ready evidence from a device lease: `runs.tar.gz` (what `benchmarks/gpu_steps.sh lease` brings back) into
benchmarks/results/<date>-<device>/, and the README table regenerated from it.

The headline and every grid slice are merged into one results.json (+ results.md and plots; `benchmarks.merge`'s
rule, the headline's rows last), with the results already stored for that day and device when they come from the
same commit. A lease of another commit on the same day (a fix measured again) goes to <date>-<device>-<commit>/
beside it, since rows carry no commit of their own; the README table follows the newest. The rest of what the
lease wrote is kept as it came under lease/ (the headline's setup.json and targets, the test outcomes, the
per-kernel profiles, fp8acc's, fp8tma's, fp8ws', b1engine's, b1split's, b1desc's, b1pdl's, lnstats', gelu's,
stagger's and ws16's rows measured with other kernel settings beside the shipped setting's (measured once for the
steps of a group: its shared.txt says by which), the autotuner's picks, the logs), so every figure a note quotes has
its file; a lease that measured only those (profiles, fp8acc, fp8tma, fp8ws, b1engine, b1split, b1desc, b1pdl,
lnstats, gelu, stagger, ws16) is kept the same way, under the date and device they record, without a merged
results.json.
`python -m benchmarks.store_lease RUNS_TAR [--root DIR] [--readme README.md] [--no-plots] [--source-commit SHA]`.
--source-commit names the commit the lease ran when the rows record another (a device copy whose stale .git made the
harness write "<older commit>+changes"); the step files kept under lease/ still hold what was recorded.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from . import readme
from .cli import write_json
from .env import default_results_dir, slug
from .merge import merge
from .report import load, write_report

# a switched step's files: its rows, then the shipped setting's (shared.txt: which step of its group measured them,
# benchmarks/gpu_steps.sh)
SWITCHED = ("results.json", "results.md", "shipped/results.json", "shipped/results.md", "shipped/shared.txt")
# what is kept besides the merged results: step directory -> files (logs are small and say what happened)
KEEP = {"headline": ("results.json", "setup.json", "headline.md", "headline.log"),
        "tests": ("junit.xml", "tests.jsonl", "tests.log"),
        "profile": ("breakdown.json", "breakdown.md", "profile.log"),
        "profile8": ("breakdown.json", "breakdown.md", "profile8.log"),
        "profile1": ("breakdown.json", "breakdown.md", "profile1.log"),
        # kept apart, never merged: rows of another kernel setting, and the shipped setting's beside them
        "fp8acc": ("results.json", "results.md", "promoted/results.json", "promoted/results.md", "fp8acc.log"),
        "fp8tma": ("results.json", "results.md", "fast/results.json", "fast/results.md", "fp8tma.log"),
        "fp8ws": (*SWITCHED, "fp8ws.log"),
        "b1engine": (*SWITCHED, "b1engine.log"),
        "b1split": (*SWITCHED, "b1split.log"),
        "b1desc": (*SWITCHED, "b1desc.log"),
        "b1pdl": (*SWITCHED, "b1pdl.log"),
        "lnstats": (*SWITCHED, "lnstats.log"),
        "gelu": (*SWITCHED, "gelu.log"),
        "stagger": (*SWITCHED, "stagger.log"),
        "ws16": (*SWITCHED, "ws16.log"),
        # several settings of one row in one process (benchmarks/ablation.py)
        "ablate256": ("ablation.json", "ablation.md", "ablate256.log"),
        "ablate1": ("ablation.json", "ablation.md", "ablate1.log"),
        "ablateL": ("ablation.json", "ablation.md", "ablateL.log"),
        "micro": ("micro.json", "micro.log"),
        "autotune": ("autotune.json", "autotune.md")}  # benchmarks.autotune_record: the autotuner's picks


def store(tar_path, root=None, readme_path=None, plots: bool = True, source_commit=None) -> Path:
    """Unpack, merge and copy; returns the results directory. Raises ValueError when the archive holds no results."""
    tar_path = Path(tar_path)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(tar_path) as tar:
                tar.extractall(tmp, filter="data")
        except (OSError, tarfile.TarError) as e:
            raise ValueError(f"{tar_path} is not a lease archive (runs.tar.gz): {e}") from e
        runs = Path(tmp)
        # the headline last: its rows (the ones headline.md judges) win over a grid slice's of the same key
        sources = [d for d in [*sorted(runs.glob("grid-*")), runs / "headline"] if (d / "results.json").is_file()]
        if sources:
            dest = _store_merged(tar_path, sources, root, plots, source_commit)
        else:  # profiles or switched steps only: kept under the date, device and commit they record
            env = _kept_env(runs)
            if env is None:
                raise ValueError(f"{tar_path} holds no headline, grid, fp8acc, fp8tma, fp8ws, b1engine, b1split, "
                                 "b1desc, b1pdl, lnstats, gelu, stagger, ws16, ablate256, ablate1, ablateL or profile "
                                 "results: nothing to store")
            dest = _dest_for(env, str(source_commit or env["commit"]), root)
        for step in [*KEEP, *(d.name for d in sorted(runs.glob("grid-*")))]:
            names = KEEP.get(step, ("results.json", "results.md", "grid.log"))
            for name in names:
                if (runs / step / name).is_file():
                    (dest / "lease" / step / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(runs / step / name, dest / "lease" / step / name)
    if readme_path is not None and sources:
        readme.update_readme(readme_path, dest / "results.json")
    return dest


def _kept_env(runs: Path):
    """The env block of a kept step that records one (a switched step's results.json, a profile's breakdown.json,
    an ablation's ablation.json: the first file KEEP names for it), or None."""
    for step, names in KEEP.items():
        path = runs / step / names[0]
        if step == "headline" or names[0] not in ("results.json", "breakdown.json", "ablation.json") or \
                not path.is_file():
            continue
        try:
            env = json.loads(path.read_text()).get("env")
        except ValueError:
            continue
        if isinstance(env, dict) and env.get("gpu") and env.get("date"):
            return env
    return None


def _dest_for(env: dict, commit: str, root) -> Path:
    """<root>/<date>-<device>, or <date>-<device>-<commit> when the former holds results of another commit (a full
    hexadecimal commit is shortened to git's 7 characters in the name)."""
    dest = default_results_dir(env, root=root)
    if (dest / "results.json").is_file() and load(dest / "results.json")["env"]["commit"] != commit:
        short = commit[:7] if re.fullmatch(r"[0-9a-f]{40}", commit) else commit
        dest = dest.with_name(f"{dest.name}-{slug(short)}")
    return dest


def _store_merged(tar_path, sources, root, plots: bool, source_commit) -> Path:
    """Merge the headline and grid results into <date>-<device>[-<commit>]/results.json (+ report), with what is
    stored there from the same commit; -> that directory."""
    new = [load(d) for d in sources]
    if source_commit:
        for r in new:
            r["env"]["commit"] = source_commit  # lease/<step>/results.json keep what was recorded
    commits = {r["env"]["commit"] for r in new}
    if len(commits) > 1:
        raise ValueError(f"{tar_path} holds results of commits {sorted(map(str, commits))}: one lease measures "
                         "one commit")
    commit = str(commits.pop())
    dest = _dest_for(merge(new)["env"], commit, root)
    if (dest / "results.json").is_file():  # an earlier lease of the same day, device and commit
        old = load(dest / "results.json")
        if old["env"]["commit"] != commit:
            raise ValueError(f"{dest} holds results of commit {old['env']['commit']}, not {commit}")
        new.insert(0, old)
    merged = merge(new)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(merged, dest / "results.json")
    write_report(merged, dest, plots=plots)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.store_lease", description=__doc__.splitlines()[0])
    p.add_argument("archive", help="runs.tar.gz from a lease (the device tool's files_at/.../lease/runs.tar.gz)")
    p.add_argument("--root", default=None, help="results root (default benchmarks/results)")
    p.add_argument("--readme", default=str(readme.REPO_ROOT / "README.md"),
                   help="README whose table is regenerated from the stored results ('' to leave it)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--source-commit", default=None,
                   help="the commit the lease ran, when its rows record another (a stale .git on the device copy)")
    args = p.parse_args(argv)
    try:
        dest = store(args.archive, args.root, args.readme or None, plots=not args.no_plots,
                     source_commit=args.source_commit)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"stored {args.archive} as {dest}" + (f"; updated {args.readme}" if args.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
