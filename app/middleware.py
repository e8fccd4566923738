"""Pure ASGI middleware: request body size and time limits, no compressed bodies, the multipart end check, the
last-resort JSON 500 (and 503 at shutdown), the answer watch, and a quiet start-up failure."""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
from collections.abc import Sequence

from python_multipart.multipart import parse_options_header
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


def error_body(detail: str) -> bytes:
    """``{"detail": ...}`` written as the routes' answers are (Starlette's JSONResponse: compact, UTF-8), so that an
    answer from below the framework reads like the rest."""
    return json.dumps({"detail": detail}, ensure_ascii=False, separators=(",", ":")).encode()


async def send_json_error(
    send: Send, status: int, detail: str, *, close: bool = False, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer ``{"detail": ...}`` straight on the ASGI channel (no framework below us to ask)."""
    body = error_body(detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if close:  # the unread rest of the body makes the connection unusable
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _disconnect() -> Message:
    """What the app hears after a middleware has answered for it: the client left, so it stops reading."""
    return {"type": "http.disconnect"}


class EarlyAnswer:
    """A middleware's own error answer, given while the app below may still be reading the body.

    Once given, the app hears that the client left (``http.disconnect``), whatever it still sends is dropped and
    whatever it raises is swallowed, so no framework can turn the refusal into another status. Shared by the
    body-size and body-time limits.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self.given = False
        self._started = False  # the app's own answer has begun: too late for ours

    async def give(self, status: int, detail: str) -> Message:
        """Answer ``status`` (the connection is closed after it); returns the message to hand the app instead."""
        self.given = True
        if not self._started:
            await send_json_error(self._send, status, detail, close=True)
        return _disconnect()

    async def send(self, message: Message) -> None:
        """The ``send`` to give the app: passes its messages on until an early answer was given."""
        if self.given:
            return
        if message["type"] == "http.response.start":
            self._started = True
        await self._send(message)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send | None = None) -> None:
        """Call the app with ``receive`` and ``send`` (this object's own by default; a given one must pass its
        messages on to ``self.send``)."""
        try:
            await app(scope, receive, send or self.send)
        except Exception:
            if not self.given:
                raise  # the app's fault, not the refusal's: let the error middleware answer


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_bytes`` (``max_json_bytes`` for JSON): at once from Content-Length, else while
    counting streamed chunks.

    JSON has its own, lower limit because FastAPI parses it on the event loop: an 18 MB body of indices held every
    other request for about a second, while the largest grid a JSON body may carry fits in far less. It applies to
    every content type FastAPI parses as JSON (``parsed_as_json``), not only to application/json.
    The 413 is an ``EarlyAnswer``: no framework below can turn the overflow into another status.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_json_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = min(max_bytes, max_json_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_json = parsed_as_json(_header(scope, b"content-type"))
        limit = self.max_json_bytes if is_json else self.max_bytes
        answer = EarlyAnswer(send)

        def detail() -> str:  # built only for the rare request that needs it
            return f"request body is larger than the limit of {limit} bytes{' for JSON' if is_json else ''}"

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await answer.give(413, detail())
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if answer.given:
                return _disconnect()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    return await answer.give(413, detail())
            return message

        await answer.run(self.app, scope, limited_receive)


_MAX_SHOWN_CODING = 40  # characters of a Content-Encoding header repeated in the 415


class ContentEncodingMiddleware:
    """415 for a request body sent compressed (a Content-Encoding other than identity, a Transfer-Encoding other
    than chunked), before any of it is read.

    Nothing here decompresses bodies: FastAPI would parse the compressed bytes as they are, as JSON or as a form,
    and answer a misleading 400, or serve a body that only looked plain. The answer lists what is accepted
    (``Accept-Encoding: identity``, RFC 7694) and closes the connection, whose unread body is unusable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refusal := body_refusal(scope)) is not None:
            status, detail, headers = refusal
            await send_json_error(send, status, detail, close=True, headers=headers)
            return
        await self.app(scope, receive, send)


def body_refusal(scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """The status, detail and headers ``ContentEncodingMiddleware`` answers a request's body framing or coding with,
    before reading the body, or None. The HTTP layer asks it too (``app.http_protocol``): a broken chunk in such a
    body is the app's to answer, as the same body unbroken is."""
    if framing := _unframed(scope):
        detail = (
            f"the body's length cannot be told (Transfer-Encoding: {_shown(framing)}): a Transfer-Encoding "
            "must end in chunked (RFC 9112); send a Content-Length or chunked"
        )
        return 400, detail, []
    if _declares_body(scope):
        for header, plain in _PLAIN_CODINGS.items():
            if coding := _codings(scope, header, plain):
                detail = (
                    f"compressed request bodies are not accepted ({header.decode().title()}: {_shown(coding)}); "
                    "send it uncompressed"
                )
                accepted = [(b"accept-encoding", b"identity")] if header == b"content-encoding" else []  # RFC 7694
                return 415, detail, accepted
    return None


# The codings of a body sent as it is. A transfer coding but chunked compresses it too (``gzip, chunked``): uvicorn
# undoes the chunking only, so the app read the gzip bytes as JSON or a form (a misleading 400) or served them.
# RFC 9112 suggests 501 for a transfer coding not understood; 415 keeps one answer for every compressed body,
# and it is the caller's to change.
_PLAIN_CODINGS = {b"content-encoding": {"", "identity"}, b"transfer-encoding": {"", "identity", "chunked"}}


def _shown(coding: str) -> str:
    """A coding header's value as an answer repeats it: cut after ``_MAX_SHOWN_CODING`` characters."""
    return coding if len(coding) <= _MAX_SHOWN_CODING else coding[:_MAX_SHOWN_CODING] + "..."


def _unframed(scope: Scope) -> str:
    """The request's Transfer-Encoding when its last coding is not chunked, "" otherwise. Such a body has no length
    (RFC 9112, 6.3: answer 400 and close): ``identity`` was read until the connection closed, taking a pipelined
    request after it as body, and answered 408 after the body deadline (a security review)."""
    joined = ", ".join(
        value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"transfer-encoding"
    )
    last = joined.rsplit(",", 1)[-1].strip().lower()
    return joined if joined.strip() and last != "chunked" else ""


def _codings(scope: Scope, header: bytes, plain: set[str]) -> str:
    """The request's ``header`` values, joined, when any coding in them is not in ``plain``; "" otherwise."""
    codings = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == header]
    joined = ", ".join(codings)
    return "" if all(token.strip().lower() in plain for token in joined.split(",")) else joined


