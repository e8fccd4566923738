"""models.grayscale: the rules that training, evaluation and the service share, tested on opened images."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from models.grayscale import (
    MOST_FRAMES_COUNTED,
    MultiFrameError,
    UnmappablePixelsError,
    check_single_frame,
    frame_count,
    to_grey_levels,
)

# The tags of a 1x1 8-bit grey TIFF page whose one pixel is the file's 9th byte: (tag, SHORT or LONG, value); a
# little-endian SHORT value padded to 4 bytes is the same bytes as the LONG of that value.
_PAGE_TAGS = ((256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 3, 1), (279, 4, 1))


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def saved(frames: list[np.ndarray], fmt: str) -> bytes:
    """``frames`` in one file of format ``fmt`` (all but the first appended, as Pillow's ``save_all`` writes them)."""
    first, *rest = (Image.fromarray(frame) for frame in frames)
    buffer = io.BytesIO()
    first.save(buffer, format=fmt, **({"save_all": True, "append_images": rest} if rest else {}))
    return buffer.getvalue()


def tiff_chain(pages: int, last_link: int = 0) -> bytes:
    """A little-endian TIFF of ``pages`` valid 1x1 pages, all on one pixel, the last linking to ``last_link``."""
    size = 2 + 12 * len(_PAGE_TAGS) + 4
    data = bytearray(b"II*\x00" + struct.pack("<I", 9) + b"\x80")
    for page in range(pages):
        data += struct.pack("<H", len(_PAGE_TAGS))
        for tag, kind, value in _PAGE_TAGS:
            data += struct.pack("<HHII", tag, kind, 1, value)
        data += struct.pack("<I", 9 + (page + 1) * size if page < pages - 1 else last_link)
    return bytes(data)


def slices(count: int) -> list[np.ndarray]:
    return [np.full((16, 16), 40 * i, np.uint8) for i in range(count)]


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_a_stack_of_frames_is_refused_naming_its_count(fmt: str) -> None:
    """Before: a TIFF stack or an animated PNG was read at its first frame, and the rest dropped without a word."""
    with opened(saved(slices(5), fmt)) as image, pytest.raises(MultiFrameError) as caught:
        check_single_frame(image)
    assert str(caught.value) == (
        f"the {fmt} file holds 5 frames (a stack of slices, or an animation), of which only the first would be read; "
        "send one slice per file"
    )


@pytest.mark.parametrize(("fmt", "frames"), [("TIFF", 1), ("PNG", 1), ("JPEG", 1), ("BMP", 1), ("MPO", 2)])
def test_a_file_of_one_image_passes(fmt: str, frames: int) -> None:
    """An MPO (a JPEG with a preview, a gain map or a stereo view, as phones write it) counts as its first image."""
    with opened(saved(slices(frames), fmt)) as image:
        check_single_frame(image)
        assert frame_count(image) == 1


def test_a_crafted_chain_of_100k_tiff_pages_is_counted_to_its_bound_at_once() -> None:
    """Pillow's ``n_frames`` parses every page and checks each link against all before it: 30,000 pages of this
    file took it 8.6 s, 100,000 minutes. Counting stops past ``MOST_FRAMES_COUNTED``."""
    crafted = tiff_chain(100_000)
    start = time.perf_counter()
    with opened(crafted) as image, pytest.raises(MultiFrameError, match=f"holds over {MOST_FRAMES_COUNTED} frames"):
        check_single_frame(image)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(("last_link", "frames"), [(9, 3), (1 << 30, 3)])
def test_a_link_back_into_the_chain_or_past_the_end_ends_it(last_link: int, frames: int) -> None:
    """As Pillow reads them: a loop to the first page, or a link to nothing, is the end of the file's pages."""
    with opened(tiff_chain(frames, last_link)) as image:
        assert frame_count(image) == frames
        assert image.tell() == 0 and np.asarray(image).tolist() == [[128]]  # the count moved nothing


def test_a_tiff_whose_only_link_leads_nowhere_is_one_page() -> None:
    with opened(tiff_chain(1, last_link=1 << 30)) as image:
        assert image.is_animated  # Pillow's word: a link that is not 0
        check_single_frame(image)


@pytest.mark.parametrize(("dtype", "big_tiff"), [(np.uint8, False), (">u2", False), (np.uint8, True)])
def test_tiff_pages_are_counted_in_either_byte_order_and_in_a_bigtiff(dtype: str, big_tiff: bool) -> None:
    page = Image.fromarray(np.full((16, 16), 40, dtype))
    buffer = io.BytesIO()
    page.save(buffer, format="TIFF", big_tiff=big_tiff, save_all=True, append_images=[page, page])
    with opened(buffer.getvalue()) as image:
        assert frame_count(image) == 3


def tiff_of_kinds(dtype: str, kinds: list[int]) -> bytes:
    """A TIFF of 64x64 pages, one per NewSubfileType in ``kinds`` (tag 254), the pages after the first 16x16."""
    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer, True) as writer:  # what save_all does, with a tag per page
        for index, kind in enumerate(kinds):
            page = Image.fromarray(np.full((16, 16) if index else (64, 64), 40 + index, dtype))
            page.encoderinfo, page.encoderconfig = {"tiffinfo": {254: kind}}, ()
            TiffImagePlugin._save(page, writer, "pages.tif")
            writer.newFrame()
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", [np.uint8, ">u2"])  # little- and big-endian files
@pytest.mark.parametrize(("kinds", "frames"), [([0, 1], 1), ([0, 4, 1], 1), ([0, 2], 2), ([0, 0], 2)])
def test_a_tiffs_thumbnails_and_masks_are_not_pages(dtype: str, kinds: list[int], frames: int) -> None:
    """A review's case: a TIFF with a reduced-resolution copy (NewSubfileType bit 1) or a mask (bit 4) after its
    image was refused as a stack; its first page is the image, and Pillow reads that."""
    with opened(tiff_of_kinds(dtype, kinds)) as image:
        assert image.is_animated
        assert frame_count(image) == frames


