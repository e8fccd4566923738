"""Scoring a set in torch (what validation does) gives the reference figures (scikit-image, numpy)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import PRESETS
from models.vqvae import VQVAE
from training.data import SliceSet
from training.evaluate import reconstruct_set, score
from training.synthetic import synthetic_slice


@pytest.fixture(scope="module")
def mixed_sizes() -> SliceSet:
    """Slices of three sizes, one under SSIM's 11x11 window (scored by the reference's smaller window)."""
    rng = np.random.default_rng(7)
    images = [synthetic_slice(rng, size) for size in [(64, 64)] * 3 + [(40, 48)] * 2]
    images.append(synthetic_slice(rng, (64, 64))[24:33, 20:29].copy())  # 9x9, inside the head
    return SliceSet(images, [f"s{i}.png" for i in range(len(images))], Path("mixed"))


def test_scores_in_torch_equal_the_reference_per_image(mixed_sizes: SliceSet) -> None:
    torch.manual_seed(0)
    model = VQVAE(PRESETS["tiny"])  # untrained: reconstructions far from the originals, SSIM well below 1
    reference, _ = score(model, mixed_sizes, batch_size=2)
    in_torch, result = score(model, mixed_sizes, batch_size=2, score_in_torch=True)
    assert result.ssims is not None and result.psnrs is not None
    assert not any(math.isnan(v) for v in result.ssims + result.psnrs)
    for key in ("ssim", "psnr"):
        expected = [r[key] for r in reference["per_image"]]
        assert len({round(v, 6) for v in expected}) == len(expected)  # distinct, so the order is checked too
        assert [r[key] for r in in_torch["per_image"]] == pytest.approx(expected, rel=0, abs=1e-9)
        assert in_torch[key] == pytest.approx(reference[key], rel=0, abs=1e-9)


def test_the_reference_scores_nothing_in_torch(mixed_sizes: SliceSet) -> None:
    result = reconstruct_set(VQVAE(PRESETS["tiny"]), mixed_sizes)
    assert result.ssims is None and result.psnrs is None
