"""vqvae-train keeps a step's memory mapped for the next (models.allocator), as the service does its passes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from training import train
from training.config import TrainConfig, parse_args


@pytest.mark.parametrize(("retain_mb", "calls"), [(256, [256 * 1024 * 1024]), (0, [])])
def test_the_trainer_applies_the_malloc_setting(
    tiny_config: Callable[..., TrainConfig], monkeypatch: pytest.MonkeyPatch, retain_mb: int, calls: list[int]
) -> None:
    seen: list[int] = []
    monkeypatch.setattr(train, "retain_freed_memory", lambda size: seen.append(size) or True)
    train.Trainer(tiny_config(malloc_retain_mb=retain_mb))
    assert seen == calls


def test_the_cli_flag() -> None:
    assert TrainConfig().malloc_retain_mb == 256
    assert parse_args(["--malloc-retain-mb", "0"]).malloc_retain_mb == 0
