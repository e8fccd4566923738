"""The docs pages' assets (``/docs-assets``) answer their errors in JSON, as every other part of the service does."""

from __future__ import annotations

from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.middleware import error_body

_REPLACED = {b"content-type", b"content-length"}


class JSONStaticErrors:
    """Wraps the static-files app, whose ``FileResponse`` answers a malformed ``Range`` header with a ``text/plain``
    400 (``Range header: ...``) and a range past the end with an empty 416, unlike every error of the app's own
    (uvicorn's empty 403 to a WebSocket handshake is outside the app). Its other errors (404, 405) are already
    raised to the app's handlers; answers under 400 (200, 206, 304) pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Any scope: only an HTTP answer's error start is held, so other messages (a WebSocket's) pass as they are.
        held: Message | None = None  # an error's start, sent once its body is in
        text = bytearray()

        async def json_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            text.extend(message.get("body", b""))
            if not message.get("more_body", False):
                await _send_json(send, held, text.decode("utf-8", "replace"))

        await self.app(scope, receive, json_send)


async def _send_json(send: Send, start: Message, text: str) -> None:
    """The held error again, its text (or what its status and ``Content-Range`` say) as ``{"detail": ...}``."""
    status: int = start["status"]
    headers = [(name, value) for name, value in start.get("headers", []) if name.lower() not in _REPLACED]
    detail = text.strip() or HTTPStatus(status).phrase
    size = dict(headers).get(b"content-range", b"").rpartition(b"/")[2]
    if status == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE and size.isdigit():
        detail = f"the requested range is not satisfiable: the file has {int(size)} bytes"
    body = error_body(detail)
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})
