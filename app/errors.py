"""Exception handlers: every caller mistake becomes ``{"detail": "<one readable sentence>"}`` with its status."""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.batcher import BatcherClosedError, QueueFullError
from app.imaging import ImageError
from app.settings import ENV_PREFIX

_MAX_INPUT_REPR = 40
# Problems named in one 422; the rest are counted. A bad 2 MB grid once got all 700,000 of them: a 50 MB answer.
_MAX_LISTED = 5
_SHOWN_INPUTS = {"int_type", "int_from_float", "list_type", "greater_than_equal", "less_than_equal"}


def _bounded_repr() -> reprlib.Repr:
    """``repr`` that stops early: the wrong input may be a list of 700,000 numbers, of which 40 characters are shown."""
    shortened = reprlib.Repr()
    shortened.maxlevel, shortened.maxlist, shortened.maxtuple = 2, 6, 6
    shortened.maxstring = shortened.maxother = shortened.maxlong = _MAX_INPUT_REPR
    return shortened


_REPR = _bounded_repr()


def format_validation_errors(errors: Sequence[Any], *, every_input: bool = False) -> str:
    """Pydantic errors -> ``indices[1][0]: Input should be a valid integer (got 1.5)``, joined by '; ': the first
    ``_MAX_LISTED``, then how many more. ``every_input``: each located error shows what it was given, not only those
    whose message does not say."""
    parts = [_describe(error, every_input) for error in errors[:_MAX_LISTED]]
    more = len(errors) - len(parts)
    text = "; ".join(parts) or "invalid request"
    return f"{text}; and {more} more" if more > 0 else text


def settings_problems(exc: ValidationError) -> str:
    """The settings' errors named by the variables the operator set (``VQVAE_MAX_PIXELS``, not the field
    ``max_pixels``), each with the value given: "unable to parse string as an integer" alone named neither."""
    named = [
        {**error, "loc": (f"{ENV_PREFIX}{str(error['loc'][0]).upper()}", *error["loc"][1:])}
        if error.get("loc")
        else error
        for error in exc.errors()
    ]
    return format_validation_errors(named, every_input=True)


def _describe(error: Any, every_input: bool = False) -> str:
    """One pydantic error as a sentence a caller can act on."""
    location = _location(error.get("loc", ()))
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if message.startswith("Expected UploadFile"):  # FastAPI's words for a text field: say what to send instead
        message = "send the image as a file part with a filename (curl -F file=@slice.png), not as a text field"
    elif error.get("type") == "missing" and not location:
        message = "the request body is empty"
    if error.get("type") in _SHOWN_INPUTS or (every_input and location and "input" in error):
        shown = _REPR.repr(error.get("input"))
        message += f" (got {shown if len(shown) <= _MAX_INPUT_REPR else shown[:_MAX_INPUT_REPR] + '...'})"
    return f"{location}: {message}" if location else message


def _location(loc: Sequence[Any]) -> str:
    """('body', 'indices', 1, 0) -> 'indices[1][0]'; the 'body' / 'query' prefix says nothing to a caller."""
    text = ""
    for part in loc[1:] if loc and loc[0] in {"body", "query", "path", "header"} else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _json_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _json_error(422, format_validation_errors(exc.errors()))


async def _image(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageError)
    return _json_error(exc.status_code, str(exc))


async def _queue_full(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFullError)
    return _json_error(503, str(exc), {"Retry-After": str(exc.retry_after_s)})


async def _closed(_: Request, exc: Exception) -> JSONResponse:
    return _json_error(503, str(exc), {"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ImageError, _image)
    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(BatcherClosedError, _closed)
