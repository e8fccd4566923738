"""Writing output files so that a failed write (a full disk, a file size limit, a folder made read-only) leaves
no half-written file behind and ends in a one-line error that names the file, not a traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

Writer = Callable[[Path], object]  # writes the whole file at the path it is given


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
    """Where ``path`` is written before it is renamed into place."""
    return path.with_name(path.name + ".partial")


def write_together(writers: Mapping[Path, Writer]) -> None:
    """Write each file to its partial path, then rename them all into place: a reader, or a run resumed after a
    crash, sees the old files or the new ones, never half of one, and files that belong together (weights and
    optimizer state) are replaced together unless the process dies between two renames.

    A failed write removes the partial files, so a full disk does not stay full of them. A leftover partial file
    (a save cut off by a kill) is removed first: the new one gets the mode that any new file gets, not the
    leftover's."""
    partials = {path: partial_path(_through_links(path)) for path in writers}
    try:
        for path, write in writers.items():
            with writing(path):
                partials[path].parent.mkdir(parents=True, exist_ok=True)
                partials[path].unlink(missing_ok=True)
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
