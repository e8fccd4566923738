"""Writing output files so that a failed write (a full disk, a file size limit, a folder made read-only) leaves
no half-written file behind and ends in a one-line error that names the file, not a traceback."""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Writer = Callable[[Path], object]  # writes the whole file at the path it is given
_HOST = socket.gethostname().replace(os.sep, "_") or "localhost"  # a container's own, by default


def json_text(value: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as strict JSON, with every NaN and infinity (a score never measured, a rate over no time) as null:
    JSON has neither, and other readers (jq, a browser's JSON.parse) refuse the ``NaN`` that Python writes."""
    return json.dumps(_finite(value), indent=indent, default=default, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class WriteError(OSError):
    """An output file that could not be written; the message names it and gives the system's reason."""


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while ``path`` is written into a ``WriteError`` naming it."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


def partial_path(path: Path) -> Path:
    """A new name, for this write alone, where ``path`` is written before it is renamed into place:
    ``NAME.HOST.PID.TOKEN.partial``. Two writers of one file (``vqvae-eval --record`` on the ``best.safetensors`` of a
    run still training) must never rename each other's half-written file into place, as they could when both wrote
    ``NAME.partial``; a pid alone is not enough either, since the main process of every container is pid 1. The host
    and pid tell ``leftover_partials`` whose file it is."""
    return path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.partial")


def leftover_partials(path: Path) -> list[Path]:
    """The partial files of ``path`` that no one will rename: ``NAME.partial``, which earlier versions wrote, and
    those this machine's processes left when cut off by a kill (their pid runs no more), this process's own
    included. Another machine's (or container's) partial files are left alone: whether their writer still runs
    cannot be told from here, and removing a live writer's file would make its save fail."""
    if not path.parent.is_dir():
        return []
    legacy, prefix, suffix = f"{path.name}.partial", f"{path.name}.", ".partial"
    found = []
    for candidate in path.parent.iterdir():
        name = candidate.name
        if name == legacy:
            ended = True
        elif name.startswith(prefix) and name.endswith(suffix):
            parts = name[len(prefix) : -len(suffix)].rsplit(".", 2)  # host (may hold dots), pid, token
            ours = len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit()
            ended = ours and (int(parts[1]) == os.getpid() or not _running(int(parts[1])))
        else:
            ended = False
        if ended and candidate.is_file():
            found.append(candidate)
    return found


def _running(pid: int) -> bool:
    """Whether a process of that id runs on this machine (signal 0 checks, sends nothing). In doubt (another user's
    process, a number no process can have), yes: a stray file is kept rather than a live writer's file removed."""
    if pid <= 0 or os.name != "posix":  # on Windows, os.kill with signal 0 would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def not_replaceable(path: Path) -> str | None:
    """Why a written file may not take the place of ``path``, or None where it is absent or a regular file (through a
    symbolic link, which ``write_together`` follows). Renamed over by a process run as root, a device node
    (``/dev/null``) became a plain file, for every program that uses it; a pipe or socket would go likewise."""
    if not path.exists() or path.is_file():
        return None
    return f"{path} is a folder" if path.is_dir() else f"{path} is not a regular file (a device, pipe or socket)"


def write_together(writers: Mapping[Path, Writer]) -> None:
    """Write each file to its partial path, then rename them all into place: a reader, or a run resumed after a
    crash, sees the old files or the new ones, never half of one, and files that belong together (weights and
    optimizer state) are replaced together unless the process dies between two renames.

    A failed write removes the partial files, so a full disk does not stay full of them. Leftover partial files
    (a save cut off by a kill) are removed first, so that they do not pile up. One process writes one file from one
    thread at a time. A target that is no regular file (``not_replaceable``) is refused before anything is written."""
    for path in writers:
        problem = not_replaceable(path)
        if problem:
            raise WriteError(f"cannot write {path}: {problem}")
    partials = {path: partial_path(_through_links(path)) for path in writers}
    try:
        for path, write in writers.items():
            with writing(path):
                partials[path].parent.mkdir(parents=True, exist_ok=True)
                for leftover in leftover_partials(_through_links(path)):
                    leftover.unlink(missing_ok=True)
                write(partials[path])
        for path, partial in partials.items():
            with writing(path):
                partial.replace(_through_links(path))
    except BaseException:
        for partial in partials.values():
            partial.unlink(missing_ok=True)
        raise


def _through_links(path: Path) -> Path:
    """The file a symbolic link names (``latest.json -> run42.json``): that file is replaced, the link kept."""
    return path.resolve() if path.is_symlink() else path


def write_atomically(path: Path, write: Writer) -> Path:
    """``write_together`` for one file."""
    write_together({path: write})
    return path
