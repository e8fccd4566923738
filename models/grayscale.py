"""Decoded image -> grayscale float in [0, 1]: one rule for training data and the service alike."""

from __future__ import annotations

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT_TOP = 65535
_TIFF_SAMPLE_FORMAT = 339  # TIFF tag: how samples are stored
_SIGNED_INTEGER = 2  # its value for two's complement signed integers
_SEND_INSTEAD = "send unsigned 8- or 16-bit integers, or floats in [0, 1]"


class UnmappablePixelsError(ValueError):
    """Pixel values that no grey level stands for: NaN, negative (signed samples) or beyond 16 bits. Clipping
    them would hand back a confident answer about a different image (a signed TIFF of a slice, all below zero,
    came back all black with SSIM 0.99999)."""


def has_signed_samples(image: Image.Image) -> bool:
    """A TIFF whose samples are signed integers. Pillow reads 8-bit ones as unsigned ("L"): -1 as 255."""
    tags = getattr(image, "tag_v2", None)
    kind = tags.get(_TIFF_SAMPLE_FORMAT) if tags is not None else None
    return _SIGNED_INTEGER in (kind if isinstance(kind, tuple) else (kind,))


def to_unit_float(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 (H, W) in [0, 1].

    Colour is converted to luminance (ITU-R 601, Pillow's "L"); 16-bit images are divided by 65535 rather than
    clipped to 8 bits; 32-bit integer images are read as 16-bit when any value exceeds 255; float images are
    taken as [0, 1] and clipped (infinities included). NaN pixels, negative integers (signed samples, of any
    width) and integers above 16 bits are refused (``UnmappablePixelsError``).
    """
    if image.mode in _SIXTEEN_BIT:
        return np.asarray(image, dtype=np.float32) / _SIXTEEN_BIT_TOP
    if image.mode == "I":  # 32-bit signed: Pillow's mode for signed 16-bit and for 32-bit samples
        array = np.asarray(image, dtype=np.int64)
        _check_integer_range(array)
        top = _SIXTEEN_BIT_TOP if array.max(initial=0) > 255 else 255
        return (array / top).astype(np.float32)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        missing = int(np.isnan(array).sum())
        if missing:  # clipping keeps NaN, which would reach the model and come back as a NaN SSIM
            raise UnmappablePixelsError(f"the float image has {missing} NaN pixel(s); they have no grey level to map")
        return np.clip(array, 0.0, 1.0)
    if image.mode == "L" and has_signed_samples(image):
        _check_integer_range(np.asarray(image).view(np.int8))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


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


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float (H, W) in [0, 1] -> uint8 (H, W), rounded."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
