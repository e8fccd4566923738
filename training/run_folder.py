"""What a training run leaves in its ``--out`` folder, and whether a new run may start there.

A run started without ``--resume`` in a folder that holds another run used to write over that run's
``best.safetensors`` at its first epoch, silently; and after ``--overwrite`` a stale ``best.safetensors`` could pass
for this run's result when no epoch of it produced one. So a run folder is claimed before any data loads.
"""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import CheckpointError, read_metadata
from models.files import leftover_partials, not_replaceable
from training.config import TrainConfig
from training.outputs import OutputError, note

RESUME_STATE = ("last.safetensors", "last.pt")  # weights and optimizer state of the same step: both or neither
RESUME_KEYS = ("optimizer", "generator", "torch_rng", "run")  # what last.pt holds (Trainer.save_last)
CHECKPOINTS = ("best.safetensors", *RESUME_STATE)
RUN_FILES = (*CHECKPOINTS, "history.json", "history.csv", "loss_curves.png", "reconstructions_validate.png")
# What a save stopped mid-write (killed) by earlier versions left: NAME.partial, and last.partial for last.pt before
# that. Today's partial files have the writer's pid in their names (models.files.partial_path).
LEGACY_PARTIALS = (*(f"{name}.partial" for name in RUN_FILES), "last.partial")


def held_checkpoints(out: Path) -> list[str]:
    """The checkpoint files of an earlier run in ``out``."""
    return [name for name in CHECKPOINTS if (out / name).is_file()]


def check(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start over an earlier run unless told to continue it (``--resume``) or replace it
    (``--overwrite``); say so when ``--resume`` finds nothing to continue."""
    blocked = [name for name in (*RUN_FILES, *LEGACY_PARTIALS) if not_replaceable(out / name)]
    if blocked:  # a folder there failed the first save, after a whole epoch; a device (/dev/null), root replaced
        raise OutputError(f"{out / blocked[0]} is not a file, where the run writes one; move it or use another --out")
    held = held_checkpoints(out)
    if resume:
        if not held:
            note(f"nothing to resume in {out}; starting a new run there")
            return
        state = [name for name in RESUME_STATE if name in held]
        if not state:  # a fresh start would write over its best checkpoint
            raise OutputError(
                f"{out} holds {', '.join(held)} but no last.safetensors or last.pt to resume from; "
                "pass --overwrite instead of --resume to replace it, or choose another --out"
            )
        if len(state) < len(RESUME_STATE):  # resuming from half of it would restart from step 0 over the run's files
            missing = next(name for name in RESUME_STATE if name not in state)
            raise OutputError(
                f"{out}: incomplete resume state, no {missing}; start the run over with --overwrite, or use another "
                "--out"
            )
        return
    if held and not overwrite:
        raise OutputError(
            f"{out} already holds a training run ({', '.join(held)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )


def clear(out: Path) -> None:
    """Remove an earlier run's files (``--overwrite``), once the new run has everything it needs to start, with
    what its saves cut off by a kill left."""
    for name in (*RUN_FILES, *LEGACY_PARTIALS):
        (out / name).unlink(missing_ok=True)
    for name in RUN_FILES:
        for leftover in leftover_partials(out / name):
            leftover.unlink(missing_ok=True)


def saved_training(out: Path) -> tuple[dict[str, Any], Any]:
    """The training settings of the run in ``out`` and the epochs it has finished, from its last.safetensors (no
    tensors are read)."""
    path = out / RESUME_STATE[0]
    training = read_metadata(path).get("training")
    settings = training.get("config") if isinstance(training, dict) else None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: records no training settings to resume with; use another --out")
    return settings, training.get("epochs") if isinstance(training, dict) else None


def load_resume_state(config: TrainConfig) -> dict[str, Any] | None:
    """With ``--resume``, the run's ``last.pt`` (optimizer, RNG states, history), read before the data loads and
    without running code from it (``weights_only``); None when there is nothing to resume (``check`` has made sure
    that ``last.pt`` and ``last.safetensors`` are both there or neither). Raises ``CheckpointError``."""
    path = config.out / RESUME_STATE[1]
    if not config.resume or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, RecursionError):
        raise  # not the file's fault: "damaged, start over with --overwrite" would have a good run deleted
    except Exception as exc:  # torch's weights-only unpickler lets KeyError, IndexError, struct.error... through
        raise unreadable_state(path, exc) from exc
    missing = [key for key in RESUME_KEYS if key not in state] if isinstance(state, dict) else list(RESUME_KEYS)
    if missing:
        raise unreadable_state(path, KeyError(", ".join(missing)))
    return state


def unreadable_state(path: Path, exc: BaseException) -> CheckpointError:
    """The error for a ``last.pt`` that is damaged, or not one vqvae-train wrote. An unpickling error is named by
    its kind alone: torch's text advises ``weights_only=False``, which would run code from the file."""
    reason = (
        type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError)
        else textwrap.shorten(f"{type(exc).__name__}: {exc}", width=160, placeholder=" ...")
    )
    return CheckpointError(
        f"{path}: unreadable resume state, damaged or not written by vqvae-train ({reason}); start the run over "
        "with --overwrite, or use another --out"
    )


def check_settings(config: TrainConfig) -> None:
    """With ``--resume``, refuse settings that differ from the run's, all named in one line, before the data loads:
    they used to be taken silently, and provenance recorded only the new ones. Note a changed ``--epochs``, which
    may change (``TrainConfig.changes_from`` says which may, and why)."""
    if not config.resume or not (config.out / RESUME_STATE[0]).is_file():
        return
    saved, done = saved_training(config.out)
    changes = config.changes_from(saved)
    if changes:
        raise OutputError(
            f"{config.out}: --resume with settings other than the run's: {'; '.join(changes)}; resume with the "
            "run's settings, or start a new run (another --out, or --overwrite)"
        )
    planned = saved.get("epochs", config.epochs)
    if isinstance(done, int) and done > config.epochs:  # it said "done", after a note that the decay "now ends" there
        raise OutputError(
            f"{config.out}: the run has finished {done} epochs, more than --epochs {config.epochs}; resume with the "
            f"run's --epochs {planned}, or more than {done} to train further"
        )
    if planned != config.epochs and done == config.epochs:  # a run killed at 12 of 200, resumed with --epochs 12
        note(f"the run has finished {done} epochs: --epochs {done} leaves none to train (the run's: {planned})")
    elif planned != config.epochs:
        note(
            f"--epochs {saved['epochs']} -> {config.epochs}: the learning rate's cosine decay now ends with "
            f"epoch {config.epochs}, so the steps left run at other rates than the run had scheduled"
        )
