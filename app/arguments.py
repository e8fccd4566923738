"""argparse types shared by the command-line tools (``vqvae-serve`` and the benchmarks); no FastAPI or torch here,
so a script can import it cheaply."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from models.cpus import THREADS_PER_CPU_LIMIT, max_torch_threads


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _at_least(text: str, minimum: int, rule: str) -> int:
    value = _whole_number(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (workers, rounds, requests)."""
    return _at_least(text, 1, "at least 1")


def worker_count(text: str) -> int:
    """argparse type for server processes (``vqvae-serve --workers``, ``bench_service --workers``). Each holds a
    model (about 400 MB): 100000 of them is a typo, not a setting."""
    value = positive_int(text)
    if value > max_torch_threads():
        raise argparse.ArgumentTypeError(
            f"at most {max_torch_threads()} ({THREADS_PER_CPU_LIMIT} per usable CPU), got {value}"
        )
    return value


def host_name(text: str) -> str:
    """argparse type for an interface to listen on. An empty one (``--host "$HOST"`` with the variable unset)
    made uvicorn listen on every interface, IPv4 and IPv6, beyond the default's 127.0.0.1. A bracketed IPv6
    address failed after start-up as a host that does not resolve, shown as ``[[::1]]:8000``."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name an interface or address (0.0.0.0 for all of them), got ''")
    if text.startswith("[") and text.endswith("]"):  # as in a URL; the socket layer takes the bare address
        raise argparse.ArgumentTypeError(f"write an IPv6 address without brackets ({text[1:-1]}), got {text!r}")
    return text


def checkpoint_path(text: str) -> Path:
    """argparse type for ``vqvae-serve --checkpoint``. An empty one (``--checkpoint "$CKPT"`` with the variable
    unset) was read as the current folder: "cannot load checkpoint: /srv: a folder, not a checkpoint file" (a
    review). ``VQVAE_CHECKPOINT=`` is refused alike by the settings."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; leave it out to serve the shipped checkpoint, or name a .safetensors")
    return Path(text)


MAX_PORT = 65535


def port_number(text: str) -> int:
    """argparse type for a TCP port to listen on: 0 (any free port) to 65535, refused up front rather than by the
    socket layer after start-up has begun."""
    value = _whole_number(text)
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 to {MAX_PORT}, got {value}")
    return value


def int_from_to(low: int, high: int) -> Callable[[str], int]:
    """argparse type for a whole number from ``low`` to ``high``: a bound the value would otherwise meet deep in a
    run (100000 torch threads ended in a segfault; a batch of 2000 in a traceback)."""

    def parse(text: str) -> int:
        value = _whole_number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be 0 (warm-up steps)."""
    return _at_least(text, 0, "0 or more")


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and (value > 0 or (zero and value == 0))):
        rule = "0 or more" if zero else "above 0"
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds {rule}, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type for a finite time budget above 0 (NaN and inf would only fail later, inside arithmetic)."""
    return _seconds(text, zero=False)


def non_negative_seconds(text: str) -> float:
    """argparse type for a finite least time that may be 0 (0: the counts alone decide; inf would never end)."""
    return _seconds(text, zero=True)


seed_number = int_from_to(0, 2**32 - 1)  # argparse type for a random seed: what numpy's legacy seeding takes
