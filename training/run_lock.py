"""One ``vqvae-train`` run at a time in an ``--out`` folder: two started in one folder each wrote over the other's
checkpoints and history, both exited 0, and the first reported a best checkpoint that was the second's (a review)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from training.outputs import OutputError

_HELD: dict[Path, int] = {}  # folder -> the open descriptor that holds its lock


def claim(out: Path) -> None:
    """Lock the folder ``out`` itself (``flock``: no file is added to the run) until ``release`` or the end of the
    process, which lets go of it whatever way it ends; OutputError where another process holds it. A process may
    claim a folder it holds (the tests build a resumed Trainer over a finished one). On a file system without such
    locks (some network mounts) the run goes on unguarded."""
    folder = out.resolve()
    if folder in _HELD:
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:  # a folder this user may write in but not list (mode 0333): a traceback, said a review
        raise OutputError(f"cannot use --out {out}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(descriptor)
        raise OutputError(
            f"{out} is in use by another vqvae-train run, which holds its lock; let that run end, or choose another "
            "--out"
        ) from exc
    except OSError:
        os.close(descriptor)
        return
    _HELD[folder] = descriptor


def release(out: Path) -> None:
    """Let go of the lock ``claim`` took on ``out``, if this process holds it."""
    descriptor = _HELD.pop(out.resolve(), None)
    if descriptor is not None:
        os.close(descriptor)
