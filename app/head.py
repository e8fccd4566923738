"""HEAD wherever GET is served."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HeadAsGetMiddleware:
    """Route a HEAD request as the GET of its path. HTTP asks every server to answer HEAD where it answers GET
    (RFC 9110, 9.3.2), and uptime checkers and load balancers probe with it; FastAPI's GET routes answered 405.

    The app below sees a GET and answers it whole; the server sends that answer's headers (``Content-Length``
    included) without its body, since its own record of the request still says HEAD: uvicorn's, from the scope it
    made, which this copies rather than changes. Outer middleware, the metrics among them, see the HEAD."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)
