"""app.imaging: what uploads are accepted, how they become [0, 1] floats, and what is refused (and why)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, TiffImagePlugin

from app.imaging import (
    MAX_PNG_TEXT_BYTES,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedImageError,
    decode_image,
    encode_png,
    load_pixels,
    open_image,
)
from benchmarks.crafted_png import TEXT_BOMB_CHUNK, padded_png, png_chunk, with_header_size
from models.grayscale import to_uint8
from models.jpeg_markers import MAX_EXTRANEOUS, MAX_SCANS, MAX_SEGMENTS, count_markers
from tests.conftest import repeated_last_scan
from training.data import DataError, read_grayscale

LIMITS = {"max_pixels": 4096 * 4096, "min_size": 8}
ImageFile = Callable[..., bytes]
Noise = Callable[..., np.ndarray]


def decode(data: bytes, **limits: int) -> np.ndarray:
    return decode_image(data, **{**LIMITS, **limits}).image


def test_eight_bit_png_is_divided_by_255(image_file: ImageFile, noise: Noise) -> None:
    pixels = noise(12, 9)
    image = decode(image_file(pixels))
    assert image.dtype == np.float32
    assert image.shape == (12, 9)
    np.testing.assert_array_equal(image, pixels.astype(np.float32) / 255.0)


def test_sixteen_bit_png_is_scaled_to_the_grey_levels_training_reads(image_file: ImageFile, noise: Noise) -> None:
    """Scaled, not clipped to the low byte; and rounded to the 256 levels, as ``read_grayscale`` rounds them. Before,
    the service kept all 16 bits, so its SSIM of a 16-bit slice was not vqvae-eval's (0.947254 against 0.948593)."""
    eight = noise(16, 16)
    sixteen = eight.astype(np.uint16) * 257  # the same grey levels on the 16-bit scale
    sixteen[0, :4] = [0, 32768, 65535, 300]
    eight[0, :4] = [0, 128, 255, 1]
    image = decode(image_file(sixteen))
    np.testing.assert_array_equal(image, decode(image_file(eight)))


def test_rgb_is_converted_to_luminance(image_file: ImageFile, noise: Noise) -> None:
    rgb = np.stack([noise(10, 11, 1), noise(10, 11, 2), noise(10, 11, 3)], axis=-1)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(decode(image_file(rgb)), expected)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "BMP"])
def test_other_accepted_formats(image_file: ImageFile, noise: Noise, fmt: str) -> None:
    assert decode(image_file(noise(20, 30), fmt)).shape == (20, 30)


def test_a_multi_frame_tiff_is_refused_from_its_header(image_file: ImageFile, noise: Noise) -> None:
    """Before: read at its first frame, the second dropped without a word. Refused before any pixel is decoded."""
    tiff = image_file(noise(9, 9, 1), "TIFF", save_all=True, append_images=[Image.fromarray(noise(9, 9, 2))])
    with pytest.raises(UnsupportedImageError, match="the TIFF file holds 2 frames") as caught:
        open_image(tiff, **LIMITS)
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"patient name, age\nDoe, 71\n", "not PNG, JPEG, TIFF or BMP"),
        (b"GIF89a" + bytes(64), "not PNG, JPEG, TIFF or BMP"),
        # Before: "not PNG, JPEG, TIFF or BMP" for files that are one of those, damaged.
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "starts as a PNG but its header cannot be read"),
        (b"\xff\xd8\xff\xe0" + bytes(20), "starts as a JPEG but its header cannot be read"),
        (b"MM\x00*" + bytes(20), "starts as a big-endian TIFF but Pillow cannot read it: a sample format it does not"),
    ],
)
def test_not_an_accepted_image(content: bytes, message: str) -> None:
    with pytest.raises(UnsupportedImageError, match=message) as caught:
        decode(content)
    assert caught.value.status_code == 400


_SAMPLE_FORMATS = {"u": 1, "i": 2, "f": 3}  # TIFF SampleFormat by numpy kind
_LONG, _FLOAT = 4, 11  # TIFF field types


