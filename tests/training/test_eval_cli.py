"""``vqvae-eval``: where its report goes by default, and a Ctrl-C before it is written."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
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
from training.synthetic import synthetic_slice


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


def test_memory_that_cannot_be_allocated_while_scoring_is_one_error_line(
    checkpoint: Path, fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A review's case: four 4096x4096 images in a batch under a memory limit ended in torch's RuntimeError
    traceback. Simulated: a real one depends on the machine's memory."""
    refused = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes. Error code 12"

    def fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:127] err == 0. {refused} (Cannot allocate memory)")

    monkeypatch.setattr(evaluate, "score", fails)
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(fixture_oasis)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: out of memory: {refused} (Cannot allocate memory); try a smaller --batch-size, or fewer pixels "
        "an image"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no report


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
        f"error: {tmp_path / 'bomb' / 'x.png'}: image is 12000x12000 (height x width) = 144000000 pixels, over the "
        f"limit of {MAX_PIXELS} pixels (4096x4096)"
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


def refusal(checkpoint: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``vqvae-eval`` on the images directly in ``data``, which must exit 2 and write no report: its error lines."""
    out = data.parent / "r.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--split", "", "--out", str(out)]) == 2
    assert not out.exists()
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(("name", "fmt"), [("stack.tif", "TIFF"), ("anim.png", "PNG")])
def test_a_tiff_stack_or_an_animated_png_is_one_error_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, fmt: str
) -> None:
    """Before: scored as its first slice, ``images 3`` with no note: the other 4 were dropped without a word."""
    data = write_slices(tmp_path / "multipage", 2, seed=7)
    rng = np.random.default_rng(7)
    first, *rest = (Image.fromarray(synthetic_slice(rng, (64, 64))) for _ in range(5))
    first.save(data / name, format=fmt, save_all=True, append_images=rest)
    assert refusal(checkpoint, data, capsys) == [
        f"error: {data / name}: cannot read image (the {fmt} file holds 5 frames (a stack of slices, or an "
        "animation), of which only the first would be read; send one slice per file)"
    ]


def test_a_float_tiff_of_0_to_255_is_one_error_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: clipped to [0, 1], so read nearly white: SSIM 0.90, PSNR 21.5 and no note (a review's measurement of
    an OASIS slice; the same slice as floats in [0, 1] is read right)."""
    data = write_slices(tmp_path / "floats", 2, seed=8)
    pixels = synthetic_slice(np.random.default_rng(8), (64, 64))
    Image.fromarray(pixels.astype(np.float32)).save(data / "f.tif")
    assert refusal(checkpoint, data, capsys) == [
        f"error: {data / 'f.tif'}: cannot read image (the float image has pixel values from 0 to {pixels.max()}, "
        "outside [0, 1]; send unsigned 8- or 16-bit integers, or floats in [0, 1])"
    ]
