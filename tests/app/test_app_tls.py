"""HTTPS served by vqvae-serve itself (VQVAE_TLS_CERTFILE, VQVAE_TLS_KEYFILE), its start-up checks, and the Docker
image's health check over it. The certificate is a self-signed one for localhost made for these tests alone
(tests/app/tls: openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=localhost, with 127.0.0.1 and ::1 as
names too); other.key is a key of no certificate."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.settings import Settings
from app.tls import CIPHERS, scheme, server_context, tls_problem, uvicorn_options
from benchmarks.server import Server, running_server

REPO_ROOT = Path(__file__).resolve().parents[2]
TLS = Path(__file__).resolve().parent / "tls"
CERT, KEY, OTHER_KEY = TLS / "localhost.crt", TLS / "localhost.key", TLS / "other.key"
ENCRYPTED_KEY = TLS / "encrypted.key"


def tls_settings(certfile: Path, keyfile: Path) -> Settings:
    return Settings(tls_certfile=certfile, tls_keyfile=keyfile)


def test_the_certificate_needs_its_key_and_empty_means_unset() -> None:
    with pytest.raises(ValidationError, match="VQVAE_TLS_CERTFILE is set but VQVAE_TLS_KEYFILE is not"):
        Settings(tls_certfile=CERT)
    with pytest.raises(ValidationError, match="VQVAE_TLS_KEYFILE is set but VQVAE_TLS_CERTFILE is not"):
        Settings(tls_keyfile=KEY)
    plain = Settings(tls_certfile="", tls_keyfile=" ")  # a compose file's unset ${VAR}: no TLS, not the folder "."
    assert (plain.tls_certfile, plain.tls_keyfile, scheme(plain), uvicorn_options(plain)) == (None, None, "http", {})


def test_uvicorn_gets_the_files_and_forward_secret_aead_suites_only() -> None:
    """uvicorn's default cipher string, "TLSv1", lets in CBC suites with SHA-1 MACs."""
    settings = tls_settings(CERT, KEY)
    assert scheme(settings) == "https" and tls_problem(settings) is None
    assert uvicorn_options(settings) == {"ssl_certfile": str(CERT), "ssl_keyfile": str(KEY), "ssl_ciphers": CIPHERS}
    context = server_context(CERT, KEY)
    names = [cipher["name"] for cipher in context.get_ciphers()]
    assert names and all("GCM" in name or "CHACHA20" in name for name in names), names
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("certfile", "keyfile", "expected"),
    [
        (TLS / "absent.crt", KEY, "VQVAE_TLS_CERTFILE: cannot read {cert}: No such file or directory"),
        (TLS, KEY, "VQVAE_TLS_CERTFILE: {cert} is not a regular file"),
        (CERT, TLS / "absent.key", "VQVAE_TLS_KEYFILE: cannot read {key}: No such file or directory"),
        (KEY, KEY, "VQVAE_TLS_CERTFILE: {cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        (CERT, CERT, "VQVAE_TLS_KEYFILE: {key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
        (CERT, OTHER_KEY, "VQVAE_TLS_KEYFILE: {key} is not the key of the certificate in VQVAE_TLS_CERTFILE {cert}"),
    ],
)
def test_unusable_files_are_named_in_one_line(certfile: Path, keyfile: Path, expected: str) -> None:
    problem = tls_problem(tls_settings(certfile, keyfile))
    assert problem is not None and problem.startswith(expected.format(cert=certfile, key=keyfile)), problem
    assert "\n" not in problem


def test_a_key_with_a_passphrase_is_refused_without_a_prompt() -> None:
    """OpenSSL would ask for the passphrase on the terminal, which a container does not have (encrypted.key:
    openssl genrsa -aes256, passphrase "test")."""
    problem = tls_problem(tls_settings(CERT, ENCRYPTED_KEY))
    assert problem is not None
    assert problem.startswith(f"VQVAE_TLS_KEYFILE: {ENCRYPTED_KEY} is protected by a passphrase")
    with pytest.raises(ssl.SSLError):  # and were it loaded all the same, an error, not a prompt
        server_context(CERT, ENCRYPTED_KEY)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """Reading a FIFO waits for something to write to it: vqvae-serve hung without a word (a review)."""
    fifo = tmp_path / "key.pipe"
    os.mkfifo(fifo)
    answers: list[str | None] = []
    # On a thread that may be left behind: were the FIFO opened, the call would wait for ever, and so would the test.
    checking = threading.Thread(target=lambda: answers.append(tls_problem(tls_settings(CERT, fifo))), daemon=True)
    checking.start()
    checking.join(timeout=30)
    assert answers == [f"VQVAE_TLS_KEYFILE: {fifo} is not a regular file"]


def test_a_plain_key_that_mentions_encryption_is_not_taken_for_an_encrypted_one(tmp_path: Path) -> None:
    """Text before a PEM block is ignored by OpenSSL; the word alone once made the key refused (a review)."""
    commented = tmp_path / "commented.key"
    commented.write_bytes(b"ENCRYPTED at rest on the lab's vault; this copy is plain\n" + KEY.read_bytes())
    assert tls_problem(tls_settings(CERT, commented)) is None


def test_vqvae_serve_refuses_a_mismatched_key_in_one_line_before_loading_the_model() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("VQVAE_")}
    env.update(VQVAE_TLS_CERTFILE=str(CERT), VQVAE_TLS_KEYFILE=str(OTHER_KEY), VQVAE_CHECKPOINT="/nonexistent")
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "--port", "0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("vqvae-serve: VQVAE_TLS_KEYFILE:") and "not the key of the certificate" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