def _raw_tiff(pixels: np.ndarray, *, photometric: int = 1, offsets_type: int = _LONG) -> bytes:
    """A little-endian, uncompressed, one-strip grey TIFF of ``pixels`` as they are (any width, signed or not, float),
    written by hand: Pillow writes neither 64-bit floats nor MinIsWhite 16-bit files."""
    height, width = pixels.shape
    tags = {
        256: width, 257: height, 258: pixels.dtype.itemsize * 8, 259: 1, 262: photometric, 273: 0, 277: 1,
        278: height, 279: pixels.nbytes, 339: _SAMPLE_FORMATS[pixels.dtype.kind],
    }  # fmt: skip
    ifd_size = 2 + 12 * len(tags) + 4
    tags[273] = 8 + ifd_size  # the pixels follow the directory

    def entry(tag: int, value: int) -> bytes:
        if tag == 273 and offsets_type == _FLOAT:
            return struct.pack("<HHIf", tag, _FLOAT, 1, float(value))
        return struct.pack("<HHII", tag, _LONG, 1, value)

    entries = b"".join(entry(tag, value) for tag, value in sorted(tags.items()))
    data = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + bytes(4) + data


def _float64_tiff(side: int) -> bytes:
    """A valid TIFF of 64-bit float samples, which Pillow does not read."""
    return _raw_tiff(np.linspace(0.0, 1.0, side * side).reshape(side, side))


def test_a_tiff_of_a_sample_format_pillow_cannot_read_is_not_called_corrupt() -> None:
    """Before: "its header cannot be read (truncated or corrupt file?)" of a valid 64-bit float TIFF."""
    with pytest.raises(UnsupportedImageError, match=r"a sample format it does not support \(64- or 16-bit float"):
        decode(_float64_tiff(16))


def test_gif_is_refused_even_when_valid(image_file: ImageFile, noise: Noise) -> None:
    with pytest.raises(UnsupportedImageError, match="not PNG, JPEG, TIFF or BMP"):
        decode(image_file(noise(10, 10), "GIF"))


def test_truncated_png(image_file: ImageFile, noise: Noise) -> None:
    png = image_file(noise(64, 64))
    with pytest.raises(UnsupportedImageError, match="truncated"):
        decode(png[: len(png) // 2])


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow says so of a cut TIFF, then raises
@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "TIFF", "PNG"])
def test_a_header_cut_short_is_a_400_not_a_crash(image_file: ImageFile, noise: Noise, fmt: str) -> None:
    data = image_file(noise(64, 64), fmt)
    for cut in (20, 40, 100):
        with pytest.raises(UnsupportedImageError) as caught:
            decode(data[:cut])
        assert caught.value.status_code == 400


def test_png_text_chunks_are_capped(image_file: ImageFile, noise: Noise) -> None:
    """Compressed text inflating past MAX_PNG_TEXT_BYTES is refused (a slice needs no text at all)."""
    png = image_file(noise(16, 16))
    chunks = MAX_PNG_TEXT_BYTES // (1 << 20) + 1  # each inflates to 1 MiB
    said = "the PNG's metadata (text or ICC profile chunks) is too large: over 1 MiB in one compressed chunk once "
    said += "inflated, or over 4 MiB of text in all"
    with pytest.raises(UnsupportedImageError, match=re.escape(said)):
        decode(padded_png(png, TEXT_BOMB_CHUNK, len(png) + chunks * len(TEXT_BOMB_CHUNK)))
    within = padded_png(png, TEXT_BOMB_CHUNK, len(png) + (chunks - 2) * len(TEXT_BOMB_CHUNK))
    np.testing.assert_array_equal(decode(within), decode(png))
    # One chunk past Pillow's 1 MiB: before, its words ("... too large for PngImagePlugin.MAX_TEXT_CHUNK") under
    # "could not read the image header (truncated or corrupt file?)", of a file that was neither (a review).
    for kind in (b"zTXt", b"iCCP"):
        big = png_chunk(kind, b"k\x00\x00" + zlib.compress(bytes(2 << 20), 9))
        with pytest.raises(UnsupportedImageError, match=re.escape(said)) as caught:
            decode(padded_png(png, big, len(png) + len(big)))
        assert "truncated" not in str(caught.value) and caught.value.status_code == 400
    plain = png_chunk(b"tEXt", b"k\x00" + b"a" * (1000 << 10))  # not compressed: counted all the same (a review)
    with pytest.raises(UnsupportedImageError, match=re.escape(said)):
        decode(padded_png(png, plain, len(png) + 5 * len(plain)))


