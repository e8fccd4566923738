"""Uploaded bytes -> validated grayscale float image, and float image -> PNG; shared by every route.

Pillow is only allowed to identify PNG, JPEG, TIFF and BMP, and the pixel count is checked from the header
before any pixel is decoded, so a decompression bomb costs nothing but its header. A PNG's compressed text
chunks may inflate to ``MAX_PNG_TEXT_BYTES`` in all (Pillow's own limit is 64 MiB): a slice needs none, and a
32 KiB file of them inflated 31 MiB and took 28-49 ms to open.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import NamedTuple

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from models.bomb_guard import claimed_pixels
from models.grayscale import (
    ACCEPTED_FORMATS,
    DECODE_ERRORS,
    MultiFrameError,
    UnmappablePixelsError,
    check_single_frame,
    narrow_range,
    narrow_range_effect,
    opacity,
    to_grey_levels,
    to_uint8,
)
from models.jpeg_markers import JPEG_SIGNATURE, marker_refusal

# zlib settings of the PNGs we send. On 32 reconstructed OASIS test slices (256x256): Pillow's default (level 6)
# took 2.8-3.2 ms for 17.7 KiB, level 1 1.2-1.6 ms for 19.6 KiB, level 1 with the run-length strategy 1.0-1.3 ms
# for 17.7 KiB (the filtered rows of a slice are mostly runs). The pixels are the same: PNG is lossless.
PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_TYPE = zlib.Z_RLE
_ACCEPTED_TEXT = f"{', '.join(ACCEPTED_FORMATS[:-1])} or {ACCEPTED_FORMATS[-1]}"  # PNG, JPEG, TIFF or BMP
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BMP_SIGNATURE = b"BM"
# Where a BMP keeps its info header's size and then its width and height (little-endian), from the file's start;
# the 12-byte OS/2 1.x header has unsigned 16-bit sides, the others Pillow reads signed 32-bit ones.
_BMP_HEADER_SIZE_AT, _BMP_SIZE_AT, _BMP_SIZE_END = 14, 18, 26
_BMP_SIDES_BY_HEADER_SIZE = {12: "<HH", **dict.fromkeys((40, 52, 56, 64, 108, 124), "<ii")}
_BMP_LOWEST_HEIGHT = -(1 << 24)  # a top-down BMP's height, as Pillow reads it: below this, a huge positive one
MIB = 1024 * 1024
MAX_PNG_TEXT_BYTES = 4 * MIB
_SIGNATURES = {"PNG": PNG_SIGNATURE, "JPEG": JPEG_SIGNATURE, "TIFF": b"II*\x00", "big-endian TIFF": b"MM\x00*"}
PngImagePlugin.MAX_TEXT_MEMORY = MAX_PNG_TEXT_BYTES  # over it Pillow raises ValueError: a 400 below
# What Pillow's ValueErrors for those limits name; its text ("Decompressed data too large for
# PngImagePlugin.MAX_TEXT_CHUNK") was passed on under "truncated or corrupt file?", of a file that was neither.
_PNG_METADATA_LIMITS = ("MAX_TEXT_CHUNK", "MAX_TEXT_MEMORY")


class ImageError(Exception):
    """A caller's image that cannot be used; ``status_code`` is the HTTP answer."""

    status_code = 400


class UnsupportedImageError(ImageError):
    """Empty, not an image, a format we do not accept, or truncated / corrupt data."""

    status_code = 400


class ImageTooLargeError(ImageError):
    """More pixels than the configured limit (or than Pillow's decompression-bomb guard)."""

    status_code = 413


class ImageTooSmallError(ImageError):
    """A real image, but smaller than the SSIM window and the configured minimum."""

    status_code = 422


class Pixels(NamedTuple):
    """A decoded upload, and what its caller should know about how it was read."""

    image: np.ndarray  # (H, W) float32 in [0, 1]
    notes: list[str]  # empty for almost every image; see ``narrow_note`` and ``transparency_note``


def decode_image(data: bytes, *, max_pixels: int, min_size: int) -> Pixels:
    """Image file content -> float32 (H, W) in [0, 1] and notes; a file of several frames is refused."""
    with open_image(data, max_pixels=max_pixels, min_size=min_size) as image:
        return load_pixels(image)


def open_image(data: bytes, *, max_pixels: int, min_size: int) -> Image.Image:
    """Identify the format and check the size and the frame count from the headers alone (no pixel decoded yet); the
    caller closes it.

    Split from ``load_pixels`` so that the routes can decide by the pixel count where the expensive half runs
    (see ``app.offload``).
    """
    if not data:
        raise UnsupportedImageError("the uploaded file is empty")
    _check_bmp_dimensions(data)
    _check_jpeg_markers(data)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own guard, far above ours: its message names its limit
        raise ImageTooLargeError(
            f"image rejected as a decompression bomb: its header claims {claimed_pixels(exc)}; the limit is "
            f"{max_pixels} pixels"
        ) from exc
    except UnidentifiedImageError as exc:
        claimed = next((name for name, magic in _SIGNATURES.items() if data.startswith(magic)), None)
        if claimed and "TIFF" in claimed:  # also what Pillow says of sample formats it does not read
            raise UnsupportedImageError(
                f"the file starts as a {claimed} but Pillow cannot read it: a sample format it does not support "
                "(64- or 16-bit floats, 64-bit integers, complex numbers), or a truncated or corrupt file"
            ) from exc
        if claimed:  # Pillow says "cannot identify" of a damaged header too: the caller's file is not the wrong kind
            raise UnsupportedImageError(
                f"the file starts as a {claimed} but its header cannot be read (truncated or corrupt file?)"
            ) from exc
        raise UnsupportedImageError(f"not a supported image: the content is not {_ACCEPTED_TEXT}") from exc
    except DECODE_ERRORS as exc:  # a recognised format whose header is cut short or corrupt
        if isinstance(exc, ValueError) and any(limit in str(exc) for limit in _PNG_METADATA_LIMITS):
            raise UnsupportedImageError(
                "the PNG's metadata (text or ICC profile chunks) is too large: over "
                f"{PngImagePlugin.MAX_TEXT_CHUNK // MIB} MiB in one compressed chunk once inflated, or over "
                f"{MAX_PNG_TEXT_BYTES // MIB} MiB of text in all; a slice needs none: save the image without it"
            ) from exc
        raise UnsupportedImageError(f"could not read the image header (truncated or corrupt file?): {exc}") from exc
    try:
        _check_size(image.width, image.height, max_pixels=max_pixels, min_size=min_size)
        _check_single_frame(image)
    except ImageError:
        image.close()
        raise
    return image


