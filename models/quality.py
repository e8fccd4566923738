"""The one quality metric used everywhere (DESIGN.md): per-image SSIM and PSNR on floats in [0, 1]."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity


def ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """SSIM of two (H, W) images in [0, 1]: Gaussian window sigma 1.5, population covariance, data_range 1.

    These are the settings of the SSIM paper and of ``tf.image.ssim``. Images smaller than the 11x11 window
    fall back to the largest odd window that fits (scikit-image refuses a window larger than the image).
    """
    original = np.asarray(original, dtype=np.float64)
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    kwargs: dict[str, int] = {}
    smallest = min(original.shape)
    if smallest < 11:
        kwargs["win_size"] = smallest if smallest % 2 else smallest - 1
    return float(
        structural_similarity(
            original,
            reconstruction,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            **kwargs,
        )
    )


def psnr(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """PSNR in dB for data_range 1; infinite for identical images."""
    mse = float(np.mean((np.asarray(original, np.float64) - np.asarray(reconstruction, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


@dataclass(frozen=True)
class Summary:
    """Mean, median and 5th percentile of a per-image score over a whole split."""

    mean: float
    median: float
    p5: float

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> Summary:
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            raise ValueError("cannot summarise an empty list of scores")
        # Identical images: cap PSNR's +inf for the mean. NaN stays NaN, so a broken model never looks best.
        capped = np.where(np.isposinf(array), 100.0, array)
        return cls(float(capped.mean()), float(np.median(capped)), float(np.percentile(capped, 5)))
