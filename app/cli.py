"""The ``vqvae-serve`` command: check the settings and the checkpoint up front, then run uvicorn.

Kept apart from ``app.main`` so that it imports neither torch nor the model: with ``--workers N`` this process
only supervises the N server processes, and importing torch here would keep its memory for nothing.
"""

from __future__ import annotations

import argparse
import errno
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError

from app.arguments import checkpoint_path, host_name, port_number, worker_count
from app.command_output import CommandParser, say
from app.errors import settings_problems
from app.http_protocol import ServiceProtocol
from app.listen_socket import bind_problem, serve_on_both_families, takes_both_families, where
from app.logs import log_config
from app.metrics import shared_by_workers
from app.service_links import PORT_VARIABLE, is_link_value
from app.settings import Settings, unknown_variables
from app.tls import tls_problem
from app.tls import uvicorn_options as tls_options
from models.cpus import THREADS_PER_CPU_LIMIT, cpu_allowance

APP_FACTORY = "app.main:create_app"
LOOP_FACTORY = "app.event_loop:new_event_loop"  # uvloop, with the TLS handshake bounded (app.event_loop)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = CommandParser(
        prog="vqvae-serve", description="Serve the VQ-VAE over HTTP (settings: VQVAE_* environment variables)."
    )
    parser.add_argument("--host", type=host_name, default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    parser.add_argument(
        "--port", type=port_number, help="TCP port (default: VQVAE_PORT, or else 8000; 0: any free one)"
    )
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        help="server processes, each with its own model; unless VQVAE_TORCH_THREADS is set, each gets an equal "
        "share of the CPUs for torch (a container's CPU limit counted; "
        f"{THREADS_PER_CPU_LIMIT} workers per usable CPU at most)",
    )
    parser.add_argument(
        "--checkpoint", type=checkpoint_path, help="checkpoint file (default: VQVAE_CHECKPOINT or the shipped one)"
    )
    return parser.parse_args(argv)


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' share of the CPU allowance (the usable CPUs, lowered to a container's CPU
    limit: ``models.cpus``), at least one."""
    return max(1, cpu_allowance() // workers)


def share_cpus_among_workers(workers: int) -> None:
    """Give each worker process its share of the CPUs for torch, unless VQVAE_TORCH_THREADS says otherwise.

    torch's default is one thread per core in every process, so N workers would run N teams of that many
    OpenMP threads on the same cores, each waiting at barriers for partners that lost their core.
    """
    if workers > 1 and "VQVAE_TORCH_THREADS" not in os.environ:  # set but empty: refused, as with one worker
        os.environ["VQVAE_TORCH_THREADS"] = str(threads_per_worker(workers))


def listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host``:``port`` (in use, not an address of this machine, a name that does
    not resolve), or None. Tried before the checkpoint is loaded: uvicorn binds only after the app has started, so a
    second instance on a taken port loaded and warmed up its model (seconds) before failing. The socket is closed
    at once; another process may still take the port before uvicorn does, and uvicorn (or, for ``--host ::``,
    ``app.listen_socket``) then says so itself. Port 0
    (any free one) is tried too, for the host: it was skipped, and a host that does not resolve failed in uvicorn,
    after the model had loaded."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {where(host, port)}: the host does not resolve ({exc.strerror})"
    bound, unavailable = False, None
    for family, kind, protocol, _, address in addresses:
        try:
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own sockets
                probe.bind(address)
                bound = True
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:  # skipped by asyncio too (an address family not enabled here)
                unavailable = exc
                continue
            return bind_problem(host, port, exc)
    return None if bound or unavailable is None else bind_problem(host, port, unavailable)


def check_before_serving(settings: Settings, workers: int) -> str | None:
    """Load the checkpoint once and drop it: what is wrong with it, or None.

    With one worker this process is the server, so the check runs here (``check_checkpoint`` keeps it off the
    main thread). With several, a spawned child process runs it; it reads the same settings from this
    environment, which it inherits, and this process never imports torch.
    """
    if workers == 1:
        from app.inference import checkpoint_problem as here  # torch: this process will serve

        return here(settings)
    context = multiprocessing.get_context("spawn")
    answers, child_end = context.Pipe(duplex=False)
    child = context.Process(target=_check_in_child, args=(child_end,), name="checkpoint-check", daemon=True)
    try:
        with _STOP_SIGNALS.held():
            child.start()
        child_end.close()
        answer = answers.recv_bytes()
    except EOFError:  # the child died without answering (killed, out of memory)
        child.join()
        return f"the checkpoint check's process died before answering (exit code {child.exitcode})"
    finally:  # also when this process is stopped while it waits: the child must not outlive it
        if child.is_alive():
            child.terminate()
        if child.pid is not None:
            child.join()
        child_end.close()
        answers.close()
    return answer.decode() or None


def _check_in_child(answers: Connection) -> None:
    """Runs in the child: the import of torch happens there. Sends the problem, or b"" for none."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    from app.inference import checkpoint_problem as in_child

    problem = in_child()
    answers.send_bytes((problem or "").encode())


