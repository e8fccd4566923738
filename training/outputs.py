"""Where ``vqvae-train``, ``vqvae-eval`` and the benchmarks will write, checked before any work: a run that cannot
save its checkpoint used to find out after a whole epoch (``vqvae-eval``: after scoring), with a traceback. And
what they do when the reader of their standard output goes away, or it cannot be written."""

from __future__ import annotations

import functools
import os
import select
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TextIO, cast

from models.files import not_replaceable, partial_path
from models.temp_folder import temp_folder_problem
from training.stop_signals import exit_code

P = ParamSpec("P")


class OutputError(ValueError):
    """An output path that cannot be written; the message names it and says why, in one line."""


NAME_MAX = 255  # bytes in one file or folder name on Linux's own file systems, where the system cannot say


def _name_max(path: Path) -> int:
    """The longest name the file system of ``path`` (or of its nearest existing folder) takes: 255 bytes on ext4,
    more on some others (vfat counts 255 UTF-16 characters)."""
    for folder in (path, *path.parents):
        try:
            return os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError):  # missing, or itself a name too long: ask its parent
            continue
    return NAME_MAX


def _name_problem(path: Path, *, written: bool) -> str | None:
    """A name the file system cannot hold: the first look at the path raised ENAMETOOLONG, a traceback (a review's
    name of 300 letters). A ``written`` file's temporary name (``models.files.partial_path``) is longer still."""
    name_max = _name_max(path)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            return f"a name of {len(os.fsencode(part))} bytes, over the {name_max} this file system allows"
    if not (written and path.name):  # "/" has no name, nor a partial one: partial_path raised ValueError for it
        return None
    longest = len(os.fsencode(partial_path(path).name))
    if longest > name_max:
        most = name_max - (longest - len(os.fsencode(path.name)))
        return f"a name of {len(os.fsencode(path.name))} bytes; at most {most} (it is written under a longer one first)"
    return None


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (made first if missing), or None."""
    try:
        return _name_problem(folder, written=False) or _access_problem(folder)
    except OSError as exc:  # a path over PATH_MAX, say
        return exc.strerror or str(exc)


def _access_problem(folder: Path) -> str | None:
    dangling = next((p for p in (folder, *folder.parents) if p.is_symlink() and not p.exists()), None)
    if dangling is not None:  # it "does not exist", yet cannot be made: mkdir fails with FileExistsError
        return f"{dangling} is a symbolic link to {os.readlink(dangling)}, which does not exist"
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
    file itself where it exists (some writers open it in place); no folder or device (``models.files``'s
    ``not_replaceable``), which its writer would refuse only after the work."""
    problem = _name_problem(path, written=True) or _folder_problem(path.parent)
    if problem is None:
        problem = not_replaceable(path)
    if problem is None and path.exists() and not os.access(path, os.W_OK):
        problem = f"{path}: permission denied"
    if problem:
        raise OutputError(f"cannot write {what} {path}: {problem}")


def check_files(outputs: Mapping[str, Path]) -> None:
    """Each of ``outputs`` (what it is: its path) can be written (``check_file``), and no two are one file, by
    whatever path: the one written later would replace the other (``vqvae-eval --out figs/reconstructions.png
    --figures figs`` lost its report to the figure)."""
    seen: dict[Path, str] = {}
    for what, path in outputs.items():
        check_file(path, what)
        earlier = seen.setdefault(path.resolve(), what)
        if earlier != what:
            raise OutputError(f"{path} would be both {earlier} and {what}, one replacing the other; choose another")


def note(text: str) -> None:
    """A ``note:`` line on stderr, as every note of the tools is: what the caller should know, kept apart from the
    results on stdout (``vqvae-eval``'s table, say), so that a script reading those gets them alone."""
    print(f"note: {text}", file=sys.stderr)


