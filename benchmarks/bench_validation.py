"""Time of one validation pass: the scores from scikit-image (the reference) against the same scores in torch.

``vqvae-train`` validates after every epoch: it reconstructs the validation slices and scores each one. With
scikit-image the scores run on the CPU, one slice at a time, whatever device trained the model; in torch
(``training.evaluate.score(..., score_in_torch=True)``, equal to the reference to rounding) they run on the
model's device. Both variants run the same reconstruction; they alternate in rounds in one process, and each
pair's mean SSIM is printed, to show that they agree.

    PYTHONPATH=. python -m benchmarks.bench_validation --split validate --images 256 --rounds 3
"""

from __future__ import annotations

import statistics
import sys
import time

from app.arguments import positive_int
from benchmarks.common import (
    benchmark_parser,
    data_folder,
    print_header,
    ratio,
    resolved_checkpoint,
    set_threads,
    write_json,
)
from models.checkpoint import load
from models.device import bulk_batch_size, pick_device
from training.data import DataError, load_split
from training.evaluate import score
from training.outputs import clean_exits

VARIANTS = {"scikit-image": False, "torch": True}  # name -> score_in_torch


@clean_exits
def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, images=256)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    info = print_header("validation pass: scores from scikit-image vs in torch")
    try:
        device = pick_device(args.device)
        slices = load_split(*data_folder(args.data, args.split), args.images)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with resolved_checkpoint(args.checkpoint, args.random_preset) as checkpoint:
        model, _ = load(checkpoint.path, device)
    print(f"{len(slices)} slices of {slices.root}, on {device}, {bulk_batch_size(device)} a pass")
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    means: dict[str, float] = {}
    for name, in_torch in VARIANTS.items():  # warm-up, untimed
        means[name] = score(model, slices, score_in_torch=in_torch)[0]["ssim"]["mean"]
    for _ in range(args.rounds):
        for name, in_torch in VARIANTS.items():
            started = time.perf_counter()
            score(model, slices, score_in_torch=in_torch)  # ends in host copies: no device work left running
            seconds[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(found) for name, found in seconds.items()}
    for name, found in seconds.items():
        per_image = 1000 * medians[name] / len(slices)
        rounds = ", ".join(f"{s:.2f}" for s in found)
        print(f"{name:<13} median {medians[name]:.2f} s per pass ({per_image:.2f} ms per slice); rounds: {rounds} s")
    speedup = ratio(medians["scikit-image"], medians["torch"])
    gap = abs(means["torch"] - means["scikit-image"])
    print(f"torch / scikit-image time: {ratio(1, speedup):.2f} ({speedup:.2f}x faster); mean SSIM differs by {gap:.1e}")
    write_json(
        args.json,
        {"machine": info, "device": str(device), "slices": len(slices), "round_seconds": seconds, "speedup": speedup},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
