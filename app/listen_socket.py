"""The one listening socket ``vqvae-serve`` opens itself: ``--host ::`` on IPv4 and IPv6 alike.

uvicorn has asyncio open the socket of a single server process, and asyncio sets ``IPV6_V6ONLY`` on every IPv6
one, so ``--host ::`` took IPv6 callers alone: ``127.0.0.1`` was refused, and the Docker image's health check
failed (a review). With ``--workers N`` uvicorn opens it itself, without that option, and both families were served.
Now one worker is served as N are: the socket is bound here, with the option off, and handed to uvicorn, which
starts listening on it once the model is loaded (until then connections are refused, as before).
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import uvicorn


def takes_both_families(host: str) -> bool:
    """Whether ``host`` is IPv6's any-address (``::``), which a dual-stack socket serves for IPv4 callers too."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name, or not an address at all
        return False
    return address.version == 6 and address.is_unspecified


def dual_stack_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` for IPv6 and IPv4 callers, not yet listening. Raises ``OSError``."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own sockets
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class DualStackServer(uvicorn.Server):
    """uvicorn's server on a socket bound by ``dual_stack_socket``: it says where it listens once it does, as uvicorn
    says it of the sockets it opens itself (and not of others), so that ``--port 0``'s port is in the log."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets and not self.should_exit:
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://[%s]:%d, IPv4 and IPv6 (Press CTRL+C to quit)",
                self.config.host,
                sockets[0].getsockname()[1],
            )
