"""TrainConfig: every training setting in one place; the CLI flags are generated from its fields."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from models.allocator import DEFAULT_RETAIN_MB, MAX_RETAIN_MB
from models.config import PRESETS, VQVAEConfig
from models.cpus import max_torch_threads
from models.quality_torch import MIN_SIZE
from training.data import DEFAULT_DATA_ROOT, MAX_SIDE

PRECISIONS = ("auto", "bf16", "fp32")
# Upper bounds that refuse typos before any data loads: --codebook-size 100000000 ended in a RuntimeError traceback at
# the first step (a similarity matrix of over 100 GB), and --embedding-dim 100000 was killed for memory.
# 2**16 codes: 16-bit indices. The presets use 64 and 1,024; a default batch has 4,096 grid cells, so most of a larger
# codebook could not be used in a step, and its (cells x codes) similarity matrix is already 1 GiB at this size.
MAX_CODEBOOK_SIZE = 65_536
# The presets use 4 and 8 numbers a code, and their widest layers 192 channels: 1,024 leaves room for experiments.
MAX_EMBEDDING_DIM = 1_024
# --batch-size 1000000000 and --crop 1000000 ended in "DefaultCPUAllocator: can't allocate memory" tracebacks. A crop
# is at most the side of the largest image read (training.data.MAX_SIDE). The presets train on 16 crops a step, the GPU
# runs on 64; a default step took 16.8 MB a 128x128 crop on the CPU in fp32 (peak RSS of 16 and 64 crops), so 1,024
# crops take some 17 GB, and leave 7 steps an epoch of the 6,400 OASIS training slices.
MAX_BATCH_SIZE = 1_024
MAX_SEED = 2**32 - 1
MAX_LR = 1.0
# What a resumed run may set otherwise than the run it continues; TrainConfig.changes_from says why.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        *("out", "resume", "overwrite", "epochs"),  # the folder, what this command does with it, where the run ends
        *("device", "threads", "compile", "precision", "channels_last", "malloc_retain_mb", "progress"),  # how
    }
)


def _same(name: str, saved: Any, value: Any) -> bool:
    """Equal settings; a folder given once as ``../shared/data/oasis`` and once as its absolute path is the same."""
    if name == "data" and isinstance(saved, str) and isinstance(value, str):
        return Path(saved).resolve() == Path(value).resolve()
    return bool(saved == value)


def flag(name: str) -> str:
    """A TrainConfig field's command-line flag: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """Settings of one training run (architecture comes from ``preset`` plus the overrides below)."""

    data: Path = field(default=DEFAULT_DATA_ROOT, metadata={"help": "OASIS root (with keras_png_slices_*)"})
    train_split: str = field(default="train", metadata={"help": "split name or sub-folder for training"})
    val_split: str = field(default="validate", metadata={"help": "split name or sub-folder for validation"})
    out: Path = field(default=Path("runs/default"), metadata={"help": "output folder (checkpoints, log, figures)"})
    preset: str = field(default="default", metadata={"help": f"architecture preset: {', '.join(PRESETS)}"})
    codebook_size: int | None = field(default=None, metadata={"help": "override the preset's codebook size"})
    embedding_dim: int | None = field(default=None, metadata={"help": "override the preset's code dimension"})
    epochs: int = field(default=20, metadata={"help": "passes over the training images (one crop per image)"})
    batch_size: int = 16
    crop: int = field(
        default=128, metadata={"help": "random crop size for training (0 = full images, padded to at least 11x11)"}
    )
    lr: float = 2e-3
    min_lr: float = 2e-5
    warmup_steps: int = 300
    weight_decay: float = 0.0
    ssim_weight: float = field(default=0.84, metadata={"help": "weight of (1 - SSIM) against L1 in the loss"})
    grad_clip: float = 1.0
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    threads: int = field(
        default=0, metadata={"help": "torch CPU threads (0 = all usable CPUs: a container's CPU limit counts)"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the training step"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 autocast on CUDA with bf16, and on CPUs where a bf16 matrix product runs at least 1.5x "
            "as fast as fp32, as with AMX; else fp32), bf16 or fp32"
        },
    )
    channels_last: bool = True
    malloc_retain_mb: int = field(
        default=DEFAULT_RETAIN_MB,
        metadata={"help": "freed memory each malloc arena keeps mapped for the next step (glibc; 0 = its defaults)"},
    )
    max_train_images: int | None = field(default=None, metadata={"help": "training images (spread; default all)"})
    max_val_images: int | None = field(default=256, metadata={"help": "validation images per epoch (spread)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out (last.pt) if there is one"})
    overwrite: bool = field(default=False, metadata={"help": "replace the run already in --out (removes its files)"})
    progress: bool = field(default=True, metadata={"help": "progress bars, where stderr is a terminal"})

    def __post_init__(self) -> None:
        """Refuse values that would only fail later, deep in a step, or train nonsense silently: one line each."""
        # Adam moves each weight by about lr a step, so more than 1 can only diverge; 1e100 passed and then ended
        # the first step in a traceback (no float32 holds it).
        lr_ok = math.isfinite(self.lr) and 0 < self.lr <= MAX_LR
        problems = [
            f"{name} ({flag(name)}) must be {rule}, got {getattr(self, name)!r}"
            for name, ok, rule in (
                ("epochs", self.epochs >= 1, "at least 1"),
                ("batch_size", 1 <= self.batch_size <= MAX_BATCH_SIZE, f"from 1 to {MAX_BATCH_SIZE}"),
                (
                    "crop",
                    self.crop == 0 or MIN_SIZE <= self.crop <= MAX_SIDE,
                    f"0 (full images) or from {MIN_SIZE} (SSIM) to {MAX_SIDE}",
                ),
                ("lr", lr_ok, f"above 0 and at most {MAX_LR}"),
                # against lr only when lr itself is valid: "--lr 0" named the --min-lr the caller never set
                ("min_lr", 0 <= self.min_lr <= (self.lr if lr_ok else math.inf), f"from 0 to lr ({self.lr})"),
                ("warmup_steps", self.warmup_steps >= 0, "0 or more"),
                ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a finite 0 or more"),
                ("ssim_weight", 0 <= self.ssim_weight <= 1, "from 0 to 1"),
                ("grad_clip", math.isfinite(self.grad_clip) and self.grad_clip >= 0, "0 (off) or finite above 0"),
                ("threads", 0 <= self.threads <= max_torch_threads(), f"0 (all usable CPUs) to {max_torch_threads()}"),
                ("seed", 0 <= self.seed <= MAX_SEED, f"from 0 to {MAX_SEED}"),  # what torch and numpy take
                ("preset", self.preset in PRESETS, f"one of {', '.join(PRESETS)}"),
                ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
                (
                    "codebook_size",
                    self.codebook_size is None or 2 <= self.codebook_size <= MAX_CODEBOOK_SIZE,
                    f"from 2 to {MAX_CODEBOOK_SIZE}",
                ),
                (
                    "embedding_dim",
                    self.embedding_dim is None or 1 <= self.embedding_dim <= MAX_EMBEDDING_DIM,
                    f"from 1 to {MAX_EMBEDDING_DIM}",
                ),
                (
                    "malloc_retain_mb",
                    0 <= self.malloc_retain_mb <= MAX_RETAIN_MB,
                    f"from 0 (glibc's defaults) to {MAX_RETAIN_MB}",
                ),
                ("max_train_images", self.max_train_images is None or self.max_train_images >= 1, "at least 1"),
                ("max_val_images", self.max_val_images is None or self.max_val_images >= 1, "at least 1"),
                ("overwrite", not (self.overwrite and self.resume), "off with --resume (continue or replace)"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))

    def model_config(self) -> VQVAEConfig:
        """The preset's architecture with this config's overrides (``__post_init__`` has checked the preset)."""
        base = PRESETS[self.preset]
        return dataclasses.replace(
            base,
            codebook_size=base.codebook_size if self.codebook_size is None else self.codebook_size,
            embedding_dim=base.embedding_dim if self.embedding_dim is None else self.embedding_dim,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved with a run; ``data`` as an absolute path, so that ``--resume`` from another folder
        compares the same folder (a relative one saved was read against the folder of the resuming command)."""
        values = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}
        return {**values, "data": str(Path(self.data).resolve())}

    def changes_from(self, saved: dict[str, Any]) -> list[str]:
        """What this config sets otherwise than ``saved`` (the ``to_dict()`` of the run that ``--resume``
        continues), as ``--flag OLD -> NEW``, leaving out what a resumed run may change (``MAY_CHANGE_ON_RESUME``):

        - ``out``: a run folder may be moved or copied, and the run is the one in it;
        - ``resume``, ``overwrite``: how this command treats the folder, not what it trains;
        - ``epochs``: where the run ends, to extend it (``vqvae-train`` notes that the cosine decay of the learning
          rate then spans the new count);
        - ``device``, ``threads``, ``compile``, ``channels_last``, ``precision``, ``malloc_retain_mb``: where and how
          fast the same steps are computed, in the same numbers to rounding (bf16's coarser one for ``precision``,
          which ``auto`` sets by device anyway); ``progress``: what is shown.

        Every other setting changes what the remaining steps train, or (``max_val_images``, ``val_split``) which
        images the validation SSIMs that pick ``best.safetensors`` are compared over; provenance records only the
        new ones. Settings the saved run predates are not compared.
        """
        return [
            f"{flag(name)} {saved[name]!r} -> {value!r}"
            for name, value in self.to_dict().items()
            if name not in MAY_CHANGE_ON_RESUME and name in saved and not _same(name, saved[name], value)
        ]


def build_parser(cls: type = TrainConfig, description: str = "") -> argparse.ArgumentParser:
    """One --flag per dataclass field (booleans get --flag / --no-flag)."""
    parser = argparse.ArgumentParser(description=description)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        helptext = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=f.default, help=helptext)
            continue
        caster = {Path: Path, int: int, float: float, str: str, int | None: int, Path | None: Path}.get(kind, str)
        parser.add_argument(flag(f.name), type=caster, default=f.default, help=f"{helptext} (default: {f.default})")
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser(TrainConfig, "Train the brain-MRI VQ-VAE.")
    try:
        return TrainConfig(**vars(parser.parse_args(argv)))
    except ValueError as exc:
        parser.error(str(exc))  # exits with 2 and the usage line
