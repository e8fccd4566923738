"""``clean_exits``: only a standard output whose reader went away ends a command quietly (exit 141)."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import pytest

from training import run_lock, train
from training.outputs import OutputError, check_file, check_folder, clean_exits


def _writes(text: str) -> int:
    print(text)
    return 0


def test_a_command_started_with_stdout_closed_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``vqvae-eval ... >&-``: Python's sys.stdout is None and print() writes nothing. Before: AttributeError on
    the flush, exit 1, after the whole run."""
    monkeypatch.setattr(sys, "stdout", None)
    assert clean_exits(_writes)("report") == 0


def test_a_broken_pipe_elsewhere_keeps_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipe to a dead child process is not standard output: before, it too ended the command silently with 141."""

    def sends_to_a_dead_child() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with (tmp_path / "stdout.txt").open("w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        with pytest.raises(BrokenPipeError):
            clean_exits(sends_to_a_dead_child)()


def test_stdout_whose_reader_went_away_exits_141(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stdout:  # the wrapper points it at /dev/null, so closing it flushes quietly
        monkeypatch.setattr(sys, "stdout", stdout)
        assert clean_exits(_writes)("x" * 100_000) == 141


def test_names_too_long_for_the_file_system_are_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's cases: a name of 300 letters raised ENAMETOOLONG in these checks, and one of 245 passed them but
    not the longer name it is written under first: a traceback after the scoring, or after the codecs' work."""
    with pytest.raises(OutputError, match="a name of 300 bytes, over the 255 this file system allows"):
        check_folder(tmp_path / ("x" * 300), "--out")
    with pytest.raises(OutputError, match="a name of 300 bytes, over the 255"):
        check_file(tmp_path / ("x" * 300) / "report.json", "the report")
    with pytest.raises(OutputError, match=r"a name of 250 bytes; at most \d+ \(it is written under a longer one first"):
        check_file(tmp_path / ("y" * 245 + ".json"), "the report")
    check_file(tmp_path / ("y" * 200 + ".json"), "the report")  # one that fits: no error


def test_a_run_folder_the_file_system_refuses_is_one_line_and_none_is_made_for_missing_data(
    fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where access() allows what the file system refuses (/proc, as root): a FileNotFoundError traceback once the
    data had loaded (a review). And a mistyped --data leaves no empty --out behind."""
    out = tmp_path / "runs" / "a"
    assert train.main(["--preset", "tiny", "--data", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert "data folder does not exist" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    refused = FileNotFoundError(2, "No such file or directory")
    monkeypatch.setattr(Path, "mkdir", lambda *args, **kwargs: _raise(refused))
    assert train.main(["--preset", "tiny", "--data", str(fixture_oasis), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: cannot write --out {out}: No such file or directory"


def _raise(exc: BaseException) -> None:
    raise exc


def test_a_second_run_in_a_folder_in_use_is_refused_in_one_line(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's case: two runs started in one --out each wrote over the other's files, and both exited 0. Here
    another open descriptor holds the lock, as another process's would (flock locks conflict between them)."""
    run = tmp_path / "run"
    run.mkdir()
    args = ["--data", str(fixture_oasis), "--out", str(run), "--preset", "tiny", "--epochs", "1", "--crop", "32"]
    args += ["--batch-size", "4", "--max-train-images", "8", "--max-val-images", "2", "--no-progress"]
    other = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert train.main(args) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {run} is in use by another vqvae-train run, which holds its lock; let that run end, or choose "
            "another --out"
        )
        assert list(run.iterdir()) == []  # nothing of the refused run's
    finally:
        os.close(other)
    assert train.main(args) == 0  # once the other lets go
    probe = os.open(run, os.O_RDONLY)  # and the finished run let go of it too
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)


def test_a_run_folder_that_cannot_be_listed_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder its user may write in but not list (mode 0333; root may list anything, so simulated): the lock's
    open of the folder was a PermissionError traceback (a review)."""
    monkeypatch.setattr(run_lock.os, "open", lambda *args, **kwargs: _raise(PermissionError(13, "Permission denied")))
    with pytest.raises(OutputError, match=f"^cannot use --out {tmp_path}: Permission denied$"):
        run_lock.claim(tmp_path)


def test_a_folder_under_the_root_given_as_a_file_is_named_as_such(tmp_path: Path) -> None:
    """``--json /tmp`` said "PosixPath('/') has an empty name": the root's partial name was asked for (a review)."""
    top = Path(*tmp_path.parts[:2])  # /tmp, say: a folder right under /
    for folder in (top, Path("/")):
        with pytest.raises(OutputError, match=f"^cannot write --json {folder}: {folder} is a folder$"):
            check_file(folder, "--json")
