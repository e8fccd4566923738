"""Stop signals while training: raised where they land, except while the epoch's files are written."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from training import train
from training.config import TrainConfig
from training.train import StopSignals, Terminated, Trainer


def _signal_self(signum: signal.Signals) -> None:
    """Send ``signum`` to this process and give its Python handler the moment it needs to run."""
    os.kill(os.getpid(), signum)
    time.sleep(0.05)


@pytest.fixture
def heeded_sigint() -> Iterator[None]:
    """SIGINT raising KeyboardInterrupt, as at a terminal, even where the tests were started with it ignored (bash
    starts background commands so, and CI may run them so)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_in_a_deferred_block_is_raised_when_the_block_ends(heeded_sigint: None) -> None:
    signals = StopSignals()
    finished = []
    sigterm_before = signal.getsignal(signal.SIGTERM)
    with signals.installed():
        with pytest.raises(Terminated), signals.deferred():
            _signal_self(signal.SIGTERM)
            finished.append("the block")
        assert finished == ["the block"]
        with pytest.raises(Terminated):  # outside a deferred block: at once
            _signal_self(signal.SIGTERM)
            finished.append("not reached")
        with pytest.raises(KeyboardInterrupt) as second, signals.deferred():  # a second signal does not wait
            _signal_self(signal.SIGINT)
            _signal_self(signal.SIGINT)
            finished.append("not reached either")
        assert second.type is KeyboardInterrupt
    assert finished == ["the block"]
    assert signal.getsignal(signal.SIGTERM) is sigterm_before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored() -> None:
    """A job started with `cmd &` from a script inherits SIGINT ignored; training must not start heeding it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals().installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_while_the_epochs_figures_are_drawn_stops_after_them(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flaky case, made certain: SIGTERM lands while the first loss-curve figure is drawn."""
    drawn = []
    draw = train.loss_curves_figure

    def draw_after_a_signal(history: Any, path: Path) -> None:
        _signal_self(signal.SIGTERM)
        draw(history, path)
        drawn.append(path)

    monkeypatch.setattr(train, "loss_curves_figure", draw_after_a_signal)
    trainer = Trainer(tiny_config(epochs=3, max_val_images=4))
    with trainer.stop_signals.installed(), pytest.raises(Terminated):
        trainer.run()
    assert drawn == [tmp_path / "loss_curves.png"]  # drawn to the end, then stopped
    assert (tmp_path / "loss_curves.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "history.json").read_text())) == 1
    assert trainer.state.epoch == 1
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.safetensors").exists()
