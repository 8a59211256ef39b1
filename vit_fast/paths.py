"""Output paths checked before any work starts: a job that runs for minutes must not end on a path it cannot write."""
from __future__ import annotations

import os
from pathlib import Path


def check_output_file(out, flag: str, example: str) -> str:
    """The absolute path of the file `flag` names, after checking that it is not a directory, that it is writable if
    it exists, and that its folder exists (or can be created) and is writable; ValueError saying what is wrong
    (`example`: a file name the message suggests inside a directory given by mistake)."""
    path = Path(os.path.expanduser(str(out))).absolute()
    if path.is_dir() or str(out).endswith(("/", os.sep)):  # "dir/" means a folder, existing or not
        raise ValueError(f"{flag} {out} is a directory; expected a file path such as {path / example}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {out} exists and is not writable")
    _check_writable_parent(path.parent, f"{flag} {out}")
    return str(path)


def check_output_dir(out, what: str) -> Path:
    """`out` as a directory to write `what` in (made if missing): not a file, and the first part of the path that
    exists a writable folder; ValueError saying what is in the way."""
    path = Path(os.path.expanduser(str(out)))
    if path.exists() and not path.is_dir():
        raise ValueError(f"expected a directory for {what}, got the file {str(out)!r}")
    _check_writable_parent(path.absolute(), f"cannot write {what} in {str(out)!r}")
    return path


def _check_writable_parent(path: Path, prefix: str) -> None:
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{prefix}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{prefix}: cannot write in {existing} (permission denied)")
