"""HEAD wherever GET is served."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METHOD_NOT_ALLOWED = 405


class HeadAsGetMiddleware:
    """Route a HEAD request as the GET of its path. HTTP asks every server to answer HEAD where it answers GET
    (RFC 9110, 9.3.2), and uptime checkers and load balancers probe with it; FastAPI's GET routes answered 405.

    The app below sees a GET and answers it whole; the server sends that answer's headers (``Content-Length``
    included) without its body, since its own record of the request still says HEAD: uvicorn's, from the scope it
    made, which this copies rather than changes. Outer middleware, the metrics among them, see the HEAD. A 405's
    ``Allow`` names HEAD beside GET too (FastAPI's said "GET" alone)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}

        async def send_allowing_head(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == _METHOD_NOT_ALLOWED:
                headers = message.get("headers", ())  # optional in ASGI
                message = {**message, "headers": [_with_head(name, value) for name, value in headers]}
            await send(message)

        await self.app(scope, receive, send_allowing_head)


def _with_head(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """An ``Allow`` header that lists GET gets HEAD too; any other header is kept as it is."""
    if name.lower() != b"allow":
        return name, value
    methods = [method.strip() for method in value.split(b",")]
    if b"GET" in methods and b"HEAD" not in methods:
        methods.insert(methods.index(b"GET") + 1, b"HEAD")
    return name, b", ".join(methods)
