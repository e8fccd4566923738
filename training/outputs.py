"""Where ``vqvae-train``, ``vqvae-eval`` and the benchmarks will write, checked before any work: a run that cannot
save its checkpoint used to find out after a whole epoch (``vqvae-eval``: after scoring), with a traceback."""

from __future__ import annotations

import os
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written; the message names it and says why, in one line."""


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (made first if missing), or None."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing}: permission denied"
    return None


def check_folder(path: Path, what: str) -> None:
    """``path`` is, or can be made as, a folder this process may write files in."""
    problem = _folder_problem(path)
    if problem:
        raise OutputError(f"cannot write {what} {path}: {problem}")


def check_file(path: Path, what: str) -> None:
    """``path`` can be written: its folder (files are written beside their target and renamed over it), and the
    file itself where it exists (some writers open it in place)."""
    if path.is_dir():
        problem: str | None = f"{path} is a folder"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = f"{path}: permission denied"
    else:
        problem = _folder_problem(path.parent)
    if problem:
        raise OutputError(f"cannot write {what} {path}: {problem}")