def load_pixels(image: Image.Image) -> Pixels:
    """An image from ``open_image`` -> float32 (H, W) in [0, 1], on the 256 grey levels, and notes: the decoding
    itself."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except DECODE_ERRORS as exc:
        raise UnsupportedImageError(
            f"could not decode the {image.format} image (truncated or corrupt file?): {exc}"
        ) from exc
    try:
        levels = to_grey_levels(image)  # the levels training reads: see to_grey_levels
        return Pixels(levels.astype(np.float32) / 255.0, narrow_note(image) + transparency_note(image))
    except UnmappablePixelsError as exc:
        raise UnsupportedImageError(str(exc)) from exc
    except DECODE_ERRORS as exc:
        raise UnsupportedImageError(f"unsupported {image.format} pixel mode {image.mode!r}: {exc}") from exc


def narrow_note(image: Image.Image) -> list[str]:
    """A note for an image read on the 16-bit scale whose values reach 4095 at most (12-bit MRI data, say), as
    ``vqvae-train`` and ``vqvae-eval`` give one: it reads nearly black (or white), and its SSIM says little about
    the model (``models.grayscale.narrow_range``). Nothing for other images, at no cost for 8-bit ones."""
    narrow = narrow_range(image)
    if narrow is None:
        return []
    return [f"the image holds integer values only up to {narrow.top} (12 bits or fewer): {narrow_range_effect(narrow)}"]


def transparency_note(image: Image.Image) -> list[str]:
    """A note for an image with transparent pixels, which were read on black (``models.grayscale.opacity``): the
    answer is about that image, not the colours hidden under them. Nothing for an image whose alpha is opaque
    everywhere, as many tools save RGBA."""
    alpha = opacity(image)
    if alpha is None:
        return []
    hidden = int(np.count_nonzero(alpha < 1.0))
    if not hidden:
        return []
    return [
        f"{hidden} of {alpha.size} pixels are transparent or partly so: they were read on black, a slice's "
        "background, as a viewer on black shows them"
    ]


def _check_single_frame(image: Image.Image) -> None:
    """400 for a TIFF stack or an animated PNG (``models.grayscale.check_single_frame``): its first frame alone was
    answered, 200 with no note, while the caller believed the whole stack handled."""
    try:
        check_single_frame(image)
    except MultiFrameError as exc:
        raise UnsupportedImageError(str(exc)) from exc


def _check_bmp_dimensions(data: bytes) -> None:
    """400 for a BMP header whose width is not positive or whose height is zero, before Pillow reads it.

    Pillow reads the width as unsigned, so a crafted -12 became 4294967284 columns and the file was refused as a
    decompression bomb (413), and a zero side as "not an image". A negative height is legal: rows stored top-down,
    down to -2**24, as Pillow takes only heights whose top byte is 0xFF for negative ones.
    """
    if not data.startswith(_BMP_SIGNATURE) or len(data) < _BMP_SIZE_END:
        return  # not a BMP, or too short to say: Pillow's own errors apply
    layout = _BMP_SIDES_BY_HEADER_SIZE.get(struct.unpack_from("<I", data, _BMP_HEADER_SIZE_AT)[0])
    if layout is None:
        return  # a header Pillow does not read (or not a BMP at all): its own error applies
    width, height = struct.unpack_from(layout, data, _BMP_SIZE_AT)
    if width <= 0 or height == 0 or height < _BMP_LOWEST_HEIGHT:
        raise UnsupportedImageError(
            f"the BMP header gives invalid image dimensions, width {width} and height {height}: the width must be "
            f"positive and the height not zero, nor below {_BMP_LOWEST_HEIGHT} (corrupt or crafted file?)"
        )


def _check_jpeg_markers(data: bytes) -> None:
    """400 for a JPEG of more scans, segments or stray bytes than an encoder writes, before Pillow parses or decodes
    it (``models.jpeg_markers``: vqvae-train and vqvae-eval refuse the same files)."""
    refusal = marker_refusal(data)
    if refusal is not None:
        raise UnsupportedImageError(refusal)


def _check_size(width: int, height: int, *, max_pixels: int, min_size: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"image is {height}x{width} (height x width) = {pixels} pixels, over the limit of {max_pixels} pixels"
        )
    if width < min_size or height < min_size:
        raise ImageTooSmallError(
            f"image is {height}x{width} (height x width) pixels; the minimum is {min_size}x{min_size}"
        )


def encode_png(image: np.ndarray) -> bytes:
    """Float (H, W) in [0, 1] -> 8-bit grayscale PNG; the one encoder, so /decode and /reconstruct agree."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_COMPRESS_TYPE
    )
    return buffer.getvalue()
