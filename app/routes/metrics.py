"""GET /metrics in the Prometheus text format: this app's registry, or the sum over the worker processes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.metrics import exposition

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition"}},
    summary="Prometheus metrics: requests by route and status, latency, batch sizes, refusals by the HTTP layer",
)
async def metrics(request: Request) -> Response:
    return Response(exposition(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
