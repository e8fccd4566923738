"""Listening sockets: what a refusal to listen is called, and the one socket ``vqvae-serve`` opens itself:
``--host ::`` on IPv4 and IPv6 alike.

uvicorn has asyncio open the socket of a single server process, and asyncio sets ``IPV6_V6ONLY`` on every IPv6
one, so ``--host ::`` took IPv6 callers alone: ``127.0.0.1`` was refused, and the Docker image's health check
failed (a review). With ``--workers N`` uvicorn opens it itself, without that option, and both families were served.
Now one worker is served as N are: the socket is bound here, with the option off, and handed to uvicorn, which
starts listening on it once the model is loaded (until then connections are refused, as before).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import sys

import uvicorn

from app.command_output import say

STARTUP_FAILURE = 3  # uvicorn's exit status when the server did not start
logger = logging.getLogger("uvicorn.error")  # where uvicorn says where it listens


def where(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (IPv6 addresses in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line for a socket that could not be bound or listen on ``host``:``port``."""
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where(host, port)}: the port is already in use (another vqvae-serve?)"
    return f"cannot listen on {where(host, port)}: {exc.strerror or exc}"


def takes_both_families(host: str) -> bool:
    """Whether ``host`` is IPv6's any-address (``::``), which a dual-stack socket serves for IPv4 callers too."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name, or not an address at all
        return False
    return address.version == 6 and address.is_unspecified


def serve_on_both_families(config: uvicorn.Config) -> int:
    """Run uvicorn (one process) on a dual-stack socket for ``config``'s host and port: the exit status, as
    ``uvicorn.run`` would end (0; ``STARTUP_FAILURE`` if it did not start; 2 and one line if the port is taken)."""
    try:
        sock = _dual_stack_socket(config.host, config.port)
    except OSError as exc:  # taken since vqvae-serve's own check looked
        say(bind_problem(config.host, config.port, exc))
        return 2
    server = _DualStackServer(config, port=sock.getsockname()[1])
    # As uvicorn.run: uvicorn raises Ctrl-C again once it has shut down cleanly.
    with sock, contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


def _dual_stack_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` for IPv6 and IPv4 callers, not yet listening. Raises ``OSError``."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own sockets
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _DualStackServer(uvicorn.Server):
    """uvicorn's server on a socket bound by ``_dual_stack_socket``.

    Says where it listens once it does, as uvicorn says it of the sockets it opens itself (and not of others), so
    that ``--port 0``'s port is in the log. And stops in one line if another process took the port meanwhile: two
    bound sockets that do not listen yet may share a port (``SO_REUSEADDR``), and the one that listens second is
    refused. uvloop then closes it without a word (plain asyncio raises), and the server ran on, listening nowhere.
    """

    def __init__(self, config: uvicorn.Config, *, port: int) -> None:
        super().__init__(config)
        self.port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except OSError as exc:
            await self._refused(exc)
        if self.should_exit or not sockets:
            return
        if sockets[0].fileno() == -1:  # closed by uvloop: its listen() failed
            await self._refused(OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)))
        scheme = "https" if self.config.is_ssl else "http"  # VQVAE_TLS_*
        address = where(self.config.host, self.port)
        logger.info("Uvicorn running on %s://%s, IPv4 and IPv6 (Press CTRL+C to quit)", scheme, address)

    async def _refused(self, exc: OSError) -> None:
        logger.error("%s", bind_problem(self.config.host, self.port, exc))
        await self.lifespan.shutdown()
        sys.exit(STARTUP_FAILURE)
