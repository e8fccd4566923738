"""Pieces shared by the benchmark scripts: machine header, slices, checkpoint, timing, JSON output.

Every script prints what it ran on (CPU, torch, threads, load average) before any figure, because a figure
without its machine is not a figure, and a busy machine (a training job beside the benchmark) halves them.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from PIL import Image

from app.arguments import int_from_to, positive_int
from models.allocator import retain_freed_memory
from models.checkpoint import CheckpointError, load, save
from models.config import PRESETS
from models.cpus import max_torch_threads, usable_cpus
from models.device import set_torch_threads
from models.files import json_text, not_replaceable
from models.vqvae import VQVAE
from training.data import DEFAULT_DATA_ROOT, DataError, image_folders, load_folder, resolve_folder
from training.outputs import OutputError, check_apart, check_file, check_folder
from training.synthetic import synthetic_slice

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "weights" / "vqvae.safetensors"
SYNTHETIC_SIZE = (256, 256)  # an OASIS slice
DEFAULT_SPLIT = "test"


# ---- machine ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on; printed by ``print_header`` and stored in every JSON."""
    usable = usable_cpus()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_device": cuda,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def print_header(title: str) -> dict[str, Any]:
    """Print the title and what the figures are measured on; return that (``machine_info``) for the JSON."""
    info = machine_info()
    print(f"== {title}")
    print(f"machine: {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs")
    print(f"         {info['platform']}, python {info['python']}")
    print(
        f"torch:   {info['torch']}, {info['torch_threads']} intra-op / {info['torch_interop_threads']} inter-op "
        f"threads, CUDA: {info['cuda_device'] or 'none'}"
    )
    load = info["load_average"]
    if load is not None:
        busy = " (machine is busy: figures will be low and noisy)" if load[0] > 0.5 * (info["usable_cpus"] or 1) else ""
        print(f"load:    {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min){busy}")
    return info


def set_threads(threads: int) -> None:
    """torch intra-op threads; 0: as the service and the trainer run by default, torch's default (a thread per
    core) but at most the CPU allowance (``models.cpus``: a container's CPU limit counted)."""
    set_torch_threads(threads)


def set_malloc(retain_mb: int, source: str = "VQVAE_MALLOC_RETAIN_MB, as the service") -> str:
    """Apply the malloc settings (``models.allocator``) that the service or trainer applies, so that in-process
    figures are measured the way those run; returns the line that says what is in force (from ``source``)."""
    if retain_mb and retain_freed_memory(retain_mb * 1024 * 1024):
        return f"malloc:  freed memory kept mapped, up to {retain_mb} MB per arena ({source})"
    return f"malloc:  glibc's defaults, freed memory goes back to the OS ({source})"


# ---- slices ----------------------------------------------------------------------------------------------
@dataclass
class Slices:
    """uint8 (H, W) grayscale slices of one size, and where they came from."""

    images: list[np.ndarray]
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        height, width = self.images[0].shape
        return int(height), int(width)

    def floats(self) -> list[np.ndarray]:
        """float32 (H, W) in [0, 1]: what the service's image decoder hands to the model."""
        return [im.astype(np.float32) / 255.0 for im in self.images]

    def pngs(self) -> list[bytes]:
        return [png_bytes(im) for im in self.images]

    def describe(self) -> str:
        return f"{len(self.images)} slices of {self.shape[0]}x{self.shape[1]} from {self.source}"


def data_folder(data: Path | None, split: str | None) -> tuple[Path, str | None]:
    """``--data`` and ``--split`` as given, or their defaults: the OASIS root beside the repository, its test split.
    ``--split ''`` is the ``--data`` folder itself, as for ``vqvae-eval`` (it was the test split)."""
    return data or DEFAULT_DATA_ROOT, DEFAULT_SPLIT if split is None else split or None


