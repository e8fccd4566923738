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

from models.files import WriteError
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


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = train.load(path)
    return model.state_dict()


def _without_seconds(history_file: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads(history_file.read_text())]


def _signal_in_a_step(monkeypatch: pytest.MonkeyPatch, step: int, signals: int = 1) -> None:
    """Send SIGINT ``signals`` times at the start of the step counted ``step`` (before its forward pass)."""
    original = Trainer.train_step

    def signalled(self: Trainer, batch: torch.Tensor) -> Any:
        if self.state.step == step:
            for _ in range(signals):
                _signal_self(signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", signalled)


def _signal_in_the_first_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    original, calls = Trainer.validate, []

    def signalled(self: Trainer) -> Any:
        calls.append(self.state.step)
        if len(calls) == 1:
            _signal_self(signal.SIGINT)
        return original(self)

    monkeypatch.setattr(Trainer, "validate", signalled)


@pytest.mark.parametrize(
    ("epochs", "stop_in", "saved_step", "resumed_at"),
    [
        (2, "a step", 5, "at step 5, 5 of the 6 steps into epoch 1"),
        (1, "the validation", 6, "at step 6, 6 of the 6 steps into epoch 1"),
    ],
    ids=["in-a-step", "in-validation"],
)
def test_a_stopped_and_resumed_run_ends_as_an_uninterrupted_one(
    tiny_config: Callable[..., TrainConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    heeded_sigint: None,
    capsys: pytest.CaptureFixture[str],
    epochs: int,
    stop_in: str,
    saved_step: int,
    resumed_at: str,
) -> None:
    """Before: a stop in the middle of an epoch resumed with the whole epoch again (more steps, other weights);
    one in its validation recorded the epoch as done with no history row and no best checkpoint, and with
    --epochs 1 the resumed run ended with "no epoch produced a finite validation SSIM". Ctrl-C comes at the start
    of a step here: that step is finished before the run stops."""
    settings = {"epochs": epochs, "max_val_images": 4, "warmup_steps": 2}
    whole = Trainer(tiny_config(out=tmp_path / "whole", **settings))
    whole.run()
    run = tmp_path / "stopped"
    with monkeypatch.context() as patches:
        if stop_in == "a step":
            _signal_in_a_step(patches, saved_step - 1)
        else:
            _signal_in_the_first_validation(patches)
        patches.setattr(train, "parse_args", lambda argv: tiny_config(out=run, **settings))
        assert train.main([]) == 130
    saved = json.loads(torch.load(run / "last.pt", weights_only=True)["run"])
    assert saved["step"] == saved_step and saved["seconds"] > 0  # the seconds of the epoch's steps, carried too
    monkeypatch.setattr(train, "parse_args", lambda argv: tiny_config(out=run, resume=True, **settings))
    assert train.main([]) == 0
    assert f"resumed from {run} {resumed_at}" in capsys.readouterr().out
    assert _without_seconds(run / "history.json") == _without_seconds(tmp_path / "whole" / "history.json")
    assert json.loads((run / "history.json").read_text())[0]["seconds"] >= round(saved["seconds"], 1)
    for name in ("last.safetensors", "best.safetensors"):
        final, expected = _weights(run / name), _weights(tmp_path / "whole" / name)
        assert final.keys() == expected.keys()
        assert all(torch.equal(final[key], expected[key]) for key in expected), name


def test_a_second_ctrl_c_in_the_middle_of_a_step_saves_nothing(
    tiny_config: Callable[..., TrainConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    heeded_sigint: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first Ctrl-C waits for the step to finish; a second one stops at once, and the state it leaves belongs
    to no step (the optimizer may have updated some parameters and not others). Before: it was saved for --resume."""
    steps = _count_saves(monkeypatch)
    _signal_in_a_step(monkeypatch, 3, signals=2)
    monkeypatch.setattr(train, "parse_args", lambda argv: tiny_config(epochs=50))
    assert train.main([]) == 130
    err = capsys.readouterr().err
    assert "interrupted in the middle of a step, which was not saved; no epoch's state was saved" in err
    assert steps == [] and not (tmp_path / "last.pt").exists()


def test_a_stop_whose_state_cannot_be_saved_says_so_in_one_line(
    tiny_config: Callable[..., TrainConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    heeded_sigint: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder made read-only (or a disk filled) after an epoch's save. Before: a WriteError traceback, exit 1."""

    def unwritable(self: Trainer) -> None:
        raise WriteError(f"cannot write {self.out / 'last.safetensors'}: Operation not permitted")

    _signal_in_a_step(monkeypatch, 3)
    monkeypatch.setattr(Trainer, "save_state", unwritable)
    monkeypatch.setattr(train, "parse_args", lambda argv: tiny_config(epochs=50, warmup_steps=2))
    assert train.main([]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"interrupted, and this step's state could not be saved: cannot write {tmp_path / 'last.safetensors'}: "
        "Operation not permitted; no epoch's state was saved, so there is nothing to resume"
    )


def test_ctrl_c_while_the_data_loads_exits_130_in_one_line(
    tiny_config: Callable[..., TrainConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The full OASIS splits take about 20 s to load, before the training's own signal handling is installed.
    Before: a ``KeyboardInterrupt`` traceback, and death by the signal."""

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "parse_args", lambda argv: tiny_config())
    monkeypatch.setattr(train, "load_split", interrupted)
    assert train.main([]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert not list(tmp_path.glob("*.safetensors"))


def test_ctrl_c_while_resume_loads_the_run_keeps_the_runs_state(
    tiny_config: Callable[..., TrainConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the stop's save wrote the fresh, untrained model and an empty state over last.safetensors and
    last.pt, since nothing had been saved at step 0 in this process."""
    Trainer(tiny_config(epochs=1, max_val_images=4)).run()
    saved = {name: (tmp_path / name).read_bytes() for name in ("last.safetensors", "last.pt")}

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "parse_args", lambda argv: tiny_config(epochs=2, max_val_images=4, resume=True))
    monkeypatch.setattr(train, "load", interrupted)
    assert train.main([]) == 130
    assert "interrupted before training started: nothing was saved" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in saved} == saved


def test_resume_refuses_weights_and_optimizer_state_of_different_steps(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    """A kill between the two renames of a save leaves a new last.safetensors beside an old last.pt."""
    Trainer(tiny_config(epochs=1, max_val_images=4)).run()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    run = json.loads(state["run"])
    state["run"] = json.dumps({**run, "step": run["step"] - 1})
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(train.CheckpointError, match=r"last\.safetensors is of step \d+ but .*last\.pt of step"):
        Trainer(tiny_config(epochs=2, max_val_images=4, resume=True)).run()
