"""What a request gets when the server stops waiting for it at shutdown."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.middleware import send_json_error

SHUTTING_DOWN = "the server is shutting down and stopped this request; send it again (another instance may answer)"


class ShutdownMiddleware:
    """Pure ASGI: answer a JSON 503 with ``Retry-After`` for a request that uvicorn cancels at shutdown, when
    ``VQVAE_SHUTDOWN_TIMEOUT_S`` has passed (or at a second Ctrl-C). Before, such a request got uvicorn's
    ``text/plain`` 500 "Internal Server Error", and the log one traceback per request.

    The request's task ends here, cancellation and all: the server that cancelled it is stopping. A request cancelled
    from inside the app (``app.hang_up``) never gets here: that middleware, inside this one, ends it itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answering = False

        async def tracked_send(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if not answering:  # an answer under way is cut short: uvicorn closes its connection
                await send_json_error(send, 503, SHUTTING_DOWN, close=True, headers=[(b"retry-after", b"1")])
