"""HTTPS without a proxy: ``VQVAE_TLS_CERTFILE`` and ``VQVAE_TLS_KEYFILE``, handed to uvicorn by ``vqvae-serve``.

Slices of patients' scans cross the network in both directions; where no TLS-terminating proxy stands in front of
the service, it encrypts them itself. The files are checked up front, as the checkpoint is, so that a missing file,
a key that does not match its certificate, or a key protected by a passphrase (which OpenSSL would ask for on a
terminal that a container does not have) is one line at start-up rather than a traceback from uvicorn.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from app.settings import Settings

# TLS 1.2's suites when a client cannot speak 1.3 (whose own suites are all strong and always on): forward-secret
# AEAD ones only, the ECDHE part of Mozilla's "intermediate" list (its DHE suites need DH parameters, which Python's
# ssl never loads, so a server could not use them). uvicorn's default, "TLSv1", lets in CBC suites with SHA-1 MACs.
# The minimum version is Python's default for a server, TLS 1.2.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# What marks a PEM private key as protected by a passphrase: PKCS#8's own label, or the older OpenSSL header.
_ENCRYPTED_KEY_MARKERS = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


def scheme(settings: Settings) -> str:
    """``https`` where the service serves TLS, else ``http``."""
    return "https" if settings.tls_certfile is not None else "http"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's keyword arguments for TLS (none without it). Paths, not a context: uvicorn's worker processes
    are spawned, and build their own from these."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return {}
    certfile, keyfile = str(settings.tls_certfile), str(settings.tls_keyfile)
    return {"ssl_certfile": certfile, "ssl_keyfile": keyfile, "ssl_ciphers": CIPHERS}


def server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """The context uvicorn builds from ``uvicorn_options``; raises ``OSError`` or ``ssl.SSLError``. A passphrase,
    if the key has one, is answered with an empty one (an error) instead of a prompt on the terminal."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile, password=lambda: b"")
    context.set_ciphers(CIPHERS)
    return context


MAX_PEM_BYTES = 1024 * 1024  # a certificate chain and its key take a few KiB; more is not such a file


def tls_problem(settings: Settings) -> str | None:
    """Why the service could not serve TLS with these files, in one line naming the file at fault; None if it can
    (or if TLS is not asked for)."""
    certfile, keyfile = settings.tls_certfile, settings.tls_keyfile
    if certfile is None or keyfile is None:
        return None  # both or neither: the settings see to it
    contents = {}
    for variable, path in (("VQVAE_TLS_CERTFILE", certfile), ("VQVAE_TLS_KEYFILE", keyfile)):
        try:
            if path.exists() and not path.is_file():  # a folder, a FIFO (whose read would wait for a writer)...
                return f"{variable}: {path} is not a regular file"
            with path.open("rb") as handle:
                contents[variable] = handle.read(MAX_PEM_BYTES)
        except OSError as exc:
            return f"{variable}: cannot read {path}: {exc.strerror or exc}"
    if b"-----BEGIN CERTIFICATE-----" not in contents["VQVAE_TLS_CERTFILE"]:
        return f"VQVAE_TLS_CERTFILE: {certfile} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    key = contents["VQVAE_TLS_KEYFILE"]
    if any(marker in key for marker in _ENCRYPTED_KEY_MARKERS):
        return (
            f"VQVAE_TLS_KEYFILE: {keyfile} is protected by a passphrase, which the service has no way to be given; "
            "serve a copy without it (openssl pkey -in the.key -out plain.key), readable by the service alone"
        )
    if b"PRIVATE KEY-----" not in key:
        return f"VQVAE_TLS_KEYFILE: {keyfile} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
    try:
        server_context(certfile, keyfile)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return f"VQVAE_TLS_KEYFILE: {keyfile} is not the key of the certificate in VQVAE_TLS_CERTFILE {certfile}"
        return (  # a damaged certificate or key, a key too small for OpenSSL's security level...: either file
            f"VQVAE_TLS_CERTFILE {certfile} and VQVAE_TLS_KEYFILE {keyfile} could not be loaded together "
            f"(OpenSSL: {exc})"
        )
    return None
