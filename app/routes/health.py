"""GET /healthz (the process answers) and /readyz (the checkpoint is loaded and the model thread runs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

from app.routes.deps import Service, error_responses
from app.schemas import Health

router = APIRouter(tags=["health"])

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def probe(path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Serve ``path`` for GET and for HEAD: load balancers and uptime checkers often probe with HEAD (FastAPI's GET
    routes answer it with 405). One route per method, so each has its own OpenAPI operation ID: one route for both
    gave the schema the same ID twice ("Duplicate Operation ID"), which breaks client generators."""

    def register(endpoint: Endpoint) -> Endpoint:
        for method in ("GET", "HEAD"):
            router.add_api_route(path, endpoint, methods=[method], response_model=Health, **options)
        return endpoint

    return register


@probe("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@probe("/readyz", responses=error_responses(503), summary="Readiness: model loaded")
async def readyz(_: Service) -> Health:
    return Health(status="ready")
