import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, TiffImagePlugin

from app.imaging import UnsupportedImageError, open_image
from benchmarks.crafted_png import with_header_size
from models.jpeg_markers import marker_refusal
from tests.conftest import crafted_jpegs, write_slices
from training.data import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MAX_SIDE,
    CropSampler,
    DataError,
    NarrowRangeWarning,
    SliceSet,
    load_folder,
    load_split,
    read_grayscale,
)
from training.synthetic import synthetic_slice


def test_load_split_reads_every_image_as_uint8(fixture_oasis: Path) -> None:
    slices = load_split(fixture_oasis, "validate")
    assert len(slices) == 8
    assert slices.stacked().shape == (8, 64, 64)
    assert slices.stacked().dtype == torch.uint8
    assert slices.names == sorted(slices.names)


def test_missing_split_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"keras_png_slices_train: data folder does not exist"):
        load_split(tmp_path, "train")


def test_empty_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path}: no image files"):
        load_folder(tmp_path)


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        load_folder(tmp_path)


def test_a_damaged_png_chunk_is_a_data_error(tmp_path: Path) -> None:
    """An IDAT chunk whose length field is wrong: Pillow raises a SyntaxError, which ended vqvae-eval in a traceback
    (the service answered 400)."""
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    length_at = data.find(b"IDAT") - 4
    data[length_at : length_at + 4] = (int.from_bytes(data[length_at : length_at + 4], "big") // 2).to_bytes(4, "big")
    (tmp_path / "a.png").write_bytes(data)
    with pytest.raises(DataError, match=r"a\.png: cannot read image \(broken PNG file"):
        load_folder(tmp_path)


@pytest.mark.parametrize(("width", "height"), [(7, 64), (64, 5), (1, 1)])
def test_images_smaller_than_the_service_accepts_are_refused(tmp_path: Path, width: int, height: int) -> None:
    """Before: scored with a shrunken SSIM window, a figure the service (422 under 8x8) could not have given."""
    Image.new("L", (64, 64)).save(tmp_path / "a.png")
    Image.new("RGB", (width, height)).save(tmp_path / "b_small.png")
    said = rf"b_small\.png: image is {height}x{width} \(height x width\) pixels; the minimum is 8x8"
    with pytest.raises(DataError, match=said):
        load_folder(tmp_path)


def test_images_of_the_smallest_size_are_kept(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 9).save(tmp_path / "a.png")
    assert load_folder(tmp_path).images[0].shape == (8, 8)


def test_colour_16_bit_and_mixed_sizes_are_kept(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a_rgb.png")
    Image.fromarray(np.full((50, 20), 65535, dtype=np.uint16)).save(tmp_path / "b_16bit.png")
    Image.fromarray(np.full((256, 256), 7, dtype=np.uint8)).save(tmp_path / "c.tif")
    slices = load_folder(tmp_path)
    assert [im.shape for im in slices.images] == [(30, 40), (50, 20), (256, 256)]
    assert slices.images[0][0, 0] == 76  # luminance of pure red (ITU-R 601)
    assert slices.images[1][0, 0] == 255  # 16-bit white scaled, not clipped to 65535 % 256
    assert not slices.same_size
    with pytest.raises(DataError, match="different sizes"):
        slices.stacked()


def _claiming(folder: Path, width: int, height: int) -> Path:
    """``folder/bomb.png``: an 8x8 PNG whose header claims ``width`` x ``height`` (a decompression bomb's)."""
    small = io.BytesIO()
    Image.new("L", (8, 8)).save(small, format="PNG")
    (folder / "bomb.png").write_bytes(with_header_size(small.getvalue(), width, height))
    return folder / "bomb.png"


def test_a_decompression_bomb_is_a_data_error(tmp_path: Path) -> None:
    """Before: Pillow's DecompressionBombError (not an OSError or a ValueError) ended in a traceback; then its own
    message, which named its limit, not the one that applies."""
    _claiming(tmp_path, 40000, 40000)
    with pytest.raises(
        DataError, match=rf"bomb\.png: image header claims 1600000000 pixels, over the limit of {MAX_PIXELS}"
    ):
        load_folder(tmp_path)


def test_a_file_larger_than_any_image_in_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A review's case: a 40 GB file named a.png was read whole, a MemoryError traceback (vqvae-eval) or "out of
    memory" (vqvae-train). Sparse here: it takes no disk, but reading it would take 257 MiB of memory."""
    with (tmp_path / "a.png").open("wb") as sparse:
        sparse.truncate(MAX_FILE_BYTES + 1)
    said = rf"a\.png: file is {MAX_FILE_BYTES + 1} bytes, larger than any single slice of at most {MAX_SIDE}x{MAX_SIDE}"
    with pytest.raises(DataError, match=said):
        read_grayscale(tmp_path / "a.png")
    assert MAX_FILE_BYTES >= MAX_PIXELS * 8  # 16-bit RGBA stored raw, the most bytes a pixel of the limit takes


@pytest.mark.parametrize(("width", "height"), [(MAX_SIDE + 1, MAX_SIDE), (10000, 10000), (1, MAX_PIXELS + 1)])
def test_images_over_the_pixel_limit_are_refused_from_their_header(tmp_path: Path, width: int, height: int) -> None:
    """Before: decoded whatever their size (a 140 KB PNG of 12000x12000 took vqvae-eval 77 s and 19.7 GB), with only
    Pillow's DecompressionBombWarning from 89.5 million pixels. Now refused before a pixel is decoded (these files
    hold 8x8 pixels: decoding them would fail otherwise), with no warning of Pillow's."""
    _claiming(tmp_path, width, height)
    said = rf"bomb\.png: image is {height}x{width} \(height x width\) = {width * height} pixels, over the limit of "
    said += rf"{MAX_PIXELS} pixels"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's warning would be raised, and not be the DataError expected
        with pytest.raises(DataError, match=said):
            load_folder(tmp_path)
    Image.new("L", (MAX_SIDE, MAX_SIDE), 3).save(tmp_path / "bomb.png")  # at the limit: read
    assert load_folder(tmp_path).images[0].shape == (MAX_SIDE, MAX_SIDE)


@pytest.mark.parametrize("kind", ["scans", "segments", "stray bytes"])
def test_a_jpeg_over_the_marker_bounds_is_refused_before_pillow_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Before: vqvae-train and vqvae-eval decoded it, each scan over the whole image, where the service refused it
    (50,000 scans of a 1024x1024 image, 606 KB, took 18 s). Now the same refusal, in the service's words, naming the
    file, and for a JPEG by its content whatever its name."""
    crafted = crafted_jpegs()[kind]
    for name in ("x.jpg", "y.png"):
        (tmp_path / name).write_bytes(crafted)
    with pytest.raises(UnsupportedImageError) as service:
        open_image(crafted, max_pixels=MAX_PIXELS, min_size=8)
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: pytest.fail("Pillow was handed the crafted JPEG"))
    with pytest.raises(DataError) as refused:
        load_folder(tmp_path)
    assert str(refused.value) == f"{tmp_path / 'x.jpg'}: {service.value}"
    assert str(service.value) == marker_refusal(crafted)
    with pytest.raises(DataError, match=r"y\.png: the JPEG holds over"):
        read_grayscale(tmp_path / "y.png")


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"progressive": True, "optimize": True}])
def test_jpegs_as_pillow_writes_them_are_read(tmp_path: Path, mode: str, options: dict[str, bool]) -> None:
    """The bound refuses crafted files only: baseline and progressive JPEGs load as before, pixel for pixel."""
    Image.fromarray(synthetic_slice(np.random.default_rng(8), (64, 48))).convert(mode).save(
        tmp_path / "a.jpg", **options
    )
    with Image.open(tmp_path / "a.jpg") as written:
        expected = np.asarray(written.convert("L"))
    images = load_folder(tmp_path).images
    assert len(images) == 1 and images[0].shape == (64, 48)
    if mode == "L":
        np.testing.assert_array_equal(images[0], expected)


def test_signed_samples_below_zero_are_a_data_error(tmp_path: Path) -> None:
    """Pillow reads a signed 8-bit TIFF as unsigned: before, -100 trained as 156, silently."""
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[339] = 2  # SampleFormat: signed integer
    Image.fromarray(np.full((16, 16), -100, dtype=np.int8).view(np.uint8)).save(tmp_path / "s.tif", tiffinfo=info)
    with pytest.raises(DataError, match=r"s\.tif: cannot read image \(the image has negative pixel values"):
        load_folder(tmp_path)


def test_read_grayscale_of_16_bit_mid_grey(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "mid.png")
    assert read_grayscale(tmp_path / "mid.png")[0, 0] == 128


def test_crop_sampler_pads_small_images_and_is_seeded(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 30), 9, dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.full((64, 64), 200, dtype=np.uint8)).save(tmp_path / "big.png")
    slices = load_folder(tmp_path)
    first = CropSampler(slices, 32, torch.Generator().manual_seed(1)).sample(6)
    second = CropSampler(slices, 32, torch.Generator().manual_seed(1)).sample(6)
    assert first.shape == (6, 32, 32) and torch.equal(first, second)
    assert set(first.unique().tolist()) <= {0, 9, 200}


def test_16_bit_images_of_12_bits_or_fewer_are_named_in_one_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's find: 12-bit MRI values in a 16-bit file read nearly black (levels up to 16 of 255) and scored
    SSIM 0.99 where the same slice in 8 bits scored 0.47, without a word. They are still read as the format says."""
    levels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4081  # values 0..4080
    for name in ("a.png", "b.png"):
        Image.fromarray(levels).save(tmp_path / name)
    Image.fromarray(levels * 16).save(tmp_path / "full.png")  # up to 65280: the 16-bit range
    Image.fromarray((levels % 256).astype(np.uint8)).save(tmp_path / "eight.png")
    slices = load_folder(tmp_path)
    assert slices.images[0].max() == 16  # read on the 16-bit scale, not stretched
    err = capsys.readouterr().err
    assert err.count("note:") == 1
    assert f"note: 2 of 4 images in {tmp_path} hold integer values only up to 4080 (12 bits or fewer)" in err
    assert "values up to 4080 fall in grey levels 0 to 16 (nearly black) of 0 to 255" in err
    with pytest.warns(NarrowRangeWarning, match="integer values only up to 4080"):
        read_grayscale(tmp_path / "a.png")
    Image.fromarray(levels.astype(np.int32)).save(tmp_path / "c.tif")  # mode "I", read on the 16-bit scale too
    with pytest.warns(NarrowRangeWarning, match="c.tif: integer values only up to 4080"):
        read_grayscale(tmp_path / "c.tif")


def test_hidden_files_are_not_read_as_images(tmp_path: Path) -> None:
    """Before: macOS's ``._a.png`` (AppleDouble metadata, not an image) stopped the run as a damaged image."""
    Image.new("L", (16, 16), 9).save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    assert load_folder(tmp_path).names == ["a.png"]


def test_sub_folders_are_named_where_their_images_are_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images in sub-folders (one per patient, say) are not read: a note says so, and where the folder itself has
    none, the error does. Before, they were left out without a word."""
    write_slices(tmp_path / "case_1", 2, seed=1)
    write_slices(tmp_path / "case_2", 2, seed=2)
    (tmp_path / ".cache").mkdir()
    with pytest.raises(DataError, match="only images directly in it are read, not those of its 2 sub-folders"):
        load_folder(tmp_path)
    write_slices(tmp_path, 1, seed=3)
    assert len(load_folder(tmp_path)) == 1
    assert f"note: {tmp_path} has 2 sub-folder(s), e.g. case_1; only the images directly in it are read" in (
        capsys.readouterr().err
    )
    load_folder(tmp_path / "case_1")
    load_folder(tmp_path)  # again (training and validation may be one folder): the note was given
    assert "note:" not in capsys.readouterr().err
    write_slices(tmp_path / "oasis" / "keras_png_slices_test", 1, seed=4)
    with pytest.raises(DataError, match=r"in this folder; it is an OASIS root: name a split \(test\)"):
        load_folder(tmp_path / "oasis")


def test_the_fingerprint_takes_any_file_name_and_tells_images_apart() -> None:
    """A name that is not UTF-8 (bytes Linux allows, which Python holds as surrogates) stopped a run after its
    first epoch, when the first checkpoint recorded the fingerprint."""
    image = np.zeros((8, 8), np.uint8)
    named = SliceSet([image], ["caf\udce9.png"], Path("."))
    assert len(named.fingerprint()) == 64
    assert named.fingerprint() != SliceSet([image + 1], ["caf\udce9.png"], Path(".")).fingerprint()
    assert named.fingerprint() != SliceSet([image], ["cafe.png"], Path(".")).fingerprint()


def test_broken_symbolic_links_are_skipped_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a link in a loop ended vqvae-train and vqvae-eval in an ``OSError: [Errno 40] Too many levels of
    symbolic links`` traceback, and a link to nothing was left out without a word. Both are skipped, in one note."""
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "gone.png").symlink_to("nowhere.png")
    (tmp_path / "notes").symlink_to("notes")  # not an image name: left out, as any other file
    with pytest.raises(DataError, match=r"no image files .* 2 image name\(s\) are symbolic links that lead to no file"):
        load_folder(tmp_path)
    Image.new("L", (16, 16), 9).save(tmp_path / "a.png")
    assert load_folder(tmp_path).names == ["a.png"]
    load_folder(tmp_path)  # again (training and validation may be one folder): the note was given
    assert capsys.readouterr().err.splitlines() == [
        f"note: {tmp_path}: 2 image name(s) are symbolic links that lead to no file (to nothing, or in a loop), "
        "e.g. gone.png; they are skipped"
    ]


def test_entries_that_are_no_image_files_are_skipped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review's case: a folder of slices with a .webp, a .txt and a pipe named c.png trained on the rest without a
    word about them."""
    Image.new("L", (16, 16), 9).save(tmp_path / "a.png")
    Image.new("L", (16, 16), 9).save(tmp_path / "b.webp")
    (tmp_path / "notes.txt").write_text("slices of case 1")
    os.mkfifo(tmp_path / "c.png")
    assert load_folder(tmp_path).names == ["a.png"]
    load_folder(tmp_path)  # again (training and validation may be one folder): the note was given
    assert capsys.readouterr().err.splitlines() == [
        f"note: {tmp_path} has 3 entries that are no image files (.bmp, .jpeg, .jpg, .png, .tif, .tiff), e.g. "
        "b.webp; skipped"
    ]


def _denied(*args: object, **kwargs: object) -> None:
    raise PermissionError(13, "Permission denied")


def test_an_unreadable_folder_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a PermissionError traceback from ``os.scandir`` (a folder of mode 000; simulated, since tests may run
    as root, whom mode 000 does not stop)."""
    write_slices(tmp_path, 1, seed=1)
    monkeypatch.setattr(os, "scandir", _denied)
    with pytest.raises(DataError, match=rf"^{tmp_path}: cannot read the data folder \(Permission denied\)$"):
        load_folder(tmp_path)


def test_an_unreadable_oasis_root_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a PermissionError traceback from ``Path.exists`` in ``resolve_folder`` (``--data`` of mode 000 with a
    split; simulated, as above)."""
    monkeypatch.setattr(Path, "exists", _denied)
    with pytest.raises(DataError, match=rf"^{tmp_path}: cannot read the data folder \(Permission denied\)$"):
        load_split(tmp_path, "test")
