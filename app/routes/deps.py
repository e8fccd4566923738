"""Shared route dependencies: the loaded service, content-type and form guards, documented error answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from app.inference import InferenceService
from app.middleware import MULTIPART_UNFINISHED, media_type
from app.schemas import ErrorResponse

_ERROR_TEXT = {
    400: "undecodable, empty or unsupported image, invalid image dimensions, or a multipart body cut short; for "
    "JSON, a body that cannot be parsed",
    406: "the Accept header allows none of the types the endpoint answers (the message lists them)",
    408: "the request body did not arrive in full in time (VQVAE_BODY_TIMEOUT_S)",
    413: "body or pixel count over the limit",
    431: "an Accept header over 4,096 characters",
    415: "wrong content type, or a compressed body (a Content-Encoding other than identity, a Transfer-Encoding "
    "other than chunked)",
    422: "invalid fields (the message names them)",
    503: "model not loaded yet, or too many requests (or pixels) queued (see Retry-After)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    return {code: {"model": ErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}


async def get_service(request: Request) -> InferenceService:
    """The loaded service, or 503. ``async`` on purpose: FastAPI runs a plain ``def`` dependency on a worker
    thread, two thread switches per request for a dictionary look-up (``python -m benchmarks.bench_app``)."""
    service: InferenceService | None = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        raise HTTPException(503, "model not loaded yet; retry shortly", headers={"Retry-After": "5"})
    return service


Service = Annotated[InferenceService, Depends(get_service)]


def require_content_type(expected: str, hint: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency answering 415 unless the request's media type is ``expected`` (parameters ignored)."""

    async def check(request: Request) -> None:
        given = request.headers.get("content-type", "")
        if media_type(given) != expected:
            shown = f"unsupported content type {given!r}" if given else "no content type"
            raise HTTPException(415, f"{shown}: expected {expected} ({hint})")

    return check


async def complete_form(request: Request) -> None:
    """400 for a multipart body that ended before its closing boundary (``app.middleware.MultipartEndMiddleware``):
    the parser keeps the parts it finished, so a cut-short upload would otherwise read as a missing field."""
    if request.scope.get(MULTIPART_UNFINISHED):
        raise HTTPException(
            400,
            "the multipart body is incomplete: it ends before its closing boundary (upload cut short?); send the "
            "whole form",
        )


async def one_file(request: Request) -> None:
    """422 when the ``file`` field comes more than once: FastAPI would silently take the last. The form is the one
    FastAPI has already parsed (Starlette keeps it), so this costs a look-up."""
    count = len((await request.form()).getlist("file"))
    if count > 1:
        raise HTTPException(422, f"file: send one image per request; the field came {count} times")
