"""Commit-ready evidence from a device lease: `runs.tar.gz` (what `benchmarks/gpu_steps.sh lease` brings back) into
benchmarks/results/<date>-<device>/, and the README table regenerated from it.

The headline and every grid slice are merged into one results.json (+ results.md and plots; `benchmarks.merge`'s
rule, the headline's rows last), with the results already stored for that day and device when they come from the
same commit. A lease of another commit on the same day (a fix measured again) goes to <date>-<device>-<commit>/
beside it, since rows carry no commit of their own; the README table follows the newest. The rest of what the
lease wrote is kept as it came under lease/ (the headline's setup.json and targets, the test outcomes, the
per-kernel profile, the logs), so every figure a note quotes has its file.
`python -m benchmarks.store_lease RUNS_TAR [--root DIR] [--readme README.md] [--no-plots] [--source-commit SHA]`.
--source-commit names the commit the lease ran when the rows record another (a device copy whose stale .git made the
harness write "<older commit>+changes"); the step files kept under lease/ still hold what was recorded.
"""
from __future__ import annotations

import argparse
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

# what is kept besides the merged results: step directory -> files (logs are small and say what happened)
KEEP = {"headline": ("results.json", "setup.json", "headline.md", "headline.log"),
        "tests": ("junit.xml", "tests.jsonl", "tests.log"),
        "profile": ("breakdown.json", "breakdown.md", "profile.log"),
        "profile8": ("breakdown.json", "breakdown.md", "profile8.log"),
        "fp8acc": ("results.json", "results.md", "fp8acc.log"),  # kept apart: another kernel setting, not merged
        "micro": ("micro.json", "micro.log")}


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
        if not sources:
            raise ValueError(f"{tar_path} holds no headline or grid results.json: nothing to store")
        new = [load(d) for d in sources]
        if source_commit:
            for r in new:
                r["env"]["commit"] = source_commit  # lease/<step>/results.json keep what was recorded
        commits = {r["env"]["commit"] for r in new}
        if len(commits) > 1:
            raise ValueError(f"{tar_path} holds results of commits {sorted(map(str, commits))}: one lease measures "
                             "one commit")
        commit = commits.pop()
        dest = default_results_dir(merge(new)["env"], root=root)
        old = load(dest / "results.json") if (dest / "results.json").is_file() else None
        if old is not None and old["env"]["commit"] != commit:  # the same day's results of another commit
            dest = dest.with_name(f"{dest.name}-{slug(str(commit))}")
            old = load(dest / "results.json") if (dest / "results.json").is_file() else None
        if old is not None:  # an earlier lease of the same day, device and commit
            if old["env"]["commit"] != commit:
                raise ValueError(f"{dest} holds results of commit {old['env']['commit']}, not {commit}")
            new.insert(0, old)
        merged = merge(new)
        dest.mkdir(parents=True, exist_ok=True)
        write_json(merged, dest / "results.json")
        write_report(merged, dest, plots=plots)
        for step in [*KEEP, *(d.name for d in sorted(runs.glob("grid-*")))]:
            names = KEEP.get(step, ("results.json", "results.md", "grid.log"))
            for name in names:
                if (runs / step / name).is_file():
                    (dest / "lease" / step).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(runs / step / name, dest / "lease" / step / name)
    if readme_path is not None:
        readme.update_readme(readme_path, dest / "results.json")
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
