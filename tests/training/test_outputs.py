"""``clean_exits``: only a standard output whose reader went away ends a command quietly (exit 141)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from training.outputs import clean_exits


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
