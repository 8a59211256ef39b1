"""Which source a measurement ran: the git commit of this checkout, recorded by every tool that writes results
(the benchmark harness, fp8_accuracy, fp8_budget), so a committed figure can be traced to the code that made it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def source_commit() -> str:
    """$VITFAST_SOURCE_COMMIT when set (a device machine's copy of the tree: its .git, if any, can be an older
    commit's, with this tree's files on top); else the git commit of this source tree (with "+changes" when tracked
    files differ from it); else "unknown" (e.g. vit_fast installed into a venv inside some other repository)."""
    given = os.environ.get("VITFAST_SOURCE_COMMIT", "").strip()
    return given or _git_commit(Path(__file__).resolve().parents[1])


def _git_commit(root: Path) -> str:
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=20)

    try:
        top, head = git("rev-parse", "--show-toplevel"), git("rev-parse", "HEAD")
        if top.returncode or head.returncode or Path(top.stdout.strip()).resolve() != root:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty else "")