def test_a_bigtiff_link_beyond_any_file_ends_the_chain() -> None:
    """A 64-bit link of 2**64 - 1, which ``seek`` cannot take (OverflowError), is a link past the file's end."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 40, np.uint8)).save(buffer, format="TIFF", big_tiff=True)
    data = bytearray(buffer.getvalue())
    (first,) = struct.unpack_from("<Q", data, 8)
    (entries,) = struct.unpack_from("<Q", data, first)
    struct.pack_into("<Q", data, first + 8 + 20 * entries, (1 << 64) - 1)
    with opened(bytes(data)) as image:
        assert image.is_animated
        check_single_frame(image)


def float_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.float32))


@pytest.mark.parametrize(
    ("low", "high", "found"),
    [
        (0.0, 255.0, "from 0 to 255"),
        (-1.0, 1.0, "from -1 to 1"),
        (-np.inf, 1.0, "from -inf to 1"),
        (-0.01, 1.0, "from -0.01 to 1"),
    ],
)
def test_float_samples_outside_0_1_are_refused(low: float, high: float, found: str) -> None:
    """Before: clipped, so a float slice of 0 to 255 was read nearly white and scored SSIM 0.90 without a word."""
    pixels = np.linspace(0.0, 1.0, 16 * 16).reshape(16, 16)
    pixels[0, 0], pixels[-1, -1] = low, high
    with pytest.raises(UnmappablePixelsError) as caught:
        to_grey_levels(float_image(pixels))
    assert str(caught.value) == (
        f"the float image has pixel values {found}, outside [0, 1]; send unsigned 8- or 16-bit integers, or floats "
        "in [0, 1]"
    )


def test_float_samples_within_half_a_grey_level_of_0_1_are_clipped_to_the_same_levels() -> None:
    """What float rounding leaves in a caller's scaling (1.0000001) is read as the end level it rounds to anyway."""
    slack = 0.99 * 0.5 / 255
    pixels = np.linspace(0.0, 1.0, 16 * 16).reshape(16, 16)
    pixels[0, 0], pixels[-1, -1] = -slack, 1.0 + slack
    levels = to_grey_levels(float_image(pixels))
    assert levels[0, 0] == 0 and levels[-1, -1] == 255
    np.testing.assert_array_equal(levels[1:-1], np.rint(pixels[1:-1] * 255))


