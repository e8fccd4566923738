"""glibc's malloc defaults against the settings the service and trainer apply (models.allocator), in-process.

For each case, two fresh worker processes, one left with glibc's defaults and one that calls
``retain_freed_memory``, build the same model (or default ``Trainer``) and take turns: in each round each runs
``--calls`` timed calls, the order alternating between rounds, so that the machine's swings hit both alike. A case
has its processes to itself because glibc's defaults adapt to what a process allocated before: larger blocks
freed earlier raise its thresholds. Per case: the median call time, minor page faults per call (the whole process,
all threads), and the ratio.

- ``reconstruct bN`` / ``encode bN``: the service's forward pass (``benchmarks.bench_model.model_runner``) on N
  slices;
- ``train step``: one ``trainer.loop_step()`` of ``TrainConfig``'s defaults on CPU (as ``vqvae-train`` runs it).

    PYTHONPATH=. python -m benchmarks.bench_malloc --rounds 10 --calls 10 --train
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from app.arguments import positive_int
from benchmarks.bench_model import model_runner
from benchmarks.bench_train import BENCH_SPLIT, write_slices
from benchmarks.common import (
    benchmark_parser,
    load_slices,
    print_header,
    resolved_checkpoint,
    set_malloc,
    set_threads,
    write_json,
)
from models.allocator import DEFAULT_RETAIN_MB
from models.checkpoint import load
from training.config import TrainConfig
from training.outputs import clean_exits

MODES = ("glibc defaults", "retained")
RETAIN_MB = DEFAULT_RETAIN_MB
CASES = ("reconstruct b1", "reconstruct b4", "encode b1")
TRAIN_CASE = "train step"


@dataclasses.dataclass(frozen=True)
class Job:
    """What a worker process builds; everything it needs arrives in here (the processes are spawned)."""

    case: str
    retain_mb: int
    checkpoint: Path
    slices: list[np.ndarray]
    threads: int
    train_root: Path | None


def forward_call(job: Job, operation: str, size: int) -> Callable[[int], object]:
    """call(index) for one batch of ``size`` slices through the service's forward pass."""
    model = load(job.checkpoint, "cpu")[0].for_inference()
    run = model_runner(model, operation)
    floats = [image.astype(np.float32) / 255.0 for image in job.slices]

    def call(index: int) -> object:
        return run([floats[(index * size + k) % len(floats)] for k in range(size)])

    return call


def train_call(job: Job, root: Path) -> Callable[[int], object]:
    """call(index) for one step of a default ``Trainer`` (what ``vqvae-train`` runs on the CPU)."""
    from training.train import Trainer  # only where asked: it builds a model, an optimizer and a data set

    config = TrainConfig(
        data=root,
        train_split=BENCH_SPLIT,
        val_split=BENCH_SPLIT,
        out=root / "out" / str(job.retain_mb),
        device="cpu",
        threads=job.threads,
        max_val_images=1,
        progress=False,
        malloc_retain_mb=job.retain_mb,
    )
    trainer = Trainer(config)

    def call(_index: int) -> object:
        return trainer.loop_step()

    return call


def build_call(job: Job) -> Callable[[int], object]:
    if job.case == TRAIN_CASE:
        if job.train_root is None:
            raise ValueError("the training case needs its data folder")
        return train_call(job, job.train_root)
    operation, size = job.case.split(" b")
    return forward_call(job, operation, int(size))


def worker(connection: Connection, job: Job) -> None:
    """Applies (or not) the settings first, builds the case, then answers each request for ``calls`` timed calls
    with (median seconds, faults per call) until it receives 0."""
    set_threads(job.threads)
    set_malloc(job.retain_mb)
    call = build_call(job)
    for index in range(3):  # warm-up: kernels, and the first calls that map the memory in
        call(index)
    connection.send("ready")
    while calls := connection.recv():
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = []
        for index in range(calls):
            start = time.perf_counter()
            call(index)
            seconds.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
        connection.send((statistics.median(seconds), faults / calls))


Figures = dict[str, dict[str, list[tuple[float, float]]]]  # {case: {mode: [(median s, faults per call)]}}


def run_case(job_for: Callable[[int], Job], rounds: int, calls: int) -> dict[str, list[tuple[float, float]]]:
    """{mode: [(median seconds, faults per call) of each round]} from a fresh pair of processes."""
    context = multiprocessing.get_context("spawn")
    workers: dict[str, tuple[Any, Connection]] = {}
    try:
        for mode in MODES:
            parent, child = context.Pipe()
            process = context.Process(target=worker, args=(child, job_for(0 if mode == MODES[0] else RETAIN_MB)))
            process.start()
            workers[mode] = (process, parent)
        for _, connection in workers.values():
            connection.recv()
        results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
        for round_index in range(rounds):
            for mode in MODES if round_index % 2 == 0 else MODES[::-1]:
                _, connection = workers[mode]
                connection.send(calls)
                results[mode].append(connection.recv())
        return results
    finally:
        for process, connection in workers.values():
            with contextlib.suppress(OSError):
                connection.send(0)
            process.join(timeout=30)


def print_results(figures: Figures) -> dict[str, Any]:
    header = f"{'case':<16} {'defaults ms':>12} {'faults':>8} {'retained ms':>12} {'faults':>8} {'time ratio':>11}"
    print(f"{header}  rounds")
    summary: dict[str, Any] = {}
    for name, by_mode in figures.items():
        base, retained = (by_mode[mode] for mode in MODES)
        ratios = [r[0] / b[0] for b, r in zip(base, retained, strict=True)]
        row = {
            "defaults_ms": 1000 * statistics.median(f[0] for f in base),
            "defaults_faults": statistics.median(f[1] for f in base),
            "retained_ms": 1000 * statistics.median(f[0] for f in retained),
            "retained_faults": statistics.median(f[1] for f in retained),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
        }
        summary[name] = row
        print(
            f"{name:<16} {row['defaults_ms']:>12.1f} {row['defaults_faults']:>8.0f} {row['retained_ms']:>12.1f} "
            f"{row['retained_faults']:>8.0f} {row['ratio']:>10.2f}x  {', '.join(f'{r:.2f}' for r in ratios)}"
        )
    print("time ratio = retained / defaults, the median over rounds of each round's ratio; faults = minor page faults")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, images=32)
    parser.add_argument("--rounds", type=positive_int, default=10, help="turns of each process (default: %(default)s)")
    parser.add_argument("--calls", type=positive_int, default=10, help="timed calls per case and turn")
    parser.add_argument("--train", action="store_true", help="also a default training step (slower)")
    return parser


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    info = print_header("malloc: glibc defaults vs memory kept mapped (models.allocator)")
    slices = load_slices(args.data, args.split, args.images)
    print(f"data: {slices.describe()}; retained: up to {RETAIN_MB} MB per arena")
    with resolved_checkpoint(args.checkpoint, args.random_preset) as checkpoint, tempfile.TemporaryDirectory() as tmp:
        train_root = Path(tmp) if args.train else None
        if train_root is not None:
            write_slices(slices.images, train_root)

        figures: Figures = {}
        for case in (*CASES, TRAIN_CASE) if train_root else CASES:

            def job_for(retain_mb: int, case: str = case) -> Job:
                return Job(case, retain_mb, checkpoint.path, slices.images, args.threads, train_root)

            figures[case] = run_case(job_for, args.rounds, args.calls)
    summary = print_results(figures)
    write_json(args.json, {"benchmark": "malloc", "machine": info, "data": slices.describe(), "cases": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
