"""``vqvae-train``: the training loop (CUDA or CPU, bf16 autocast where the hardware has it), resumable."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError
from tqdm import tqdm

from models.allocator import retain_freed_memory
from models.checkpoint import CheckpointError, load, recorded, save, to_bytes
from models.device import cpu_prefers_bf16, pick_device, set_torch_threads
from models.files import WriteError, json_text, write_atomically, write_together
from models.quality_torch import MIN_SIZE
from models.vqvae import VQVAE
from training import run_folder, run_lock
from training.config import TrainConfig, parse_args
from training.data import CropSampler, DataError, image_folders, load_split, to_float
from training.evaluate import headline, score
from training.figures import loss_curves_figure, panels_figure
from training.losses import reconstruction_loss
from training.memory import OutOfMemory, memory_errors
from training.outputs import OutputError, check_apart, check_folder, clean_exits, note
from training.stop_signals import StopSignals, Terminated, exit_code


class DivergedError(RuntimeError):
    """The loss or the gradient norm stopped being finite; raised before the optimizer step, so the parameters are
    untouched (the quantizer's EMA codebook updates inside the forward pass and may not be; nothing is saved)."""


# What an allocation that failed says; padding every image to the crop is what takes the memory.
TRAIN_WAY_ON = "try a smaller --batch-size or --crop"


LOSS_VALUES = 4  # what a step returns: loss, reconstruction loss, VQ loss, perplexity


@dataclass
class RunState:
    """What resuming needs besides the weights.

    ``epoch`` counts the epochs finished and recorded (validated, in the history). ``epoch_steps`` and
    ``epoch_sums`` are the steps of the next epoch taken so far and the sums of their loss values: a run stopped in
    the middle of an epoch, or in its validation, resumes with the rest of that epoch, not with all of it again, and
    its history row is the one an uninterrupted run writes. ``seconds`` is the time in training steps.
    ``precisions``: a run resumed in another precision trained in both, and its record says so.
    """

    epoch: int = 0
    step: int = 0
    best_val_ssim: float = -1.0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_steps: int = 0
    epoch_sums: list[float] = field(default_factory=lambda: [0.0] * LOSS_VALUES)
    precisions: list[str] = field(default_factory=list)  # each precision the run trained in, in order

    __pydantic_config__ = ConfigDict(extra="forbid")  # a field of another version or run: not this record


_RUN_STATE = TypeAdapter(RunState)


def parse_run_state(text: str) -> RunState:
    """``last.pt``'s run record -> RunState, every field of its type. Before, ``RunState(**json.loads(text))``
    took any value: a step of ``"x"`` went on to fail in arithmetic, or to say "of step x" in a message."""
    try:
        return _RUN_STATE.validate_json(text, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the record"
        raise ValueError(f"run record: {where}: {first['msg']}") from None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training step, or None for plain fp32.

    ``auto`` is bf16 on CUDA devices that have it and on CPUs where it pays (``models.device.cpu_prefers_bf16``:
    AMX, or AVX-512 BF16 with a bf16 matrix product at least 1.5x as fast as fp32), and fp32 on other CPUs. AVX-512
    BF16 alone does not say whether bf16 pays: a training step of the default model was 1.53x and 1.69x faster in
    bf16 on a 2-core AMD EPYC with it, and 1.41x and 1.57x slower on a 2-core Intel Xeon with it but without AMX; a
    matrix product there ran at 4.2x and at 0.5x the fp32 rate. On a 16-core Intel Xeon with AMX it was 1.78x faster
    (``python -m benchmarks.bench_train``; docs/bench_train*.txt, docs/cuda_h200_suite.txt). ``--precision bf16``
    asks for it anywhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_prefers_bf16():
        return torch.bfloat16
    return None


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the folder that holds training/ and models/


def git_commit(root: Path = PACKAGE_ROOT) -> str:
    """The commit of the checkout whose code this is: git runs in ``root``, not in the working directory (run from
    another repository, it recorded that one's commit). "unknown" where ``root`` is not the top of a git checkout (an
    installed or unpacked copy, a copy inside another repository's tree), or git is missing or refuses."""
    command = ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
        return "unknown"
    return lines[1]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up, then cosine decay to ``floor`` (a fraction of the peak)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Owns the model, optimizer, data and files of one run (``out`` folder)."""

    def __init__(self, config: TrainConfig) -> None:
        check_folder(config.out, "--out")  # before the data loads, not after an epoch
        if config.out.is_dir():  # before the checks of the run's files, which another run may be writing
            run_lock.claim(config.out)
        run_folder.check(config.out, resume=config.resume, overwrite=config.overwrite)
        # A damaged last.pt first: its refusal was preceded by check_settings' note on a changed --epochs (a review).
        self.resume_state = run_folder.load_resume_state(config)  # a damaged one refused before the data loads
        run_folder.check_settings(config)
        for folder in image_folders(config.data, config.train_split, config.val_split):
            check_apart(config.out, folder, "the run's files would be mixed into the data", folder=True)
        self.config = config
        self.stop_signals = StopSignals()  # main() installs its handlers around run()
        self.device = pick_device(config.device)
        set_torch_threads(config.threads)  # before the precision: auto's probe measures with the run's threads
        self.autocast_dtype = autocast_dtype(config.precision, self.device)
        if config.malloc_retain_mb > 0:  # process-wide, like the thread count: see models.allocator
            retain_freed_memory(config.malloc_retain_mb * 1024 * 1024)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        self.train_set = load_split(config.data, config.train_split, config.max_train_images)
        self.val_set = load_split(config.data, config.val_split, config.max_val_images)
        # what every checkpoint records and --resume compares (check_same_images); here, before any step
        self.fingerprints = {"train": self.train_set.fingerprint(), "validate": self.val_set.fingerprint()}
        if self.train_set.root.resolve() == self.val_set.root.resolve():  # allowed (a smoke test), but said
            note(
                f"--train-split and --val-split are the same folder ({self.val_set.root}): the validation "
                "scores, and the choice of best.safetensors, are on training images"
            )
        self.model = VQVAE(config.model_config()).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        # --crop 0: the largest image, padded up to SSIM's window (the loss's SSIM term needs it): training images
        # of under 11 pixels a side ended in a traceback after the data had loaded.
        crop = config.crop or max(MIN_SIZE, *(max(im.shape) for im in self.train_set.images))
        crop = -(-crop // self.model.config.stride) * self.model.config.stride
        self.sampler = CropSampler(self.train_set, crop, self.generator)
        self.steps_per_epoch = max(1, math.ceil(len(self.train_set) / config.batch_size))
        self.total_steps = self.steps_per_epoch * config.epochs
        self.step_model = torch.compile(self.model) if config.compile else self.model
        self.state = RunState()
        self.saved_step: int | None = None  # the step that last.safetensors and last.pt were last written at
        self.step_cut_short = False  # a stop came in the middle of a step (see epoch_step)
        self.started = False  # run() has resumed, or found nothing to resume: only then is there a state to save
        self.commit = git_commit()  # the code this run started from, not whatever HEAD is when it saves
        self.out = config.out
        try:  # not before the data loaded: a mistyped --data left an empty --out tree behind (a review)
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # where access() says yes and the file system no (/proc, as root): was a traceback
            raise OutputError(f"cannot write --out {self.out}: {exc.strerror or exc}") from exc
        run_lock.claim(self.out)  # a folder made just now; held already if it was there
        if config.overwrite:
            run_folder.clear(self.out)
        # A short trial run with the default warm-up of 300 steps. Not before the refusals up to here, and not on
        # --resume, where the setting may not change (and try_resume may still refuse the run).
        if config.warmup_steps >= self.total_steps and self.resume_state is None:
            note(
                f"--warmup-steps {config.warmup_steps} is not under the run's {self.total_steps} steps: the learning "
                f"rate rises through the whole run to --lr {config.lr:g} at most, and never decays, so a short run "
                f"learns little; try --warmup-steps {max(1, self.total_steps // 10)}"
            )

    @property
    def precision(self) -> str:
        """What the training step runs in: "fp32" or the autocast dtype ("bfloat16")."""
        return "fp32" if self.autocast_dtype is None else dtype_name(self.autocast_dtype)

    # ---- files -------------------------------------------------------------------------------------------
    @property
    def last_state_path(self) -> Path:
        return self.out / "last.pt"

    def provenance(self) -> dict[str, Any]:
        return {
            "data": {
                "root": str(self.config.data),
                "train": {
                    "split": self.config.train_split,
                    "images": len(self.train_set),
                    "fingerprint": self.fingerprints["train"],
                },
                "validate": {
                    "split": self.config.val_split,
                    "images": len(self.val_set),
                    "fingerprint": self.fingerprints["validate"],
                },
            },
            "training": {
                "epochs": self.state.epoch,
                "steps": self.state.step,
                "seconds": round(self.state.seconds, 1),
                "device": str(self.device),
                "precision": ", then ".join(self.state.precisions or [self.precision]),
                "config": self.config.to_dict(),
            },
            "git_commit": self.commit,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__,
        }

    def save_state(self) -> None:
        """Weights (safetensors) + optimizer/RNG state (torch.save of tensors and plain types only), replaced
        together: resuming from the weights of one step and the optimizer of another would go unnoticed."""
        weights = to_bytes(self.model, self.provenance())
        state = {
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "run": json.dumps(vars(self.state)),
        }
        serialized = io.BytesIO()  # torch.save to a file turns a full disk into a RuntimeError from its zip writer
        torch.save(state, serialized)
        write_together(
            {
                self.out / "last.safetensors": lambda partial: partial.write_bytes(weights),
                self.last_state_path: lambda partial: partial.write_bytes(serialized.getbuffer()),
            }
        )
        self.saved_step = self.state.step

    def try_resume(self) -> bool:
        """With ``--resume``, continue from ``last.safetensors`` + ``last.pt`` (``run_folder.check`` has made sure
        that both or neither are there, before the data loaded)."""
        weights, state_path = self.out / "last.safetensors", self.last_state_path
        if not self.config.resume or not weights.exists():
            return False
        model, metadata = load(weights)
        if model.config != self.model.config:
            raise CheckpointError(f"{weights}: architecture differs from this run's preset; use another --out")
        self.check_same_images(weights, metadata)
        self.model.load_state_dict(model.state_dict())
        state, self.resume_state = self.resume_state, None  # read by run_folder.load_resume_state
        if state is None:
            raise CheckpointError(f"{state_path}: the resume state went missing after the run started")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            check_optimizer_shapes(self.optimizer)
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.state = parse_run_state(state["run"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a last.pt of another run
            raise run_folder.unreadable_state(state_path, exc) from exc
        training = recorded(metadata, "training")
        self.note_precision(training.get("precision"))
        weights_step = training.get("steps")
        if weights_step is not None and weights_step != self.state.step:  # written together, unless a kill came
            raise CheckpointError(  # between the two renames: weights of one step, optimizer state of another
                f"{weights} is of step {weights_step} but {state_path} of step {self.state.step}: not one saved "
                "state (a save cut off by a kill?); use another --out"
            )
        best = self.out / "best.safetensors"
        if not best.is_file() and self.state.best_val_ssim != RunState.best_val_ssim:
            # Before, the best score kept from last.pt stood, so no later epoch could beat it and write the file.
            note(f"{best} is missing; the next validated epoch writes it again")
            self.state.best_val_ssim = RunState.best_val_ssim
        return True

    def note_precision(self, recorded_precision: Any) -> None:
        """Say so when a resumed run goes on in another precision (allowed: how fast it runs, like --device), and
        keep each precision in the run's record. Runs saved before ``precisions`` was kept recorded the last one."""
        trained = self.state.precisions or ([recorded_precision] if isinstance(recorded_precision, str) else [])
        if trained[-1:] != [self.precision]:
            if trained:
                note(
                    f"the run trained in {', then '.join(trained)} so far, and goes on in {self.precision} "
                    f"(--precision {self.config.precision})"
                )
            trained = [*trained, self.precision]
        self.state.precisions = trained

    def check_same_images(self, weights: Path, metadata: dict[str, Any]) -> None:
        """The run's images, where the data settings are the run's (``run_folder.check_settings``): images added
        to, removed from or replaced in its folders would change the steps per epoch, what the model has seen, and
        what validation compares. Before, only the counts were compared. Runs saved before fingerprints were
        recorded are checked by their counts alone."""
        for split, images in (("train", len(self.train_set)), ("validate", len(self.val_set))):
            saved = recorded(metadata, "data", split)
            if saved.get("images") is not None and saved["images"] != images:
                raise CheckpointError(
                    f"{weights}: the run had {saved['images']} {split} images, its data folder now gives {images}; "
                    "resume with the run's data, or use another --out"
                )
            if saved.get("fingerprint") is not None and saved["fingerprint"] != self.fingerprints[split]:
                raise CheckpointError(
                    f"{weights}: the run's {images} {split} images are not those its data folder now gives (other "
                    "names or pixels); resume with the run's data, or use another --out"
                )

    def write_log(self) -> None:
        history = self.state.history
        text = json_text(history, indent=1)  # an epoch without a finite validation score: null (history.csv: nan)
        write_atomically(self.out / "history.json", lambda partial: partial.write_text(text))
        write_atomically(self.out / "history.csv", lambda partial: _write_csv(partial, history))
        loss_curves_figure(history, self.out / "loss_curves.png")

    # ---- loop --------------------------------------------------------------------------------------------
    def train_step(self, batch: torch.Tensor) -> tuple[float, float, float, float]:
        x = to_float(batch.to(self.device, non_blocking=True))  # (B, 1, c, c)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            out = self.step_model(x)
        # The loss in fp32, outside autocast: SSIM's variances are differences of blurred squares, which bf16
        # (autocast runs convolutions in it) cancels to garbage.
        recon_loss = reconstruction_loss(x, out.reconstruction, self.config.ssim_weight)
        loss = recon_loss + out.vq_loss
        if not torch.isfinite(loss):
            raise self.diverged(f"the loss became {float(loss.detach())}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The gradient norm is needed anyway for clipping; a non-finite one (bf16 overflow) must not reach AdamW.
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        if not torch.isfinite(norm):
            raise self.diverged(f"the gradient norm became {float(norm)}")
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.config.grad_clip, norm)
        self.optimizer.step()
        return float(loss.detach()), float(recon_loss.detach()), float(out.vq_loss.detach()), float(out.perplexity)

    def loop_step(self) -> tuple[float, float, float, float]:
        """One iteration of the training loop: this step's learning rate (warm-up, then cosine decay), a sampled
        batch, ``train_step``. ``benchmarks.bench_train`` times exactly this: without the schedule its steps ran
        at the peak rate from the first step, a regime the loop never enters, and the fp32 step slowed about 2x
        after some 40 steps (denormal numbers: flush-to-zero removed it; the bf16 step did not slow)."""
        cfg = self.config
        factor = lr_factor(self.state.step, self.total_steps, cfg.warmup_steps, cfg.min_lr / cfg.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        values = self.train_step(self.sampler.sample(cfg.batch_size))
        self.state.step += 1
        return values

    def saved_state(self) -> str:
        """What a run stopped by an error leaves to resume from, in words."""
        if self.last_state_path.exists():
            return f"the state last saved (at the end of an epoch, or at a stop) is in {self.out} (--resume)"
        return "no epoch's state was saved, so there is nothing to resume"

    def diverged(self, what: str) -> DivergedError:
        return DivergedError(
            f"{what} at step {self.state.step}, before the optimizer step; {self.saved_state()}. "
            "Try a lower --lr, or --precision fp32 if this ran in bf16"
        )

    def validate(self) -> dict[str, Any]:
        report, _ = score(self.model, self.val_set, score_in_torch=True)
        self.model.train()
        return report

    def run(self) -> RunState:
        cfg = self.config
        if self.try_resume():
            self.saved_step = self.state.step  # the files it resumed from are this step's
            print(f"resumed from {self.out} {self.resume_point()}")
        else:
            self.state.precisions = [self.precision]
        self.started = True
        self.model.train()
        for epoch in range(self.state.epoch + 1, cfg.epochs + 1):
            self.train_epoch(epoch)
            self.record_epoch(epoch, self.validate())
        return self.state

    def resume_point(self) -> str:
        """Where a resumed run picks up, in words: after a whole epoch, or inside the next one. One epoch number only
        ("at epoch 0, step 8 (8 of the 25 steps of epoch 1 done)" named the same point twice, differently)."""
        if not self.state.epoch_steps:
            return f"after epoch {self.state.epoch}, step {self.state.step}"
        return (
            f"at step {self.state.step}, {self.state.epoch_steps} of the {self.steps_per_epoch} steps into epoch "
            f"{self.state.epoch + 1}"
        )

    def train_epoch(self, epoch: int) -> None:
        """The steps of ``epoch`` not taken yet: all of them, unless a stopped run took some."""
        bar = tqdm(
            range(self.state.epoch_steps, self.steps_per_epoch),
            initial=self.state.epoch_steps,
            total=self.steps_per_epoch,
            desc=f"epoch {epoch}/{self.config.epochs}",
            disable=None if self.config.progress else True,  # None: only where stderr is a terminal, not a log file
            leave=False,
            dynamic_ncols=True,
        )
        for _ in bar:
            values = self.epoch_step()
            bar.set_postfix(loss=f"{values[0]:.4f}", ppl=f"{values[3]:.0f}")

    def epoch_step(self) -> tuple[float, float, float, float]:
        """``loop_step``, counted into the epoch, whole or not at all: a stop signal that comes during it is raised
        once the step and its counts are done, so the state a stop saves is that of a step boundary, which a resumed
        run continues from exactly. A second signal stops at once and leaves ``step_cut_short`` set: ``stopped``
        then saves nothing (the optimizer may have updated some parameters and not others)."""
        with self.stop_signals.deferred():
            self.step_cut_short = True
            started = time.perf_counter()
            values = self.loop_step()
            self.state.seconds += time.perf_counter() - started
            self.state.epoch_sums = [total + value for total, value in zip(self.state.epoch_sums, values, strict=True)]
            self.state.epoch_steps += 1
            self.step_cut_short = False
        return values

    def record_epoch(self, epoch: int, report: dict[str, Any]) -> None:
        """Count ``epoch`` as done only together with its history row and checkpoints: a stop before this (in the
        validation, say) leaves it to be validated by the resumed run, its steps all taken."""
        means = [total / self.steps_per_epoch for total in self.state.epoch_sums]
        row = {
            "epoch": epoch,
            "step": self.state.step,
            "loss": means[0],
            "recon_loss": means[1],
            "vq_loss": means[2],
            "perplexity": means[3],
            "val_ssim": report["ssim"]["mean"],
            "val_psnr": report["psnr"]["mean"],
            "val_usage": report["codebook_usage"],
            "lr": self.optimizer.param_groups[0]["lr"],  # the epoch's last step's
            "seconds": round(self.state.seconds, 1),
        }
        improved = row["val_ssim"] > self.state.best_val_ssim
        with self.stop_signals.deferred():
            self.state.history.append(row)
            self.state.epoch, self.state.epoch_steps, self.state.epoch_sums = epoch, 0, [0.0] * LOSS_VALUES
            if improved:
                self.state.best_val_ssim = row["val_ssim"]
                save(
                    self.model,
                    self.out / "best.safetensors",
                    {**self.provenance(), "metrics": {"validate": headline(report)}},
                )
            self.save_state()
            self.write_log()
        tqdm.write(
            f"epoch {epoch}: loss {means[0]:.4f} (recon {means[1]:.4f}, vq {means[2]:.4f}) "
            f"val SSIM {row['val_ssim']:.4f} PSNR {row['val_psnr']:.2f} usage {row['val_usage']:.0%}"
            f"{' *best' if improved else ''} [{self.state.seconds / 60:.1f} min]"
        )

    def final_figures(self) -> None:
        """Reconstruction panels of the best checkpoint on the validation images."""
        best = load(self.out / "best.safetensors", self.device)[0].for_inference()
        report, result = score(best, self.val_set)
        panels_figure(
            result.originals,
            result.reconstructions,
            [r["ssim"] for r in report["per_image"]],
            result.names,
            self.out / "reconstructions_validate.png",
        )


def check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """ValueError unless each parameter's optimizer state has its shape: ``load_state_dict`` checks only how many
    parameters there are, so a ``last.pt`` of another architecture with as many failed in the first step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"optimizer state {name!r} of shape {tuple(value.shape)} for a parameter of shape "
                        f"{tuple(param.shape)}"
                    )


def stopped(trainer: Trainer, stop: KeyboardInterrupt) -> int:
    """Save the state for ``--resume`` after a stop signal, whatever further signals come, and say so.

    Skipped where the epoch's files were written at this very step (a signal held by ``deferred()`` is raised right
    after them): the same files again would only cost time. Not done where a second signal cut a step short: that
    state is no step's, and resuming from it would go unnoticed."""
    stopped_by = "SIGTERM" if isinstance(stop, Terminated) else "interrupted"
    if not trainer.started:  # while --resume loaded the run: saving now would write a fresh model over it
        print(f"\n{stopped_by} before training started: nothing was saved; {trainer.saved_state()}", file=sys.stderr)
        return exit_code(stop)
    if trainer.step_cut_short:  # a second signal, in the middle of a step
        print(f"\n{stopped_by} in the middle of a step, which was not saved; {trainer.saved_state()}", file=sys.stderr)
        return exit_code(stop)
    try:
        with trainer.stop_signals.installed(), trainer.stop_signals.held():
            if trainer.saved_step != trainer.state.step:
                trainer.save_state()
    except WriteError as exc:  # a full disk, or a folder made read-only since the last epoch: not resumable from here
        unsaved = f"{stopped_by}, and this step's state could not be saved: {exc}"
        print(f"\n{unsaved}; {trainer.saved_state()}", file=sys.stderr)
        return 1
    if trainer.state.epoch >= trainer.config.epochs:  # the stop came while the final figure was drawn
        print(
            f"\n{stopped_by} after the last epoch: training is complete, its checkpoints are in {trainer.out}; "
            "the validation reconstructions figure was not drawn (--resume draws it)",
            file=sys.stderr,
        )
    else:
        print(f"\n{stopped_by}: state saved in {trainer.out} (resume with --resume)", file=sys.stderr)
    return exit_code(stop)


@clean_exits
def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        return run_training(config)
    finally:
        run_lock.release(config.out)  # for a caller that goes on in this process (the tests)


def run_training(config: TrainConfig) -> int:
    """The run ``config`` describes, from start (or resume) to its exit status, each failure in one line."""
    try:
        with memory_errors(TRAIN_WAY_ON):
            trainer = Trainer(config)
    except (DataError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OutOfMemory as exc:  # padding every image to the crop size (--crop 0 and one very long image, say)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    steps = trainer.steps_per_epoch
    print(
        f"training {sum(p.numel() for p in trainer.model.parameters()):,} parameters on {trainer.device}: "
        f"{len(trainer.train_set)} train / {len(trainer.val_set)} validation images, "
        f"{steps} step{'' if steps == 1 else 's'} per epoch, crop {trainer.sampler.crop}, {trainer.precision}; "
        f"output in {config.out}"
    )
    finished = config.out / "best.safetensors"
    try:
        with trainer.stop_signals.installed(), memory_errors(TRAIN_WAY_ON):
            trainer.run()
            if finished.exists():
                trainer.final_figures()
    except KeyboardInterrupt as stop:  # Ctrl-C (SIGINT), or SIGTERM as Terminated
        return stopped(trainer, stop)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (WriteError, OutOfMemory) as exc:  # a full disk, say: the last finished epoch's files are whole (atomic)
        print(f"error: {exc}; {trainer.saved_state()}", file=sys.stderr)
        return 1
    if not finished.exists():
        if any(math.isfinite(row["val_ssim"]) for row in trainer.state.history):  # the run had one: it was removed
            print(
                f"error: {finished} is missing and no epoch since gave a finite validation SSIM; resume with a "
                "larger --epochs to write it again",
                file=sys.stderr,
            )
        else:
            print(
                f"error: no epoch produced a finite validation SSIM; no best checkpoint in {config.out}",
                file=sys.stderr,
            )
        return 1
    print(f"done: best validation SSIM {trainer.state.best_val_ssim:.4f}; checkpoint {finished}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
