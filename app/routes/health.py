"""GET /healthz (the process answers) and /readyz (the checkpoint is loaded and the model thread runs)."""

from __future__ import annotations

from fastapi import APIRouter

from app.routes.deps import Service, error_responses
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=error_responses(503), summary="Readiness: model loaded")
async def readyz(_: Service) -> Health:
    return Health(status="ready")
