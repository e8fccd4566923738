"""The variables Kubernetes sets for a Service named ``vqvae``, told apart from the service's own settings.

For every Service in its namespace, Kubernetes gives each pod ``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT`` (and
``<NAME>_SERVICE_PORT_<PORT NAME>``), ``<NAME>_PORT=tcp://<ip>:<port>`` and ``<NAME>_PORT_<port>_<PROTOCOL>`` with
its ``_PROTO``, ``_PORT`` and ``_ADDR`` (Docker's legacy ``--link`` sets the ``_PORT`` ones too). A Service named
``vqvae``, the name a team would give this one, thus sets ``VQVAE_PORT=tcp://10.96.0.12:8000``: read as the port
setting, it stopped ``vqvae-serve`` and the image's health check with "invalid settings", a pod that never started.
Such a ``VQVAE_PORT`` is ignored instead (its port is the Service's, not necessarily the container's), and the
others are named in one warning rather than one "not a setting" each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PREFIX = "VQVAE_"
_LINK_VALUE = re.compile(r"(?:tcp|udp|sctp)://\S+:\d+", re.IGNORECASE)
# A Service named vqvae-api sets VQVAE_API_SERVICE_HOST and the like: its own links, in the same namespace.
_OTHER = r"(?:\w+_)?"
_LINK_NAME = re.compile(
    rf"{_PREFIX}{_OTHER}(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)"
)
_LINK_PORT_NAME = re.compile(rf"{_PREFIX}{_OTHER}PORT")  # a link when its value is a link's address
PORT_VARIABLE = f"{_PREFIX}PORT"


def is_link_value(value: object) -> bool:
    """Whether a value is a service link's address (``tcp://10.96.0.12:8000``) rather than a port number."""
    return isinstance(value, str) and _LINK_VALUE.fullmatch(value.strip()) is not None


def link_variables(environ: Mapping[str, str]) -> list[str]:
    """The names, sorted, of the variables in ``environ`` that are Kubernetes service links of Services named
    ``vqvae`` or ``vqvae-...``; a ``VQVAE_PORT`` (or ``VQVAE_API_PORT``) only when its value is a link's address."""
    return sorted(
        name
        for name, value in environ.items()
        if _LINK_NAME.fullmatch(name.upper()) or (_LINK_PORT_NAME.fullmatch(name.upper()) and is_link_value(value))
    )


def links_warning(names: list[str]) -> str:
    """One warning for the service links found (``link_variables``)."""
    port = f" (the port is not read from {PORT_VARIABLE})" if PORT_VARIABLE in (n.upper() for n in names) else ""
    return (
        f"{', '.join(names)}: the service links Kubernetes sets for Services named vqvae or vqvae-..., not settings; "
        f"ignored{port}. `enableServiceLinks: false` in the pod spec leaves them out"
    )
