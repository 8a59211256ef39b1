"""vit_fast.provenance: results name the commit they measured; $VITFAST_SOURCE_COMMIT names it where set (what a
device machine's copy of the tree is told), else the checkout's git."""
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASK = "from vit_fast.provenance import source_commit; print(source_commit())"


def _ask(cwd, env_commit=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)}
    if env_commit is not None:
        env["VITFAST_SOURCE_COMMIT"] = env_commit
    return subprocess.run([sys.executable, "-c", ASK], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def test_a_checkout_reports_its_commit_unless_the_variable_names_one():
    """The variable wins: a device machine's copy can carry an older commit's .git under this tree's files (the first
    GPU lease recorded "<older commit>+changes" so)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not head:
        return  # not a git checkout: the copy test below covers it
    assert _ask(REPO).split("+")[0] == head
    assert _ask(REPO, "feedface") == "feedface"


def test_a_copy_without_git_takes_the_commit_from_the_environment(tmp_path):
    shutil.copytree(REPO / "vit_fast", tmp_path / "vit_fast", ignore=shutil.ignore_patterns("__pycache__"))
    assert _ask(tmp_path) == "unknown"
    assert _ask(tmp_path, "0123abc") == "0123abc"
