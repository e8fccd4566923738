"""Decoded image -> grayscale float in [0, 1]: one rule for training data and the service alike."""

from __future__ import annotations

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class NotANumberError(ValueError):
    """A float image with NaN pixels: no grey level stands for them."""


def to_unit_float(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 (H, W) in [0, 1].

    Colour is converted to luminance (ITU-R 601, Pillow's "L"); 16-bit images are divided by 65535 rather than
    clipped to 8 bits; 32-bit integer images are read as 16-bit when any value exceeds 255; float images are
    taken as [0, 1] and clipped (infinities included); NaN pixels are refused.
    """
    if image.mode in _SIXTEEN_BIT:
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        return np.clip(array / top, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        missing = int(np.isnan(array).sum())
        if missing:  # clipping keeps NaN, which would reach the model and come back as a NaN SSIM
            raise NotANumberError(f"the float image has {missing} NaN pixel(s); they have no grey level to map")
        return np.clip(array, 0.0, 1.0)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float (H, W) in [0, 1] -> uint8 (H, W), rounded."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
