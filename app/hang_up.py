"""Stop working for a caller who hung up before their answer started.

A request whose client disconnected went on to the end: it kept its place in the model's queue and its forward pass
ran, for an answer no one would read (the server drops what is sent to a closed connection). Under overload,
callers that give up and retry then fill the queue with work for no one, and every live caller waits behind it. So
once a request's body is in, its connection is watched; when the caller goes away before the answer has started,
the request's task is cancelled. The micro-batcher skips a cancelled request that no batch has taken yet
(``MicroBatcher.submit``); one already in a forward pass finishes with its batch.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from app.metrics import REFUSED_BY_HTTP_LAYER
from app.middleware import AnswerWatch

# What the metrics count for a request whose caller hung up first (nginx's "client closed request"). Sent to a closed
# connection, it reaches no one: uvicorn drops what is sent after a disconnect.
CLIENT_CLOSED_REQUEST = 499
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})  # cheap answers with no body to wait for: not watched
_ACCESS_LOG = logging.getLogger("uvicorn.access")  # uvicorn's: its level, handlers and --no-access-log apply


class HangUpMiddleware:
    """Pure ASGI: cancel a request whose caller disconnects after sending its body and before the answer starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in _BODYLESS:
            await self.app(scope, receive, send)
            return
        body_in = asyncio.Event()
        answer = AnswerWatch(send)
        gone_mid_body = False

        async def tracked_receive() -> Message:
            nonlocal gone_mid_body
            message = await receive()
            if message["type"] == "http.disconnect":
                gone_mid_body = gone_mid_body or not body_in.is_set()  # a later disconnect read must not undo it
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_in.set()
            return message

        async def answer_unless_gone(message: Message) -> None:
            """A caller gone with its body half sent gets its 400 ("error parsing the body") counted as a 499: it
            was counted as the caller's mistake, and nothing reaches it either way."""
            if gone_mid_body and message["type"] == "http.response.start":
                _log_closed_request(scope)
            await answer(_as_closed_request(message) if gone_mid_body else message)

        handling = asyncio.ensure_future(self.app(scope, tracked_receive, answer_unless_gone))
        watching = asyncio.ensure_future(_hung_up(receive, body_in))
        try:
            await asyncio.wait({handling, watching}, return_when=asyncio.FIRST_COMPLETED)
            if handling.done() or answer.started:  # answered, or answering: let the answer finish
                await handling
                return
            handling.cancel()
            await asyncio.wait({handling})  # not ``await handling``: that would swallow our own cancellation too
            if not handling.cancelled():
                handling.exception()  # retrieved: whatever it raised while stopping has no caller left to tell
            _log_closed_request(scope)
            await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        finally:
            for task in (handling, watching):
                task.cancel()


def _log_closed_request(scope: Scope) -> None:
    """The access-log line of a 499, as uvicorn writes one as an answer starts: it writes none for an answer to a
    closed connection, so callers giving up were in the metrics only (a review). Not for a request the HTTP layer
    answered itself (a chunked body that cannot be parsed): its app was told that the client left, and it did not."""
    if not scope.get(REFUSED_BY_HTTP_LAYER):
        _ACCESS_LOG.info(
            '%s - "%s %s HTTP/%s" %d',  # uvicorn's format, whose arguments app.logs reads as fields
            get_client_addr(scope),  # type: ignore[arg-type]  # typed for uvicorn's own scope, a TypedDict
            scope["method"],
            get_path_with_query_string(scope),  # type: ignore[arg-type]
            scope["http_version"],
            CLIENT_CLOSED_REQUEST,
        )


def _as_closed_request(message: Message) -> Message:
    """An answer's message, made the bodiless 499 of a caller who is gone."""
    if message["type"] == "http.response.start":
        return {"type": message["type"], "status": CLIENT_CLOSED_REQUEST, "headers": []}
    return {**message, "body": b""}


async def _hung_up(receive: Receive, body_in: asyncio.Event) -> None:
    """Return once the caller has disconnected, after the request's body is in (before, the app's own reads see it)."""
    await body_in.wait()
    while (await receive())["type"] != "http.disconnect":
        pass  # nothing else comes once the body is in; were it to, it is not this request's to read