HANDSHAKE_TIMEOUT_S = 2  # the https server's VQVAE_HEADER_TIMEOUT_S, which bounds its TLS handshakes too


@pytest.fixture(scope="module")
def https_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"VQVAE_CHECKPOINT": str(checkpoint), "VQVAE_TLS_CERTFILE": str(CERT), "VQVAE_TLS_KEYFILE": str(KEY)}
    env["VQVAE_HEADER_TIMEOUT_S"] = str(HANDSHAKE_TIMEOUT_S)
    logs = tmp_path_factory.mktemp("https")
    with running_server(env, logs, log_level="info", startup_timeout_s=60, cli=True, tls_ca=CERT) as process:
        yield process


def test_vqvae_serve_serves_https_and_the_health_check_finds_it(https_server: Server) -> None:
    assert https_server.base_url.startswith("https://")
    with httpx.Client(base_url=https_server.base_url, verify=https_server.verify) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 200 and answer.json() == {"status": "ready"}
    port = str(httpx.URL(https_server.base_url).port)
    with pytest.raises(httpx.HTTPError):  # plain HTTP on that port: no answer, the connection is dropped
        httpx.get(https_server.base_url.replace("https://", "http://"), timeout=5)
    env = {name: value for name, value in os.environ.items() if not name.startswith("VQVAE_")}
    health = [sys.executable, "-m", "app.healthcheck"]
    tls = {"VQVAE_TLS_CERTFILE": str(CERT), "VQVAE_TLS_KEYFILE": str(KEY)}
    proxied = {"https_proxy": "http://127.0.0.1:1", "http_proxy": "http://127.0.0.1:1"}  # a proxy that is not there
    runs = {
        "https": subprocess.run(health, env={**env, **tls, "VQVAE_PORT": port}, capture_output=True, text=True),
        "proxied": subprocess.run(
            health, env={**env, **tls, **proxied, "VQVAE_PORT": port}, capture_output=True, text=True
        ),
        "http": subprocess.run(health, env={**env, "VQVAE_PORT": port}, capture_output=True, text=True),
    }
    assert runs["https"].returncode == 0, runs["https"].stderr
    assert runs["proxied"].returncode == 0, runs["proxied"].stderr  # the check never asks a proxy for 127.0.0.1
    assert runs["http"].returncode == 1 and runs["http"].stderr.startswith("healthcheck: http://127.0.0.1:")
    assert "Uvicorn running on https://" in https_server.log.read_text()


def test_a_tls_handshake_that_never_comes_is_closed_after_the_header_timeout(https_server: Server) -> None:
    """The HTTP protocol hears of a TLS connection only once its handshake is done; before, a client that connected
    and sent nothing held its file descriptor for the loop's default 60 s, outside VQVAE_MAX_CONNECTIONS, and a few
    hundred such connections a second exhausted the server's descriptors (a review)."""
    url = httpx.URL(https_server.base_url)
    with socket.create_connection((url.host, url.port or 443), timeout=60) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        waited_s = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT_S * 0.9 <= waited_s < HANDSHAKE_TIMEOUT_S + 8, waited_s
