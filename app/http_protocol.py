"""uvicorn's HTTP protocol with four things the service needs that uvicorn lacks: a deadline for each request's
headers, a bound on their size, a bound on the connections open at once, and JSON for the errors that uvicorn gives
itself.

uvicorn closes an idle keep-alive connection after a response (``timeout_keep_alive``), and any byte received
cancels that timer. A client that connects and sends nothing, or trickles its headers, held its connection, and so a
file descriptor, for as long as it liked: a reviewer's 21,000 such connections exhausted the server's 20,000
descriptors, and every other caller got nothing. ``VQVAE_BODY_TIMEOUT_S`` (``app.middleware``) starts only once the
headers are in, since the app sees nothing before that.

uvicorn's httptools protocol sets no bound on a request's headers (its h11 one does: 16 KiB): a reviewer's header of
120 MB was answered 200, the server grew by 224 MB, and other callers waited seconds while it was parsed. A request
whose request line and headers pass ``MAX_HEADER_BYTES`` now gets a 431 and its connection is closed.

Each connection may carry an upload of up to ``VQVAE_MAX_BODY_BYTES``, read (and spooled to the temporary folder
past 1 MiB) before the model's queue is asked, and holds a file descriptor: a connection past
``VQVAE_MAX_CONNECTIONS`` open at once gets a JSON 503 with ``Retry-After`` as soon as it is made, and is closed.
(uvicorn's own ``limit_concurrency`` answers a ``text/plain`` 503, and only once the request's headers are in.)
The answer is written before the request is read, so a HEAD request refused so gets the JSON body too, as the
connection's last bytes; the connection no longer counts once refused, though it lingers (``LINGER_S``).

A request that is not valid HTTP never reaches the app either: uvicorn answered it with a ``text/plain`` 400, where
every other error of the service is JSON ``{"detail": ...}``. Nor does one whose chunked body cannot be parsed,
though its headers were: the app, reading that body, is told that the client left.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from typing import Any

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope  # the types uvicorn's pipeline holds
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.metrics import HTTP_REFUSALS, REFUSED_BY_HTTP_LAYER
from app.middleware import body_refusal, error_body
from app.settings import Settings

logger = logging.getLogger(__name__)  # "app.*": vqvae-serve logs it beside uvicorn's access log


# Request line and headers of one request, in bytes. Browsers send a few KiB; nginx takes at most 32 KiB by
# default (4 buffers of 8 KiB), Node.js 16 KiB.
MAX_HEADER_BYTES = 64 * 1024
# After such a refusal the connection's input is read and dropped for this long before it is closed: closing it with
# input unread makes the kernel reset the connection, and the client, still sending, lost the answer to the reset.
LINGER_S = 2.0
CONNECTIONS_RETRY_AFTER_S = 1  # the Retry-After of a connection refused by VQVAE_MAX_CONNECTIONS


@functools.cache
def _settings() -> Settings:
    """Read once per process: uvicorn's worker processes inherit the environment that ``vqvae-serve`` checked."""
    return Settings()


def header_timeout_s() -> float:
    return _settings().header_timeout_s


