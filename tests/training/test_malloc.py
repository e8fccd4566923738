"""vqvae-train keeps a step's memory mapped for the next (models.allocator), as the service does its passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import train
from training.config import TrainConfig, parse_args


@pytest.mark.parametrize(("retain_mb", "calls"), [(256, [256 * 1024 * 1024]), (0, [])])
def test_the_trainer_applies_the_malloc_setting(
    fixture_oasis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retain_mb: int, calls: list[int]
) -> None:
    seen: list[int] = []
    monkeypatch.setattr(train, "retain_freed_memory", lambda size: seen.append(size) or True)
    config = TrainConfig(
        data=fixture_oasis,
        out=tmp_path,
        preset="tiny",
        crop=32,
        device="cpu",
        progress=False,
        malloc_retain_mb=retain_mb,
    )
    train.Trainer(config)
    assert seen == calls


def test_the_cli_flag() -> None:
    assert TrainConfig().malloc_retain_mb == 256
    assert parse_args(["--malloc-retain-mb", "0"]).malloc_retain_mb == 0
