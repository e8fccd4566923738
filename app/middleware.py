"""Pure ASGI middleware: request body limit, the last-resort JSON 500, and a quiet start-up failure."""

from __future__ import annotations

import json
import logging

from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


async def send_json_error(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    """Answer ``{"detail": ...}`` straight on the ASGI channel (no framework below us to ask)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the unread rest of the body makes the connection unusable
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_bytes`` (``max_json_bytes`` for JSON): at once from Content-Length, else while
    counting streamed chunks.

    JSON has its own, lower limit because FastAPI parses it on the event loop: an 18 MB body of indices held every
    other request for about a second, while the largest grid a JSON body may carry fits in far less.
    Once over the limit it answers 413 itself, tells the app the client left (``http.disconnect``) and drops
    whatever the app still tries to send, so no framework can turn the overflow into another status.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_json_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = min(max_bytes, max_json_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_json = media_type(_header(scope, b"content-type")) == "application/json"
        limit = self.max_json_bytes if is_json else self.max_bytes

        async def refuse() -> None:  # the message is built only for the rare request that needs it
            detail = f"request body is larger than the limit of {limit} bytes{' for JSON' if is_json else ''}"
            await send_json_error(send, 413, detail, close=True)

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await refuse()
            return

        received = 0
        rejected = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    rejected = True
                    if not started:
                        await refuse()
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise  # the app's fault, not the overflow's: let the error middleware answer


class UnexpectedErrorMiddleware:
    """Any exception that escaped the routes: log it with its traceback, answer a JSON 500 without one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a clean answer; the server closes the connection
            await send_json_error(send, 500, "internal server error; the incident was logged")


class QuietStartupFailureMiddleware:
    """A start-up failure the lifespan has already logged in one line (``state.startup_error``) is not repeated as
    Starlette's traceback, which plain ``uvicorn`` would print whole; unexpected failures keep their traceback."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and getattr(self.state, "startup_error", None):
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, quiet_send)


def media_type(content_type: str) -> str:
    """A Content-Type header's media type, without parameters, lower case ("" for no header)."""
    return content_type.split(";", 1)[0].strip().lower()


def _header(scope: Scope, wanted: bytes) -> str:
    """The first header of that (lower-case) name, "" when absent."""
    for name, value in scope.get("headers", []):
        if name == wanted:
            return str(value.decode("latin-1"))
    return ""


def _content_length(scope: Scope) -> int | None:
    try:
        return int(_header(scope, b"content-length"))
    except ValueError:  # absent, or not a number
        return None