class BodyTimeoutMiddleware:
    """408 when the whole body has not arrived ``timeout_s`` after the request's headers did.

    uvicorn waits for a body as long as the client keeps the connection open, so a client that declares a body
    and then stalls, or trickles it a byte at a time (slowloris), would hold a connection and a request forever.
    The deadline covers the body only: once its last chunk is in, the app's later waits (for a disconnect) are
    not timed. A request whose body the app does not read (a 404, a 415) is answered at once; that answer says
    ``Connection: close``, as uvicorn would otherwise keep reading the unread body for as long as it trickles in.
    """

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        answer = EarlyAnswer(send)
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if answer.given:
                return _disconnect()
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):  # cancels the pending read, nothing else
                    message = await receive()
            except TimeoutError:
                return await answer.give(408, self._detail())
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        declares_body = _declares_body(scope)

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and declares_body and not body_done:
                headers = [(name, value) for name, value in message.get("headers", ()) if name != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await answer.send(message)

        await answer.run(self.app, scope, timed_receive, closing_send)

    def _detail(self) -> str:
        return (
            f"the request body did not arrive in full within {self.timeout_s:g} s of the request's headers (the "
            "limit set by VQVAE_BODY_TIMEOUT_S); send the whole body without pausing"
        )


# Set in the scope when a multipart body ended before its closing boundary (``app.routes.deps.complete_form``).
MULTIPART_UNFINISHED = "vqvae.multipart_unfinished"


class MultipartEndMiddleware:
    """Marks a multipart body that ends without its closing boundary (``--boundary--``): a cut-short upload.

    Starlette's parser (python-multipart) does not check that a form was finished: it keeps the parts it closed
    and silently drops the one that was cut, so a truncated upload read as a form without its ``file`` field
    (422 "Field required"), or was served when the cut part came after the file. The routes turn the mark into
    a 400 (``app.routes.deps.complete_form``), after their content-type check.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        boundary = _multipart_boundary(scope) if scope["type"] == "http" else None
        if boundary is None:
            await self.app(scope, receive, send)
            return
        watch = CloseDelimiterWatch(boundary)

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                watch.feed(message.get("body", b""))
                if not message.get("more_body", False) and not watch.seen:
                    scope[MULTIPART_UNFINISHED] = True
            return message

        await self.app(scope, watched_receive, send)


class CloseDelimiterWatch:
    """Looks for a multipart body's close delimiter in the chunks it arrives in, across chunk edges too."""

    def __init__(self, boundary: bytes) -> None:
        # Only at a line start: a part's content may hold "--boundary--" itself, just not after a line break.
        self.delimiter = b"\r\n--" + boundary + b"--"
        self.seen = False
        self._tail = b"\r\n"  # the last len(delimiter) - 1 bytes, where a match may start; first, the body's start

    def feed(self, chunk: bytes) -> None:
        """Searched from the end: a whole form's last chunk ends with the delimiter, so that search stops at once."""
        if self.seen or not chunk:
            return
        keep = len(self.delimiter) - 1
        self.seen = chunk.rfind(self.delimiter) >= 0 or self.delimiter in self._tail + chunk[:keep]
        self._tail = chunk[-keep:] if len(chunk) >= keep else (self._tail + chunk)[-keep:]


class AnswerWatch:
    """The ``send`` to give the app, noting whether its answer has begun: after that, no other status can be sent."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


SHUTTING_DOWN = "the server is shutting down and stopped this request; send it again (another instance may answer)"


class UnexpectedErrorMiddleware:
    """The last-resort answers. Any exception that escaped the routes: log it with its traceback, answer a JSON 500
    without one.

    A request that uvicorn cancels at shutdown, once ``VQVAE_SHUTDOWN_TIMEOUT_S`` has passed (or at a second Ctrl-C):
    a JSON 503 with ``Retry-After``. Before, it got uvicorn's ``text/plain`` 500 "Internal Server Error", and the log
    one traceback per request. Its task ends here, cancellation and all: the server that cancelled it is stopping.
    A request cancelled from inside the app (``app.hang_up``) never gets here: that middleware, inside this one, ends
    it itself.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = AnswerWatch(send)
        try:
            await self.app(scope, receive, answer)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if answer.started:
                raise  # too late for a clean answer; the server closes the connection
            await send_json_error(send, 500, "internal server error; the incident was logged")
        except asyncio.CancelledError:
            if not answer.started:  # an answer under way is cut short: uvicorn closes its connection
                await send_json_error(send, 503, SHUTTING_DOWN, close=True, headers=[(b"retry-after", b"1")])


class QuietStartupFailureMiddleware:
    """A start-up failure the lifespan has already logged in one line (``state.startup_error``) is not repeated as
    Starlette's traceback, which plain ``uvicorn`` would print whole; unexpected failures keep their traceback.

    Nor is a forced stop (a second Ctrl-C), where uvicorn skips the app's shutdown and cancels the lifespan: Starlette
    reported that cancellation as a failed shutdown, with a traceback of the ``CancelledError``."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        cancelled = False

        async def watched_receive() -> Message:
            nonlocal cancelled
            try:
                return await receive()
            except asyncio.CancelledError:
                cancelled = True
                raise

        async def quiet_send(message: Message) -> None:
            startup_logged = message["type"] == "lifespan.startup.failed" and getattr(self.state, "startup_error", None)
            if startup_logged or (message["type"] == "lifespan.shutdown.failed" and cancelled):
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, watched_receive, quiet_send)


def media_type(content_type: str) -> str:
    """A Content-Type header's media type, without parameters, lower case ("" for no header)."""
    return content_type.split(";", 1)[0].strip().lower()


def parsed_as_json(content_type: str) -> bool:
    """Whether FastAPI parses a body sent with this Content-Type header as JSON, before any route check runs:
    application/json and every application/*+json, the header read by the email package as fastapi.routing reads
    it. Without the header FastAPI parses nothing (its ``strict_content_type``, left at its default here)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _header(scope: Scope, wanted: bytes) -> str:
    """The first header of that (lower-case) name, "" when absent."""
    for name, value in scope.get("headers", []):
        if name == wanted:
            return str(value.decode("latin-1"))
    return ""


def _multipart_boundary(scope: Scope) -> bytes | None:
    """A multipart/form-data request's boundary, as Starlette's parser reads it; None for other requests."""
    content_type, options = parse_options_header(_header(scope, b"content-type"))
    if content_type != b"multipart/form-data":
        return None
    return options.get(b"boundary") or None  # none, or empty: Starlette refuses the form itself (400)


def _declares_body(scope: Scope) -> bool:
    """The request says a body follows: a Content-Length above 0, or a Transfer-Encoding (chunked)."""
    return bool(_content_length(scope)) or bool(_header(scope, b"transfer-encoding"))


def _content_length(scope: Scope) -> int | None:
    try:
        return int(_header(scope, b"content-length"))
    except ValueError:  # absent, or not a number
        return None
