"""The real thing: uvicorn in a subprocess on a free port, called over TCP with httpx."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import gzip
import itertools
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from safetensors import safe_open
from safetensors.torch import save_file

from app.cli import main
from app.http_protocol import LINGER_S, MAX_HEADER_BYTES, RefusalLog, ServiceProtocol
from app.listen_socket import STARTUP_FAILURE, serve_on_both_families
from app.metrics import REFUSAL_REASONS
from app.settings import Settings
from benchmarks.server import Server, free_port, model_loads, running_server, wait_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
Files = Callable[..., dict[str, tuple[str, bytes, str]]]


def service_env(**variables: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("VQVAE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return {**env, **variables}


def run_in_repo(command: list[str], **variables: str) -> subprocess.CompletedProcess[str]:
    """A command run from the repository root with the service's environment, its output captured as text."""
    return subprocess.run(
        command,
        check=False,
        cwd=REPO_ROOT,
        env=service_env(**variables),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    env = {"VQVAE_CHECKPOINT": str(checkpoint)}
    logs = tmp_path_factory.mktemp("server")
    with (
        running_server(env, logs, log_level="info", startup_timeout_s=60) as process,
        httpx.Client(base_url=process.base_url, timeout=30) as client,
    ):
        yield client


def metric_sum(text: str, name: str, suffix: str = "_total", **labels: str) -> float:
    """The samples of the metric family ``name`` whose names end in ``suffix`` and whose labels include ``labels``,
    summed (over the labels not given), from a /metrics answer's text."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
        if sample.name.endswith(suffix) and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def request_count(client: httpx.Client, route: str, status: str) -> float:
    """vqvae_http_requests_total for one route template and status, summed over methods."""
    return metric_sum(client.get("/metrics").text, "vqvae_http_requests", route=route, status=status)


def refusals(server: Server, reason: str) -> float:
    """vqvae_http_refused_total for one reason: answers the HTTP layer gave before the app saw a request."""
    return metric_sum(httpx.get(f"{server.base_url}/metrics").text, "vqvae_http_refused", reason=reason)


def test_codec_round_trip_over_http(server: httpx.Client, as_upload: Files, image_file: Any, noise: Any) -> None:
    before = {route: request_count(server, route, "200") for route in ("/encode", "/decode", "/reconstruct")}
    upload = as_upload(image_file(noise(40, 36)))

    encoded = server.post("/encode", files=upload)
    assert encoded.status_code == 200, encoded.text
    body = encoded.json()
    assert body["image_size"] == [40, 36]
    assert len(body["indices"]) == body["grid"][0]

    decoded = server.post("/decode", json=body)  # the whole /encode answer posts straight back
    assert decoded.status_code == 200
    assert decoded.headers["content-type"] == "image/png"

    reconstructed = server.post("/reconstruct", files=upload)
    assert reconstructed.status_code == 200, reconstructed.text
    result = reconstructed.json()
    assert -1.0 <= result["ssim"] <= 1.0
    assert base64.b64decode(result["image_png_base64"]) == decoded.content

    refused = server.post("/decode", json={"indices": [[1, 2], [3]]})
    assert refused.status_code == 422
    assert "ragged" in refused.json()["detail"]

    after = {route: request_count(server, route, "200") for route in before}
    assert after == {route: count + 1 for route, count in before.items()}
    assert request_count(server, "/decode", "422") >= 1


BODY_TIMEOUT_S = 1  # the slow-client server's deadline for a whole request body
ANSWER_BOUND_S = 30  # how long a test waits for an answer: far above the deadline, so only a hang fails it


@pytest.fixture(scope="module")
def slow_client_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a short body deadline (VQVAE_BODY_TIMEOUT_S), for the stalling and trickling clients."""
    env = {"VQVAE_CHECKPOINT": str(checkpoint), "VQVAE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    with running_server(env, tmp_path_factory.mktemp("slow"), log_level="info", startup_timeout_s=60) as process:
        yield process


def raw_connection(server: Server) -> socket.socket:
    url = httpx.URL(server.base_url)
    return socket.create_connection((url.host, url.port or 80), timeout=ANSWER_BOUND_S)


FILE_PART_HEAD = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'


def upload_form(png: bytes) -> bytes:
    """A whole multipart body (boundary ``b``) with ``png`` as its file part, as ``upload_head`` declares it."""
    return FILE_PART_HEAD + png + b"\r\n--b--\r\n"


def ramp(side: int) -> np.ndarray:
    """A large image whose PNG is small: a grey ramp, uint8 (side, side)."""
    return np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))


def upload_head(declared_bytes: int) -> bytes:
    """A POST /encode request's head declaring a multipart body of that many bytes."""
    return (
        "POST /encode HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {declared_bytes}\r\n\r\n"
    ).encode()


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes the connection (a timeout past ANSWER_BOUND_S fails the test)."""
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return data


def read_answer(sock: socket.socket) -> httpx.Response:
    """The server's one answer, read until it closes the connection."""
    return read_answer_bytes(read_until_closed(sock))


def read_answer_bytes(data: bytes) -> httpx.Response:
    """One answer, from its status line to the end of ``data``."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


def assert_body_timeout(answer: httpx.Response) -> None:
    assert answer.status_code == 408, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    detail = answer.json()["detail"]
    assert f"within {BODY_TIMEOUT_S} s" in detail and "VQVAE_BODY_TIMEOUT_S" in detail, detail


def test_a_stalled_body_gets_408_counted_and_logged_without_a_traceback(slow_client_server: Server) -> None:
    """Slowloris: headers declaring 100 kB, then nothing. Before: the connection and the request waited forever."""
    with httpx.Client(base_url=slow_client_server.base_url, timeout=ANSWER_BOUND_S) as client:
        before = request_count(client, "/encode", "408")
        with raw_connection(slow_client_server) as sock:
            sock.sendall(upload_head(100_000))
            answer = read_answer(sock)
        assert_body_timeout(answer)
        assert request_count(client, "/encode", "408") == before + 1
    log = slow_client_server.log.read_text(errors="replace")
    assert '"POST /encode HTTP/1.1" 408' in log
    assert "Traceback" not in log and "Exception" not in log and " 500" not in log


def test_a_trickled_body_gets_408(slow_client_server: Server) -> None:
    """A byte every 0.1 s keeps each read short but the whole body late: the deadline is for the body, not a read."""
    body = itertools.chain(FILE_PART_HEAD, itertools.repeat(ord("x")))  # a well-formed form, as slowly as one likes
    with raw_connection(slow_client_server) as sock:
        sock.sendall(upload_head(100_000))
        for _ in range(int(ANSWER_BOUND_S / 0.1)):
            if select.select([sock], [], [], 0.1)[0]:  # the answer has come: stop sending
                break
            sock.sendall(bytes([next(body)]))
        answer = read_answer(sock)
    assert_body_timeout(answer)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("POST /encode HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n", 415),
        ("POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n", 404),
        (upload_head(10**9).decode(), 413),  # closed by the size limit already: one Connection header, not two
        ("POST /encode HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n", 415),
    ],
)
def test_an_answer_given_before_the_body_is_in_closes_the_connection(
    slow_client_server: Server, head: str, status: int
) -> None:
    """The app answers without reading the body. Before: the connection stayed open, and uvicorn went on reading
    the unread body for as long as the client trickled it, past any deadline."""
    with raw_connection(slow_client_server) as sock:
        sock.sendall(head.encode())
        answer = read_answer(sock)  # returns once the server closes the connection
    assert answer.status_code == status, answer.text
    assert answer.headers["connection"] == "close"


def test_requests_without_a_body_keep_their_connection(slow_client_server: Server) -> None:
    with httpx.Client(base_url=slow_client_server.base_url, timeout=ANSWER_BOUND_S) as client:
        for path in ("/healthz", "/nowhere"):
            response = client.get(path)
            assert "close" not in response.headers.get("connection", ""), (path, response.headers)


def test_whole_bodies_are_unaffected_by_the_body_deadline(
    slow_client_server: Server, as_upload: Files, image_file: Any, noise: Any
) -> None:
    upload = as_upload(image_file(noise(40, 36)))
    with httpx.Client(base_url=slow_client_server.base_url, timeout=ANSWER_BOUND_S) as client:
        encoded = client.post("/encode", files=upload)
        assert encoded.status_code == 200, encoded.text
        assert client.post("/decode", json=encoded.json()).status_code == 200
        reconstructed = client.post("/reconstruct", files=upload, headers={"accept": "image/png"})
        assert reconstructed.status_code == 200, reconstructed.text
        assert reconstructed.headers["content-type"] == "image/png"


HEADER_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def header_deadline_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``vqvae-serve`` (which sets the header deadline; plain uvicorn does not) with a short VQVAE_HEADER_TIMEOUT_S."""
    env = {
        "VQVAE_CHECKPOINT": str(checkpoint),
        "VQVAE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "VQVAE_MAX_PIXELS": str(4096 * 4096),  # for an answer that takes longer than the header deadline
    }
    logs = tmp_path_factory.mktemp("headers")
    with running_server(env, logs, log_level="info", startup_timeout_s=60, cli=True) as process:
        yield process