def load_slices(data: Path | None, split: str | None, count: int) -> Slices:
    """``count`` slices spread evenly over an OASIS split (or a plain folder).

    ``data`` and ``split`` None are the defaults (``data_folder``), and synthetic 256x256 slices when this machine
    has no default root. A folder or split the caller named must be there: a typo in ``--data`` or ``--split`` ends
    the script with one line, rather than measure synthetic slices in its place. Only the picked files are decoded.
    Images of a size other than the most common one are dropped, so every batch can be stacked (the service only
    batches images of one size too).
    """
    if count < 1:
        raise ValueError(f"need at least one slice, got {count}")
    if data is None and split is None and not DEFAULT_DATA_ROOT.is_dir():
        rng = np.random.default_rng(0)
        images = [synthetic_slice(rng, SYNTHETIC_SIZE) for _ in range(count)]
        source = f"synthetic slices (no data: {DEFAULT_DATA_ROOT} does not exist)"
    else:
        try:
            folder = resolve_folder(*data_folder(data, split))
            images = load_folder(folder, count).images  # the same slices as linspace picks did: training.data.spread
        except DataError as exc:
            fail(str(exc))
        source = str(folder)
    shapes = [im.shape for im in images]
    common = max(set(shapes), key=shapes.count)
    kept = [im for im in images if im.shape == common]
    if len(kept) < len(images):
        source += f"; {len(images) - len(kept)} of another size dropped"
    return Slices(kept, source)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- checkpoint ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    path: Path
    label: str  # the file, or "random <preset> (…missing)" for the JSON output


@contextmanager
def resolved_checkpoint(path: Path, random_preset: str) -> Iterator[Checkpoint]:
    """``path`` (made absolute) when it exists; otherwise a randomly initialised ``random_preset`` model in a
    temporary file.

    Speed does not depend on the weights, so the scripts always run; quality figures of a random model mean
    nothing, and the script says so. A ``path`` that exists but is no loadable checkpoint (a folder, a text file,
    tensors that do not fit its config) ends the script with one ``error:`` line, before anything is measured.
    """
    if path.exists():
        try:
            if not path.is_file():
                raise CheckpointError(f"{path}: not a checkpoint file")
            load(path)  # the whole file, once, here: the scripts' own loads may run in child processes
        except CheckpointError as exc:
            fail(str(exc))
        print(f"checkpoint: {path}")
        yield Checkpoint(path.resolve(), str(path))  # absolute: servers start in a folder of their own
        return
    if random_preset not in PRESETS:
        raise ValueError(f"unknown preset {random_preset!r}; choose one of {', '.join(PRESETS)}")
    with tempfile.TemporaryDirectory(prefix="vqvae-bench-") as tmp:
        torch.manual_seed(0)
        target = save(VQVAE(PRESETS[random_preset]), Path(tmp) / "random.safetensors", {"note": "random, benchmarks"})
        print(
            f"checkpoint: {path} does not exist; using a randomly initialised '{random_preset}' model instead "
            f"(speed is representative, quality is not)"
        )
        yield Checkpoint(target, f"random '{random_preset}' model ({path} does not exist)")


# ---- arguments -------------------------------------------------------------------------------------------
def fail(message: str, status: int = 2) -> NoReturn:
    """End the script with one ``error:`` line (status 2: bad input, as argparse's errors; 1: a failure)."""
    one_line = " ".join(part.strip() for part in message.splitlines())  # torch's messages run over several
    print(f"error: {one_line}", file=sys.stderr)
    raise SystemExit(status)


def _output_argument(check: Callable[[Path, str], None], text: str) -> Path:
    try:
        check(Path(text), "to")
    except OutputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(text)


def output_file(text: str) -> Path:
    """argparse type for a file written at the end (``--json``): refused up front, rather than after the figures
    have been measured, where it is a folder or cannot be created."""
    return _output_argument(check_file, text)


def output_folder(text: str) -> Path:
    """argparse type for a folder that a script writes into (created where absent); refused up front like
    ``output_file``."""
    return _output_argument(check_folder, text)


def int_list(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16] (argparse type)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