def test_open_reads_the_header_only_and_load_decodes(image_file: ImageFile, noise: Noise) -> None:
    """The split the routes use: a truncated file passes ``open_image`` (its header is whole), its pixels fail."""
    png = image_file(noise(64, 48))
    with open_image(png[: len(png) // 2], **LIMITS) as image:
        assert (image.width, image.height) == (48, 64)
        with pytest.raises(UnsupportedImageError, match="truncated"):
            load_pixels(image)
    with open_image(png, **LIMITS) as image:
        np.testing.assert_array_equal(load_pixels(image).image, decode(png))


def test_pixel_limit_is_checked_before_decoding(image_file: ImageFile, noise: Noise) -> None:
    said = r"64x65 \(height x width\) = 4160 pixels, over the limit of 4096"
    with pytest.raises(ImageTooLargeError, match=said) as caught:
        decode(image_file(noise(64, 65)), max_pixels=4096)
    assert caught.value.status_code == 413


@pytest.mark.parametrize(("side", "message"), [(5000, "over the limit"), (40000, "decompression bomb")])
def test_bomb_headers_are_refused_without_decoding(
    image_file: ImageFile, noise: Noise, side: int, message: str
) -> None:
    """Our limit first; far beyond it Pillow's own guard fires at open. Either way nothing is decoded."""
    with pytest.raises(ImageTooLargeError, match=message):
        open_image(with_header_size(image_file(noise(8, 8)), side, side), **LIMITS)


def test_pillows_own_bomb_guard_names_our_limit_not_only_pillows(image_file: ImageFile, noise: Noise) -> None:
    """Before: the message quoted Pillow's 178956970 pixels only, which is not this service's limit."""
    with pytest.raises(ImageTooLargeError, match="its header claims 1600000000 pixels; the limit is 1000 pixels"):
        open_image(with_header_size(image_file(noise(8, 8)), 40000, 40000), max_pixels=1000, min_size=8)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"progressive": True, "optimize": True}])
def test_jpegs_as_encoders_write_them_are_within_the_marker_bounds(
    noise: Noise, mode: str, options: dict[str, bool]
) -> None:
    image = Image.fromarray(noise(64, 48)).convert(mode)
    image.getexif()[ExifTags.Base.Orientation] = 1
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=image.getexif(), **options)
    found = count_markers(buffer.getvalue())
    assert 1 <= found.scans <= 10 and found.segments <= 30, found
    assert decode(buffer.getvalue()).shape == (64, 48)


# What libjpeg reads past, and a walk that stopped there did not: a segment length under 2 (it skips nothing), junk
# bytes between segments, a stuffed 0xFF00 between segments.
LIBJPEG_GOES_ON_PAST = {
    "none": b"",
    "app1-length-0": b"\xff\xe1\x00\x00",
    "com-length-1": b"\xff\xfe\x00\x01",
    "junk-byte": b"\xff\xfe\x00\x03x\x00",
    "stuffed-ff": b"\xff\x00",
}


@pytest.mark.parametrize("before", LIBJPEG_GOES_ON_PAST.values(), ids=LIBJPEG_GOES_ON_PAST.keys())
def test_a_jpeg_of_more_scans_than_encoders_write_is_refused_before_decoding(before: bytes) -> None:
    """Before: decoded, each scan over the whole image: 50,000 scans of a 1024x1024 image (606 KB) took 18 s; and a
    review found the first bound evaded by 4 bytes before the scans."""
    buffer = io.BytesIO()
    Image.new("L", (1024, 1024)).save(buffer, format="JPEG", progressive=True)
    within = repeated_last_scan(buffer.getvalue(), MAX_SCANS - count_markers(buffer.getvalue()).scans, before)
    assert count_markers(within).scans == MAX_SCANS
    assert decode(within).shape == (1024, 1024)
    with pytest.raises(UnsupportedImageError, match=f"over {MAX_SCANS} scans") as caught:
        open_image(repeated_last_scan(buffer.getvalue(), 50_000, before), **LIMITS)
    assert caught.value.status_code == 400


