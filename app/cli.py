"""The ``vqvae-serve`` command: check the settings and the checkpoint up front, then run uvicorn.

Kept apart from ``app.main`` so that it imports neither torch nor the model: with ``--workers N`` this process
only supervises the N server processes, and importing torch here would keep its memory for nothing.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.config import LOGGING_CONFIG

from app.arguments import port_number, positive_int
from app.errors import format_validation_errors
from app.http_protocol import ServiceProtocol
from app.metrics import shared_by_workers
from app.settings import Settings
from models.cpus import usable_cpus

APP_FACTORY = "app.main:create_app"


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config plus our ``app`` loggers on the same handler (also in worker processes)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["app"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vqvae-serve", description="Serve the VQ-VAE over HTTP (settings: VQVAE_* environment variables)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    parser.add_argument("--port", type=port_number, default=8000, help="TCP port (0: any free one)")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes, each with its own model; unless VQVAE_TORCH_THREADS is set, each gets an equal "
        "share of the usable CPUs for torch",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint file (default: VQVAE_CHECKPOINT or the shipped one)"
    )
    return parser.parse_args(argv)


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' share of the usable CPUs, at least one."""
    return max(1, usable_cpus() // workers)


def share_cpus_among_workers(workers: int) -> None:
    """Give each worker process its share of the CPUs for torch, unless VQVAE_TORCH_THREADS says otherwise.

    torch's default is one thread per core in every process, so N workers would run N teams of that many
    OpenMP threads on the same cores, each waiting at barriers for partners that lost their core.
    """
    if workers > 1 and not os.environ.get("VQVAE_TORCH_THREADS"):
        os.environ["VQVAE_TORCH_THREADS"] = str(threads_per_worker(workers))


def check_before_serving(settings: Settings, workers: int) -> str | None:
    """Load the checkpoint once and drop it: what is wrong with it, or None.

    With one worker this process is the server, so the check runs here (``check_checkpoint`` keeps it off the
    main thread). With several, a spawned child process runs it; it reads the same settings from this
    environment, which it inherits, and this process never imports torch.
    """
    if workers == 1:
        from app.inference import checkpoint_problem as here  # torch: this process will serve

        return here(settings)
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(_check_in_child).result()
    except BrokenProcessPool as exc:
        return f"the checkpoint check's process died before answering ({exc})"


def _check_in_child() -> str | None:
    """Runs in the child: the import of torch happens there."""
    from app.inference import checkpoint_problem as in_child

    return in_child()


def main(argv: Sequence[str] | None = None) -> int:
    """Check settings and checkpoint up front (one clear line on failure), then run uvicorn with the factory."""
    args = _parse_args(argv)
    if args.checkpoint is not None:
        os.environ["VQVAE_CHECKPOINT"] = str(args.checkpoint.resolve())  # the worker processes read it too
    share_cpus_among_workers(args.workers)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"vqvae-serve: invalid settings: {format_validation_errors(exc.errors())}", file=sys.stderr)
        return 2
    problem = check_before_serving(settings, args.workers)
    if problem is not None:
        print(f"vqvae-serve: {problem}", file=sys.stderr)
        return 2

    with shared_by_workers(args.workers):
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level,
            log_config=_log_config(settings.log_level),
            http=ServiceProtocol,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
