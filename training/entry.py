"""The console scripts' entry points, light to import: a Ctrl-C while the command's own modules import (torch
alone takes a second or two) ends it in one line, as it does once the command runs. Before, it printed a
22-line ``KeyboardInterrupt`` traceback, even for ``--help``. SIGTERM then already ended it without one."""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable


def run(module: str, program: str) -> int:
    """Import ``module`` and run its ``main()``; 130 and one line if interrupted while importing."""
    try:
        main: Callable[[], int] = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"\n{program}: interrupted while starting", file=sys.stderr)
        return 128 + signal.SIGINT
    return main()


def train() -> int:
    return run("training.train", "vqvae-train")


def evaluate() -> int:
    return run("training.evaluate", "vqvae-eval")
