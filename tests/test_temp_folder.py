"""No temporary folder (a read-only root file system, nothing mounted at /tmp): every command ends in one line.

Here the folder's absence is simulated; the real case was checked by hand in a private mount namespace with /
remounted read-only, where vqvae-serve had printed a 91-line traceback (README, "Deploying")."""

from __future__ import annotations

import tempfile

import pytest

from app.cli import main as serve
from app.settings import DEFAULT_CHECKPOINT
from models.temp_folder import temp_folder_problem
from training.evaluate import main as evaluate

NONE_FOUND = "[Errno 2] No usable temporary directory found in ['/tmp', '/var/tmp', '/usr/tmp', '/srv']"


@pytest.fixture
def no_temp_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    def none() -> str:
        raise FileNotFoundError(2, NONE_FOUND.removeprefix("[Errno 2] "))

    monkeypatch.setattr(tempfile, "gettempdir", none)


def test_a_present_temp_folder_is_no_problem() -> None:
    assert temp_folder_problem() is None


@pytest.mark.usefixtures("no_temp_folder")
def test_serve_refuses_to_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("served with no temporary folder"))
    assert serve(["--port", "0", "--checkpoint", str(DEFAULT_CHECKPOINT)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vqvae-serve: no temporary folder to write in ({NONE_FOUND}); torch needs one: set TMPDIR")
    assert "\n" not in err


@pytest.mark.usefixtures("no_temp_folder")
def test_the_offline_tools_end_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate(["--checkpoint", "never-read.safetensors"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no temporary folder to write in ({NONE_FOUND})") and "\n" not in err


@pytest.mark.usefixtures("no_temp_folder")
def test_help_needs_no_temporary_folder(capsys: pytest.CaptureFixture[str]) -> None:
    """``vqvae-eval --help`` was refused for want of one (a review): usage reads no file."""
    with pytest.raises(SystemExit) as done:
        evaluate(["--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out
