"""The FastAPI app factory (the ``vqvae-serve`` command is ``app.cli``).

``create_app`` builds routes and middleware only; the checkpoint is loaded once by the lifespan, when a server
starts the app, never at import.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.routing import Mount

from app.errors import install_error_handlers
from app.hang_up import HangUpMiddleware
from app.head import HeadAsGetMiddleware
from app.inference import InferenceService, StartupError
from app.libtiff import silence_libtiff
from app.metrics import Metrics, MetricsMiddleware
from app.middleware import (
    BodySizeLimitMiddleware,
    BodyTimeoutMiddleware,
    ContentEncodingMiddleware,
    MultipartEndMiddleware,
    QuietStartupFailureMiddleware,
    UnexpectedErrorMiddleware,
)
from app.routes import codec, health, metrics, model
from app.settings import Settings
from app.startup_objects import startup_objects_frozen
from app.static_errors import JSONStaticErrors

logger = logging.getLogger(__name__)
# python-multipart logs each malformed form it is sent ("Expected boundary character 45, got ...") as a warning;
# with no handler of its own, every one became a raw line on the server's stderr, written at the caller's will.
# The caller's 400 says what was wrong; the server's log keeps the parser's errors only (a temporary file it
# could not open, say).
MULTIPART_LOG_LEVEL = logging.ERROR

TITLE = "Brain-MRI VQ-VAE"  # the schema's and the docs pages'
DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's scripts and styles

DESCRIPTION = """\
Compress brain-MRI slices into a small grid of VQ-VAE codebook indices and decode them back.

* `POST /encode` an image (multipart field `file`) to get its index grid;
* `POST /decode` an index grid (JSON) to get the 8-bit PNG back;
* `POST /reconstruct` an image to see the round trip and its SSIM / PSNR.

Images keep their size (padded to the model's stride inside, cropped back); colour is converted to grayscale.
Errors are JSON `{"detail": "..."}`. Every `GET` answers `HEAD` too (headers only), as uptime checkers and load
balancers probe with either.
"""


def _docs_app(docs: bool, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]]) -> FastAPI:
    """The app, with the docs pages and the schema (``VQVAE_DOCS``) or without: none of their paths is served then."""
    options: dict[str, Any] = {"title": TITLE, "version": "1.0", "description": DESCRIPTION}
    # /encode/ is a 404, not a 307 to /encode: that redirect named an absolute http:// URL, wrong behind a TLS proxy,
    # and a client that follows it with a POST sends its whole upload twice.
    options.update(lifespan=lifespan, redirect_slashes=False)
    if not docs:
        return FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **options)
    # FastAPIOffline: the docs pages' assets come from the installed package, not from a CDN (air-gapped networks).
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io either
        **options,
    )
    for route in app.routes:  # the docs pages' assets, mounted by FastAPIOffline
        if isinstance(route, Mount) and route.path == DOCS_ASSETS:
            route.app = JSONStaticErrors(route.app)
    return app


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own settings and metrics registry; the lifespan loads the model."""
    settings = settings or Settings()
    app_metrics = Metrics()
    logging.getLogger("python_multipart").setLevel(MULTIPART_LOG_LEVEL)
    if not silence_libtiff():  # its lines about corrupt TIFF uploads, likewise (app.libtiff)
        # Said where it matters: a JSON log would get libtiff's plain lines again (a review).
        logger.log(
            logging.WARNING if settings.log_format == "json" else logging.DEBUG,
            "libtiff's messages about corrupt TIFF uploads could not be switched off: they reach stderr as plain "
            "lines, outside the log's format",
        )

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
        if problem := codec.json_limit_problem(service.config, settings):
            logger.warning(problem)
        try:
            with startup_objects_frozen():  # the first burst of requests no longer pays a full collection
                yield
        finally:
            app.state.service = None
            await run_in_threadpool(service.close)

    app = _docs_app(settings.docs, lifespan)
    app.state.settings = settings
    app.state.metrics = app_metrics
    app.state.service = None
    app.state.startup_error = None
    routers = (codec.router, model.router, health.router, *([metrics.router] if settings.metrics else []))
    for router in routers:
        app.include_router(router)
    # The routers' own routes, then the app's (docs pages, their assets, the schema): FastAPI lists an included
    # router in app.routes as one entry without a path.
    routes = [*(route for router in routers for route in router.routes), *app.routes]
    known_paths = frozenset(path for route in routes if isinstance(path := getattr(route, "path", None), str))
    install_error_handlers(app)
    # Last added runs first: metrics see every answer, including the 500s, 413s and 408s given below them.
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(MultipartEndMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes, max_json_bytes=settings.max_json_bytes
    )
    app.add_middleware(ContentEncodingMiddleware)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(HangUpMiddleware)  # inside the metrics, which count its 499s
    # Outside the hang-up watch, whose own cancellations it must not see; inside the metrics, which count its answers.
    app.add_middleware(UnexpectedErrorMiddleware)
    mounts = frozenset(route.path for route in routes if isinstance(route, Mount))
    app.add_middleware(MetricsMiddleware, metrics=app_metrics, known_paths=known_paths, mounts=mounts)
    app.add_middleware(QuietStartupFailureMiddleware, state=app.state)
    return app
