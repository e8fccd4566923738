"""Ctrl-C (SIGINT) and SIGTERM while training: stop cleanly, with the state saved, and never in a half-written file."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, a batch scheduler): stop as on Ctrl-C, state saved."""


def exit_code(stop: KeyboardInterrupt) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM while training, raised as ``KeyboardInterrupt`` and ``Terminated``.

    A signal is raised where it lands (in validation, say), except inside ``deferred()``, which each training step
    and the epoch's checkpoint writes and figures run in: there it is raised when the block ends, or at once if a
    second one comes (a step cut short so is not saved: ``train.stopped``).
    Raised in the middle of drawing the first figure, it left objects of a half-built pyparsing grammar (under
    matplotlib) whose ``__del__`` printed a traceback at exit (a flaky test caught it).
    Inside ``held()`` (the save after a stop) no signal is raised at all: the process is stopping already, and a
    second Ctrl-C there used to end in a traceback, possibly between the weights and the optimizer state.
    """

    def __init__(self) -> None:
        self._deferring = False
        self._holding = False
        self._pending: type[KeyboardInterrupt] | None = None

    def _receive(self, signum: int, frame: object) -> None:
        if self._holding:
            print("still saving the state; stopping when it is written", file=sys.stderr, flush=True)
            return
        error = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if self._deferring and self._pending is None:
            self._pending = error
            return
        raise error

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a stop signal until the block has finished (a second one still stops at once)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending

    @contextmanager
    def held(self) -> Iterator[None]:
        """Let the block finish whatever signals come: for the last save of a run that is already stopping
        (``kill -9`` still ends it; each file is written whole or not at all)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGTERM, and SIGINT unless it is ignored (a job started with ``&`` from a script inherits it
        ignored, and keeps ignoring it); main thread only, the previous handlers are put back."""
        names = [signal.SIGTERM]
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            names.append(signal.SIGINT)
        try:
            previous = {name: signal.signal(name, self._receive) for name in names}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for name, handler in previous.items():
                signal.signal(name, handler)