def test_scans_hidden_in_a_segment_libjpeg_skips_inside_a_scan_are_counted() -> None:
    """A review's case: with a restart interval set, libjpeg skips a marker under 0xC0 inside a scan and decodes the
    scans after it; the walk took the marker's length and skipped them: 54,000 hidden scans, 8 s of decoding."""
    buffer = io.BytesIO()
    Image.new("L", (1024, 1024)).save(buffer, format="JPEG", progressive=True)
    jpeg = buffer.getvalue()
    payload = jpeg[-14:-2] * 500
    hidden = b"\xff\x02" + (len(payload) + 2).to_bytes(2, "big") + payload
    restart_interval = b"\xff\xdd\x00\x04\x00\x01"
    with pytest.raises(UnsupportedImageError, match=f"over {MAX_SCANS} scans"):
        open_image(jpeg[:2] + restart_interval + jpeg[2:-2] + hidden + b"\xff\xd9", **LIMITS)


def test_a_jpeg_with_more_bytes_between_segments_than_the_bound_is_refused(image_file: ImageFile, noise: Noise) -> None:
    """A review's case: 20 MiB of fill bytes after the first segment took Pillow's header parser 5 s."""
    jpeg = image_file(noise(16, 16), "JPEG")
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    filled = jpeg[:after_app0] + b"\xff" * (MAX_EXTRANEOUS + 1) + jpeg[after_app0:]
    with pytest.raises(UnsupportedImageError, match=f"over {MAX_EXTRANEOUS} bytes between its segments"):
        open_image(filled, **LIMITS)
    assert decode(jpeg[:after_app0] + b"\xff" * 64 + jpeg[after_app0:]).shape == (16, 16)


def test_a_jpeg_of_more_segments_than_encoders_write_is_refused(image_file: ImageFile, noise: Noise) -> None:
    jpeg = image_file(noise(16, 16), "JPEG")
    comments = b"\xff\xfe\x00\x03x" * MAX_SEGMENTS  # COM segments of one byte each
    with pytest.raises(UnsupportedImageError, match=f"over {MAX_SEGMENTS} segments"):
        open_image(jpeg[:2] + comments + jpeg[2:], **LIMITS)
    assert decode(jpeg[:2] + comments[: 5 * 5] + jpeg[2:]).shape == (16, 16)


def test_markers_inside_an_exif_thumbnail_are_not_counted(image_file: ImageFile, noise: Noise) -> None:
    thumbnail = image_file(noise(16, 16), "JPEG")
    app1 = b"Exif\x00\x00" + thumbnail * 40  # 40 JPEGs' markers inside one segment
    jpeg = image_file(noise(16, 16), "JPEG")
    assert count_markers(jpeg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpeg[2:]) == (
        count_markers(jpeg)._replace(segments=count_markers(jpeg).segments + 1)
    )


def with_bmp_size(bmp: bytes, width: int, height: int) -> bytes:
    """The same BMP with its (40-byte) info header claiming another width and height, signed as BMP stores them."""
    return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


@pytest.mark.parametrize(
    ("width", "height"), [(-12, 16), (-12, -16), (0, 16), (12, 0), (-(2**31), 16), (12, -(2**24) - 1), (12, -(2**31))]
)
def test_bmp_with_a_non_positive_width_or_a_zero_height_is_invalid(
    image_file: ImageFile, noise: Noise, width: int, height: int
) -> None:
    """Before: a negative width was 413 "decompression bomb" (Pillow reads it unsigned), a zero side "not an image",
    and so was a height below -2**24 (Pillow takes only heights whose top byte is 0xFF as negative)."""
    bmp = with_bmp_size(image_file(noise(16, 12), "BMP"), width, height)
    said = f"invalid image dimensions, width {width} and height {height}:"
    with pytest.raises(UnsupportedImageError, match=said) as caught:
        open_image(bmp, **LIMITS)
    assert caught.value.status_code == 400


def test_bmp_with_a_negative_height_is_read_top_down(image_file: ImageFile, noise: Noise) -> None:
    """A negative height is legal BMP: the rows are stored top-down, so the same bytes read as the image flipped."""
    pixels = noise(16, 12)
    bottom_up = image_file(pixels, "BMP")
    np.testing.assert_array_equal(decode(with_bmp_size(bottom_up, 12, -16)), decode(bottom_up)[::-1])


