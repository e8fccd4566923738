"""``python -m app.healthcheck``: the Docker image's health check. Exit 0 when the service on this machine answers
``/healthz`` with 200, else 1 with the reason on stderr.

It reads the port and the scheme from the service's own settings (``VQVAE_PORT``; ``https`` with
``VQVAE_TLS_CERTFILE``), so a container moved to another port, or serving TLS, is still found. The certificate is
not verified: it names the service's public host, not 127.0.0.1, and the check only asks whether the process
answers.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

from app.settings import Settings
from app.tls import scheme

TIMEOUT_S = 4.0  # within the image's HEALTHCHECK --timeout=5s


def main() -> int:
    settings = Settings()
    protocol = scheme(settings)
    url = f"{protocol}://127.0.0.1:{settings.port}/healthz"
    # No proxy: an https_proxy or http_proxy in the container's environment (a corporate one) would be asked for
    # 127.0.0.1, and the service reported unhealthy while it served (a review).
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if protocol == "https":
        handlers.append(urllib.request.HTTPSHandler(context=_unverified()))
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=TIMEOUT_S) as answer:
            status = answer.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def _unverified() -> ssl.SSLContext:
    """TLS without checking the certificate's name or issuer: see the module's docstring."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


if __name__ == "__main__":
    sys.exit(main())
