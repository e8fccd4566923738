"""The FastAPI app factory and the ``vqvae-serve`` command.

``create_app`` builds routes and middleware only; the checkpoint is loaded once by the lifespan, when a server
starts the app, never at import.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from uvicorn.config import LOGGING_CONFIG

from app.arguments import positive_int
from app.errors import format_validation_errors, install_error_handlers
from app.inference import InferenceService, StartupError, check_checkpoint
from app.metrics import Metrics, MetricsMiddleware, shared_by_workers
from app.middleware import BodySizeLimitMiddleware, QuietStartupFailureMiddleware, UnexpectedErrorMiddleware
from app.routes import codec, health, metrics, model
from app.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Compress brain-MRI slices into a small grid of VQ-VAE codebook indices and decode them back.

* `POST /encode` an image (multipart field `file`) to get its index grid;
* `POST /decode` an index grid (JSON) to get the 8-bit PNG back;
* `POST /reconstruct` an image to see the round trip and its SSIM / PSNR.

Images keep their size (padded to the model's stride inside, cropped back); colour is converted to grayscale.
Errors are JSON `{"detail": "..."}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own settings and metrics registry; the lifespan loads the model."""
    settings = settings or Settings()
    app_metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            service = await run_in_threadpool(InferenceService.start, settings, app_metrics.observe_batch)
        except StartupError as exc:
            logger.error("startup failed: %s", exc)
            app.state.startup_error = str(exc)  # said in one line: QuietStartupFailureMiddleware drops the traceback
            raise
        app.state.service = service
        app_metrics.model_loads.inc()
        try:
            yield
        finally:
            app.state.service = None
            await run_in_threadpool(service.close)

    app = FastAPI(title="Brain-MRI VQ-VAE", version="1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = app_metrics
    app.state.service = None
    app.state.startup_error = None
    routers = (codec.router, model.router, health.router, metrics.router)
    for router in routers:
        app.include_router(router)
    docs = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    known_paths = frozenset(
        [getattr(route, "path", "") for router in routers for route in router.routes] + [url for url in docs if url]
    )
    install_error_handlers(app)
    # Last added runs first: metrics see every answer, including the 500s and 413s given below them.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=app_metrics, known_paths=known_paths)
    app.add_middleware(QuietStartupFailureMiddleware, state=app.state)
    return app


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
    parser.add_argument("--port", type=int, default=8000)
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
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // workers)


def share_cpus_among_workers(workers: int) -> None:
    """Give each worker process its share of the CPUs for torch, unless VQVAE_TORCH_THREADS says otherwise.

    torch's default is one thread per core in every process, so N workers would run N teams of that many
    OpenMP threads on the same cores, each waiting at barriers for partners that lost their core.
    """
    if workers > 1 and not os.environ.get("VQVAE_TORCH_THREADS"):
        os.environ["VQVAE_TORCH_THREADS"] = str(threads_per_worker(workers))


def main(argv: Sequence[str] | None = None) -> int:
    """Check settings and checkpoint up front (one clear line on failure), then run uvicorn with the factory."""
    args = _parse_args(argv)
    if args.checkpoint is not None:
        os.environ["VQVAE_CHECKPOINT"] = str(args.checkpoint.resolve())  # the worker processes read it too
    share_cpus_among_workers(args.workers)
    try:
        settings = Settings()
        check_checkpoint(settings)
    except ValidationError as exc:
        print(f"vqvae-serve: invalid settings: {format_validation_errors(exc.errors())}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"vqvae-serve: {exc}", file=sys.stderr)
        return 2

    with shared_by_workers(args.workers):
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level,
            log_config=_log_config(settings.log_level),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
