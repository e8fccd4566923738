"""Decoded image -> the model's 256 grey levels: one rule for training data and the service alike."""

from __future__ import annotations

import struct
import zlib
from typing import IO, NamedTuple

import numpy as np
from PIL import ExifTags, Image, TiffImagePlugin

# The image formats read, in training as in the service.
ACCEPTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
# What Pillow raises on damaged data, depending on the plugin (a TIFF tag of the wrong type: TypeError); MemoryError
# and the like are left alone.
DECODE_ERRORS = (OSError, ValueError, TypeError, SyntaxError, EOFError, IndexError, struct.error, zlib.error)

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT_TOP = 65535
_TWELVE_BIT_TOP = 4095
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_PHOTOMETRIC = 262  # TIFF tag: how a sample's value reads as a colour
_MIN_IS_WHITE = 0  # its value for grey levels where 0 is white
_TIFF_SAMPLE_FORMAT = 339  # TIFF tag: how samples are stored
_SIGNED_INTEGER = 2  # its value for two's complement signed integers
_SEND_INSTEAD = "send unsigned 8- or 16-bit integers, or floats in [0, 1]"
# How far outside [0, 1] a float sample may lie and still be clipped: half a grey level. Such a value rounds to level 0
# or 255 all the same (``to_uint8``), so clipping it changes no level of the image the model sees; it is what float
# rounding leaves in a caller's scaling (1.0000001 from ``x / x.max()`` in another precision). A value further out
# is a slice of another range (0 to 255, -1 to 1), which clipping would turn into a different image.
_FLOAT_SLACK = 0.5 / 255
# The most frames counted in a file of several: enough for any volume's slices, and a crafted TIFF's chain of IFDs
# is walked no further (``frame_count``).
MOST_FRAMES_COUNTED = 1000
_TIFF_NEW_SUBFILE_TYPE = 254  # TIFF tag: what kind of image an IFD holds
_TIFF_SHORT = 3  # an entry's type: 16-bit (else NewSubfileType is 32-bit, LONG)
_NOT_A_PAGE = 1 | 4  # its bits for a reduced-resolution copy of another image, and for a transparency mask
# A TIFF's first 4 bytes -> its byte order, where its first IFD's offset is, and the struct formats of an IFD's
# entry count and of an offset, with an entry's size: classic TIFF and BigTIFF, little- and big-endian.
_TIFF_LAYOUTS = {
    b"II*\x00": ("<", 4, "H", "I", 12),
    b"MM\x00*": (">", 4, "H", "I", 12),
    b"II+\x00": ("<", 8, "Q", "Q", 20),
    b"MM\x00+": (">", 8, "Q", "Q", 20),
}
# An EXIF orientation -> the transpose that shows the image as viewers do (Pillow's table, ``ImageOps.exif_transpose``).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class UnmappablePixelsError(ValueError):
    """Pixel values that no grey level stands for: NaN, negative (signed samples), beyond 16 bits, or floats outside
    [0, 1]. Clipping them would hand back a confident answer about a different image (a signed TIFF of a slice, all
    below zero, came back all black with SSIM 0.99999; a float one of 0 to 255, nearly white with SSIM 0.90)."""


class MultiFrameError(ValueError):
    """A file of several images: a TIFF stack (how MRI volumes are often stored) or an animated PNG. Pillow reads
    the first alone, so the rest were dropped without a word while the caller believed the whole stack was handled."""


def check_single_frame(image: Image.Image) -> None:
    """Refuse an opened image whose file holds more than one frame (``frame_count``), before any pixel is decoded:
    the one check of the training tools and the service."""
    frames = frame_count(image)
    if frames > 1:
        counted = f"over {MOST_FRAMES_COUNTED}" if frames > MOST_FRAMES_COUNTED else str(frames)
        raise MultiFrameError(
            f"the {image.format} file holds {counted} frames (a stack of slices, or an animation), of which only the "
            "first would be read; send one slice per file"
        )


