"""Quality of a checkpoint over a split: per-image SSIM/PSNR (DESIGN.md metric), codebook use, bits per slice."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import CheckpointError, load, recorded, save
from models.device import bulk_batch_size, pick_device
from models.files import WriteError, json_text, write_atomically
from models.quality import Summary, psnr, ssim
from models.quality_torch import psnr_per_image, ssim_per_image
from models.quantizer import VectorQuantizer
from models.vqvae import VQVAE
from training.data import DEFAULT_DATA_ROOT, OASIS_SPLITS, DataError, SliceSet, image_folders, load_split
from training.memory import OutOfMemory, memory_errors
from training.outputs import check_apart, check_file, check_files, check_folder, clean_exits, note

PANELS, USAGE = "reconstructions.png", "codebook_usage.png"  # what --figures writes
FIGURES = (PANELS, USAGE)


@dataclass
class Reconstructions:
    """Originals and reconstructions as float (H, W) arrays in [0, 1], with the index grids; with
    ``score_in_torch`` also each image's SSIM and PSNR."""

    originals: list[np.ndarray]
    reconstructions: list[np.ndarray]
    indices: list[torch.Tensor]  # each (h, w)
    names: list[str]
    ssims: list[float] | None = None
    psnrs: list[float] | None = None


def _batches(slices: SliceSet, batch_size: int) -> Iterator[list[int]]:
    """Positions grouped by image size, ``batch_size`` at a time, in the set's order within each size."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(slices.images):
        by_size.setdefault(image.shape, []).append(i)
    for positions in by_size.values():
        for start in range(0, len(positions), batch_size):
            yield positions[start : start + batch_size]


def reconstruct_set(
    model: VQVAE, slices: SliceSet, batch_size: int | None = None, *, score_in_torch: bool = False
) -> Reconstructions:
    """Eval-mode round trip of every image (any sizes), batched (by default ``models.device.bulk_batch_size``), on
    the model's device; with ``score_in_torch`` each batch is also scored there (``models.quality_torch``, float64)."""
    device = next(model.parameters()).device
    batch_size = bulk_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model.eval()
    originals: list[np.ndarray] = [np.empty(0)] * len(slices)
    recons: list[np.ndarray] = [np.empty(0)] * len(slices)
    grids: list[torch.Tensor] = [torch.empty(0)] * len(slices)
    ssims, psnrs = [math.nan] * len(slices), [math.nan] * len(slices)
    for positions in _batches(slices, batch_size):
        batch = torch.from_numpy(np.stack([slices.images[i] for i in positions])).to(device)
        x = batch.unsqueeze(1).float() / 255.0  # (B, 1, H, W)
        indices, recon = model.reconstruct(x)  # (B, h, w), (B, 1, H, W)
        if score_in_torch:
            batch_ssims, batch_psnrs = ssim_per_image(x, recon).tolist(), psnr_per_image(x, recon).tolist()
        for row, i in enumerate(positions):
            originals[i] = x[row, 0].cpu().numpy()
            recons[i] = recon[row, 0].float().cpu().numpy()
            grids[i] = indices[row].cpu()
            if score_in_torch:
                ssims[i], psnrs[i] = batch_ssims[row], batch_psnrs[row]
    scores = (ssims, psnrs) if score_in_torch else (None, None)
    return Reconstructions(originals, recons, grids, list(slices.names), *scores)