class _DataParser(argparse.ArgumentParser):
    """A parser of ``--data``, ``--split`` and ``--json`` whose arguments, once parsed, also have the JSON apart from
    the slices read (``check_outside_data``): every such script checks it before it measures anything."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        check_outside_data(parsed.json, "--json", parsed.data, parsed.split)
        return parsed, rest


def benchmark_parser(
    description: str | None, *, images: int | None, checkpoint: bool = True
) -> argparse.ArgumentParser:
    """A script's parser with the flags every script shares: data and how many distinct slices of it (``images``
    by default; None: the script reads no data), threads, JSON output (and the checkpoint, where a script loads one)."""
    kind = argparse.ArgumentParser if images is None else _DataParser
    parser = kind(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if images is not None:
        parser.add_argument(
            "--data",
            type=Path,
            help=f"OASIS root (default: {DEFAULT_DATA_ROOT}, and synthetic slices where that does not exist)",
        )
        parser.add_argument(
            "--split", help=f"split name or sub-folder of --data, '' for --data itself (default: {DEFAULT_SPLIT})"
        )
        parser.add_argument(
            "--images", type=positive_int, default=images, help="distinct slices (default: %(default)s)"
        )
    parser.add_argument(
        "--threads",
        type=int_from_to(0, max_torch_threads()),
        default=0,
        help=f"torch intra-op threads (0 = torch's default; at most {max_torch_threads()})",
    )
    parser.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
    if checkpoint:
        parser.add_argument(
            "--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to measure (default: %(default)s)"
        )
        parser.add_argument(
            "--random-preset",
            default="default",
            choices=sorted(PRESETS),
            help="architecture of the random model used when --checkpoint does not exist (default: %(default)s)",
        )
    return parser


def check_outside_data(
    output: Path | None, what: str, data: Path | None, *splits: str | None, folder: bool = False
) -> None:
    """``output`` (a file, or a ``folder``) is apart from the folders the script reads slices from (``--data`` and
    ``splits``, with ``data_folder``'s defaults; ``training.outputs.check_apart``): JSON written over a slice, or
    beside them, damages the data. One error line, exit 2, before anything is measured."""
    if output is None:
        return
    for read in (found for split in splits for found in image_folders(*data_folder(data, split))):
        try:
            check_apart(output, read, f"{what} would replace a slice or be mixed into the data", folder=folder)
        except OutputError as exc:
            fail(str(exc))


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    problem = not_replaceable(path)
    if problem:  # checked up front (``output_file``), but the file system may have changed since
        fail(f"cannot write the figures to {path}: {problem}", 1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json_text(payload, default=str) + "\n")  # a rate over no time: null, not NaN
    except OSError as exc:  # checked up front (``output_file``), but the file system may have changed since
        fail(f"cannot write the figures to {path}: {exc.strerror or exc}", 1)
    print(f"figures written to {path}")


# ---- timing ----------------------------------------------------------------------------------------------
def time_calls(call: Callable[[int], object], *, warmup: int, repeats: int, seconds: float) -> list[float]:
    """Seconds per call of ``call(i)``: ``warmup`` untimed calls, then at least ``repeats`` calls and ``seconds``."""
    for i in range(warmup):
        call(i)
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < max(1, repeats) or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        call(warmup + len(durations))
        durations.append(time.perf_counter() - t0)
    return durations


def abba(round_index: int, pair: tuple[str, str]) -> tuple[str, str]:
    """The order of two variants in a round: AB, BA, BA, AB, then again, so both meet slow and fast spells alike."""
    return pair if round_index % 4 in (0, 3) else (pair[1], pair[0])


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """{'p50': ..., 'p95': ..., 'p99': ...}; NaN for an empty list."""
    if not values:
        return {f"p{p}": float("nan") for p in points}
    found = np.percentile(np.asarray(values, dtype=np.float64), list(points))
    return {f"p{p}": float(v) for p, v in zip(points, found, strict=True)}


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")
