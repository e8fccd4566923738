"""The service in a uvicorn subprocess on a free port: shared by the service benchmark and the HTTP tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import REPO_ROOT


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path
    verify: ssl.SSLContext | bool = True  # how an httpx client checks its certificate (https only)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


LEFT_OUT_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")  # vqvae-serve --workers makes its own


def inherited_env() -> dict[str, str]:
    """This process's environment without VQVAE_* settings (and without a prometheus_client multiprocess folder),
    so the caller's ``env`` alone configures the server."""
    return {
        name: value for name, value in os.environ.items() if not name.startswith("VQVAE_") and name not in LEFT_OUT_ENV
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(server: Server, timeout_s: float, workers: int = 1) -> None:
    """Until /readyz answers 200 and, with several workers, every worker has loaded the model: /readyz speaks
    for whichever worker answers, but /metrics counts the loads of all (``vqvae_model_loads_total``)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.base_url, timeout=2.0, verify=server.verify) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with code {server.process.returncode}:\n{server.log_tail()}")
            try:
                if client.get("/readyz").status_code == 200 and (workers == 1 or model_loads(client) >= workers):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{server.log_tail()}")


def model_loads(client: httpx.Client) -> float:
    """vqvae_model_loads_total from /metrics: the server processes that have loaded the checkpoint."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        if family.name == "vqvae_model_loads"
        for sample in family.samples
        if sample.name == "vqvae_model_loads_total"
    )


@contextmanager
def running_server(
    env: dict[str, str],
    log_dir: Path,
    *,
    log_level: str,
    startup_timeout_s: float,
    workers: int = 1,
    cli: bool = False,
    root: Path = REPO_ROOT,
    host: str = "127.0.0.1",
    tls_ca: Path | None = None,
) -> Iterator[Server]:
    """A uvicorn subprocess serving ``app.main:create_app`` with ``env`` on a free port, stopped on exit; the code
    is that of the source tree ``root`` (another checkout, for an A/B: ``benchmarks.bench_ab``).

    One worker: plain ``uvicorn --factory``, unless ``cli``. Several, or ``cli``: ``vqvae-serve --workers N``, which
    is what sums their metrics (``app.metrics.shared_by_workers``) and sets the header deadline
    (``app.http_protocol``). ``tls_ca``: the server serves HTTPS (``VQVAE_TLS_*`` in ``env``, with ``cli``), with a
    certificate this CA file vouches for.
    """
    port = free_port()
    log = log_dir / f"server-{port}.log"
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    if workers == 1 and not cli:
        command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--log-level", log_level]
    else:
        command = [sys.executable, "-m", "app.cli", "--workers", str(workers)]
        env = {"VQVAE_LOG_LEVEL": log_level, **env}
    command += ["--host", host, "--port", str(port)]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command,
            cwd=root,
            env={**inherited_env(), **env, "PYTHONPATH": path},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill below reaches the workers too
        )
    address = {"::": "[::1]", "0.0.0.0": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)  # asked here
    scheme, verify = ("http", True) if tls_ca is None else ("https", ssl.create_default_context(cafile=tls_ca))
    server = Server(process, f"{scheme}://{address}:{port}", log, verify)
    try:
        wait_ready(server, startup_timeout_s, workers)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
