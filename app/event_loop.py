"""The event loop ``vqvae-serve`` runs uvicorn on (its ``loop`` option): uvloop's, as uvicorn's "auto" picks, whose
listening sockets bound the TLS handshake by ``VQVAE_HEADER_TIMEOUT_S``.

Under ``VQVAE_TLS_*`` the HTTP protocol (``app.http_protocol``) hears of a connection only once its handshake is
done, so neither the header deadline nor ``VQVAE_MAX_CONNECTIONS`` applied before: a client that connected and sent
nothing held its file descriptor for the loop's default handshake timeout, 60 s, and a review's few hundred such
connections a second exhausted the server's descriptors while plain HTTP held (a review). uvicorn has no setting for
the handshake timeout; ``create_server`` takes one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from app.http_protocol import header_timeout_s


class ServiceLoop(uvloop.Loop):
    """uvloop's loop, its TLS handshakes bounded by the header deadline."""

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.AbstractServer:  # type: ignore[override]
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", header_timeout_s())
        return await super().create_server(*args, **kwargs)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop factory named in uvicorn's ``loop`` option (``app.event_loop:new_event_loop``)."""
    return ServiceLoop()