def test_float_images_are_clipped_within_half_a_level_but_nan_pixels_are_refused(image_file: ImageFile) -> None:
    """Before: NaN passed the clip into the model, and /reconstruct answered 200 with an SSIM of null. Values further
    outside [0, 1] are refused too (``models.grayscale``'s tests)."""
    slack = 0.99 * 0.5 / 255
    pixels = np.linspace(-slack, 1 + slack, 16 * 16, dtype=np.float32).reshape(16, 16)
    np.testing.assert_array_equal(decode(image_file(pixels, "TIFF")), to_uint8(pixels) / np.float32(255.0))
    pixels[3, 4:6] = np.nan
    with pytest.raises(UnsupportedImageError, match="has 2 NaN pixel") as caught:
        decode(image_file(pixels, "TIFF"))
    assert caught.value.status_code == 400


def _signed_tiff(pixels: np.ndarray) -> bytes:
    """A TIFF whose SampleFormat says signed integers: int32 as Pillow writes it, int8 as its raw bytes."""
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[339] = 2  # SampleFormat: signed integer
    stored = pixels.view(np.uint8) if pixels.dtype == np.int8 else pixels
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="TIFF", tiffinfo=info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("dtype", "offset", "message"),
    [
        (np.int32, -300, "negative pixel values (down to -300)"),
        (np.int8, -100, "negative pixel values (down to -100)"),
        (np.int32, 70000, "pixel values up to 70199, beyond 16 bits"),
    ],
)
def test_integers_with_no_grey_level_are_refused(dtype: type, offset: int, message: str) -> None:
    """Before: a signed TIFF of a slice, all below zero, came back all black with SSIM 0.99999; a signed 8-bit one
    was read as unsigned (-1 as 255); values above 16 bits were clipped to white."""
    pixels = (np.arange(16 * 16).reshape(16, 16) % 200 + offset).astype(dtype)
    with pytest.raises(UnsupportedImageError, match=re.escape(message)) as caught:
        decode(_signed_tiff(pixels))
    assert caught.value.status_code == 400


@pytest.mark.parametrize("dtype", [np.int8, np.int32])
def test_signed_samples_without_negative_values_read_as_their_values(dtype: type) -> None:
    pixels = (np.arange(16 * 16).reshape(16, 16) % 120).astype(dtype)
    np.testing.assert_array_equal(decode(_signed_tiff(pixels)), pixels.astype(np.float32) / 255.0)


@pytest.mark.parametrize(("dtype", "white"), [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0)])
def test_a_min_is_white_tiff_is_inverted_at_every_depth(dtype: type, white: float) -> None:
    """Before: Pillow inverts 1- and 8-bit MinIsWhite TIFFs only, so a 16-bit or float one came out as its
    negative, silently."""
    levels = np.arange(16 * 16).reshape(16, 16) % 250
    stored = (levels * 131 if white == 65535 else levels / 255 if white == 1.0 else levels).astype(dtype)
    inverted = (white - stored).astype(dtype)
    np.testing.assert_array_equal(decode(_raw_tiff(inverted, photometric=0)), decode(_raw_tiff(stored)))


def test_a_signed_sixteen_bit_tiff_is_scaled_by_its_depth_not_by_its_largest_value() -> None:
    """Before: /255 while no value exceeded 255 and /65535 after, so one level more made a slice 257x darker."""
    pixels = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.int16)
    for top in (255, 256):
        pixels[0, 0] = top
        np.testing.assert_array_equal(decode(_raw_tiff(pixels)), decode(_raw_tiff(pixels.astype(np.uint16))))


def test_unsigned_32_bit_samples_over_2_to_the_31_are_called_too_large_not_negative() -> None:
    """Pillow reads 32-bit samples as signed, so 3,000,000,000 was refused as "negative pixel values"."""
    pixels = np.full((16, 16), 3_000_000_000, dtype=np.uint32)
    with pytest.raises(UnsupportedImageError, match=r"pixel values up to 3000000000, beyond 16 bits"):
        decode(_raw_tiff(pixels))


