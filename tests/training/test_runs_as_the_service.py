"""vqvae-train runs as the service does: a step's memory kept mapped for the next (models.allocator), and no more
threads than the usable CPUs (models.cpus)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import models.cpus as cpus
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


@pytest.mark.parametrize(("threads", "expected"), [(0, 1), (2, 2)])
def test_the_trainer_counts_a_container_cpu_limit_in_its_default_threads(
    tiny_config: Callable[..., TrainConfig], monkeypatch: pytest.MonkeyPatch, threads: int, expected: int
) -> None:
    """Under ``docker run --cpus 0.5`` torch's default of a thread per core would be throttled (models.cpus);
    ``--threads`` still wins."""
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpus, "cpu_quota", lambda: 0.5)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # torch's default on 2 cores
    try:
        train.Trainer(tiny_config(threads=threads))
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