def _closing_answer(status_line: str, detail: str) -> bytes:
    """A whole JSON error answer, written straight to the connection, which is closed after it."""
    body = error_body(detail)
    head = (
        f"HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _without_body(answer: bytes) -> bytes:
    """The answer to a HEAD request: the same head, no body (RFC 9110, 9.3.2)."""
    return answer[: answer.index(b"\r\n\r\n") + 4]


def _late_headers_answer(timeout_s: float) -> bytes:
    return _closing_answer(
        "408 Request Timeout",
        f"the request's headers did not arrive in full within {timeout_s:g} s of the connection's opening or, on a "
        "kept connection, of the previous answer or the request's first byte, whichever came later (limit set by "
        "VQVAE_HEADER_TIMEOUT_S)",
    )


HEADERS_TOO_LARGE_ANSWER = _closing_answer(
    "431 Request Header Fields Too Large",
    f"the request line and headers are over {MAX_HEADER_BYTES // 1024} KiB; the service reads no more",
)


@functools.cache  # one answer per limit, not made again for each connection of a flood
def _too_many_connections_answer(limit: int) -> bytes:
    return _closing_answer(
        f"503 Service Unavailable\r\nretry-after: {CONNECTIONS_RETRY_AFTER_S}",
        f"server busy: {limit} connections already open (limit set by VQVAE_MAX_CONNECTIONS); retry shortly",
    )


INVALID_REQUEST_ANSWER = _closing_answer(
    "400 Bad Request", "not a valid HTTP/1.1 request: its request line or headers could not be parsed"
)
INVALID_CHUNKED_BODY_ANSWER = _closing_answer(
    "400 Bad Request",
    "the request's chunked body could not be parsed (Transfer-Encoding: chunked): each chunk is its size in "
    "hexadecimal digits, CRLF, that many bytes, CRLF; a chunk of size 0 ends the body",
)


async def _never_served(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """What a pipelined request refused before it was started runs instead of the app: nothing."""


class RefusalLog:
    """Connections refused by ``VQVAE_MAX_CONNECTIONS``, logged as a warning at most once per ``every_s`` with how
    many there were: a line per refusal turned a flood of connections into a flood of log lines (a review). The
    first refusal is logged at once; those after it within ``every_s``, once it has passed, so that a burst's last
    refusals are counted too. Runs on the event loop's thread."""

    def __init__(self, every_s: float = 10.0) -> None:
        self._every_s = every_s
        self._last = -math.inf  # when a line was last written
        self._pending = 0  # refusals not yet logged
        self._limit = 0
        self._flush: asyncio.TimerHandle | None = None

    def note(self, limit: int) -> None:
        self._pending, self._limit = self._pending + 1, limit
        wait_s = self._last + self._every_s - time.monotonic()
        if wait_s <= 0:
            self._write()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(wait_s, self._write)

    def _write(self) -> None:
        now = time.monotonic()
        within = "" if math.isinf(self._last) else f" in the last {now - self._last:.0f} s"
        logger.warning(
            "%d connection(s) refused with 503%s: %d already open (VQVAE_MAX_CONNECTIONS)",
            self._pending,
            within,
            self._limit,
        )
        self._last, self._pending, self._flush = now, 0, None


_CONNECTION_REFUSALS = RefusalLog()  # one per process: the event loop's thread alone calls it


class ServiceProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus: a connection's next request must have sent all its headers within
    ``VQVAE_HEADER_TIMEOUT_S`` of the connection being made or, on a kept connection, of the previous answer or the
    request's first byte, whichever came later (an idle connection is uvicorn's keep-alive timer's), or it gets a 408
    and is closed; a request whose request line and headers pass ``MAX_HEADER_BYTES`` gets a 431 and is closed; and a
    request that cannot be parsed gets a JSON 400 (uvicorn logs it; a line with the client's address follows).

    The headers are measured twice: once parsed (``on_headers_complete``: the exact bound), and while they arrive,
    in the reads that hold nothing but one request's headers, so that headers that never end are refused once past
    the bound rather than read without end. A read that also holds the end of an earlier request counts only once
    parsed: a pipelined request's reads must not count the body before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._in_headers = False  # between a request's first byte and the end of its headers
        self._message = 0  # requests begun on this connection
        self._header_bytes = 0  # the current request's bytes in reads of its headers alone
        self._refused = False  # from then on, input is dropped and no request reaches the app
        self._answer_after: bytes | None = None  # a refusal's answer, once the answer under way is complete
        self._closing: asyncio.TimerHandle | None = None
        self._head = False  # the request being read is a HEAD: its refusal has no body

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # see LINGER_S
        if self._header_deadline is None and not self._in_headers and not self._answering():
            # Input on an idle kept connection: uvicorn's keep-alive timer is cancelled by it (super, below), so
            # the headers' deadline runs from here. Not from ``on_message_begin``: the parser skips the CR and LF
            # between requests without a word, and a CRLF a second held a connection open for ever.
            self._arm()
        message, in_headers = self._message, self._in_headers
        super().data_received(data)  # parses what it can: the callbacks below say where the request stands
        if self._refused or not (self._in_headers and in_headers and message == self._message):
            return
        self._header_bytes += len(data)  # a read within one request's headers, and they go on
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes, self._message = True, 0, self._message + 1
        self._head = False

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        # httptools knows the method once the URL begins; before, ``get_method`` gives its default, DELETE.
        self._head = self.parser.get_method() == b"HEAD"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = _settings().max_connections
        if len(self.connections) > limit:  # this one counted: it is the one over the limit
            _CONNECTION_REFUSALS.note(limit)
            HTTP_REFUSALS.labels(reason="max_connections").inc()
            self._refuse(_too_many_connections_answer(limit), None)  # logged in sum, not a line each
            return
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        if self._refused:
            return
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)  # "name: value\r\n"
        if size > MAX_HEADER_BYTES:
            self._refuse_too_large()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:  # a refused request has no cycle of its own
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts a pipelined request, if one is queued: its headers are all in
        if self._answer_after is not None:
            if self._answering():
                return  # the requests before the refused one are answered first, in order
            answer, self._answer_after = self._answer_after, None
            self._answer_and_close(answer)
        elif self._in_headers and not self._refused and not self._answering() and not self.transport.is_closing():
            # The next request began before this answer was complete: its headers have the deadline from now.
            # uvicorn's keep-alive timer, just armed for an idle connection, would close it in silence.
            self._unset_keepalive_if_required()
            self._arm()
        # Otherwise the connection is idle: uvicorn's keep-alive timer closes it (VQVAE_KEEP_ALIVE_S), and the
        # deadline starts with the next byte received (``data_received``).

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own answer to a request it cannot parse (``msg`` is uvicorn's text; it has logged it, without the
        client's address, which the line logged here adds)."""
        if self._refused:
            return  # what followed a refused request in its read: it gets no answer of its own
        cycle = self.cycle
        if self._in_headers or cycle is None or not cycle.more_body or cycle.response_started:
            # In a request line or headers, after a request read in full, or in the body of one the app answers.
            HTTP_REFUSALS.labels(reason="invalid_request").inc()
            self._refuse(INVALID_REQUEST_ANSWER, "not valid HTTP: 400")  # after the answers before it
        elif body_refusal(cycle.scope) is not None:  # type: ignore[arg-type]  # uvicorn types its scope apart
            # A framing or coding of a request the app has begun that the app refuses itself before reading the body
            # (Transfer-Encoding: identity, or gzip, chunked; a Content-Encoding): it answers (400, 415), counts and
            # logs it, and its answer closes the connection.
            self._refuse(INVALID_REQUEST_ANSWER, None)
        else:
            HTTP_REFUSALS.labels(reason="invalid_request").inc()
            self._drop_from_app(cycle)
            where = f'"{cycle.scope["method"]} {cycle.scope["path"]}"'
            self._refuse(INVALID_CHUNKED_BODY_ANSWER, f"{where}: its chunked body is not valid: 400")

    def _drop_from_app(self, cycle: RequestResponseCycle) -> None:
        """The request whose chunked body could not be parsed (its headers could): its 400 is the HTTP layer's.

        The app was reading that body (or would have, once the answers before it were done) and waited for the
        rest until ``VQVAE_BODY_TIMEOUT_S``, then answered 408 "did not arrive" (a review). It is now told that
        the client left, and its metrics leave the request out, as they leave out the HTTP layer's other
        refusals."""
        cycle.scope[REFUSED_BY_HTTP_LAYER] = True  # type: ignore[literal-required]
        if self.pipeline and self.pipeline[0][0] is cycle:
            self.pipeline[0] = (cycle, _never_served)  # queued behind an answer under way: the app never sees it
        cycle.disconnected = True  # what the app's receive() says from now on: http.disconnect
        cycle.message_event.set()

    def handle_websocket_upgrade(self) -> None:
        if not self._refused:  # a refused request asking to upgrade has no scope to upgrade with
            super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._closing is not None:
            self._closing.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(header_timeout_s(), self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing() and not self._refused:
            HTTP_REFUSALS.labels(reason="header_timeout").inc()
            self._refuse(
                _late_headers_answer(header_timeout_s()), f"headers not in full within {header_timeout_s():g} s: 408"
            )

    def _refuse(self, answer: bytes, what: str | None) -> None:
        """Answer a request whose headers never reached the app, and close its connection: at once, or once the
        requests before it on the connection (pipelined) are answered. Requests after it get no answer. ``what`` is
        logged with the client's address, unless None: refusals of connections (logged in sum), and a framing that
        the app refuses itself (it logs that)."""
        self._disarm()
        if self._head:
            answer = _without_body(answer)
        self._refused = True
        if what is not None:  # the access log has no line for it: no request was complete enough to reach the app
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            logger.info("%s - %s, connection closed", client, what)
        if self._answering():
            self._answer_after = answer
        else:
            self._answer_and_close(answer)

    def _refuse_too_large(self) -> None:
        HTTP_REFUSALS.labels(reason="header_too_large").inc()
        self._refuse(HEADERS_TOO_LARGE_ANSWER, f"headers over {MAX_HEADER_BYTES} bytes: 431")

    def _with_default_headers(self, answer: bytes) -> bytes:
        """The answer with the headers uvicorn gives each of its own (``Date``, which RFC 9110 asks of an origin
        server's 4xx, and any set for the server): the prepared answers had none (a review)."""
        status_line_end = answer.index(b"\r\n") + 2
        extra = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        return answer[:status_line_end] + extra + answer[status_line_end:]

    def _answering(self) -> bool:
        """An answer is under way on this connection, or a request parsed before is waiting for one."""
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete and not cycle.disconnected)

    def _answer_and_close(self, answer: bytes) -> None:
        # No longer one of the open connections (VQVAE_MAX_CONNECTIONS, and what uvicorn waits for at shutdown):
        # a refused one, lingering below, kept callers out for up to LINGER_S after a burst had ended (a review).
        self.connections.discard(self)
        if self.transport.is_closing():
            return
        self.transport.write(self._with_default_headers(answer))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer, then the end
        self.transport.resume_reading()  # drained, even if uvicorn had paused reading
        self._closing = self.loop.call_later(LINGER_S, self.transport.close)
