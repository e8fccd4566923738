"""``vqvae-eval``: where its report goes by default, and a Ctrl-C before it is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.checkpoint import save
from models.config import PRESETS
from models.vqvae import VQVAE
from tests.conftest import write_slices
from training import evaluate


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save(VQVAE(PRESETS["tiny"]), tmp_path / "model.safetensors")


def test_a_sub_folder_split_names_the_default_report(checkpoint: Path, tmp_path: Path) -> None:
    """Before: ``ValueError: Invalid suffix '.sub/deep.json'``, a traceback, although README says a sub-folder works."""
    write_slices(tmp_path / "data" / "sub" / "deep", 3, seed=4)
    assert (
        evaluate.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"), "--split", "sub/deep"]) == 0
    )
    report = json.loads((tmp_path / "model.sub_deep.json").read_text())
    assert report["images"] == 3


@pytest.mark.parametrize(("split", "name"), [("test", "model.test.json"), ("", "model.folder.json")])
def test_the_default_report_sits_beside_the_checkpoint(checkpoint: Path, split: str, name: str) -> None:
    assert evaluate.default_report(checkpoint, split) == checkpoint.parent / name


def test_ctrl_c_while_scoring_exits_130_without_a_report(
    checkpoint: Path, fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Before: a ``KeyboardInterrupt`` traceback, and death by the signal."""

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "score", interrupted)
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(fixture_oasis)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
