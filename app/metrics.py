"""Prometheus metrics in a per-app registry (tests build many apps; the global registry would collide), summed
over the worker processes when the service runs several."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
UNMATCHED = "unmatched"  # one label for every unknown path, so scanners cannot blow up the label set
# Methods counted by name; any other (PROPFIND, MKCALENDAR...: the HTTP parser takes 34) as "other", for the same
# reason: 1,700 tiny requests of every method on every route made 10,000 series, and /metrics 1 MB (a review).
COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


# Why the HTTP layer (``app.http_protocol``) answered a connection or request itself, before the app saw a request:
# these answers are in no ``vqvae_http_requests`` count, whose middleware never runs for them.
REFUSAL_REASONS = {
    "max_connections": "503, a connection past VQVAE_MAX_CONNECTIONS",
    "header_timeout": "408, headers not in full within VQVAE_HEADER_TIMEOUT_S",
    "header_too_large": "431, request line and headers too large",
    "invalid_request": "400, a request that could not be parsed",
}
# Set in a request's scope by the HTTP layer when it answers a request the app had begun to read (a chunked body
# that cannot be parsed): the app's answer reaches no one, and the request is counted as the refusal it is only.
REFUSED_BY_HTTP_LAYER = "vqvae.refused_by_http_layer"
# One per process, not per app: the HTTP protocol knows no app. Each app's registry lists it (a collector may be in
# several registries); under --workers its values are file-backed like the others' and summed by /metrics.
HTTP_REFUSALS = Counter(
    "vqvae_http_refused",
    "connections and requests refused by vqvae-serve's HTTP layer before reaching the app, by reason: "
    + "; ".join(f"{reason} ({meaning})" for reason, meaning in REFUSAL_REASONS.items()),
    ["reason"],
    registry=None,
)


class Metrics:
    """Request counts by route template and status, latency in seconds, inference batch sizes and times, and the
    process's refusals by the HTTP layer (``HTTP_REFUSALS``).

    The time of a batch's pass beside the request latency tells queueing and HTTP apart from the model.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Where every process's values are, if prometheus_client chose file-backed values when it was imported
        # (the folder variable set then); None: this process's values are in its own memory.
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_ENV) if _file_backed_values() else None
        self.model_loads = Counter(
            "vqvae_model_loads",
            "checkpoint loads completed: one per server process start (several with --workers, more on restarts)",
            registry=self.registry,
        )
        self.requests = Counter(
            "vqvae_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vqvae_http_request_duration_seconds",
            "time from the request's arrival to its response's last byte",
            ["method", "route"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "vqvae_inference_batch_size",
            "requests grouped into one forward pass",
            ["operation"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "vqvae_inference_batch_duration_seconds",
            "time of one batch's forward pass, with its scoring for /reconstruct, on its model thread",
            ["operation"],
            registry=self.registry,
        )
        self.registry.register(HTTP_REFUSALS)
        for reason in REFUSAL_REASONS:  # each shown from the start, at 0, so that an alert on its rate has a series;
            HTTP_REFUSALS.labels(reason=reason)  # here, not at import: the supervisor would write a file of zeros

    def observe_batch(self, operation: str, size: int, seconds: float) -> None:
        self.batch_size.labels(operation=operation).observe(size)
        self.batch_seconds.labels(operation=operation).observe(seconds)


def _file_backed_values() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


@contextmanager
def shared_by_workers(workers: int) -> Iterator[None]:
    """Several worker processes: each counts in its own memory, so /metrics would show only the one that answered.

    prometheus_client's multiprocess mode has every process write its values to files in one folder, which
    ``exposition`` sums. The folder must be named before the workers import prometheus_client (they inherit the
    environment) and must start empty, so each run gets a new one, removed at the end. A folder the user already
    named is used as it is (emptying it between runs is then theirs to do, as prometheus_client says).
    """
    if workers <= 1 or os.environ.get(MULTIPROCESS_DIR_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="vqvae-metrics-") as folder:
        os.environ[MULTIPROCESS_DIR_ENV] = folder
        try:
            yield
        finally:
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)


def exposition(metrics: Metrics) -> bytes:
    """The Prometheus text for /metrics: this app's registry, or every worker's values in multiprocess mode."""
    if metrics.multiprocess_dir is None:
        return generate_latest(metrics.registry)
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path=metrics.multiprocess_dir)
    return generate_latest(combined)


class MetricsMiddleware:
    """Pure ASGI: times every HTTP request and counts it under its route template (``/encode``, not the URL)."""

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, known_paths: frozenset[str], mounts: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths  # our templates have no parameters: for them path == template
        self.mounts = mounts  # prefixes whose every path is one route (the docs pages' assets)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app dies before answering, the server answers 500
        path = _route_path(scope)  # now: the router rewrites the scope's root_path for a mount's files

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if not scope.get(REFUSED_BY_HTTP_LAYER):
                method = scope["method"] if scope["method"] in COUNTED_METHODS else OTHER_METHOD
                route = self._route(scope, path)
                self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
                self.metrics.latency.labels(method=method, route=route).observe(time.perf_counter() - start)

    def _route(self, scope: Scope, path: str) -> str:
        """The template the router matched; for answers given before routing (413), ``path`` if it is ours."""
        template = getattr(scope.get("route"), "path", None)
        if isinstance(template, str):
            return template
        if path in self.known_paths:
            return path
        # A mount's files: the router sets no route for them, and they counted as "unmatched", among the 404s.
        return next((mount for mount in self.mounts if path.startswith(f"{mount}/")), UNMATCHED)


def _route_path(scope: Scope) -> str:
    """The request's path without the prefix it is served under (``VQVAE_ROOT_PATH``), which uvicorn puts in both
    ``root_path`` and ``path``: the path the routes are declared with."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(f"{root}/") else path