def frame_count(image: Image.Image) -> int:
    """How many images an opened file holds, from its headers alone, counted up to ``MOST_FRAMES_COUNTED + 1``.

    Pillow's ``is_animated`` costs nothing (one IFD's link, an APNG's frame count), and a file of one frame stops
    there. An MPO counts as one: its other images are previews, gain maps or stereo views of the first (phones and
    cameras write them in a JPEG), and viewers show the first. A TIFF's pages are counted by ``_tiff_pages``.
    """
    if image.format == "MPO" or not getattr(image, "is_animated", False):
        return 1
    if isinstance(image, TiffImagePlugin.TiffImageFile) and image.fp is not None:
        return _tiff_pages(image.fp)
    return min(int(getattr(image, "n_frames", 1)), MOST_FRAMES_COUNTED + 1)


def _tiff_pages(file: IO[bytes]) -> int:
    """The IFDs (pages) chained in a TIFF file, up to ``MOST_FRAMES_COUNTED + 1``, read from their links alone: a
    link past the file's end or back into the chain ends it, as it ends Pillow's. The file's position is kept.

    Pillow's ``n_frames`` parses every entry of every IFD and checks each link against all before it: crafted files
    of tiny pages took it 8.6 s for 30,000 (3.4 MB), 103 s for 100,000 (11 MB, within the service's 20 MiB body).
    This reads 4 numbers a page, and at most 1,001 pages: 1 ms.

    A page that its NewSubfileType marks as a reduced-resolution copy (a thumbnail, a pyramid's level) or a
    transparency mask of another is not counted: the first page is the image, and such a file is one slice."""
    position = file.tell()
    try:
        file.seek(0)
        layout = _TIFF_LAYOUTS.get(file.read(4))
        if layout is None:
            return 1
        order, first, count_format, link_format, entry_size = layout
        link = _read_at(file, first, order + link_format)
        seen: set[int] = set()
        pages = 0
        while link and link not in seen and len(seen) <= MOST_FRAMES_COUNTED:
            entries = _read_at(file, link, order + count_format)
            if entries is None:
                break
            seen.add(link)
            first_entry = link + struct.calcsize(count_format)
            if not entries or not _other_image(file, first_entry, order, struct.calcsize(link_format)):
                pages += 1
            link = _read_at(file, first_entry + entries * entry_size, order + link_format)
        return max(pages, 1)
    finally:
        file.seek(position)


def _other_image(file: IO[bytes], entry: int, order: str, count_size: int) -> bool:
    """Whether an IFD whose first entry is at ``entry`` has a NewSubfileType (tag 254) with the reduced-resolution
    (1) or transparency-mask (4) bit set. Tags are stored in ascending order and 254 is the lowest of TIFF's, so
    only the first entry is read. An entry: tag, type (2 bytes each), count (``count_size``), then the value."""
    if _read_at(file, entry, order + "H") != _TIFF_NEW_SUBFILE_TYPE:
        return False
    short = _read_at(file, entry + 2, order + "H") == _TIFF_SHORT
    kind = _read_at(file, entry + 4 + count_size, order + ("H" if short else "I"))
    return kind is not None and bool(kind & _NOT_A_PAGE)


def _read_at(file: IO[bytes], offset: int, layout: str) -> int | None:
    """The integer stored at ``offset`` in ``layout`` (a struct format), or None past the file's end."""
    if offset >= 1 << 63:  # a BigTIFF's, which no file reaches: seek would raise OverflowError (Pillow: ValueError)
        return None
    file.seek(offset)
    data = file.read(struct.calcsize(layout))
    return int(struct.unpack(layout, data)[0]) if len(data) == struct.calcsize(layout) else None


def _tiff_tag(image: Image.Image, tag: int) -> tuple[object, ...]:
    """A TIFF tag's values (a tuple, empty where absent or not a TIFF)."""
    tags = getattr(image, "tag_v2", None)
    value = tags.get(tag) if tags is not None else None
    return () if value is None else value if isinstance(value, tuple) else (value,)


def has_signed_samples(image: Image.Image) -> bool:
    """A TIFF whose samples are signed integers. Pillow reads 8-bit ones as unsigned ("L"): -1 as 255."""
    return _SIGNED_INTEGER in _tiff_tag(image, _TIFF_SAMPLE_FORMAT)