def assert_header_timeout(answer: httpx.Response, waited_s: float) -> None:
    assert answer.status_code == 408, answer.text
    assert email.utils.parsedate_to_datetime(answer.headers["date"]).tzinfo is not None  # RFC 9110's Date of a 4xx
    assert answer.headers["content-type"] == "application/json" and answer.headers["connection"] == "close"
    assert f"within {HEADER_TIMEOUT_S:g} s" in answer.json()["detail"]
    assert HEADER_TIMEOUT_S * 0.9 <= waited_s < HEADER_TIMEOUT_S + 10


def read_kept_answer(sock: socket.socket) -> bytes:
    """One whole answer on a connection the server keeps open: its head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return data


def trickle(sock: socket.socket, data: bytes, every_s: float) -> None:
    """``data`` a byte at a time until the server answers (or it is all sent)."""
    for byte in data:
        if select.select([sock], [], [], every_s)[0]:
            return
        sock.sendall(bytes([byte]))


@pytest.mark.parametrize("sent", [b"", b"POST /encode HTTP/1.1\r\nHost: t\r\n"])
def test_a_connection_that_never_finishes_its_headers_gets_408(header_deadline_server: Server, sent: bytes) -> None:
    """Before: held open for as long as the client liked (uvicorn has no header timeout); 21,000 of them exhausted
    the server's file descriptors. Counted in /metrics, where no request count has it."""
    before = refusals(header_deadline_server, "header_timeout")
    with raw_connection(header_deadline_server) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        answer = read_answer(sock)
    assert_header_timeout(answer, time.monotonic() - started)
    assert refusals(header_deadline_server, "header_timeout") == before + 1
    assert f"headers not in full within {HEADER_TIMEOUT_S:g} s: 408, connection closed" in (
        header_deadline_server.log.read_text(errors="replace")
    )


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",  # one header of 1 MiB
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Many: a\r\n" * 100_000 + b"\r\n",  # 100,000 small ones
        b"GET /healthz?" + b"q" * (1 << 20) + b" HTTP/1.1\r\nHost: t\r\n\r\n",  # a request line of 1 MiB
    ],
    ids=["one-large", "many-small", "long-url"],
)
def test_headers_over_the_bound_get_a_json_431(header_deadline_server: Server, head: bytes) -> None:
    """Before: answered 200 whatever their size (uvicorn's httptools protocol has no bound): a 120 MB header grew
    the server by 224 MB and held other callers for seconds while it was parsed."""
    before = refusals(header_deadline_server, "header_too_large")
    with raw_connection(header_deadline_server) as sock:
        with contextlib.suppress(OSError):  # the server may close before it has all of it
            sock.sendall(head)
        answer = read_answer(sock)
    assert answer.status_code == 431 and answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    assert f"over {MAX_HEADER_BYTES // 1024} KiB" in answer.json()["detail"]
    assert "431, connection closed" in header_deadline_server.log.read_text(errors="replace")
    assert refusals(header_deadline_server, "header_too_large") == before + 1


def test_headers_over_the_bound_in_one_read_get_a_431(header_deadline_server: Server) -> None:
    """A review's case: headers of 100,000 bytes sent at once were parsed in one read, never counted, answered 200."""
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(head)
        answer = read_answer(sock)
    assert answer.status_code == 431, answer.text


@pytest.mark.parametrize(
    "head",
    [
        b"HEAD /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",  # measured once parsed
        b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Many: a\r\n" * 100_000,  # counted while they arrive
    ],
    ids=["parsed", "arriving"],
)
def test_a_refused_head_request_gets_its_431_without_a_body(header_deadline_server: Server, head: bytes) -> None:
    """An answer to HEAD has no body (RFC 9110, 9.3.2). Before: the 431's JSON followed its head."""
    with raw_connection(header_deadline_server) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(head)
        answer = read_answer(sock)
    assert answer.status_code == 431 and answer.content == b""
    assert int(answer.headers["content-length"]) > 0  # the length the GET's body would have


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n", 408),
        (b"HEAD /healthz HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400),
    ],
    ids=["late", "unparsable"],
)
def test_a_refused_head_request_gets_no_body(header_deadline_server: Server, sent: bytes, status: int) -> None:
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(sent)
        answer = read_answer(sock)
    assert answer.status_code == status and answer.content == b""


def test_requests_pipelined_before_an_unparsable_one_are_answered_first(header_deadline_server: Server) -> None:
    """A review's case: the 400 was written at once and the connection closed, so the answer to the request before
    it in the same read was lost."""
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(b"GET /model HTTP/1.1\r\nHost: t\r\n\r\nHELLO\r\n\r\n")
        data = read_until_closed(sock)
    assert re.findall(rb"HTTP/1.1 (\d+)", data) == [b"200", b"400"], data[:300]
    assert b'"sha256"' in data


def test_an_idle_kept_connection_outlives_the_header_deadline(header_deadline_server: Server) -> None:
    """Idle between requests is the keep-alive's time (5 s here), not the headers'. Before: the deadline ran from the
    answer, and an idle connection got a 408 after it (20 s by default) however long VQVAE_KEEP_ALIVE_S was: a proxy
    keeping connections for 60 s would have sent requests on closed ones."""
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_kept_answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT_S * 1.5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = read_answer(sock)
    assert answer.status_code == 200, answer.text


KEEP_ALIVE_S = 1


