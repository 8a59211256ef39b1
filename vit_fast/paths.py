"""Output paths checked before any work starts: a job that runs for minutes must not end on a path it cannot write."""
from __future__ import annotations

import os
from pathlib import Path


def check_output_file(out, flag: str, example: str) -> str:
    """The absolute path of the file `flag` names, after checking that it is not a directory, that it is writable if
    it exists, and that its folder exists (or can be created) and is writable; ValueError saying what is wrong
    (`example`: a file name the message suggests inside a directory given by mistake)."""
    path = Path(os.path.expanduser(str(out))).absolute()
    if path.is_dir():
        raise ValueError(f"{flag} {out} is a directory; expected a file path such as {path / example}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {out} exists and is not writable")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: cannot write in {existing} (permission denied)")
    return str(path)
