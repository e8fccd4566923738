import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from models.quality import Summary, psnr, ssim


def test_ssim_agrees_with_scikit_image_called_directly() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((64, 80))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    direct = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(direct, abs=1e-12)
    assert ssim(a, b) < 0.99


def test_identical_images() -> None:
    a = np.random.default_rng(1).random((32, 32))
    assert ssim(a, a) == pytest.approx(1.0)
    assert math.isinf(psnr(a, a))


def test_psnr_value() -> None:
    a = np.zeros((8, 8))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)


def test_summary() -> None:
    s = Summary.of(list(range(101)))
    assert (s.mean, s.median, s.p5) == (50.0, 50.0, 5.0)
    with pytest.raises(ValueError):
        Summary.of([])


def test_summary_caps_infinite_psnr_but_keeps_nan() -> None:
    assert Summary.of([30.0, math.inf]).mean == 65.0
    assert math.isnan(Summary.of([0.5, math.nan]).mean)  # a NaN score must never look like a good one
