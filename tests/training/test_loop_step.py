"""One iteration of the training loop: the learning-rate schedule is applied before every step."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from training.config import TrainConfig
from training.train import Trainer, lr_factor


def test_lr_factor_warms_up_then_decays_to_the_floor() -> None:
    assert [lr_factor(step, 10, 4, 0.1) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, 0.1) == pytest.approx(1.0)
    assert lr_factor(7, 10, 4, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(10, 10, 4, 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 10, 4, 0.1) == pytest.approx(0.1)  # past the end: the floor, not a rebound


def test_loop_step_sets_each_steps_learning_rate_and_counts_it(tiny_config: Callable[..., TrainConfig]) -> None:
    config = tiny_config(warmup_steps=3, lr=1e-3)
    trainer = Trainer(config)
    trainer.model.train()
    seen = []
    for _ in range(4):
        values = trainer.loop_step()
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        assert len(values) == 4 and all(math.isfinite(v) for v in values)
    assert trainer.state.step == 4
    expected = [1e-3 * lr_factor(step, trainer.total_steps, 3, config.min_lr / config.lr) for step in range(4)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(1e-3 / 3)  # the first step is a third of the peak, not the peak
