"""``vqvae-eval``: where its report goes by default, and a Ctrl-C before it is written."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from benchmarks.crafted_png import with_header_size
from models.checkpoint import save
from models.config import PRESETS
from models.jpeg_markers import MAX_SCANS
from models.vqvae import VQVAE
from tests.conftest import crafted_jpegs, write_slices
from training import evaluate
from training.data import MAX_PIXELS


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


def test_an_image_over_the_pixel_limit_is_one_error_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a 140 KB PNG of 12000x12000 was decoded and run through the model (77 s, 19.7 GB of memory), with only
    Pillow's DecompressionBombWarning. This one claims 12000x12000 in its header and holds 8x8 pixels."""
    small = io.BytesIO()
    Image.new("L", (8, 8)).save(small, format="PNG")
    write_slices(tmp_path / "bomb", 2, seed=5)
    (tmp_path / "bomb" / "x.png").write_bytes(with_header_size(small.getvalue(), 12000, 12000))
    out = tmp_path / "r.json"
    args = ["--checkpoint", str(checkpoint), "--data", str(tmp_path / "bomb"), "--split", "", "--out", str(out)]
    assert evaluate.main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path / 'bomb' / 'x.png'}: image is 12000x12000 = 144000000 pixels, over the limit of "
        f"{MAX_PIXELS} pixels (4096x4096)"
    ]
    assert not out.exists()


def test_a_jpeg_of_more_scans_than_encoders_write_is_one_error_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: decoded, each of its scans over the whole image (a crafted file stalled the command: 50,000 scans of
    a 1024x1024 image took 18 s), where the service refused it."""
    data = write_slices(tmp_path / "d", 2, seed=8)
    (data / "x.jpg").write_bytes(crafted_jpegs()["scans"])
    out = tmp_path / "r.json"
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "", "--out", str(out)]
    assert evaluate.main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {data / 'x.jpg'}: the JPEG holds over {MAX_SCANS} scans, each decoded over the whole image; "
        "encoders write 20 at most (a crafted file?)"
    ]
    assert not out.exists()


def test_a_symbolic_link_in_a_loop_is_skipped_with_a_note(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``OSError: [Errno 40] Too many levels of symbolic links``, a traceback, from listing the folder."""
    data = write_slices(tmp_path / "d", 2, seed=6)
    (data / "loop.png").symlink_to("loop.png")
    out = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--split", "", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["images"] == 2
    assert f"note: {data}: 1 image name(s) are symbolic links that lead to no file" in capsys.readouterr().err


def test_an_unreadable_data_root_is_one_error_line(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a PermissionError traceback from ``Path.exists`` (``--data`` of mode 000 with ``--split test``;
    simulated: tests may run as root, whom mode 000 does not stop)."""
    real_exists = Path.exists

    def exists(path: Path) -> bool:
        if path.parent == tmp_path / "root":
            raise PermissionError(13, "Permission denied", str(path))
        return real_exists(path)

    monkeypatch.setattr(Path, "exists", exists)
    out = tmp_path / "r.json"
    args = ["--checkpoint", str(checkpoint), "--data", str(tmp_path / "root"), "--out", str(out)]
    assert evaluate.main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path / 'root'}: cannot read the data folder (Permission denied)"
    ]
