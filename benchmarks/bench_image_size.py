"""What one large image costs the service's model: seconds and peak memory of one forward pass, by image side.

``VQVAE_MAX_PIXELS`` bounds the largest image the service accepts; this is the figure to weigh when raising it,
since every request queued behind such an image waits for its pass. Each (side, operation) runs in a fresh
process, so that its peak RSS is its own: the model is loaded, warmed up on a 64x64 image, then one square image
of random pixels (the time does not depend on the content) is encoded, or reconstructed, ``--repeats`` times.

    PYTHONPATH=. python -m benchmarks.bench_image_size --sides 256,1024,2048,4096
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from app.arguments import positive_int
from benchmarks.common import benchmark_parser, int_list, print_header, resolved_checkpoint, set_threads, write_json
from models.checkpoint import load
from training.outputs import clean_exits

OPERATIONS = ("encode", "reconstruct")


def measure(checkpoint: Path, side: int, operation: str, repeats: int) -> dict[str, float]:
    """In this process: median seconds of ``repeats`` passes, and the peak RSS before and after them (MB)."""
    model = load(checkpoint)[0].for_inference()
    run = model.encode if operation == "encode" else model.reconstruct
    with torch.inference_mode():
        run(torch.rand(1, 1, 64, 64))  # kernels and the model's memory, before the baseline is read
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        image = torch.rand(1, 1, side, side)  # (1, 1, H, W)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            run(image)
            seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": statistics.median(seconds), "peak_rss_mb": peak, "rss_before_mb": before}


@clean_exits
def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, images=None)
    parser.add_argument(
        "--sides", type=int_list, default=[256, 1024, 2048], help="square image sides (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=1, help="passes per case, median (default: %(default)s)"
    )
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "OPERATION"), help=argparse.SUPPRESS)  # a child
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.one:  # a child: one case, one JSON line
        side, operation = int(args.one[0]), args.one[1]
        print(json.dumps(measure(args.checkpoint, side, operation, args.repeats)))
        return 0
    info = print_header("one large image: seconds and peak memory of a forward pass")
    results = []
    with resolved_checkpoint(args.checkpoint, args.random_preset) as checkpoint:
        for side in args.sides:
            for operation in OPERATIONS:
                figures = run_child(checkpoint.path, side, operation, args.repeats, args.threads)
                results.append({"side": side, "operation": operation, **figures})
                print(
                    f"{side:>5}x{side:<5} {operation:<11} {figures['seconds']:8.2f} s   peak RSS "
                    f"{figures['peak_rss_mb']:7.0f} MB (+{figures['peak_rss_mb'] - figures['rss_before_mb']:.0f} MB "
                    f"over the loaded, warmed-up model)"
                )
        write_json(args.json, {"machine": info, "checkpoint": checkpoint.label, "results": results})
    return 0


def run_child(checkpoint: Path, side: int, operation: str, repeats: int, threads: int) -> dict[str, float]:
    """``measure`` in a fresh interpreter: its peak RSS is this case's alone."""
    command = [sys.executable, "-m", "benchmarks.bench_image_size", "--checkpoint", str(checkpoint)]
    command += ["--one", str(side), operation, "--repeats", str(repeats), "--threads", str(threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


if __name__ == "__main__":
    sys.exit(main())
