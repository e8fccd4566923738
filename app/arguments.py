"""argparse types shared by the command-line tools (``vqvae-serve`` and the benchmarks); no FastAPI or torch here,
so a script can import it cheaply."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (workers, rounds, requests)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
