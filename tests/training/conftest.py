"""Fixtures of the training tests: one small CPU configuration, so that each test names only what it changes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from training.config import TrainConfig


@pytest.fixture
def tiny_config(fixture_oasis: Path, tmp_path: Path) -> Callable[..., TrainConfig]:
    """``tiny_config(**changes)``: the tiny preset on the fixture slices, batch 4 of 32x32 crops, on the CPU,
    no progress bar, output in the test's temporary folder."""

    def make(**changes: Any) -> TrainConfig:
        fields: dict[str, Any] = {
            "data": fixture_oasis,
            "out": tmp_path,
            "preset": "tiny",
            "batch_size": 4,
            "crop": 32,
            "device": "cpu",
            "progress": False,
        }
        return TrainConfig(**{**fields, **changes})

    return make