def score(
    model: VQVAE, slices: SliceSet, batch_size: int | None = None, *, score_in_torch: bool = False
) -> tuple[dict[str, Any], Reconstructions]:
    """The evaluation report for one set of slices, and the reconstructions it was computed from.

    SSIM and PSNR come from scikit-image and numpy (``models.quality``: DESIGN.md's reference) unless
    ``score_in_torch``: then from ``models.quality_torch`` in float64 on the model's device, equal to them to
    rounding (tests/models/test_quality_torch.py) and several times faster, most of all on a GPU, where
    scikit-image's CPU time would be most of a validation pass. Training validates that way; ``vqvae-eval``
    reports with the reference.
    """
    result = reconstruct_set(model, slices, batch_size, score_in_torch=score_in_torch)
    ssims, psnrs = result.ssims, result.psnrs
    if ssims is None or psnrs is None:
        pairs = list(zip(result.originals, result.reconstructions, strict=True))
        ssims, psnrs = [ssim(a, b) for a, b in pairs], [psnr(a, b) for a, b in pairs]
    config = model.config
    usage, perplexity = VectorQuantizer.usage(torch.cat([g.reshape(-1) for g in result.indices]), config.codebook_size)
    bits = [config.bits_for(*im.shape) for im in slices.images]
    raw_bits = [8 * im.size for im in slices.images]
    grids = {tuple(g.shape) for g in result.indices}
    ssim_summary, psnr_summary = Summary.of(ssims), Summary.of(psnrs)
    report = {
        "images": len(slices),
        "ssim": vars(ssim_summary),
        "psnr": vars(psnr_summary),
        "codebook_usage": usage,
        "perplexity": perplexity,
        "codebook_size": config.codebook_size,
        "bits_per_slice": float(np.mean(bits)),
        "compression_ratio": float(np.sum(raw_bits) / np.sum(bits)),
        "grid": list(next(iter(grids))) if len(grids) == 1 else None,  # None: images of different sizes
        # An identical reconstruction's PSNR (+inf) as null: JSON has no infinity (Python wrote a bare Infinity,
        # which JSON.parse and jq refuse), and the service answers it the same way.
        "per_image": [
            {"name": n, "ssim": s, "psnr": p if math.isfinite(p) else None}
            for n, s, p in zip(result.names, ssims, psnrs, strict=True)
        ],
    }
    return report, result


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The report without per-image rows (what goes into checkpoint metadata and the README)."""
    return {k: v for k, v in report.items() if k != "per_image"}


def format_table(report: dict[str, Any], title: str) -> str:
    s, p = report["ssim"], report["psnr"]
    rows = [
        title,
        f"  images            {report['images']}",
        f"  SSIM mean/med/p5  {s['mean']:.4f} / {s['median']:.4f} / {s['p5']:.4f}",
        f"  PSNR mean/med/p5  {p['mean']:.2f} / {p['median']:.2f} / {p['p5']:.2f} dB",
        f"  codebook usage    {report['codebook_usage'] * 100:.1f}% of {report['codebook_size']}"
        f" (perplexity {report['perplexity']:.1f})",
        f"  bits per slice    {report['bits_per_slice']:.0f} ({_grid_text(report['grid'])},"
        f" {report['compression_ratio']:.1f}x smaller than 8-bit)",
    ]
    return "\n".join(rows)


def _grid_text(grid: list[int] | None) -> str:
    return "grids of several sizes, a mean" if grid is None else f"grid {grid[0]}x{grid[1]}"


def record_metrics(checkpoint: Path, split_name: str, report: dict[str, Any]) -> None:
    """Store the headline metrics of a split in the checkpoint's own metadata (rewrites the file); a note when
    they replace those of another data folder recorded under the same name (two copies of OASIS, say)."""
    model, metadata = load(checkpoint)
    metrics = dict(recorded(metadata, "metrics"))  # one of another type: replaced
    replaced = metrics.get(split_name, {}).get("data") if isinstance(metrics.get(split_name), dict) else None
    if replaced is not None and report.get("data") is not None and replaced != report["data"]:
        note(f"the metrics recorded as {split_name!r} were of {replaced}; now of {report['data']}")
    metrics[split_name] = headline(report)
    save(model, checkpoint, {**metadata, "metrics": metrics})


def record_key(folder: Path) -> str:
    """The name a folder's metrics are recorded under: an OASIS split's name (``test`` for
    ``keras_png_slices_test``, however it was named on the command line; ``/model`` serves it as ``test_metrics``),
    else the folder's absolute path (``/model`` shows its last name).

    Before, every plain folder (``--split ''``) was recorded as ``folder``, each replacing the last, and a
    researcher's own ``test`` sub-folder replaced the OASIS test split's metrics."""
    resolved = folder.resolve()
    return next((split for split, name in OASIS_SPLITS.items() if resolved.name == name), str(resolved))


def default_report(checkpoint: Path, split: str) -> Path:
    """``<checkpoint>.<split>.json`` beside the checkpoint; a sub-folder split's slashes become underscores (as a
    suffix, ``sub/deep`` was a ValueError traceback)."""
    tag = "_".join(part for part in split.replace("\\", "/").split("/") if part) or "folder"
    return checkpoint.with_name(f"{checkpoint.stem}.{tag}.json")


def check_outputs(args: argparse.Namespace, out: Path) -> None:
    """The report ``out`` and the ``--figures`` can be written, and no output replaces another, the checkpoint, or
    an image, nor goes among the images read."""
    files = {"the report": out}
    if args.figures:
        check_folder(args.figures, "--figures")
        files |= {f"the figure {name}": args.figures / name for name in FIGURES}
    check_files(files)
    for what, path in files.items():
        check_apart(path, args.checkpoint, f"{what} would replace the weights")
    for folder in image_folders(args.data, args.split):
        check_apart(out, folder, "the report would replace an image or be mixed into the data")
        if args.figures:
            check_apart(args.figures, folder, "its PNG figures would be mixed into the data", folder=True)
    if args.record:
        check_file(args.checkpoint, "--record into")


@clean_exits
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a VQ-VAE checkpoint on a split (SSIM per DESIGN.md).")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="OASIS root or an image folder")
    parser.add_argument("--split", default="test", help="train, validate, test, a sub-folder, or '' for --data")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: <checkpoint>.<split>.json)")
    parser.add_argument("--figures", type=Path, default=None, help="folder for panels and usage figures")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only this many images (spread)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per forward pass (default: 4 on a CPU, 32 on a GPU)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument("--record", action="store_true", help="write the metrics into the checkpoint metadata")
    args = parser.parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.record and args.limit is not None:  # before, it replaced the whole split's recorded metrics
        parser.error("--record stores the metrics of a whole split, which /model serves; drop --limit to record")
    out = args.out or default_report(args.checkpoint, args.split)
    try:
        check_outputs(args, out)  # before the scoring, not after it
        model = load(args.checkpoint, pick_device(args.device))[0].for_inference()
        slices = load_split(args.data, args.split or None, args.limit)
    except (CheckpointError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with memory_errors("try a smaller --batch-size, or fewer pixels an image"):
            report, result = score(model, slices, args.batch_size)
    except OutOfMemory as exc:  # 4 images of 4096x4096: about 12 GB with the previous default model, more now
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not math.isfinite(report["ssim"]["mean"]):  # NaN in a report is not even valid JSON
        print(f"error: {args.checkpoint} reconstructs to NaN or infinite values (broken weights?)", file=sys.stderr)
        return 1
    # the data folder as an absolute path, so that a report read from another folder names the same one
    report = {"checkpoint": str(args.checkpoint), "data": str(slices.root.resolve()), **report}
    try:  # a full disk, say: the report and figures are written whole or not at all
        write_atomically(out, lambda partial: partial.write_text(json_text(report)))
        print(format_table(report, f"{args.checkpoint} on {slices.root}"))
        print(f"report: {out}")
        if args.figures:
            from training.figures import codebook_usage_figure, panels_figure

            panels_figure(
                result.originals,
                result.reconstructions,
                [r["ssim"] for r in report["per_image"]],
                result.names,
                args.figures / PANELS,
            )
            counts = np.bincount(
                torch.cat([g.reshape(-1) for g in result.indices]).numpy(), minlength=model.config.codebook_size
            )
            codebook_usage_figure(counts, args.figures / USAGE)
            print(f"figures: {args.figures}")
        if args.record:
            record_metrics(args.checkpoint, record_key(slices.root), report)
            print(f"metrics recorded in {args.checkpoint}")
    except WriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
