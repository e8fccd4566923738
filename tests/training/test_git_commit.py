"""The git commit that a run's provenance records: that of the code's own checkout, wherever the run starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from training.train import PACKAGE_ROOT, git_commit


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _repository(folder: Path) -> str:
    """A git repository with one commit in ``folder``; its commit."""
    folder.mkdir(parents=True)
    _git(folder, "init", "-q")
    _git(folder, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "x")
    return _git(folder, "rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def git_stops_at_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git looks for no repository above the test's folder (a /tmp inside one would count)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def test_a_run_started_in_another_repository_records_the_codes_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: git ran in the working directory, and recorded the other repository's commit."""
    other = _repository(tmp_path / "other")
    monkeypatch.chdir(tmp_path / "other")
    done = subprocess.run(["git", "-C", str(PACKAGE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    expected = done.stdout.strip() if done.returncode == 0 else "unknown"  # the code may not be a checkout
    assert git_commit() == expected != other


def test_code_outside_a_checkout_of_its_own_records_unknown(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    assert git_commit(tmp_path / "plain") == "unknown"
    _repository(tmp_path / "outer")
    (tmp_path / "outer" / "copy").mkdir()  # a copy of the code inside another repository's tree
    assert git_commit(tmp_path / "outer" / "copy") == "unknown"
    assert git_commit(tmp_path / "outer") == _git(tmp_path / "outer", "rev-parse", "HEAD")
