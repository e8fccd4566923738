"""Training on full images (``--crop 0``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from models.quality_torch import MIN_SIZE
from training.config import TrainConfig
from training.train import Trainer


def test_full_image_training_pads_images_under_the_ssim_window(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    """A review's case: ``--crop 0`` on 8x8 training images ended in "SSIM needs images of at least 11x11", a
    traceback after the data had loaded. The crop is now the largest image padded up to the window."""
    rng = np.random.default_rng(3)
    for split in ("small-train", "small-val"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "data" / split / f"{i}.png")
    config = tiny_config(
        data=tmp_path / "data", train_split="small-train", val_split="small-val", crop=0, epochs=1, out=tmp_path / "o"
    )
    trainer = Trainer(config)
    assert trainer.sampler.crop >= MIN_SIZE
    trainer.run()
    assert math.isfinite(trainer.state.history[-1]["val_ssim"])