def to_grey_levels(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> uint8 (H, W): the 256 grey levels the model is trained on (by ``to_unit_float``'s
    rule, rounded). The service reads uploads this way too, so that its SSIM of a 16-bit or float image equals
    ``vqvae-eval``'s of the same file; the model's own output is 8-bit. An EXIF orientation is applied, as viewers
    do: the slice is read the way its owner sees it."""
    if image.mode == "L" and not has_signed_samples(image) and "transparency" not in image.info:
        levels = np.asarray(image, dtype=np.uint8)
    else:
        levels = to_uint8(to_unit_float(image))
    return upright(levels, image)


def upright(levels: np.ndarray, image: Image.Image) -> np.ndarray:
    """uint8 (H, W) levels of a loaded ``image`` -> the same levels turned by its EXIF orientation, (H, W) or (W, H).

    Before, a phone photo or a JPEG exported with an orientation tag was read sideways: its reconstruction came back
    turned from what the caller's viewer shows, and the model, trained on upright slices, saw a rotated one. Pillow
    applies a TIFF's orientation itself when it loads one (and drops the tag), so only JPEG and PNG get here with one.
    An EXIF block that cannot be parsed is ignored, as viewers ignore it: the pixels are fine.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except DECODE_ERRORS:
        return levels
    turn = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    if turn is None:
        return levels
    return np.asarray(Image.fromarray(levels).transpose(turn), dtype=np.uint8)  # (H, W) or (W, H)


class NarrowRange(NamedTuple):
    """An image read on the 16-bit scale whose integer samples reach 4095 at most (``narrow_range``)."""

    top: int  # its largest sample
    inverted: bool  # a MinIsWhite TIFF: read nearly white, not nearly black


def narrow_range(image: Image.Image) -> NarrowRange | None:
    """The largest sample of an image read on the 16-bit scale (16-bit files, signed ones included, and 32-bit
    integers above 255) when it is at most 12 bits (4095), else None.

    Such a file (an MRI export of 12-bit data, say) is read on the 16-bit scale, as the format says, so its values
    fall in the 17 darkest of the 256 grey levels (the lightest, for MinIsWhite). Its scores then mean little: the
    same slice stored as 8-bit scored SSIM 0.47, as 16-bit 0.99 (a review's measurement, an untrained model).
    Callers say so; the pixels are not rescaled, since the file does not say which range its values span."""
    if image.mode not in (*_SIXTEEN_BIT, "I"):
        return None
    array = np.asarray(image)
    if image.mode == "I" and _integer_top(image, array) != _SIXTEEN_BIT_TOP:
        return None  # 32-bit samples up to 255 are read as 8-bit ones
    top = int(array.max(initial=0))
    if not 0 < top <= _TWELVE_BIT_TOP:
        return None
    return NarrowRange(top, _MIN_IS_WHITE in _tiff_tag(image, _TIFF_PHOTOMETRIC))


def narrow_range_effect(narrow: NarrowRange) -> str:
    """What reading integer samples up to ``narrow.top`` on the 16-bit scale does, and the cure: one wording for
    the note of the training tools and the service's."""
    level = round(narrow.top / 257)  # the grey level of the largest sample
    where = f"{255 - level} to 255 (nearly white)" if narrow.inverted else f"0 to {level} (nearly black)"
    return (
        f"read on the 16-bit scale, values up to {narrow.top} fall in grey levels {where} of 0 to 255, and scores "
        "mean little; rescale to the full 16-bit range, or to 8-bit, first"
    )


def to_unit_float(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 (H, W) in [0, 1].

    Colour is converted to luminance (ITU-R 601, Pillow's "L"); 16-bit images are divided by 65535 rather than
    clipped to 8 bits, signed 16-bit TIFFs too; 32-bit integer images are read as 16-bit when any value exceeds
    255; float images are taken as [0, 1], clipped only within half a grey level of it (``_FLOAT_SLACK``). A TIFF
    whose grey levels have 0 for white (MinIsWhite) is inverted, as Pillow does for 1- and 8-bit ones only. NaN
    pixels, floats further outside [0, 1] (infinities included), negative integers (signed samples, of any width)
    and integers above 16 bits are refused (``UnmappablePixelsError``). Transparent pixels are put on black
    (``opacity``).
    """
    unit = _opaque_unit_float(image)
    alpha = opacity(image)
    return unit if alpha is None else unit * alpha


def opacity(image: Image.Image) -> np.ndarray | None:
    """float32 (H, W) in [0, 1], 0 where the image is transparent, or None for an image that has no transparency.

    Transparent pixels are read on black, a slice's background, as a viewer on black shows them: their colour
    values were read as if visible, so a slice exported with a transparent white background came back with a white
    one, SSIM 0.84 and no word (a review's finding). An alpha band counts, and so does a colour or grey value marked
    transparent (PNG's tRNS chunk, Pillow's ``info["transparency"]``)."""
    marked = image.info.get("transparency")
    if not {"A", "a"} & set(image.getbands()):
        if marked is None:
            return None
        if image.mode in (*_SIXTEEN_BIT, "I"):  # a marked grey value of a 16-bit image, which RGBA cannot hold
            return (np.asarray(image, dtype=np.int64) != marked).astype(np.float32) if isinstance(marked, int) else None
    return np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0  # tRNS applied as alpha


def _opaque_unit_float(image: Image.Image) -> np.ndarray:
    """``to_unit_float`` without transparency: every pixel read as its colour or grey value says."""
    inverted = _MIN_IS_WHITE in _tiff_tag(image, _TIFF_PHOTOMETRIC)  # Pillow has inverted modes "1" and "L"
    if image.mode in _SIXTEEN_BIT:
        unit = np.asarray(image, dtype=np.float32) / _SIXTEEN_BIT_TOP
    elif image.mode == "I":  # 32-bit signed: Pillow's mode for signed 16-bit and for 32-bit samples
        array = np.asarray(image, dtype=np.int64)
        if _tiff_tag(image, _TIFF_BITS_PER_SAMPLE) == (32,) and not has_signed_samples(image):
            array &= 0xFFFFFFFF  # unsigned 32-bit samples, which Pillow reads as signed: 2**31 and up as negative
        _check_integer_range(array)
        unit = (array / _integer_top(image, array)).astype(np.float32)
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        missing = int(np.isnan(array).sum())
        if missing:  # clipping keeps NaN, which would reach the model and come back as a NaN SSIM
            raise UnmappablePixelsError(f"the float image has {missing} NaN pixel(s); they have no grey level to map")
        _check_float_range(array)
        unit = np.clip(array, 0.0, 1.0)
    else:
        if image.mode == "L" and has_signed_samples(image):
            _check_integer_range(np.asarray(image).view(np.int8))
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return 1.0 - unit if inverted else unit


def _integer_top(image: Image.Image, array: np.ndarray) -> int:
    """The value that stands for white in a mode "I" image: a 16-bit TIFF's (signed ones read as "I") whatever its
    values; for 32-bit samples, which no grey scale fits, 255 unless a value exceeds it. Before, a signed 16-bit
    TIFF was scaled by its largest value: one level more made the whole image 257 times darker."""
    bits = [b for b in _tiff_tag(image, _TIFF_BITS_PER_SAMPLE) if isinstance(b, int)]
    if bits and max(bits) <= 16:
        return 255 if max(bits) <= 8 else _SIXTEEN_BIT_TOP
    return _SIXTEEN_BIT_TOP if array.max(initial=0) > 255 else 255


def _check_integer_range(array: np.ndarray) -> None:
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    if low < 0:
        raise UnmappablePixelsError(
            f"the image has negative pixel values (down to {low}): signed samples have no grey level; {_SEND_INSTEAD}"
        )
    if high > _SIXTEEN_BIT_TOP:
        raise UnmappablePixelsError(
            f"the image has pixel values up to {high}, beyond 16 bits ({_SIXTEEN_BIT_TOP}); {_SEND_INSTEAD}"
        )


def _check_float_range(array: np.ndarray) -> None:
    low, high = float(array.min(initial=np.inf)), float(array.max(initial=-np.inf))
    if low < -_FLOAT_SLACK or high > 1.0 + _FLOAT_SLACK:
        raise UnmappablePixelsError(
            f"the float image has pixel values from {low:g} to {high:g}, outside [0, 1]; {_SEND_INSTEAD}"
        )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float (H, W) in [0, 1] -> uint8 (H, W), rounded."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
