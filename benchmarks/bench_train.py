"""Training throughput of the real training step: eager fp32 full slices vs what ``vqvae-train`` does by default.

Each variant is a ``training.train.Trainer`` built from a ``TrainConfig`` (same preset, seed, batch size and
slices), and a timed step is exactly what its loop runs: ``trainer.loop_step()`` (the step's learning rate from
the schedule, a sampled batch, forward, loss, backward, clipping, AdamW). Every timed step falls in the schedule's
warm-up, as the first steps of a real run do. Variants are measured in alternating rounds in one process, after
untimed warm-up steps (which also absorb torch.compile's compilation). In each round every variant runs for at
least ``--round-seconds`` (and ``--steps`` steps), so a full-slice step of seconds and a crop step of a fraction of
one get about the same share of the machine's slow and fast spells; the ratios are printed per round too.

On each device (the CPU, and on a CUDA machine the GPU too; ``--no-cpu`` / ``--no-cuda`` leave one out):
- baseline: eager, fp32, full images (crop 0), contiguous memory;
- default: the ``TrainConfig`` defaults (precision, channels_last, crop, compile as declared there; the default
  precision is bf16 on CUDA and on CPUs where it pays, fp32 on other CPUs), and the same in the other precision;
- with --compile-too: the default plus torch.compile.
Every ratio is against the first device's baseline.

Crops see fewer pixels per image, so both ratios are printed: images/s (a crop counts as one image) and
pixels/s (the work done). Every variant does the same convolutions per pixel, so each one's rate of arithmetic
(GFLOP/s, ``benchmarks.flops``) is printed too, against a square matrix product in its precision measured before
and after the rounds: how far the baseline runs below that rate bounds what any layout, crop or compiler can gain.

    PYTHONPATH=. python -m benchmarks.bench_train --round-seconds 6 --rounds 6 --batch-size 16
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.arguments import int_from_to, non_negative_int, non_negative_seconds, positive_int
from benchmarks.common import (
    benchmark_parser,
    load_slices,
    print_header,
    ratio,
    set_malloc,
    set_threads,
    time_calls,
    write_json,
)
from benchmarks.flops import matmul_gflop_per_s, training_step_gflop
from models.config import PRESETS
from training.config import MAX_BATCH_SIZE, TrainConfig
from training.outputs import clean_exits
from training.train import Trainer, autocast_dtype, dtype_name

BENCH_SPLIT = "bench"  # the folder of copied slices, under a temporary data root


@dataclass
class Variant:
    name: str
    config: TrainConfig
    trainer: Trainer | None = None
    rounds: list[list[float]] = field(default_factory=list)  # seconds per timed step, by round
    faults: int = 0  # minor page faults of the process over the timed steps
    gflop_per_step: float = 0.0  # convolutions and matrix products, forward and backward
    matmul_rate: float = float("nan")  # GFLOP/s of a matrix product on its device in its precision (mean)

    @property
    def dtype(self) -> torch.dtype:
        """What its convolutions run in: the autocast dtype, or fp32 (TF32 in cuDNN by default, which the
        matrix-product yardstick then follows)."""
        return autocast_dtype(self.config.precision, torch.device(self.config.device)) or torch.float32

    @property
    def gflop_per_s(self) -> float:
        return ratio(self.gflop_per_step * len(self.step_seconds), sum(self.step_seconds))

    @property
    def faults_per_step(self) -> float:
        return ratio(self.faults, len(self.step_seconds))

    @property
    def step_seconds(self) -> list[float]:
        return [seconds for steps in self.rounds for seconds in steps]

    @property
    def crop(self) -> int:
        return self.trainer.sampler.crop if self.trainer else 0

    @property
    def images_per_s(self) -> float:
        return ratio(self.config.batch_size * len(self.step_seconds), sum(self.step_seconds))

    @property
    def pixels_per_s(self) -> float:
        return self.images_per_s * self.crop * self.crop

    def round_pixels_per_s(self) -> list[float]:
        pixels = self.config.batch_size * self.crop * self.crop
        return [ratio(pixels * len(steps), sum(steps)) for steps in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "name": self.name,
            "device": cfg.device,
            "precision": self.trainer.precision if self.trainer else cfg.precision,
            "channels_last": cfg.channels_last,
            "compile": cfg.compile,
            "crop": self.crop,
            "batch_size": cfg.batch_size,
            "steps": len(self.step_seconds),
            "round_step_seconds": self.rounds,
            "seconds": sum(self.step_seconds),
            "images_per_s": self.images_per_s,
            "pixels_per_s": self.pixels_per_s,
            "minor_faults_per_step": self.faults_per_step,
            "gflop_per_step": self.gflop_per_step,
            "gflop_per_s": self.gflop_per_s,
            "matmul_gflop_per_s": self.matmul_rate,
        }


def describe(config: TrainConfig) -> str:
    dtype = autocast_dtype(config.precision, torch.device(config.device))
    precision = "fp32" if dtype is None else "bf16 autocast"
    crop = f"crop {config.crop}" if config.crop else "full images"
    layout = "channels_last" if config.channels_last else "contiguous"
    return f"{precision}, {crop}, {layout}, {'compiled' if config.compile else 'eager'}"


def build_variants(base: TrainConfig, *, compile_too: bool, devices: list[str]) -> list[Variant]:
    """``base`` carries TrainConfig's own defaults for precision / channels_last / crop / compile: 'default'.

    On each device: the baseline, the default, and the default in the other precision (bf16 autocast where the
    default is fp32, and the reverse), to show that lever's share on this machine; with ``compile_too`` also the
    default + torch.compile. The first variant (the first device's baseline) is the reference of every ratio.
    """
    variants = []
    for device in devices:
        default = dataclasses.replace(base, device=device)
        baseline = dataclasses.replace(default, precision="fp32", channels_last=False, crop=0, compile=False)
        default_in_bf16 = autocast_dtype(default.precision, torch.device(device)) is not None
        other = dataclasses.replace(default, precision="fp32" if default_in_bf16 else "bf16")
        variants += [
            Variant(f"{device} baseline: {describe(baseline)}", baseline),
            Variant(f"{device} vqvae-train default: {describe(default)}", default),
            Variant(f"{device} default in {other.precision}: {describe(other)}", other),
        ]
        if compile_too and not default.compile:
            compiled = dataclasses.replace(default, compile=True)
            variants.append(Variant(f"{device} default + torch.compile: {describe(compiled)}", compiled))
    return variants


def write_slices(images: list[np.ndarray], root: Path) -> None:
    """uint8 slices as PNGs in ``root/bench``: a data root whose one split a Trainer reads for train and val."""
    folder = root / BENCH_SPLIT
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"slice_{i:04d}.png")


def write_bench_data(args: argparse.Namespace, root: Path) -> str:
    """Copy ``--images`` slices (or synthetic ones) into ``root/bench`` so every Trainer reads only those."""
    slices = load_slices(args.data, args.split, args.images)
    write_slices(slices.images, root)
    return slices.describe()


def step_function(trainer: Trainer) -> Callable[[int], None]:
    """One iteration of the training loop (all but its progress bar)."""

    def step(_: int) -> None:
        trainer.loop_step()

    return step


def run_variants(variants: list[Variant], *, warmup: int, steps: int, seconds: float, rounds: int) -> None:
    """Warm every variant up, then ``rounds`` rounds alternating between the variants, each variant timed for at
    least ``steps`` steps and ``seconds`` per round."""
    steppers = []
    for variant in variants:
        variant.trainer = Trainer(variant.config)
        variant.trainer.model.train()
        steppers.append(step_function(variant.trainer))
        time_calls(steppers[-1], warmup=0, repeats=warmup, seconds=0)
    for _ in range(rounds):
        for variant, step in zip(variants, steppers, strict=True):
            faults = minor_faults()
            variant.rounds.append(time_calls(step, warmup=0, repeats=steps, seconds=seconds))
            variant.faults += minor_faults() - faults


MatmulRates = dict[tuple[str, torch.dtype], list[float]]  # (device, dtype) -> GFLOP/s, one per measurement


def measure_matmul(variants: list[Variant], rates: MatmulRates, seconds: float) -> None:
    """Append the matrix-product rate of every (device, dtype) the variants run in."""
    for key in dict.fromkeys((v.config.device, v.dtype) for v in variants):
        rates.setdefault(key, []).append(matmul_gflop_per_s(torch.device(key[0]), key[1], seconds=seconds))


def count_work(variants: list[Variant], rates: MatmulRates) -> None:
    """Each variant's GFLOP per step (by its crop; after ``run_variants`` built the trainers) and mean matmul rate."""
    for v in variants:
        cfg = v.config
        v.gflop_per_step = training_step_gflop(
            cfg.model_config(), batch=cfg.batch_size, size=v.crop, ssim_weight=cfg.ssim_weight
        )
        v.matmul_rate = sum(rates[cfg.device, v.dtype]) / len(rates[cfg.device, v.dtype])


def minor_faults() -> int:
    """This process's minor page faults so far: memory mapped in afresh, zero-filled by the kernel. Tensors over
    glibc's 32 MiB ``mmap`` ceiling (``models.allocator``) are faulted in anew every step, which costs a time that
    varies with the host (a VM's faults are dearer and noisier)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def print_variants(variants: list[Variant]) -> None:
    base = variants[0]
    width = max(len(v.name) for v in variants)
    print(
        f"{'variant':<{width}} {'crop':>4} {'steps':>5} {'ms/step':>8} {'images/s':>9} {'Mpix/s':>7} "
        f"{'x images/s':>10} {'x pixels/s':>10} {'faults/step':>11} {'GFLOP/s':>7} {'% mm':>5}"
    )
    for v in variants:
        ms = 1000 * sum(v.step_seconds) / max(1, len(v.step_seconds))
        print(
            f"{v.name:<{width}} {v.crop:>4} {len(v.step_seconds):>5} {ms:>8.1f} {v.images_per_s:>9.2f} "
            f"{v.pixels_per_s / 1e6:>7.2f} {ratio(v.images_per_s, base.images_per_s):>9.2f}x "
            f"{ratio(v.pixels_per_s, base.pixels_per_s):>9.2f}x {v.faults_per_step:>11,.0f} "
            f"{v.gflop_per_s:>7.1f} {100 * ratio(v.gflop_per_s, v.matmul_rate):>4.0f}%"
        )
    for v in variants[1:]:
        print(
            f"{v.name.split(':')[0]} vs baseline: {ratio(v.images_per_s, base.images_per_s):.2f}x images/s "
            f"(a {v.crop}x{v.crop} crop counts as one image, against {base.crop}x{base.crop} slices), "
            f"{ratio(v.pixels_per_s, base.pixels_per_s):.2f}x pixels/s (the work actually done); pixels/s by round: "
            + ", ".join(
                f"{ratio(mine, theirs):.2f}x"
                for mine, theirs in zip(v.round_pixels_per_s(), base.round_pixels_per_s(), strict=True)
            )
            + f"; at the {v.config.device} {dtype_name(v.dtype)} matmul rate it would do "
            f"{ratio(at_matmul_rate(v), base.pixels_per_s):.2f}x pixels/s"
        )


def at_matmul_rate(v: Variant) -> float:
    """Pixels/s of the variant if its step did its arithmetic at the matrix-product rate (and nothing else)."""
    pixels_per_step = v.config.batch_size * v.crop * v.crop
    return ratio(v.matmul_rate * pixels_per_step, v.gflop_per_step)


def print_work(variants: list[Variant], rates: MatmulRates) -> None:
    print(
        "work per step (torch.utils.flop_counter: convolutions and matrix products, forward and backward): "
        + ", ".join(
            f"{v.name.split(':')[0]} {v.gflop_per_step:.1f} GFLOP ({v.config.batch_size} x {v.crop}x{v.crop})"
            for v in variants
        )
    )
    print(
        "matrix product (2048x2048 on the CPU, 8192x8192 on CUDA), GFLOP/s before / after the rounds: "
        + "; ".join(
            f"{device} {dtype_name(dtype)} " + " / ".join(f"{r:.0f}" for r in found)
            for (device, dtype), found in rates.items()
        )
        + "; % mm = a variant's GFLOP/s over the mean of its device and precision"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, images=64, checkpoint=False)
    defaults = TrainConfig()
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS), help="architecture")
    parser.add_argument(
        "--batch-size",
        type=int_from_to(1, MAX_BATCH_SIZE),
        default=defaults.batch_size,
        help=f"(default: %(default)s; at most {MAX_BATCH_SIZE}, as vqvae-train)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=1, help="least timed steps per variant and round (default: %(default)s)"
    )
    parser.add_argument(
        "--round-seconds",
        type=non_negative_seconds,
        default=6.0,
        help="least timed seconds per variant and round (default: %(default)s)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=6, help="alternating rounds over the variants (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=non_negative_int, default=3, help="untimed steps per variant first (default: %(default)s)"
    )
    parser.add_argument(
        "--matmul-seconds",
        type=non_negative_seconds,
        default=0.5,
        help="seconds of warm-up, then of timing, for each matrix-product yardstick (default: %(default)s)",
    )
    parser.add_argument("--compile-too", action="store_true", help="also the default configuration + torch.compile")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA variants on a GPU machine")
    parser.add_argument(
        "--no-cpu",
        action="store_true",
        help="only the CUDA variants (on a GPU machine): the CUDA baseline is the reference",
    )
    return parser


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    info = print_header("training step throughput")
    devices = [] if args.no_cpu else ["cpu"]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append("cuda")
    if not devices:
        print("error: no device left to time (--no-cpu, and no CUDA device or --no-cuda)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vqvae-bench-train-") as tmp:
        root = Path(tmp)
        data = write_bench_data(args, root / "data")
        base = TrainConfig(
            data=root / "data",
            train_split=BENCH_SPLIT,
            val_split=BENCH_SPLIT,
            out=root / "out",
            preset=args.preset,
            batch_size=args.batch_size,
            threads=args.threads,
            device="cpu",
            max_train_images=args.images,
            max_val_images=1,
            progress=False,
        )
        variants = build_variants(base, compile_too=args.compile_too, devices=devices)
        print(set_malloc(base.malloc_retain_mb, "TrainConfig.malloc_retain_mb; process-wide, so every variant"))
        print(f"data: {data}")
        print(
            f"model: preset '{args.preset}', batch {args.batch_size}; TrainConfig defaults: precision "
            f"{base.precision}, crop {base.crop}, channels_last {base.channels_last}, compile {base.compile}; "
            f"{args.warmup} warm-up steps, then "
            f"{args.rounds} rounds, each variant timed for at least {args.steps} steps and {args.round_seconds:g} s "
            "per round"
        )
        rates: MatmulRates = {}
        measure_matmul(variants, rates, args.matmul_seconds)
        run_variants(variants, warmup=args.warmup, steps=args.steps, seconds=args.round_seconds, rounds=args.rounds)
        measure_matmul(variants, rates, args.matmul_seconds)
        count_work(variants, rates)
    print_work(variants, rates)
    print_variants(variants)
    write_json(
        args.json,
        {
            "benchmark": "train",
            "machine": info,
            "data": data,
            "preset": args.preset,
            "matmul_gflop_per_s": {f"{d} {dtype_name(t)}": found for (d, t), found in rates.items()},
            "variants": [v.to_dict() for v in variants],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