def png(image: Image.Image, **options: object) -> Image.Image:
    """``image`` saved as PNG and opened again, as an upload or a training file is read."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return opened(buffer.getvalue())


def textured(seed: int = 0) -> np.ndarray:
    """A 16x16 uint8 image of random levels 1 to 254: none is black (a background) or white (a marked colour)."""
    return np.random.default_rng(seed).integers(1, 255, (16, 16)).astype(np.uint8)


def hidden_white() -> tuple[np.ndarray, np.ndarray]:
    """(slice, the same slice with its background white): a slice exported with a transparent white background."""
    slice_ = textured()
    slice_[:, :4] = 0  # a background to hide
    background = slice_ == 0
    return slice_, np.where(background, 255, slice_).astype(np.uint8)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "RGBa", "PA"])
def test_transparent_pixels_are_read_on_black(mode: str) -> None:
    """A transparent background reads black, whatever colour it hides; opaque pixels read as before."""
    slice_, white = hidden_white()
    alpha = np.where(slice_ == 0, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.stack([white, alpha], axis=-1), "LA")
    if mode == "PA":  # grey levels on a palette, exactly: L -> P keeps each level as its own palette entry
        image = Image.merge("PA", (Image.fromarray(white).convert("P"), Image.fromarray(alpha)))
    elif mode != "LA":
        image = image.convert("RGBA").convert(mode)
    np.testing.assert_array_equal(to_grey_levels(image), slice_)
    assert to_grey_levels(Image.fromarray(white)).max() == 255  # without the alpha, the background reads white


@pytest.mark.parametrize(
    ("array", "marked"),
    [("grey", 255), ("palette", 255), ("sixteen", 65535), ("rgb", (255, 255, 255))],
)
def test_a_colour_marked_transparent_reads_black(array: str, marked: object) -> None:
    """PNG's tRNS chunk: the pixels of the marked grey value or colour read black, the others as their values."""
    slice_, white = hidden_white()  # no brain pixel of the marked value: textured() stops at 254
    images = {
        "grey": Image.fromarray(white),
        "palette": Image.fromarray(white).convert("P"),
        "sixteen": Image.fromarray(white.astype(np.uint16) * 257),
        "rgb": Image.fromarray(np.stack([white] * 3, axis=-1)),
    }
    read = png(images[array], transparency=marked)
    assert "transparency" in read.info
    np.testing.assert_array_equal(to_grey_levels(read), slice_)


def test_partly_transparent_pixels_are_weighted_towards_black() -> None:
    slice_ = textured()
    half = Image.fromarray(np.stack([slice_, np.full_like(slice_, 128)], axis=-1), "LA")
    expected = np.rint(slice_.astype(np.float64) * 128 / 255)
    assert np.abs(to_grey_levels(half).astype(np.float64) - expected).max() <= 1


def test_an_opaque_alpha_band_changes_nothing() -> None:
    """Many tools save RGBA with every pixel opaque: read as the RGB image, level for level."""
    rgb = np.stack([textured(seed) for seed in range(3)], axis=-1)
    opaque = Image.fromarray(np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1), "RGBA")
    np.testing.assert_array_equal(to_grey_levels(png(opaque)), to_grey_levels(Image.fromarray(rgb)))
