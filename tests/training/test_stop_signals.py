"""Stop signals while training: raised where they land, except while the epoch's files are written."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from training import train
from training.config import TrainConfig
from training.stop_signals import StopSignals, Terminated
from training.train import Trainer


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


def test_no_signal_is_raised_inside_a_held_block(heeded_sigint: None, capsys: pytest.CaptureFixture[str]) -> None:
    signals = StopSignals()
    finished = []
    with signals.installed(), signals.held():
        _signal_self(signal.SIGINT)
        _signal_self(signal.SIGTERM)
        finished.append("the block")
    assert finished == ["the block"]
    assert capsys.readouterr().err.count("still saving the state") == 2


def _count_saves(monkeypatch: pytest.MonkeyPatch, during_a_save: Callable[[], None] = lambda: None) -> list[int]:
    """Record the step of every ``save_state``; ``during_a_save`` runs between its two files."""
    steps: list[int] = []
    write_files = train.write_together

    def write_between(writers: dict[Path, Callable[[Path], object]]) -> None:
        def weights_then_pause(partial: Path, write: Callable[[Path], object]) -> None:
            write(partial)
            if partial.name.startswith("last.safetensors"):
                during_a_save()

        write_files({path: functools.partial(weights_then_pause, write=write) for path, write in writers.items()})

    original = Trainer.save_state

    def counted(self: Trainer) -> None:
        original(self)
        steps.append(self.state.step)

    monkeypatch.setattr(train, "write_together", write_between)
    monkeypatch.setattr(Trainer, "save_state", counted)
    return steps


def _stop_at_step(monkeypatch: pytest.MonkeyPatch, step: int, signum: signal.Signals) -> None:
    original = Trainer.loop_step

    def stepped(self: Trainer) -> Any:
        values = original(self)
        if self.state.step == step:
            _signal_self(signum)
        return values

    monkeypatch.setattr(Trainer, "loop_step", stepped)


def test_a_second_ctrl_c_during_the_last_save_is_held_until_both_files_are_written(
    tiny_config: Callable[..., TrainConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    heeded_sigint: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: a traceback, with last.safetensors of one step and last.pt of an older one."""
    steps = _count_saves(monkeypatch, during_a_save=lambda: _signal_self(signal.SIGINT))
    _stop_at_step(monkeypatch, 3, signal.SIGINT)
    monkeypatch.setattr(train, "parse_args", lambda argv: tiny_config(epochs=50))
    try:
        code = train.main([])
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped main(): a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert "still saving the state" in err and "interrupted: state saved" in err
    assert steps == [3]  # the stop's save, whole
    _, metadata = train.load(tmp_path / "last.safetensors")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert metadata["training"]["steps"] == json.loads(state["run"])["step"] == 3


def test_a_stop_held_over_the_epochs_files_does_not_save_them_twice(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = _count_saves(monkeypatch)
    signals_in_the_files: list[Path] = []
    draw = train.loss_curves_figure

    def draw_after_a_signal(history: Any, path: Path) -> None:
        _signal_self(signal.SIGTERM)
        signals_in_the_files.append(path)
        draw(history, path)

    monkeypatch.setattr(train, "loss_curves_figure", draw_after_a_signal)
    trainer = Trainer(tiny_config(epochs=3, max_val_images=4))
    with pytest.raises(Terminated) as stop, trainer.stop_signals.installed():
        trainer.run()
    assert train.stopped(trainer, stop.value) == 143
    assert signals_in_the_files and steps == [trainer.steps_per_epoch]  # the epoch's save only


def test_ctrl_c_while_the_final_figures_are_drawn_exits_cleanly(
    tiny_config: Callable[..., TrainConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    heeded_sigint: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the final figures ran outside the signal handling, and Ctrl-C there ended in a traceback; then it
    said "state saved (resume with --resume)" as if training had been cut short."""
    steps = _count_saves(monkeypatch)
    draw = Trainer.final_figures
    monkeypatch.setattr(train, "parse_args", lambda argv: tiny_config(epochs=1, max_val_images=4))
    monkeypatch.setattr(Trainer, "final_figures", lambda self: _signal_self(signal.SIGINT))
    try:
        code = train.main([])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main(): a traceback")
    err = capsys.readouterr().err
    assert code == 130 and "interrupted after the last epoch: training is complete" in err
    assert "state saved" not in err
    assert len(steps) == 1  # the epoch's save; nothing was left to save
    # What the message promises: --resume trains nothing more and draws the figure.
    monkeypatch.setattr(Trainer, "final_figures", draw)
    monkeypatch.setattr(train, "parse_args", lambda argv: tiny_config(epochs=1, max_val_images=4, resume=True))
    assert train.main([]) == 0
    assert len(steps) == 1 and (tmp_path / "reconstructions_validate.png").is_file()
