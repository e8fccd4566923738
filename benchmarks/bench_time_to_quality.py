"""Quality per second of training: what each training configuration reaches in the same budget of step time.

``bench_train`` times a step; whether a configuration trains a *better model per second* is a question of quality
too. On a GPU the default step (16 crops of 128x128) is bound by per-step costs, so a batch of 64 crops, or 16 full
slices, does about 4x the work in little more time (docs/performance.md, "On a GPU"). This measures whether that
work buys quality in the same time.

An arm is a batch size and a crop (``16x128``; crop 0 = full slices), with every other ``TrainConfig`` default.
Each arm first times ``--calibration-steps`` steps of a throwaway Trainer (fewer where they would take more than a
quarter of the budget). It then trains a fresh model from the same seed for as many whole epochs as fit in
``--seconds`` of step time (at least one), with the schedule (warm-up, cosine decay) fitted to them, as ``vqvae-train
--epochs N`` does, validation and checkpoints included. Its best checkpoint (by validation SSIM on
``--max-val-images`` slices) is then scored on every image of ``--eval-split`` with the DESIGN.md metric. Training
seconds are the step time the run itself measured (validation excluded).

    PYTHONPATH=. python -m benchmarks.bench_time_to_quality --device cuda --seconds 45 --arms 16x128,64x128,16x0
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.arguments import non_negative_int, positive_int, positive_seconds, seed_number
from benchmarks.common import (
    check_outside_data,
    output_file,
    output_folder,
    print_header,
    ratio,
    set_threads,
    write_json,
)
from models.checkpoint import load
from models.config import PRESETS
from models.device import pick_device
from models.quality_torch import MIN_SIZE
from training.config import TrainConfig
from training.data import DataError, SliceSet, load_split
from training.evaluate import headline, score
from training.outputs import clean_exits
from training.train import DivergedError, Trainer


@dataclass(frozen=True)
class Arm:
    """A training configuration under test: batch size and crop (0 = full slices)."""

    batch_size: int
    crop: int

    @property
    def name(self) -> str:
        return f"batch {self.batch_size}, " + (f"crop {self.crop}" if self.crop else "full slices")

    @property
    def folder(self) -> str:
        return f"batch{self.batch_size}_crop{self.crop}"


def arm_list(text: str) -> list[Arm]:
    """'16x128,64x128,16x0' -> arms (argparse type)."""
    arms = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        batch, sep, crop = part.partition("x")
        try:
            arm = Arm(int(batch), int(crop)) if sep else None
        except ValueError:
            arm = None
        if arm is None or arm.batch_size < 1 or not (arm.crop == 0 or arm.crop >= MIN_SIZE):  # TrainConfig's rule
            raise argparse.ArgumentTypeError(
                f"expected BATCHxCROP (crop 0 = full slices, or at least {MIN_SIZE}), got {part!r}"
            )
        arms.append(arm)
    if not arms:
        raise argparse.ArgumentTypeError("expected at least one BATCHxCROP arm")
    return arms


def seconds_per_step(config: TrainConfig, warmup: int, steps: int, budget: float) -> tuple[float, int]:
    """Median seconds of up to ``steps`` loop steps of a throwaway Trainer after up to ``warmup`` untimed ones, and
    its steps per epoch. Each phase also ends once it took a quarter of ``budget`` (after at least one step), so
    that calibrating a step of seconds (full slices on a CPU) does not outlast the training it plans."""
    trainer = Trainer(config)
    trainer.model.train()
    phase_limit = budget / 4
    started = time.perf_counter()
    for _ in range(warmup):
        trainer.loop_step()
        if time.perf_counter() - started >= phase_limit:
            break
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < steps and (not durations or time.perf_counter() - started < phase_limit):
        step_started = time.perf_counter()
        trainer.loop_step()
        durations.append(time.perf_counter() - step_started)
    return statistics.median(durations), trainer.steps_per_epoch


def run_arm(arm: Arm, base: TrainConfig, args: argparse.Namespace, eval_set: SliceSet) -> dict[str, Any]:
    """Calibrate, train for the budget, score the best checkpoint on the evaluation split."""
    config = dataclasses.replace(base, batch_size=arm.batch_size, crop=arm.crop, out=base.out / arm.folder)
    step_s, steps_per_epoch = seconds_per_step(
        dataclasses.replace(config, out=config.out / "calibration"),
        args.calibration_warmup,
        args.calibration_steps,
        args.seconds,
    )
    epochs = max(1, math.floor(args.seconds / (step_s * steps_per_epoch)))
    print(f"{arm.name}: {1000 * step_s:.1f} ms/step when calibrated, so {epochs} epochs of {steps_per_epoch} steps")
    epoch_s = step_s * steps_per_epoch
    if epoch_s > 1.5 * args.seconds:
        print(
            f"warning: one epoch takes about {epoch_s:.0f} s, over the {args.seconds:g} s budget; the arm trains one "
            "anyway (fewer slices per epoch: --max-train-images)"
        )
    trainer = Trainer(dataclasses.replace(config, epochs=epochs))
    started = time.perf_counter()
    state = trainer.run()
    wall = time.perf_counter() - started
    model, _ = load(config.out / "best.safetensors", trainer.device)
    report, _ = score(model, eval_set)
    pixels_per_image = trainer.sampler.crop**2
    return {
        "arm": arm.name,
        "batch_size": arm.batch_size,
        "crop": trainer.sampler.crop,
        "calibrated_ms_per_step": 1000 * step_s,
        "epochs": epochs,
        "steps": state.step,
        "train_seconds": state.seconds,
        "wall_seconds": wall,
        "ms_per_step": 1000 * ratio(state.seconds, state.step),
        "megapixels_seen": state.step * arm.batch_size * pixels_per_image / 1e6,
        "best_val_ssim": state.best_val_ssim,
        "eval": headline(report),
    }


def print_results(rows: list[dict[str, Any]], eval_split: str) -> None:
    print(
        f"{'arm':<24} {'epochs':>6} {'steps':>6} {'ms/step':>8} {'train s':>8} {'wall s':>7} {'Mpix':>7} "
        f"{'best val':>8} | {eval_split} SSIM mean / median / p5"
    )
    for r in rows:
        s = r["eval"]["ssim"]
        print(
            f"{r['arm']:<24} {r['epochs']:>6} {r['steps']:>6} {r['ms_per_step']:>8.1f} {r['train_seconds']:>8.1f} "
            f"{r['wall_seconds']:>7.1f} {r['megapixels_seen']:>7.0f} {r['best_val_ssim']:>8.4f} | "
            f"{s['mean']:.4f} / {s['median']:.4f} / {s['p5']:.4f}"
        )


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=defaults.data, help="OASIS root (default: %(default)s)")
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS), help="architecture")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--seconds", type=positive_seconds, default=60.0, help="step time per arm (default: %(default)s)"
    )
    parser.add_argument(
        "--arms", type=arm_list, default=arm_list("16x128,64x128,16x0"), help="BATCHxCROP,... (default: 16x128,...)"
    )
    parser.add_argument("--max-train-images", type=positive_int, help="training slices (default: all)")
    parser.add_argument(
        "--max-val-images", type=positive_int, default=64, help="validation slices per epoch (default: %(default)s)"
    )
    parser.add_argument("--eval-split", default="test", help="split scored at the end (default: %(default)s)")
    parser.add_argument("--calibration-steps", type=positive_int, default=40, help="(default: %(default)s)")
    parser.add_argument("--calibration-warmup", type=non_negative_int, default=10, help="(default: %(default)s)")
    parser.add_argument(
        "--seed", type=seed_number, default=defaults.seed, help="every arm's seed (default: %(default)s)"
    )
    parser.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch intra-op threads (0 = torch's default)"
    )
    parser.add_argument("--out", type=output_folder, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
    return parser


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    splits = (TrainConfig.train_split, TrainConfig.val_split, args.eval_split)  # what each arm reads
    check_outside_data(args.json, "--json", args.data, *splits)
    check_outside_data(args.out, "--out", args.data, *splits, folder=True)  # the arms' runs go in folders of it
    set_threads(args.threads)
    info = print_header("quality reached in the same training time")
    try:  # what can be checked up front; the training splits are read by each arm's Trainer
        pick_device(args.device)
        eval_set = load_split(args.data, args.eval_split)
    except ValueError as exc:  # DataError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vqvae-ttq-") as tmp:
        base = TrainConfig(
            data=args.data,
            out=args.out or Path(tmp),
            overwrite=True,  # a rerun into the same --out replaces that folder's runs
            preset=args.preset,
            seed=args.seed,
            device=args.device,
            max_train_images=args.max_train_images,
            max_val_images=args.max_val_images,
            progress=False,
        )
        print(
            f"budget: {args.seconds:g} s of training steps per arm; "
            f"{len(eval_set)} slices of {eval_set.root} scored at the end"
        )
        rows, status = [], 0
        for arm in args.arms:
            try:
                rows.append(run_arm(arm, base, args, eval_set))
            except (DataError, DivergedError) as exc:  # report the arms that finished, then stop
                print(f"error: {arm.name}: {exc}", file=sys.stderr)
                status = 2 if isinstance(exc, DataError) else 1
                break
    if rows:
        print_results(rows, args.eval_split)
    write_json(args.json, {"machine": info, "seconds": args.seconds, "eval_split": args.eval_split, "arms": rows})
    return status


if __name__ == "__main__":
    sys.exit(main())
