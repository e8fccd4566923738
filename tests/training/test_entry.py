"""The console scripts' light entry points (``training.entry``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from training import entry


def test_a_ctrl_c_while_the_command_imports_ends_it_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a 22-line KeyboardInterrupt traceback from inside torch's import, even for --help."""
    (tmp_path / "slow_to_import.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert entry.run("slow_to_import", "vqvae-train") == 130
    assert capsys.readouterr().err == "\nvqvae-train: interrupted while starting\n"
    sys.modules.pop("slow_to_import", None)


def test_the_entry_points_run_the_commands_mains(monkeypatch: pytest.MonkeyPatch) -> None:
    from training import evaluate, train

    monkeypatch.setattr(train, "main", lambda: 7)
    monkeypatch.setattr(evaluate, "main", lambda: 8)
    assert (entry.train(), entry.evaluate()) == (7, 8)