@pytest.fixture(scope="module")
def short_keep_alive_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``vqvae-serve`` with VQVAE_KEEP_ALIVE_S under VQVAE_HEADER_TIMEOUT_S (20 s and 5 s by default: the other way)."""
    env = {
        "VQVAE_CHECKPOINT": str(checkpoint),
        "VQVAE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S + 1),
        "VQVAE_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
    }
    logs = tmp_path_factory.mktemp("keep-alive")
    with running_server(env, logs, log_level="info", startup_timeout_s=60, cli=True) as process:
        yield process


def test_an_idle_connection_is_closed_after_the_keep_alive_setting(short_keep_alive_server: Server) -> None:
    with raw_connection(short_keep_alive_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        read_kept_answer(sock)
        answered = time.monotonic()
        assert sock.recv(65536) == b""  # closed in silence, as uvicorn closes an idle kept-alive connection
        waited_s = time.monotonic() - answered
    assert KEEP_ALIVE_S * 0.9 <= waited_s < HEADER_TIMEOUT_S + 1


def test_vqvae_serve_logs_each_line_with_its_time_and_no_probes(short_keep_alive_server: Server) -> None:
    """uvicorn's lines had no time: a log kept in a file could not say when a request came (a review). (And its
    answers no longer name their server: "server: uvicorn" told every caller what to attack.) Probes answered 200
    (this one, and the start-up wait's /readyz) are left out (VQVAE_LOG_PROBES)."""
    answer = httpx.get(f"{short_keep_alive_server.base_url}/healthz")
    assert answer.status_code == 200 and "server" not in answer.headers
    assert httpx.get(f"{short_keep_alive_server.base_url}/model").status_code == 200
    lines = wait_for_log_line(short_keep_alive_server, '"GET /model HTTP/1.1" 200')
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (INFO|WARNING|ERROR):")
    assert lines and all(stamp.match(line) for line in lines), lines
    assert not any("/healthz" in line or "/readyz" in line for line in lines), lines


def wait_for_log_line(server: Server, text: str) -> list[str]:
    """The server's log lines once one holds ``text``: uvicorn writes an access line as the answer starts, so it
    may come just after the client has the answer."""
    deadline = time.monotonic() + ANSWER_BOUND_S
    while True:
        lines = [line for line in server.log.read_text().splitlines() if line.strip()]
        if any(text in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.fixture(scope="module")
def json_log_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``vqvae-serve`` logging JSON lines, probes included, under a root path."""
    env = {
        "VQVAE_CHECKPOINT": str(checkpoint),
        "VQVAE_LOG_FORMAT": "json",
        "VQVAE_LOG_PROBES": "true",
        "VQVAE_ROOT_PATH": "/vqvae",
    }
    with running_server(
        env, tmp_path_factory.mktemp("json-log"), log_level="info", startup_timeout_s=60, cli=True
    ) as process:
        yield process


def test_vqvae_serve_logs_json_lines_with_the_requests_fields(
    json_log_server: Server, corrupt_tiff: bytes, as_upload: Files
) -> None:
    """Log pipelines (Loki, Elasticsearch) index fields; each line of the server's log is one JSON object, its
    start-up lines too, and the probes are there when asked for. libtiff's own line about a corrupt upload
    (``ZIPDecode: Decoding error...``) is not written (app.libtiff)."""
    refused = httpx.post(f"{json_log_server.base_url}/encode", files=as_upload(corrupt_tiff, "scan.tif"))
    assert refused.status_code == 400 and "could not decode the TIFF image" in refused.json()["detail"]
    assert httpx.get(f"{json_log_server.base_url}/healthz?from=test").status_code == 200
    lines = wait_for_log_line(json_log_server, "/vqvae/healthz?from=test")
    entries = [json.loads(line) for line in lines]  # a line that is not JSON fails here
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["message"].startswith("Uvicorn running on") for entry in entries)
    probe = [entry for entry in entries if entry.get("path") == "/vqvae/healthz?from=test"]
    assert [(entry["method"], entry["status"], entry["logger"]) for entry in probe] == [("GET", 200, "uvicorn.access")]
    assert any(entry.get("path") == "/vqvae/readyz" for entry in entries)  # the start-up wait's probes


MAX_CONNECTIONS = 2


@pytest.fixture(scope="module")
def two_connection_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"VQVAE_CHECKPOINT": str(checkpoint), "VQVAE_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    with running_server(
        env, tmp_path_factory.mktemp("conns"), log_level="info", startup_timeout_s=60, cli=True
    ) as process:
        yield process


def test_a_connection_past_the_limit_gets_a_json_503_and_the_others_are_served(two_connection_server: Server) -> None:
    """Each open connection may be uploading up to VQVAE_MAX_BODY_BYTES, spooled to the temporary folder, before
    the model's queue is asked; there was no bound on how many (a security review). The one over the limit is
    answered at once, in JSON with Retry-After, and closed; the ones open are served; a freed place is taken again
    at once, though the refused connection still lingers (it held its place for LINGER_S, a review); and the
    refusals are logged in sum, not a line each, and counted in /metrics."""
    before = refusals(two_connection_server, "max_connections")
    polled_503 = 0
    with raw_connection(two_connection_server) as first, raw_connection(two_connection_server) as second:
        refused_ones = [raw_connection(two_connection_server) for _ in range(3)]  # left open: they linger
        try:
            for sock in refused_ones:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                refused = read_answer(sock)  # the server ends its side after the answer
                assert refused.status_code == 503, refused.text
                assert refused.headers["content-type"] == "application/json"
                assert refused.headers["connection"] == "close"
                assert int(refused.headers["retry-after"]) >= 1
                assert "2 connections already open" in refused.json()["detail"]
                assert "VQVAE_MAX_CONNECTIONS" in refused.json()["detail"]
            for sock in (first, second):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                assert read_kept_answer(sock).startswith(b"HTTP/1.1 200")
            second.close()
            deadline = time.monotonic() + LINGER_S / 2  # the server hears of the close at once
            while (answer := httpx.get(f"{two_connection_server.base_url}/healthz")).status_code == 503:
                assert time.monotonic() < deadline, answer.text
                polled_503 += 1
                time.sleep(0.05)
            assert answer.status_code == 200
        finally:
            for sock in refused_ones:
                sock.close()
    assert refusals(two_connection_server, "max_connections") == before + 3 + polled_503
    lines = two_connection_server.log.read_text().splitlines()
    assert [line for line in lines if "refused" in line or "connection closed" in line] == [
        line for line in lines if "1 connection(s) refused with 503: 2 already open (VQVAE_MAX_CONNECTIONS)" in line
    ]
    assert any("1 connection(s) refused with 503" in line for line in lines)


def test_connection_refusals_are_logged_in_sum_the_burst_s_last_ones_too(caplog: pytest.LogCaptureFixture) -> None:
    """One line for the first refusal, then one per period with the count since: before, the refusals after the
    first within a period were written only when another came after it, so a burst's last ones went unsaid."""

    async def burst() -> None:
        log = RefusalLog(every_s=0.2)
        for _ in range(5):
            log.note(256)
        await asyncio.sleep(0.4)  # no refusal after the burst: its count is written all the same

    with caplog.at_level(logging.WARNING, logger="app.http_protocol"):
        asyncio.run(burst())
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0] == "1 connection(s) refused with 503: 256 already open (VQVAE_MAX_CONNECTIONS)"
    assert lines[1].startswith("4 connection(s) refused with 503 in the last 0 s: 256 already open")


def test_a_kept_connection_sending_only_line_ends_gets_the_header_deadline(short_keep_alive_server: Server) -> None:
    """A review's case: the parser skips CR and LF between requests without starting one, and every byte cancels
    uvicorn's keep-alive timer, so a CRLF now and then after an answer held the connection open for ever."""
    with raw_connection(short_keep_alive_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_kept_answer(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        trickle(sock, b"\r\n" * 100, KEEP_ALIVE_S / 2)
        answer = read_answer(sock)
    assert answer.status_code == 408, answer.text
    assert HEADER_TIMEOUT_S + 1 <= time.monotonic() - started < HEADER_TIMEOUT_S + 10


def test_a_request_begun_before_the_previous_answer_gets_the_header_deadline(short_keep_alive_server: Server) -> None:
    """A request whose first bytes came before the previous answer was complete: uvicorn armed its keep-alive timer
    for an idle connection when that answer was done, and closed the connection in silence, before the header
    deadline could answer 408."""
    with raw_connection(short_keep_alive_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n")
        assert read_kept_answer(sock).startswith(b"HTTP/1.1 200")
        answer = read_answer(sock)
    assert answer.status_code == 408, answer.text
    assert f"within {HEADER_TIMEOUT_S + 1:g} s of the connection's opening" in answer.json()["detail"]


def noise_png(image_file: Any, side: int) -> bytes:
    """A PNG that hardly compresses: about ``side * side`` bytes."""
    return bytes(image_file(np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)))


def test_a_pipelined_request_after_a_large_body_is_not_counted_with_it(
    header_deadline_server: Server, image_file: Any
) -> None:
    """A review's case: the second request's headers, begun in the read that ended the first's 66 KB body, were
    counted with that body, and refused; and the refusal cut off the first's answer under way."""
    form = upload_form(noise_png(image_file, 260))
    first = upload_head(len(form)) + form
    assert len(form) > MAX_HEADER_BYTES
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(first + b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.3)  # the rest of the headers in a read of their own
        sock.sendall(b"Connection: close\r\n\r\n")
        data = read_until_closed(sock)
    assert re.findall(rb"HTTP/1.1 (\d+)", data) == [b"200", b"200"], data[:300]


def test_an_answer_under_way_is_completed_before_a_pipelined_431(
    header_deadline_server: Server, image_file: Any
) -> None:
    """The refused request's 431 follows the earlier request's whole answer. Before: uvloop refused the earlier
    answer's write after the 431's write_eof, and the caller got neither."""
    form = upload_form(image_file(ramp(512)))
    oversized = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n\r\n"
    with raw_connection(header_deadline_server) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(upload_head(len(form)) + form + oversized)
        data = read_until_closed(sock)
    assert re.findall(rb"HTTP/1.1 (\d+)", data) == [b"200", b"431"], data[:300]
    assert b'"indices"' in data


def test_requests_pipelined_before_an_oversized_one_are_answered_first(header_deadline_server: Server) -> None:
    """A review's case: the requests queued before the refused one were dropped, and the 431 took the place of the
    first one's answer."""
    oversized = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n"
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 2 + b"GET /model HTTP/1.1\r\nHost: t\r\n\r\n" + oversized
        )
        data = read_until_closed(sock)
    assert re.findall(rb"HTTP/1.1 (\d+)", data) == [b"200", b"200", b"200", b"431"], data[:300]
    assert b'"sha256"' in data  # /model's answer, in its place


@pytest.mark.parametrize(
    "rest",
    [
        b"Transfer-Encoding: chunked\r\n\r\nZZZZ\r\n",  # a parse error later in the same read
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
    ],
    ids=["parse-error-after", "websocket-upgrade"],
)
def test_what_follows_a_refused_request_in_its_read_is_dropped_quietly(
    header_deadline_server: Server, rest: bytes
) -> None:
    """A review's cases: uvicorn went on parsing after the 431 and wrote a 400 after the connection's end, or tried
    to upgrade a request it never set up: an ERROR traceback in the log for each."""
    padding = b"".join(b"X-P%d: %s\r\n" % (i, b"v" * 8000) for i in range(9))
    log_before = header_deadline_server.log.read_text(errors="replace")
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(b"POST /encode HTTP/1.1\r\nHost: t\r\n" + padding + rest)
        answer = read_answer(sock)
    assert answer.status_code == 431
    time.sleep(0.5)
    new_lines = header_deadline_server.log.read_text(errors="replace")[len(log_before) :]
    assert "Traceback" not in new_lines and "Fatal error" not in new_lines, new_lines


def test_headers_under_the_bound_are_read(header_deadline_server: Server) -> None:
    cookie = b"Cookie: " + b"c" * (MAX_HEADER_BYTES // 2) + b"\r\n"  # sent a byte-slice at a time, read in parts
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + cookie + b"Connection: close\r\n\r\n"
    with raw_connection(header_deadline_server) as sock:
        for start in range(0, len(head), 4096):
            sock.sendall(head[start : start + 4096])
        answer = read_answer(sock)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "sent",
    [b"HELLO\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n"],
)
def test_a_request_that_is_not_http_gets_a_json_400(header_deadline_server: Server, sent: bytes) -> None:
    """uvicorn answers what it cannot parse itself. Before: "Invalid HTTP request received." as text/plain, where
    every other error of the service is JSON."""
    before = refusals(header_deadline_server, "invalid_request")
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(sent)
        answer = read_answer(sock)
    assert refusals(header_deadline_server, "invalid_request") == before + 1
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close" and "date" in answer.headers  # as uvicorn's own answers have
    log = header_deadline_server.log.read_text(errors="replace")
    assert re.search(r"127\.0\.0\.1:\d+ - not valid HTTP: 400, connection closed", log), log  # who sent it
    assert (
        answer.content == b'{"detail":"not a valid HTTP/1.1 request: its request line or headers could not be parsed"}'
    )


@pytest.mark.parametrize("compressed", [True, False])
def test_a_body_in_a_compressing_transfer_coding_is_a_415(header_deadline_server: Server, compressed: bool) -> None:
    """uvicorn undoes the chunking only. Before, the gzip bytes were parsed as JSON (400 "not UTF-8 text"), and a
    plain body labelled ``gzip, chunked`` was served."""
    body = b'{"indices": [[1, 2]]}'
    chunk = gzip.compress(body) if compressed else body
    request = (
        b"POST /decode HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n" + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"
    )
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(request)
        answer = read_answer(sock)
    assert answer.status_code == 415, answer.text
    assert answer.json()["detail"].startswith(
        "compressed request bodies are not accepted (Transfer-Encoding: gzip, chunked)"
    )
    assert "accept-encoding" not in answer.headers  # it names content codings (RFC 7694), not transfer codings


@pytest.mark.parametrize("coding", ["identity", "gzip"])
def test_a_body_whose_transfer_coding_does_not_end_in_chunked_is_a_400_at_once(
    header_deadline_server: Server, coding: str
) -> None:
    """``identity`` was read until the connection closed: a request pipelined after it became body, and the answer
    was a 408 after the body deadline (a security review). RFC 9112: 400, then close."""
    request = (
        f"POST /decode HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: {coding}\r\n\r\n"
        '{"indices": [[1, 2]]}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n'
    ).encode()
    before = refusals(header_deadline_server, "invalid_request")
    with raw_connection(header_deadline_server) as sock:
        started = time.monotonic()
        sock.sendall(request)
        answer = read_answer(sock)
        assert sock.recv(1024) == b""  # closed after it: the pipelined request is not read as a body, nor served
    assert time.monotonic() - started < 5
    assert refusals(header_deadline_server, "invalid_request") == before  # the app's refusal, counted by the app
    assert answer.status_code == 400 and answer.headers["connection"] == "close"
    assert answer.json()["detail"].startswith(f"the body's length cannot be told (Transfer-Encoding: {coding})")


def requests_counted(server: Server, route: str) -> float:
    """vqvae_http_requests_total for one route template, summed over methods and statuses."""
    return metric_sum(httpx.get(f"{server.base_url}/metrics").text, "vqvae_http_requests", route=route)


BROKEN_CHUNKS = {
    "a chunk size that is not hexadecimal": b"zz\r\nabc\r\n0\r\n\r\n",
    "a chunk longer than its size": b"3\r\nabcdef\r\n0\r\n\r\n",
}


def chunked_request(path: str, content_type: str) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head.encode()


def assert_broken_chunks_answer(answer: httpx.Response) -> None:
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json", answer.text
    assert answer.headers["connection"] == "close"
    assert answer.json()["detail"].startswith("the request's chunked body could not be parsed"), answer.text


@pytest.mark.parametrize("coding", ["chunked", "identity, chunked"])  # the app takes both: the layer answers
@pytest.mark.parametrize("chunks", BROKEN_CHUNKS.values(), ids=BROKEN_CHUNKS.keys())
@pytest.mark.parametrize(
    ("path", "content_type"), [("/decode", "application/json"), ("/encode", "multipart/form-data; boundary=b")]
)
def test_a_chunked_body_that_cannot_be_parsed_gets_a_400_at_once_counted_once(
    header_deadline_server: Server, path: str, content_type: str, chunks: bytes, coding: str
) -> None:
    """Before: uvicorn logged the parse error, and the app, reading the body, waited for the rest until
    VQVAE_BODY_TIMEOUT_S (30 s), then answered 408 "did not arrive in full", counted as a request besides the
    refusal (a review)."""
    before = refusals(header_deadline_server, "invalid_request"), requests_counted(header_deadline_server, path)
    with raw_connection(header_deadline_server) as sock:
        started = time.monotonic()
        sock.sendall(chunked_request(path, content_type).replace(b": chunked", f": {coding}".encode()) + chunks)
        answer = read_answer(sock)
    assert time.monotonic() - started < 5
    assert_broken_chunks_answer(answer)
    time.sleep(0.5)  # the app's task, told that its client left, has ended: it would have been counted by now
    after = refusals(header_deadline_server, "invalid_request"), requests_counted(header_deadline_server, path)
    assert after == (before[0] + 1, before[1])


def test_a_chunked_body_broken_after_the_app_has_read_part_of_it_gets_the_400_at_once(
    header_deadline_server: Server,
) -> None:
    """The app is waiting for the rest of the body when the broken chunk comes: it is told that the client left."""
    before = refusals(header_deadline_server, "invalid_request"), requests_counted(header_deadline_server, "/decode")
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(chunked_request("/decode", "application/json") + b'5\r\n{"ind\r\n')
        time.sleep(0.5)  # the first chunk delivered to the app
        started = time.monotonic()
        sock.sendall(b"zz\r\n")
        answer = read_answer(sock)
    assert time.monotonic() - started < 5
    assert_broken_chunks_answer(answer)
    time.sleep(0.5)
    after = refusals(header_deadline_server, "invalid_request"), requests_counted(header_deadline_server, "/decode")
    assert after == (before[0] + 1, before[1])
    log = header_deadline_server.log.read_text(errors="replace")
    assert re.search(r'127\.0\.0\.1:\d+ - "POST /decode": its chunked body is not valid: 400', log), log


def test_a_broken_chunk_in_a_compressed_body_gets_the_app_s_415_however_it_arrives(
    header_deadline_server: Server,
) -> None:
    """``gzip, chunked`` is the app's to refuse (415). Before the review's mend, a broken chunk in the same read as
    the headers got the HTTP layer's 400 instead, and in a later read the 415."""
    head = chunked_request("/decode", "application/json").replace(b"chunked", b"gzip, chunked")
    for later in (False, True):
        with raw_connection(header_deadline_server) as sock:
            sock.sendall(head if later else head + b"zz\r\n")
            if later:
                time.sleep(0.3)
                sock.sendall(b"zz\r\n")
            answer = read_answer(sock)
        assert answer.status_code == 415, (later, answer.text)


def test_a_broken_chunked_body_pipelined_behind_an_answer_under_way_gets_its_400_after_it(
    header_deadline_server: Server, image_file: Any
) -> None:
    """The broken request waits behind a long /reconstruct, is never started, and gets its 400 once that is done."""
    form = upload_form(image_file(ramp(1024)))
    first = (
        "POST /reconstruct HTTP/1.1\r\nHost: t\r\nAccept: image/png\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(form)}\r\n\r\n"
    ).encode()
    second = chunked_request("/decode", "application/json") + BROKEN_CHUNKS["a chunk size that is not hexadecimal"]
    before = requests_counted(header_deadline_server, "/decode")
    with raw_connection(header_deadline_server) as sock:
        started = time.monotonic()
        sock.sendall(first + form + second)
        data = read_until_closed(sock)
    assert time.monotonic() - started < 10
    assert re.findall(rb"HTTP/1.1 (\d+)", data) == [b"200", b"400"]
    assert_broken_chunks_answer(read_answer_bytes(data[data.rindex(b"HTTP/1.1 400") :]))
    assert requests_counted(header_deadline_server, "/decode") == before


def test_trickled_headers_get_408(header_deadline_server: Server) -> None:
    """Every byte used to cancel uvicorn's only timer: the deadline is for the headers, not for a read."""
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Padding: " + b"x" * 1000 + b"\r\n\r\n"
    with raw_connection(header_deadline_server) as sock:
        started = time.monotonic()
        trickle(sock, head, 0.05)
        answer = read_answer(sock)
    assert_header_timeout(answer, time.monotonic() - started)


def test_the_deadline_restarts_after_each_answer_on_a_kept_connection(header_deadline_server: Server) -> None:
    """On a kept connection the deadline runs from the next request's first byte: it gets the same time."""
    with raw_connection(header_deadline_server) as sock:
        for pause_s in (0.0, HEADER_TIMEOUT_S * 0.7):  # answered on one connection, past one deadline in all
            time.sleep(pause_s)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_kept_answer(sock).startswith(b"HTTP/1.1 200 OK")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        answer = read_answer(sock)
    assert_header_timeout(answer, time.monotonic() - started)


def test_a_pipelined_request_may_take_longer_than_the_header_deadline(
    header_deadline_server: Server, image_file: Any
) -> None:
    """Two requests in one write: the second's headers are in when the first's answer is done. Before: the deadline
    was armed again then, and closed the connection in the middle of the second's long pass, unanswered."""
    form = upload_form(image_file(ramp(4096)))
    second = (
        "POST /reconstruct HTTP/1.1\r\nHost: t\r\nAccept: image/png\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(form)}\r\n\r\n"
    ).encode()
    with raw_connection(header_deadline_server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + second + form)
        data = read_until_closed(sock)
    assert time.monotonic() - started > HEADER_TIMEOUT_S  # the pass outlasted the deadline
    assert re.findall(rb"HTTP/1.1 (\d+)", data) == [b"200", b"200"]
    assert b"content-type: image/png" in data


def test_a_body_may_take_longer_than_the_header_deadline(
    header_deadline_server: Server, image_file: Any, noise: Any
) -> None:
    """Once the headers are in, the body has VQVAE_BODY_TIMEOUT_S (30 s by default), not the header deadline."""
    png = image_file(noise(16, 16))
    body = upload_form(png)
    with raw_connection(header_deadline_server) as sock:
        sock.sendall(upload_head(len(body)).replace(b"Host: test", b"Host: test\r\nConnection: close"))
        started = time.monotonic()
        for part in (body[: len(body) // 2], body[len(body) // 2 :]):
            time.sleep(HEADER_TIMEOUT_S * 0.8)
            sock.sendall(part)
        answer = read_answer(sock)
    assert time.monotonic() - started > HEADER_TIMEOUT_S
    assert answer.status_code == 200, answer.text
    assert answer.json()["image_size"] == [16, 16]


def test_a_caller_gone_with_its_body_half_sent_is_counted_as_499(
    slow_client_server: Server, image_file: Any, noise: Any
) -> None:
    """Before: FastAPI's 400 "There was an error parsing the body", counted as the caller's mistake."""
    body = upload_form(image_file(noise(64, 64)))
    with httpx.Client(base_url=slow_client_server.base_url, timeout=ANSWER_BOUND_S) as client:
        before = {status: request_count(client, "/encode", status) for status in ("400", "499")}
        with raw_connection(slow_client_server) as sock:
            sock.sendall(upload_head(len(body)) + body[: len(body) // 2])
            time.sleep(0.2)
        deadline = time.monotonic() + ANSWER_BOUND_S
        while request_count(client, "/encode", "499") == before["499"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert request_count(client, "/encode", "499") == before["499"] + 1
        assert request_count(client, "/encode", "400") == before["400"]
    assert '"POST /encode HTTP/1.1" 499' in slow_client_server.log.read_text(errors="replace")


def batches_run(client: httpx.Client, operation: str) -> float:
    """How many forward passes of ``operation`` the server has run (its batch-duration histogram's count)."""
    text = client.get("/metrics").text
    return metric_sum(text, "vqvae_inference_batch_duration_seconds", "_count", operation=operation)


def test_a_caller_who_hangs_up_while_queued_costs_no_forward_pass(tmp_path: Path, image_file: Any, noise: Any) -> None:
    """Before: the request kept its place in the queue and its pass ran, for an answer no one would read."""
    env = {"VQVAE_CHECKPOINT": str(REPO_ROOT / "models" / "weights" / "vqvae.safetensors")}
    big = image_file(ramp(1024))  # the shipped model reconstructs it in about a second here: the next caller queues
    small = image_file(noise(32, 32))
    body = upload_form(small)
    with (
        running_server(env, tmp_path, log_level="info", startup_timeout_s=60) as process,
        httpx.Client(base_url=process.base_url, timeout=ANSWER_BOUND_S) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        before = batches_run(client, "encode")
        busy = pool.submit(client.post, "/reconstruct", files={"file": ("big.png", big, "image/png")})
        time.sleep(0.3)  # its image decoded, its pass under way
        with raw_connection(process) as sock:
            sock.sendall(upload_head(len(body)) + body)
            time.sleep(0.2)  # queued behind the big pass
        assert busy.result().status_code == 200
        time.sleep(0.5)
        assert batches_run(client, "reconstruct") == 1  # the metric counts passes (the big one's)
        assert batches_run(client, "encode") == before
        assert request_count(client, "/encode", "499") == 1
    log = process.log.read_text(errors="replace")
    assert "Traceback" not in log and " 500" not in log
    # in the access log as in the metrics (before, only there: uvicorn writes no line for an answer to no one)
    assert len(re.findall(r'127\.0\.0\.1:\d+ - "POST /encode HTTP/1\.1" 499', log)) == 1, log


@pytest.mark.parametrize(
    ("signals", "timeout_s"),
    [([signal.SIGTERM], "1"), ([signal.SIGINT, signal.SIGINT], "60")],
    ids=["deadline", "forced"],
)
def test_requests_still_running_at_the_shutdown_deadline_get_a_json_503(
    checkpoint: Path, tmp_path: Path, image_file: Any, signals: list[signal.Signals], timeout_s: str
) -> None:
    """SIGTERM with requests under way: they may finish within VQVAE_SHUTDOWN_TIMEOUT_S, then each gets a JSON 503 and
    the server exits; so at once after a second Ctrl-C. Before: the server waited for every queued request however
    long it took (docker stop's SIGKILL comes after 10 s), and a forced stop answered text/plain 500s and logged a
    traceback per request, and one more for the cancelled lifespan."""
    env = {
        "VQVAE_CHECKPOINT": str(checkpoint),
        "VQVAE_SHUTDOWN_TIMEOUT_S": timeout_s,
        "VQVAE_MAX_PIXELS": str(4096 * 4096),  # a pass of seconds
        "VQVAE_MAX_BATCH_SIZE": "1",  # so that the requests queue, one pass each
        "VQVAE_PARALLEL_BATCHES": "1",
    }
    upload = {"file": ("ramp.png", image_file(ramp(4096)), "image/png")}
    with running_server(env, tmp_path, log_level="info", startup_timeout_s=60, cli=True) as process:

        def post() -> tuple[httpx.Response, float]:
            """The answer, and when it came."""
            with httpx.Client(base_url=process.base_url, timeout=ANSWER_BOUND_S) as client:
                answer = client.post("/reconstruct", files=upload, headers={"accept": "image/png"})
            return answer, time.monotonic()

        with ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(post) for _ in range(3)]
            time.sleep(2.0)  # the uploads are in (a few ms each), the first pass under way (seconds)
            for signum in signals:
                stopped_at = time.monotonic()
                process.process.send_signal(signum)
                time.sleep(0.3)
            answers = [call.result() for call in calls]
        process.process.wait(timeout=ANSWER_BOUND_S)  # once the pass under way is done
    statuses = [answer.status_code for answer, _ in answers]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    for answer, came_at in answers:
        if answer.status_code == 503:
            assert answer.headers["content-type"] == "application/json" and answer.headers["retry-after"] == "1"
            assert "shutting down" in answer.json()["detail"]
            # At the deadline (or the second signal), not after every queued pass: 3 passes of seconds each.
            assert came_at - stopped_at < int(timeout_s if len(signals) == 1 else 0) + 5
    log = process.log.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    if len(signals) == 1:  # uvicorn's line at the deadline, a warning: an alert on errors fired at each docker stop
        assert "timeout graceful shutdown exceeded: each is answered 503" in log and "ERROR" not in log, log


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_serve_on_ipv6s_any_address_takes_ipv4_callers_too(checkpoint: Path, tmp_path: Path, scheme: str) -> None:
    """``--host ::`` with one worker took IPv6 callers alone (asyncio sets IPV6_V6ONLY), while two workers took both:
    127.0.0.1 was refused, and so was the Docker image's health check (a review). Over HTTPS too (VQVAE_TLS_*), which
    its start-up line names (it said http)."""
    env, ca = {"VQVAE_CHECKPOINT": str(checkpoint)}, None
    if scheme == "https":
        ca = REPO_ROOT / "tests" / "app" / "tls" / "localhost.crt"
        env.update(VQVAE_TLS_CERTFILE=str(ca), VQVAE_TLS_KEYFILE=str(ca.with_suffix(".key")))
    options: dict[str, Any] = {"log_level": "info", "startup_timeout_s": 60, "cli": True, "host": "::", "tls_ca": ca}
    with running_server(env, tmp_path, **options) as process:
        port = httpx.URL(process.base_url).port
        for base in (process.base_url, f"{scheme}://127.0.0.1:{port}"):
            answer = httpx.get(f"{base}/healthz", timeout=30, verify=process.verify)
            assert answer.json() == {"status": "ok"}, base
        process.process.send_signal(signal.SIGINT)  # Ctrl-C: a KeyboardInterrupt traceback on this path once
        assert process.process.wait(timeout=30) == 0
    log = process.log.read_text()
    assert f"Uvicorn running on {scheme}://[::]:{port}, IPv4 and IPv6" in log
    assert "Traceback" not in log and "Finished server process" in log


@pytest.mark.skipif(not _has_ipv6(), reason="this machine has no IPv6 loopback")
def test_serve_on_ipv6s_any_address_stops_in_one_line_if_the_port_is_taken_while_it_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two sockets bound but not listening may share a port (SO_REUSEADDR): the one that listens second is refused,
    and uvloop closed it without a word. The server logged an OSError traceback (a review's race of two
    instances), or, had it not logged, ran on listening nowhere."""
    port = free_port()
    taken: list[socket.socket] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # binds the port while "loading"
        assert scope["type"] == "lifespan"
        await receive()
        rival = socket.socket(socket.AF_INET6)
        rival.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rival.bind(("::", port))
        rival.listen()
        taken.append(rival)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    config = uvicorn.Config(app, host="::", port=port, lifespan="on", log_config=None)
    try:
        with pytest.raises(SystemExit) as stopped:
            serve_on_both_families(config)
    finally:
        for rival in taken:
            rival.close()
    assert stopped.value.code == STARTUP_FAILURE and taken
    assert f"cannot listen on [::]:{port}: the port is already in use (another vqvae-serve?)" in caplog.messages


def test_model_docs_and_openapi(server: httpx.Client) -> None:
    model = server.get("/model").json()
    assert model["codebook_size"] == 32
    assert model["slice_256"]["grid"] == [64, 64]
    assert server.get("/healthz").json() == {"status": "ok"}
    docs = server.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert '"validatorUrl": null' in docs.text
    schema = server.get("/openapi.json").json()
    assert {"/encode", "/decode", "/reconstruct", "/model", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    for path in ("/encode", "/decode", "/reconstruct"):
        assert {"400", "406", "408", "413", "415", "422", "503"} <= set(schema["paths"][path]["post"]["responses"])
    decode_request = schema["components"]["schemas"]["DecodeRequest"]
    assert decode_request["examples"][0]["indices"]


def test_openapi_operation_ids_are_unique(server: httpx.Client) -> None:
    """Once the probes' GET and HEAD shared one route, so the schema had healthz_healthz_get and readyz_readyz_get
    twice (and the log a "Duplicate Operation ID" warning); client generators need them unique."""
    schema = server.get("/openapi.json").json()
    ids = [operation["operationId"] for item in schema["paths"].values() for operation in item.values()]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {"healthz_healthz_get", "readyz_readyz_get", "model_info_model_get", "metrics_metrics_get"} <= set(ids)


@pytest.mark.parametrize(("page", "scripts"), [("/docs", 1), ("/redoc", 1)])
def test_docs_pages_load_nothing_from_the_internet(server: httpx.Client, page: str, scripts: int) -> None:
    """Before: FastAPI's pages took their scripts from cdn.jsdelivr.net, a blank page on an air-gapped network."""
    html = server.get(page).text
    assert not re.findall(r"https?://", html)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len([asset for asset in assets if asset.endswith(".js")]) == scripts
    for asset in assets:
        answer = server.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 1000, asset


PREFIX = "/lab/vqvae"  # where a reverse proxy serves the service, stripping it from the requests it forwards


@pytest.fixture(scope="module")
def prefixed_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """``vqvae-serve`` with VQVAE_ROOT_PATH, asked as the proxy asks it: with the prefix stripped."""
    env = {"VQVAE_CHECKPOINT": str(checkpoint), "VQVAE_ROOT_PATH": PREFIX, "VQVAE_MAX_JSON_BYTES": "1000"}
    logs = tmp_path_factory.mktemp("prefixed")
    with (
        running_server(env, logs, log_level="warning", startup_timeout_s=60, cli=True) as process,
        httpx.Client(base_url=process.base_url, timeout=30) as client,
    ):
        yield client


@pytest.mark.parametrize(("page", "scripts"), [("/docs", 1), ("/redoc", 1)])
def test_docs_pages_behind_a_path_prefix_load_from_under_it(
    prefixed_server: httpx.Client, page: str, scripts: int
) -> None:
    """Behind a proxy's /lab/vqvae the pages named /docs-assets/... and /openapi.json, which the browser asked of the
    proxy's root: a blank page (a review)."""
    html = prefixed_server.get(page).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"""(?:url: ?|spec-url=)['"]([^'"]+)['"]""", html)
    assert len([asset for asset in assets if asset.endswith(".js")]) == scripts
    assert f"{PREFIX}/openapi.json" in assets and all(asset.startswith(f"{PREFIX}/") for asset in assets), assets
    for asset in assets:  # as the proxy forwards them
        answer = prefixed_server.get(asset.removeprefix(PREFIX))
        assert answer.status_code == 200 and len(answer.content) > 1000, asset
    assert prefixed_server.get("/openapi.json").json()["servers"] == [{"url": PREFIX}]  # "Try it out" goes there


def test_behind_a_path_prefix_the_service_answers_and_counts_by_route(
    prefixed_server: httpx.Client, as_upload: Files, image_file: Any, noise: Any
) -> None:
    encoded = prefixed_server.post("/encode", files=as_upload(image_file(noise(40, 36))))
    assert encoded.status_code == 200, encoded.text
    refused = prefixed_server.post("/decode", json={"indices": [[1] * 600]})  # over the JSON limit: before routing
    assert refused.status_code == 413
    assert request_count(prefixed_server, "/encode", "200") == 1
    assert request_count(prefixed_server, "/decode", "413") == 1  # was "unmatched": the path had the prefix
    assert request_count(prefixed_server, "unmatched", "413") == 0
    assert prefixed_server.get("/docs-assets/swagger-ui.css").status_code == 200
    assert request_count(prefixed_server, "/docs-assets", "200") >= 1
    assert request_count(prefixed_server, "unmatched", "200") == 0


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/model", "/metrics", "/docs", "/redoc", "/openapi.json"])
def test_every_get_answers_head_with_the_same_headers_and_no_body(server: httpx.Client, path: str) -> None:
    """Uptime checkers and load balancers probe with HEAD. Before, only the probes answered it; /model, /metrics and
    the docs pages gave 405."""
    before = request_count(server, path, "200")
    head, get = server.head(path), server.get(path)
    assert head.status_code == get.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the counts in its text change between the two calls
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
    counted = [
        sample.labels["method"]
        for family in text_string_to_metric_families(server.get("/metrics").text)
        if family.name == "vqvae_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["route"] == path and sample.value > 0
    ]
    assert "HEAD" in counted and request_count(server, path, "200") >= before + 2


def test_head_where_only_post_is_served_is_405(server: httpx.Client) -> None:
    answer = server.head("/encode")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST" and answer.content == b""


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/model", "/metrics", "/docs", "/redoc", "/openapi.json"])
def test_a_405_on_a_get_route_allows_head_too(server: httpx.Client, path: str) -> None:
    """Before: ``Allow: GET`` from FastAPI's routes, though HEAD is served there."""
    answer = server.put(path)
    assert answer.status_code == 405, answer.text
    assert sorted(answer.headers["allow"].split(", ")) == ["GET", "HEAD"], answer.headers


def test_metrics_exposition(server: httpx.Client) -> None:
    server.get("/healthz")
    text = server.get("/metrics").text
    assert "vqvae_http_request_duration_seconds_bucket" in text
    assert request_count(server, "/healthz", "200") >= 1
    assert request_count(server, "/metrics", "200") >= 1
    assert model_loads(server) == 1
    for reason in REFUSAL_REASONS:  # each there from the start, so that an alert on its rate has a series
        assert re.search(rf'^vqvae_http_refused_total{{reason="{reason}"}} \d', text, re.MULTILINE), reason


def test_metrics_add_up_over_worker_processes(
    checkpoint: Path, tmp_path: Path, as_upload: Files, image_file: Any, noise: Any
) -> None:
    """`vqvae-serve --workers 2`: /metrics counts every worker's model load, requests and refusals by the HTTP
    layer, whichever answers."""
    upload = as_upload(image_file(noise(32, 32)))
    env = {"VQVAE_CHECKPOINT": str(checkpoint)}
    with running_server(env, tmp_path, log_level="warning", startup_timeout_s=120, workers=2) as process:
        for _ in range(12):
            with httpx.Client(base_url=process.base_url, timeout=30) as client:  # a new connection: any worker
                assert client.post("/encode", files=upload).status_code == 200
        for _ in range(6):
            with raw_connection(process) as sock:
                sock.sendall(b"HELLO\r\n\r\n")
                assert read_answer(sock).status_code == 400
        assert refusals(process, "invalid_request") == 6
        with httpx.Client(base_url=process.base_url, timeout=30) as client:
            assert model_loads(client) == 2  # one load per worker, counted by whichever answers
            assert request_count(client, "/encode", "200") == 12
            families = {family.name: family for family in text_string_to_metric_families(client.get("/metrics").text)}
    (batches,) = (s.value for s in families["vqvae_inference_batch_size"].samples if s.name.endswith("_count"))
    assert batches == 12


def serve_checkpoint(path: Path) -> subprocess.CompletedProcess[str]:
    """``vqvae-serve --checkpoint path`` on any free port (8000 may be taken here), run to its end."""
    script = "import sys; from app.cli import main; sys.exit(main())"
    return run_in_repo([sys.executable, "-c", script, "--checkpoint", str(path), "--port", "0"])


def test_serve_refuses_a_missing_checkpoint_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    result = serve_checkpoint(missing)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"vqvae-serve: cannot load checkpoint: {missing}: checkpoint file not found"
    ]


def test_serve_refuses_float8_weights_in_one_line(checkpoint: Path, tmp_path: Path) -> None:
    """Before: a traceback, NotImplementedError: "isfinite" not implemented for 'Float8_e4m3fn'."""
    with safe_open(str(checkpoint), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name).to(torch.float8_e4m3fn) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    float8 = tmp_path / "float8.safetensors"
    save_file(tensors, str(float8), metadata=metadata)
    result = serve_checkpoint(float8)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(
        rf"vqvae-serve: cannot load checkpoint: {re.escape(str(float8))}: tensor '[\w.]+' is stored as F8_E4M3, .+",
        line,
    ), line


def test_serve_with_workers_checks_the_checkpoint_in_a_child_and_never_imports_torch(
    checkpoint: Path, tmp_path: Path
) -> None:
    """With --workers N the supervisor only supervises: torch (about 210 MB resident) loads in the child only."""
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    script = (
        "import sys, uvicorn\n"
        "from app.cli import main\n"
        "uvicorn.run = lambda *args, **kwargs: print('uvicorn.run', kwargs['workers'])\n"
        "code = main(sys.argv[1:])\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "sys.exit(code)\n"
    )

    def serve(path: Path, workers: str) -> subprocess.CompletedProcess[str]:
        return run_in_repo(
            [sys.executable, "-c", script, "--workers", workers, "--checkpoint", str(path), "--port", "0"]
        )

    good = serve(checkpoint, "2")
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines() == ["uvicorn.run 2", "torch imported: False"]
    bad = serve(broken, "2")
    assert bad.returncode == 2
    assert bad.stdout.splitlines() == ["torch imported: False"]
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith(f"vqvae-serve: cannot load checkpoint: {broken}")
    one_worker = serve(checkpoint, "1")  # this process is the server: it checks here, with torch
    assert one_worker.stdout.splitlines() == ["uvicorn.run 1", "torch imported: True"]


def dockerfile_lines(instruction: str) -> list[str]:
    """The Dockerfile's ``instruction`` lines, each with its continuation lines joined on."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if line.startswith(f"{instruction} ")]


def dockerfile_exec_form(instruction: str) -> list[str]:
    """The JSON-array arguments of the Dockerfile's last ``instruction`` (for HEALTHCHECK, those of its CMD)."""
    line = dockerfile_lines(instruction)[-1]
    arguments = json.loads(line[line.index("[") :])
    assert isinstance(arguments, list) and all(isinstance(argument, str) for argument in arguments)
    return arguments


def test_the_image_serves_on_vqvae_port_and_its_health_check_asks_that_port(checkpoint: Path, tmp_path: Path) -> None:
    """The image's command and health check, run as the Dockerfile has them (the host narrowed to loopback). Before,
    the health check asked port 8000 whatever the port served, so a container moved to another port was reported
    unhealthy (and restarted, by an orchestrator that acts on it)."""
    command, health = dockerfile_exec_form("CMD"), dockerfile_exec_form("HEALTHCHECK")
    assert command[0] == "vqvae-serve" and "--port" not in command and health[0] == "python"
    exposed = [line.split()[1:] for line in dockerfile_lines("EXPOSE")]
    assert exposed == [[str(Settings.model_fields["port"].default)]]  # the port served unless VQVAE_PORT is set
    arguments = [("127.0.0.1" if argument == "0.0.0.0" else argument) for argument in command[1:]]
    port = free_port()
    env = service_env(VQVAE_CHECKPOINT=str(checkpoint), VQVAE_PORT=str(port))
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *arguments], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
        )
    try:
        wait_ready(Server(process, f"http://127.0.0.1:{port}", tmp_path / "server.log"), 60)
        healthy = run_in_repo([sys.executable, *health[1:]], VQVAE_PORT=str(port))
        elsewhere = run_in_repo([sys.executable, *health[1:]], VQVAE_PORT=str(free_port()))  # nothing listens
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert healthy.returncode == 0, healthy.stderr
    assert elsewhere.returncode != 0 and "Connection refused" in elsewhere.stderr


def test_serve_runs_uvicorn_with_the_factory(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any], str | None]] = []
    threads: list[str | None] = []

    def run(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs, os.environ.get("PROMETHEUS_MULTIPROC_DIR")))
        threads.append(os.environ.get("VQVAE_TORCH_THREADS"))

    monkeypatch.setattr("uvicorn.run", run)
    for name in ("VQVAE_CHECKPOINT", "VQVAE_TORCH_THREADS", "PROMETHEUS_MULTIPROC_DIR"):  # main() sets them
        monkeypatch.setenv(name, "")  # so that the test's end restores the variable's absence
        monkeypatch.delenv(name)
    port = free_port()
    assert main(["--checkpoint", str(checkpoint), "--port", str(port), "--workers", "2", "--host", "0.0.0.0"]) == 0
    monkeypatch.delenv("VQVAE_TORCH_THREADS")
    assert main(["--checkpoint", str(checkpoint), "--port", "0"]) == 0
    monkeypatch.setenv("VQVAE_TORCH_THREADS", "3")
    assert main(["--checkpoint", str(checkpoint), "--workers", "4", "--port", "0"]) == 0
    monkeypatch.setenv("VQVAE_PORT", str(free_port()))  # the port when --port is not given
    assert main(["--checkpoint", str(checkpoint)]) == 0
    assert main(["--checkpoint", str(checkpoint), "--port", str(port)]) == 0  # --port wins
    (args, kwargs, metrics_dir), (_, one_worker, no_metrics_dir), _, (_, from_env, _), (_, given, _) = calls
    assert (from_env["port"], given["port"]) == (int(os.environ["VQVAE_PORT"]), port)
    # Each of N workers gets 1/N of the usable CPUs for torch, unless the operator set the thread count.
    assert threads == [str(max(1, len(os.sched_getaffinity(0)) // 2)), None, "3", "3", "3"]
    assert args == ("app.main:create_app",)
    assert kwargs["factory"] is True and kwargs["http"] is ServiceProtocol
    assert (kwargs["host"], kwargs["port"], kwargs["workers"]) == ("0.0.0.0", port, 2)
    assert os.environ["VQVAE_CHECKPOINT"] == str(checkpoint.resolve())
    # Two workers share a fresh metrics folder for the run, removed afterwards; one worker needs none.
    assert metrics_dir is not None and "vqvae-metrics-" in metrics_dir
    assert not Path(metrics_dir).exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert (one_worker["workers"], no_metrics_dir) == (1, None)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--workers", "0", "must be at least 1, got 0"),
        ("--workers", "two", "expected a whole number, got 'two'"),
        ("--workers", "100000", "at most "),
        ("--port", "70000", "must be a TCP port from 0 to 65535"),
        ("--port", "-1", "must be a TCP port from 0 to 65535"),
        ("--host", "", "must name an interface or address (0.0.0.0 for all of them)"),
        ("--host", " ", "must name an interface or address"),
        ("--host", "[::1]", "write an IPv6 address without brackets (::1), got '[::1]'"),
        ("--checkpoint", "", "empty; leave it out to serve the shipped checkpoint"),  # was "a folder, not a checkpoint"
    ],
)
def test_serve_refuses_a_bad_worker_count_port_or_host(
    option: str, value: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty --host (an unset variable in --host "$HOST") made uvicorn listen on every interface; 100000
    workers, each with a model, were accepted."""
    with pytest.raises(SystemExit) as stopped:
        main([option, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and said in err, err


SERVE_WITHOUT_UVICORN = (
    "import sys, uvicorn\n"
    "from app.cli import main\n"
    "uvicorn.run = lambda *args, **kwargs: print('served', flush=True)\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # dead, not yet reaped


def checking(checkpoint: Path, workers: str) -> subprocess.Popen[str]:
    """``vqvae-serve`` (uvicorn left out), once it is checking the checkpoint: with several workers, once its
    checking child has been started (the child then takes a second or more to import torch)."""
    command = [sys.executable, "-c", SERVE_WITHOUT_UVICORN, "--workers", workers, "--checkpoint", str(checkpoint)]
    command += ["--port", "0"]
    serve = subprocess.Popen(command, cwd=REPO_ROOT, env=service_env(), text=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(children_of(serve.pid)) < 2 and time.monotonic() < deadline:  # the resource tracker, then the check
        time.sleep(0.01)
    assert len(children_of(serve.pid)) >= 2, "no checking child started"
    return serve


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stopped_while_checking_the_checkpoint_leaves_no_process_behind(
    checkpoint: Path, signum: signal.Signals
) -> None:
    """Before: SIGTERM ended vqvae-serve --workers N at once, leaving its checking child (420 MB) and its resource
    tracker running for ever; SIGINT printed a traceback."""
    serve = checking(checkpoint, "2")
    children = children_of(serve.pid)
    serve.send_signal(signum)
    _, err = serve.communicate(timeout=60)
    assert serve.returncode == 128 + signum, err
    assert err.strip().splitlines() == [
        f"vqvae-serve: stopped ({signum.name}) while checking the checkpoint; not serving"
    ]
    deadline = time.monotonic() + 10
    while not all(gone(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(child) for child in children)


def test_serve_reports_a_checkpoint_check_that_died_in_one_line(checkpoint: Path) -> None:
    """The child that checks the checkpoint for --workers N killed (out of memory, a signal): one line, exit 2."""
    serve = checking(checkpoint, "2")
    os.kill(children_of(serve.pid)[-1], signal.SIGKILL)
    _, err = serve.communicate(timeout=60)
    assert serve.returncode == 2
    assert err.strip().splitlines() == [
        "vqvae-serve: the checkpoint check's process died before answering (exit code -9)"
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_a_port_in_use_before_loading_the_checkpoint(
    workers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a second instance on a taken port loaded and warmed up its model, then failed in uvicorn's bind."""
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("served on a port in use"))
    for name in ("VQVAE_CHECKPOINT", "VQVAE_TORCH_THREADS"):  # main() sets them
        monkeypatch.setenv(name, "")  # so that the test's end restores the variable's absence
        monkeypatch.delenv(name)
    missing = tmp_path / "nowhere.safetensors"  # never looked at: the port is checked first
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--workers", workers, "--checkpoint", str(missing)]) == 2
        monkeypatch.setenv("VQVAE_PORT", str(port))  # the same port from the setting: the message names it
        assert main(["--workers", workers, "--checkpoint", str(missing)]) == 2
    in_use = f"vqvae-serve: cannot listen on 127.0.0.1:{port}: the port is already in use (another vqvae-serve?)"
    assert capsys.readouterr().err.strip().splitlines() == [in_use, f"{in_use} (VQVAE_PORT)"]
    for any_port in (str(port), "0"):  # a review's case: with port 0, the host was not checked
        assert main(["--host", "no-such-host.invalid", "--port", any_port, "--checkpoint", str(missing)]) == 2
        assert "cannot listen on no-such-host.invalid" in capsys.readouterr().err


def test_plain_uvicorn_reports_a_bad_checkpoint_in_one_line(tmp_path: Path) -> None:
    """Not only vqvae-serve: `uvicorn --factory app.main:create_app` too exits without a traceback."""
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", "0"]
    result = run_in_repo(command, VQVAE_CHECKPOINT=str(broken))
    output = result.stdout + result.stderr
    assert result.returncode == 3  # uvicorn's code for a failed start-up
    assert f"startup failed: cannot load checkpoint: {broken}" in output
    assert "Application startup failed" in output
    assert "Traceback" not in output
