"""Why the service runs every torch call on one thread: batch-1 time of the model run on a worker thread, by
where the checkpoint was loaded (each variant in a fresh process, variants alternating over rounds).

- ``one thread``: loaded and run on the same worker thread (what ``app.inference.InferenceService`` does);
- ``loaded on a thread that exits``: loaded on a short-lived thread, run on the worker (``vqvae-serve``'s
  start-up check, then the service);
- ``loaded on the main thread``: the main thread, which lives on, loads; the worker runs (the service before).

OpenMP (libgomp, torch's CPU threading) keeps a team of worker threads for every thread that has run a parallel
region, until that thread exits. With two teams alive the threads outnumber the cores, libgomp stops spinning
between parallel regions, and every region of a forward pass has to wake its team.

    PYTHONPATH=. python -m benchmarks.bench_threads --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.arguments import non_negative_seconds, positive_int
from benchmarks.bench_model import measure_batch, model_runner
from benchmarks.common import (
    REPO_ROOT,
    benchmark_parser,
    load_slices,
    print_header,
    ratio,
    resolved_checkpoint,
    set_threads,
    write_json,
)
from models.checkpoint import load
from models.vqvae import VQVAE
from training.outputs import clean_exits

VARIANTS = {
    "one-thread": "one thread (the service)",
    "short-lived-loader": "loaded on a thread that exits",
    "main-thread-loader": "loaded on the main thread",
}
OPERATIONS = ("encode", "reconstruct")


def on_thread(call: Callable[[], Any]) -> Any:
    """Run ``call`` on a new thread that exits afterwards; its result."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(call()))
    thread.start()
    thread.join()
    return results[0]


def child(args: argparse.Namespace) -> dict[str, float]:
    """One variant in this (fresh) process -> {operation: batch-1 p50 seconds}; torch only on the threads named."""
    floats = load_slices(args.data, args.split, args.images).floats()

    def measure(model: VQVAE) -> dict[str, float]:
        set_threads(args.threads)
        figures = {}
        for operation in OPERATIONS:
            run = model_runner(model, operation)
            figure = measure_batch(run, floats, 1, warmup=2, repeats=args.repeats, seconds=args.seconds)
            figures[operation] = figure.call_p50_s
        return figures

    def load_model() -> VQVAE:
        set_threads(args.threads)
        return load(args.checkpoint)[0].for_inference()

    if args.child == "one-thread":
        return dict(on_thread(lambda: measure(load_model())))
    model = on_thread(load_model) if args.child == "short-lived-loader" else load_model()
    return dict(on_thread(lambda: measure(model)))


def run_child(args: argparse.Namespace, variant: str, checkpoint: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.bench_threads", "--child", variant, "--checkpoint", str(checkpoint)]
    command += ["--data", str(args.data)] if args.data else []
    command += ["--split", args.split] if args.split else []
    command += ["--images", str(args.images)]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats), "--seconds", str(args.seconds)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, images=16)
    parser.add_argument("--rounds", type=positive_int, default=3, help="passes over the variants (default: 3)")
    parser.add_argument("--repeats", type=positive_int, default=20, help="least timed calls (default: 20)")
    parser.add_argument("--seconds", type=non_negative_seconds, default=2.0, help="least timed seconds per operation")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    return parser


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    with resolved_checkpoint(args.checkpoint, args.random_preset) as checkpoint:
        set_threads(args.threads)
        info = print_header("model on a worker thread, by where the checkpoint was loaded")
        print(f"data: {load_slices(args.data, args.split, args.images).describe()}")
        figures: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
        try:
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    figures[variant].append(run_child(args, variant, checkpoint.path))
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        medians = {
            variant: {op: statistics.median(r[op] for r in rounds) for op in OPERATIONS}
            for variant, rounds in figures.items()
        }
        print(f"batch-1 p50 ms, median of {args.rounds} rounds (a fresh process per variant and round)")
        print(f"{'variant':<32} " + " ".join(f"{op:>12} {'vs one':>7}" for op in OPERATIONS))
        for variant, label in VARIANTS.items():
            cells = [
                f"{1000 * medians[variant][op]:>12.1f} {ratio(medians[variant][op], medians['one-thread'][op]):>6.2f}x"
                for op in OPERATIONS
            ]
            print(f"{label:<32} " + " ".join(cells))
        rounds_text = {v: [[round(1000 * r[op], 1) for op in OPERATIONS] for r in rs] for v, rs in figures.items()}
        print(f"rounds (ms, {'/'.join(OPERATIONS)}): {rounds_text}")
        write_json(
            args.json,
            {
                "benchmark": "threads",
                "machine": info,
                "checkpoint": checkpoint.label,
                "rounds_batch1_p50_s": figures,
                "median_batch1_p50_s": medians,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