class _Stopped(Exception):
    """SIGTERM or SIGINT before uvicorn took the signals over."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopSignals:
    """SIGTERM and SIGINT as ``_Stopped`` while the checkpoint is checked (seconds, longer on a slow disk). Before,
    SIGINT printed a traceback, and SIGTERM ended this process at once, leaving the checking child of
    ``--workers N`` (420 MB) running for ever."""

    def __init__(self) -> None:
        self._held = False
        self._pending: int | None = None

    def handle(self, signum: int, _: FrameType | None) -> None:
        if self._held:
            self._pending = self._pending or signum
            return
        raise _Stopped(signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        """A signal in this block is raised at its end: starting a child must not be cut off halfway (the child
        would get half of its start-up data, and print a traceback)."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending is not None:
            raise _Stopped(self._pending)

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {signum: signal.signal(signum, self.handle) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


_STOP_SIGNALS = _StopSignals()


def main(argv: Sequence[str] | None = None) -> int:
    """Check settings and checkpoint up front (one clear line on failure), then run uvicorn with the factory."""
    args = _parse_args(argv)
    if args.checkpoint is not None:
        os.environ["VQVAE_CHECKPOINT"] = str(args.checkpoint.resolve())  # the worker processes read it too
    share_cpus_among_workers(args.workers)
    for warning in unknown_variables(os.environ):
        say(warning, logging.WARNING)
    try:
        settings = Settings()
    except ValidationError as exc:
        say(f"invalid settings: {settings_problems(exc)}")
        return 2
    problem = tls_problem(settings)
    if problem is not None:
        say(problem)
        return 2
    port = settings.port if args.port is None else args.port
    problem = listen_problem(args.host, port)
    if problem is not None:
        from_variable = PORT_VARIABLE in os.environ and not is_link_value(os.environ[PORT_VARIABLE])
        source = f" ({PORT_VARIABLE})" if args.port is None and from_variable else ""
        say(f"{problem}{source}")
        return 2
    try:
        with _STOP_SIGNALS.installed():
            problem = check_before_serving(settings, args.workers)
    except _Stopped as stopped:
        say(f"stopped ({stopped}) while checking the checkpoint; not serving")
        return 128 + stopped.signum
    if problem is not None:
        say(problem)
        return 2

    options: dict[str, Any] = {
        "factory": True,
        "host": args.host,
        "port": port,
        "workers": args.workers,
        "log_level": settings.log_level,
        "log_config": log_config(
            settings.log_level, settings.log_format, probes=settings.log_probes, root_path=settings.root_path
        ),
        "http": ServiceProtocol,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "timeout_keep_alive": settings.keep_alive_s,
        "root_path": settings.root_path,  # uvicorn adds it to each path, as the ASGI spec has it
        "server_header": False,  # "server: uvicorn" told every caller what serves them, for nothing (a review)
        **tls_options(settings),
        "loop": LOOP_FACTORY,
    }
    with shared_by_workers(args.workers):
        if args.workers == 1 and takes_both_families(args.host):  # see app.listen_socket
            return serve_on_both_families(uvicorn.Config(APP_FACTORY, **options))
        uvicorn.run(APP_FACTORY, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
