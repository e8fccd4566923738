"""What a training run leaves in its ``--out`` folder, and whether a new run may start there.

A run started without ``--resume`` in a folder that holds another run used to write over that run's
``best.safetensors`` at its first epoch, silently; and after ``--overwrite`` a stale ``best.safetensors`` could pass
for this run's result when no epoch of it produced one. So a run folder is claimed before any data loads.
"""

from __future__ import annotations

from pathlib import Path

from models.files import partial_path
from training.outputs import OutputError

RESUME_STATE = ("last.safetensors", "last.pt")  # weights and optimizer state of the same step: both or neither
CHECKPOINTS = ("best.safetensors", *RESUME_STATE)
RUN_FILES = (*CHECKPOINTS, "history.json", "history.csv", "loss_curves.png", "reconstructions_validate.png")
# What a save stopped mid-write (killed) leaves: every run file is written as NAME.partial, then renamed
# (models.files); last.partial is where last.pt went before.
PARTIAL_FILES = (*(partial_path(Path(name)).name for name in RUN_FILES), "last.partial")


def held_checkpoints(out: Path) -> list[str]:
    """The checkpoint files of an earlier run in ``out``."""
    return [name for name in CHECKPOINTS if (out / name).is_file()]


def check(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start over an earlier run unless told to continue it (``--resume``) or replace it
    (``--overwrite``); say so when ``--resume`` finds nothing to continue."""
    blocked = [name for name in (*RUN_FILES, *PARTIAL_FILES) if (out / name).exists() and not (out / name).is_file()]
    if blocked:  # a folder where a run file goes: the run would fail at its first save, after a whole epoch
        raise OutputError(f"{out / blocked[0]} is not a file, where the run writes one; move it or use another --out")
    held = held_checkpoints(out)
    if resume:
        if not held:
            print(f"note: nothing to resume in {out}; starting a new run there")
            return
        state = [name for name in RESUME_STATE if name in held]
        if not state:  # a fresh start would write over its best checkpoint
            raise OutputError(
                f"{out} holds {', '.join(held)} but no last.safetensors or last.pt to resume from; "
                "pass --overwrite instead of --resume to replace it, or choose another --out"
            )
        if len(state) < len(RESUME_STATE):  # resuming from half of it would restart from step 0 over the run's files
            missing = next(name for name in RESUME_STATE if name not in state)
            raise OutputError(f"{out}: incomplete resume state, no {missing}; use another --out")
        return
    if held and not overwrite:
        raise OutputError(
            f"{out} already holds a training run ({', '.join(held)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )


def clear(out: Path) -> None:
    """Remove an earlier run's files (``--overwrite``), once the new run has everything it needs to start."""
    for name in (*RUN_FILES, *PARTIAL_FILES):
        (out / name).unlink(missing_ok=True)