def check_apart(output: Path, source: Path, why: str, *, folder: bool = False) -> None:
    """``output`` is not ``source`` and, as a file, does not lie directly in it (by whatever path): writing it there
    would destroy or pollute what the command reads (a report written over a slice, or beside the slices of a folder
    read). A ``folder`` output, whose files go directly in it, must not be ``source`` itself. Deeper is apart: a folder
    of images is read without its sub-folders. ``why`` says what would happen."""
    target, read = output.resolve(), source.resolve()
    if target == read or (not folder and target.parent == read):
        if output == source:  # "X is X, which this command reads" read awkwardly (a review)
            raise OutputError(f"{output} is read by this command: {why}; choose another")
        where = "is" if target == read else "is in"
        raise OutputError(f"{output} {where} {source}, which this command reads: {why}; choose another")


def clean_exits(main: Callable[P, int]) -> Callable[P, int]:
    """A command's ends without a traceback, for what is no bug of its own. One whose reader went away
    (``vqvae-eval | head``) exits 141, as a C tool killed by SIGPIPE reports in the shell, instead of a
    ``BrokenPipeError`` traceback; what it had not done yet (figures, ``--record``) is not done, as with any tool in
    a closed pipe. A broken pipe elsewhere (to a child process) keeps its traceback.
    Ctrl-C that the command does not handle itself exits 130 with one line, not a ``KeyboardInterrupt`` traceback.
    A process with no temporary folder, which torch needs, ends at once in one line (``models.temp_folder``).

    Standard output that cannot be written (``> /dev/full``, a log file on a full disk) ends the command with a
    one-line error and exit 1, in place of an ``OSError`` traceback. Only standard output's own errors: they are
    told apart by a wrapper around ``sys.stdout`` while the command runs, since Python's buffer drops what it
    failed to write and the error cannot be pinned on standard output afterwards."""

    @functools.wraps(main)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> int:
        # torch cannot run without one: one line, not its traceback mid-run; --help needs none
        problem = None if _asks_for_help(args, kwargs) else temp_folder_problem()
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        stdout = sys.stdout
        if stdout is None:  # started with stdout closed (>&-): print() writes nothing then
            return main(*args, **kwargs)
        sys.stdout = cast(TextIO, _StdoutGuard(stdout))
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()  # here, not at exit, where the error would be printed as "Exception ignored"
            return code
        except BrokenPipeError:
            if not _stdout_reader_gone():
                raise
            _silence_stdout()
            return 128 + signal.SIGPIPE
        except StdoutError as exc:
            _silence_stdout()
            print(f"error: cannot write the standard output: {exc.strerror}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as stop:  # Ctrl-C while the data loads or a report is scored; files are written
            print("\ninterrupted", file=sys.stderr)  # whole or not at all (models.files), so nothing else to say
            return exit_code(stop)
        finally:
            sys.stdout = stdout

    return guarded


def _asks_for_help(args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    """Whether a command's ``main(argv)`` was asked for its usage (``argv`` None: the process's own arguments)."""
    argv = args[0] if args else kwargs.get("argv")
    words = sys.argv[1:] if argv is None else argv
    return isinstance(words, (list, tuple)) and not {"-h", "--help"}.isdisjoint(words)


class StdoutError(OSError):
    """Standard output could not be written (other than a reader gone away, which is ``BrokenPipeError``)."""


class _StdoutGuard:
    """``sys.stdout`` as it was, except that its write errors are raised as ``StdoutError``."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with _as_stdout_error():
            return self._stream.write(text)

    def flush(self) -> None:
        with _as_stdout_error():
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...: the stream's own
        return getattr(self._stream, name)


@contextmanager
def _as_stdout_error() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise StdoutError(exc.errno, exc.strerror or str(exc)) from exc  # the errno kept, for callers that test it


def _silence_stdout() -> None:
    """Point standard output at /dev/null: the interpreter's last flush must not fail again."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured): nothing is flushed to a descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _stdout_reader_gone() -> bool:
    """Standard output is a pipe whose reading end is closed: polled, Linux reports an error on its writing end."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # None, closed, or not a file (captured)
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))
