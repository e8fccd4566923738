"""In-process throughput of the model: encode and reconstruct, at batch 1 and over a sweep of batch sizes.

What one call does is what the service's model thread does for one group of requests (app.inference):
stack float (H, W) images -> tensor -> ``model.encode`` or ``model.reconstruct`` under ``torch.inference_mode``
-> one numpy array per image. Nothing else: no PNG decoding, no SSIM, no HTTP. Warm-up calls are not timed.
The process takes the service's malloc settings (``VQVAE_MALLOC_RETAIN_MB``, models.allocator); set it to 0 for
glibc's defaults, as a notebook runs the model.

    PYTHONPATH=. python -m benchmarks.bench_model --images 64 --batch-sizes 1,2,4,8,16,32 --seconds 3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from app.arguments import non_negative_int, non_negative_seconds, positive_int
from app.settings import Settings
from benchmarks.common import (
    benchmark_parser,
    int_list,
    load_slices,
    percentiles,
    print_header,
    ratio,
    resolved_checkpoint,
    set_malloc,
    set_threads,
    time_calls,
    write_json,
)
from models.checkpoint import load
from models.device import pick_device
from models.vqvae import VQVAE
from training.outputs import clean_exits

OPERATIONS = ("encode", "reconstruct")
DEFAULT_BATCH_SIZES = [1, 2, 4, 8, 16, 32]

RunBatch = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class BatchFigure:
    """One batch size: ``calls`` timed calls of ``batch_size`` images each."""

    batch_size: int
    calls: int
    seconds: float
    images_per_s: float
    call_p50_s: float

    @property
    def image_p50_s(self) -> float:
        return self.call_p50_s / self.batch_size


@dataclass
class OperationFigures:
    operation: str
    sweep: list[BatchFigure] = field(default_factory=list)

    def at(self, batch_size: int) -> BatchFigure | None:
        return next((f for f in self.sweep if f.batch_size == batch_size), None)

    @property
    def batch1(self) -> BatchFigure:
        figure = self.at(1)
        if figure is None:
            raise ValueError("batch size 1 was not measured")
        return figure

    @property
    def best(self) -> BatchFigure:
        return max(self.sweep, key=lambda f: f.images_per_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "batch1_latency_p50_s": self.batch1.call_p50_s,
            "batch1_images_per_s": self.batch1.images_per_s,
            "best_batch_size": self.best.batch_size,
            "best_images_per_s": self.best.images_per_s,
            "sweep": [asdict(f) for f in self.sweep],
        }


def model_runner(model: VQVAE, operation: str) -> RunBatch:
    """The service's forward pass for one group of same-sized float images (see module docstring)."""
    device = next(model.parameters()).device

    def run(images: list[np.ndarray]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack(images))[:, None].to(device)
        with torch.inference_mode():
            if operation == "encode":
                out = model.encode(batch)
            elif operation == "reconstruct":
                out = model.reconstruct(batch)[1][:, 0]
            else:
                raise ValueError(f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}")
        return list(out.cpu().numpy())

    return run


def measure_batch(
    run: RunBatch, images: Sequence[np.ndarray], batch_size: int, *, warmup: int, repeats: int, seconds: float
) -> BatchFigure:
    """Calls of ``batch_size`` images, cycling through ``images`` so every call sees different slices."""

    def call(index: int) -> None:
        start = index * batch_size
        run([images[(start + k) % len(images)] for k in range(batch_size)])

    durations = time_calls(call, warmup=warmup, repeats=repeats, seconds=seconds)
    total = sum(durations)
    return BatchFigure(
        batch_size, len(durations), total, batch_size * len(durations) / total, percentiles(durations)["p50"]
    )


def measure_model(
    model: VQVAE,
    images: Sequence[np.ndarray],
    *,
    operations: Sequence[str] = OPERATIONS,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = 2,
    repeats: int = 5,
    seconds: float = 2.0,
) -> dict[str, OperationFigures]:
    """In-process figures per operation; batch size 1 is always measured (it is the latency reference)."""
    sizes = sorted({1, *batch_sizes})
    results: dict[str, OperationFigures] = {}
    for operation in operations:
        run = model_runner(model, operation)
        figures = OperationFigures(operation)
        for size in sizes:
            figures.sweep.append(measure_batch(run, images, size, warmup=warmup, repeats=repeats, seconds=seconds))
        results[operation] = figures
    return results


def print_model_figures(results: dict[str, OperationFigures]) -> None:
    print(f"{'operation':<12} {'batch':>5} {'calls':>6} {'images/s':>9} {'ms/call p50':>12} {'ms/image':>9}")
    for figures in results.values():
        for f in figures.sweep:
            print(
                f"{figures.operation:<12} {f.batch_size:>5} {f.calls:>6} {f.images_per_s:>9.1f} "
                f"{1000 * f.call_p50_s:>12.2f} {1000 * f.image_p50_s:>9.2f}"
            )
    for figures in results.values():
        best, one = figures.best, figures.batch1
        print(
            f"{figures.operation}: batch 1 {one.images_per_s:.1f} images/s ({1000 * one.call_p50_s:.2f} ms p50); "
            f"best batch {best.batch_size}: {best.images_per_s:.1f} images/s "
            f"({ratio(best.images_per_s, one.images_per_s):.2f}x batch 1)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, images=64)
    parser.add_argument(
        "--batch-sizes", type=int_list, default=DEFAULT_BATCH_SIZES, help="comma-separated sweep (default: 1,...,32)"
    )
    parser.add_argument("--seconds", type=non_negative_seconds, default=2.0, help="least timed seconds per batch size")
    parser.add_argument("--repeats", type=positive_int, default=5, help="least timed calls per batch size")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls before each batch size")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    return parser


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    set_threads(args.threads)
    malloc = set_malloc(Settings().malloc_retain_mb)  # as the service runs with this environment
    info = print_header("in-process model throughput")
    print(malloc)
    slices = load_slices(args.data, args.split, args.images)
    print(f"data: {slices.describe()}")
    with resolved_checkpoint(args.checkpoint, args.random_preset) as checkpoint:
        model = load(checkpoint.path, device)[0].for_inference()  # as the service runs it
    print(
        f"model: {sum(p.numel() for p in model.parameters()):,} parameters, grid "
        f"{model.config.grid_for(*slices.shape)}, on {args.device}; timed: stack -> model -> numpy, inference_mode"
    )
    results = measure_model(
        model,
        slices.floats(),
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        seconds=args.seconds,
    )
    print_model_figures(results)
    write_json(
        args.json,
        {
            "benchmark": "model",
            "machine": info,
            "data": slices.describe(),
            "checkpoint": checkpoint.label,
            "device": args.device,
            "results": {op: figures.to_dict() for op, figures in results.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