def test_a_tiff_tag_of_the_wrong_type_is_a_400_and_a_data_error(tmp_path: Path) -> None:
    """StripOffsets as a FLOAT: Pillow's load raised a TypeError, which /encode answered with a 500 and training let
    through as a traceback."""
    tiff = _raw_tiff(np.zeros((16, 16), np.uint8), offsets_type=_FLOAT)
    with pytest.raises(UnsupportedImageError, match="truncated or corrupt") as caught:
        decode(tiff)
    assert caught.value.status_code == 400
    (tmp_path / "a.tif").write_bytes(tiff)
    with pytest.raises(DataError, match=r"a\.tif: cannot read image \(.*float"):
        read_grayscale(tmp_path / "a.tif")


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_training_refuses_the_formats_the_service_refuses(
    image_file: ImageFile, noise: Noise, tmp_path: Path, fmt: str
) -> None:
    """Before: vqvae-eval scored a GIF or a WebP (named .png) that /reconstruct refused."""
    (tmp_path / "a.png").write_bytes(image_file(noise(16, 16), fmt))
    with pytest.raises(DataError, match=r"a\.png: cannot read image: not a PNG/JPEG/TIFF/BMP file"):
        read_grayscale(tmp_path / "a.png")


def test_the_service_reads_every_depth_to_the_levels_training_reads(
    image_file: ImageFile, noise: Noise, tmp_path: Path
) -> None:
    """So that /reconstruct's SSIM of a file is vqvae-eval's of the same file."""
    sixteen = noise(16, 16).astype(np.uint16) * 257 + noise(16, 16, 5).astype(np.uint16) % 200
    files = {
        "sixteen.png": image_file(sixteen),
        "float.tif": image_file(sixteen.astype(np.float32) / 65535, "TIFF"),
        "signed.tif": _raw_tiff((sixteen // 2).astype(np.int16)),
        "white.tif": _raw_tiff(sixteen, photometric=0),
        "rgb.png": image_file(np.stack([noise(16, 16, seed) for seed in (1, 2, 3)], axis=-1)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(decode(data), read_grayscale(tmp_path / name) / np.float32(255.0), name)


# What a viewer shows for each EXIF orientation, written in numpy (not Pillow's table, which the code uses).
_VIEWED = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),  # turned a quarter clockwise
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),
}


def _with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("orientation", sorted(_VIEWED))
def test_the_exif_orientation_is_applied_as_viewers_do(
    image_file: ImageFile, noise: Noise, tmp_path: Path, fmt: str, orientation: int
) -> None:
    """Before, a PNG or JPEG with an orientation tag was read as stored, sideways from what its owner sees. Pillow
    turns a TIFF itself: it must not be turned twice. Training reads it the same way."""
    pixels = noise(12, 20)
    data = image_file(pixels, fmt, exif=_with_orientation(orientation))
    expected = _VIEWED[orientation](pixels)
    np.testing.assert_array_equal(decode(data), expected.astype(np.float32) / 255.0)
    (tmp_path / "a.img").write_bytes(data)
    np.testing.assert_array_equal(read_grayscale(tmp_path / "a.img"), expected)


def test_a_jpeg_is_turned_by_its_orientation(image_file: ImageFile, noise: Noise) -> None:
    upright = decode(image_file(noise(16, 24), "JPEG", quality=95))
    turned = decode(image_file(noise(16, 24), "JPEG", quality=95, exif=_with_orientation(8)))
    assert turned.shape == (24, 16)
    np.testing.assert_array_equal(turned, np.rot90(upright, 1))  # the same decoded levels, turned


def test_an_exif_block_that_cannot_be_parsed_is_ignored(image_file: ImageFile, noise: Noise) -> None:
    pixels = noise(12, 20)
    for fmt in ("PNG", "JPEG"):
        assert decode(image_file(pixels, fmt, exif=b"Exif\x00\x00not a TIFF header")).shape == (12, 20)


def test_too_small_for_ssim(image_file: ImageFile) -> None:
    with pytest.raises(ImageTooSmallError, match=r"1x1 \(height x width\) pixels; the minimum is 8x8") as caught:
        decode(image_file(np.zeros((1, 1), np.uint8)))
    assert caught.value.status_code == 422


def test_png_output_is_the_rounded_8_bit_image() -> None:
    image = np.linspace(0, 1, 7 * 5, dtype=np.float32).reshape(7, 5)
    with Image.open(io.BytesIO(encode_png(image))) as decoded:
        assert decoded.mode == "L"
        np.testing.assert_array_equal(np.asarray(decoded), to_uint8(image))
