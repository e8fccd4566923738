"""Scoring a set in torch (what validation does) gives the reference figures (scikit-image, numpy)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import PRESETS
from models.device import bulk_batch_size
from models.quality import psnr, ssim
from models.vqvae import VQVAE
from training import evaluate
from training.config import TrainConfig
from training.data import SliceSet
from training.evaluate import reconstruct_set, score
from training.synthetic import synthetic_slice
from training.train import Trainer


@pytest.fixture(scope="module")
def mixed_sizes() -> SliceSet:
    """Slices of three sizes, interleaved (so batches, which group them by size, come out of order), one under
    SSIM's 11x11 window (scored by the reference's smaller window)."""
    rng = np.random.default_rng(7)
    tiny = synthetic_slice(rng, (64, 64))[24:33, 20:29].copy()  # 9x9, inside the head
    images = [synthetic_slice(rng, (64, 64)), tiny, synthetic_slice(rng, (40, 48)), synthetic_slice(rng, (64, 64))]
    images += [synthetic_slice(rng, (40, 48)), synthetic_slice(rng, (64, 64))]
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


def test_an_identical_reconstruction_has_a_null_psnr_in_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's case: the report held a bare ``Infinity``, which is not JSON (JSON.parse refuses the file)."""
    model = VQVAE(PRESETS["tiny"])
    reconstruct = model.reconstruct
    monkeypatch.setattr(model, "reconstruct", lambda x: (reconstruct(x)[0], torch.zeros_like(x)))  # all black
    black = np.zeros((16, 16), dtype=np.float32)
    slices = SliceSet([black, synthetic_slice(np.random.default_rng(0), (16, 16))], ["black", "head"], Path("f"))
    report, _ = score(model, slices)
    assert [row["psnr"] is None for row in report["per_image"]] == [True, False]
    assert report["psnr"]["mean"] > 50  # the summary caps +inf at 100 dB
    json.loads(json.dumps(report, allow_nan=False))


def test_the_reference_scores_nothing_in_torch(mixed_sizes: SliceSet) -> None:
    result = reconstruct_set(VQVAE(PRESETS["tiny"]), mixed_sizes)
    assert result.ssims is None and result.psnrs is None


def test_validation_scores_in_torch(tiny_config: Callable[..., TrainConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    """What training validates with: scikit-image's SSIM must not run (on a GPU it would be most of the pass)."""
    trainer = Trainer(tiny_config())

    def refuse(*_: object) -> float:
        raise AssertionError("validation called the scikit-image SSIM")

    monkeypatch.setattr(evaluate, "ssim", refuse)
    report = trainer.validate()
    assert report["images"] == len(trainer.val_set) and 0 < report["ssim"]["mean"] < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
def test_scores_in_torch_on_cuda_equal_the_reference(mixed_sizes: SliceSet) -> None:
    """On a GPU, with the model in channels_last as training keeps it: the scores of one pass, computed on the GPU,
    equal scikit-image's on that pass's own reconstructions (copied to the host)."""
    torch.manual_seed(0)
    model = VQVAE(PRESETS["tiny"]).cuda().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    result = reconstruct_set(model, mixed_sizes, batch_size=2, score_in_torch=True)
    assert result.ssims is not None and result.psnrs is not None
    pairs = list(zip(result.originals, result.reconstructions, strict=True))
    assert result.ssims == pytest.approx([ssim(a, b) for a, b in pairs], rel=0, abs=1e-9)
    assert result.psnrs == pytest.approx([psnr(a, b) for a, b in pairs], rel=0, abs=1e-9)


def test_the_default_batch_follows_the_device(mixed_sizes: SliceSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 images a pass on a CPU (larger batches are slower per image there), and the same figures as any batch."""
    seen: list[int] = []
    real = evaluate._batches

    def recorded(slices: SliceSet, batch_size: int) -> object:
        seen.append(batch_size)
        return real(slices, batch_size)

    monkeypatch.setattr(evaluate, "_batches", recorded)
    model = VQVAE(PRESETS["tiny"])
    by_default, _ = score(model, mixed_sizes)
    one_by_one, _ = score(model, mixed_sizes, batch_size=1)
    assert seen == [bulk_batch_size(torch.device("cpu")), 1] == [4, 1]
    assert [r["ssim"] for r in by_default["per_image"]] == pytest.approx([r["ssim"] for r in one_by_one["per_image"]])
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        score(model, mixed_sizes, batch_size=0)


def test_a_report_names_a_grid_only_when_every_image_has_it(mixed_sizes: SliceSet) -> None:
    """Before: a set of several sizes reported the first image's grid beside a mean bits per slice."""
    model = VQVAE(PRESETS["tiny"])
    mixed, _ = score(model, mixed_sizes, batch_size=2)
    assert mixed["grid"] is None and "grids of several sizes, a mean" in evaluate.format_table(mixed, "mixed")
    same = SliceSet([mixed_sizes.images[0], mixed_sizes.images[3]], ["a.png", "b.png"], Path("same"))
    uniform, _ = score(model, same, batch_size=2)
    assert uniform["grid"] == list(model.config.grid_for(64, 64))
    assert f"grid {uniform['grid'][0]}x{uniform['grid'][1]}" in evaluate.format_table(uniform, "same")
