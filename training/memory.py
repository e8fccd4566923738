"""Memory the tools could not get, as one line with a way on instead of a traceback (vqvae-train, vqvae-eval)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_CPU_ALLOCATOR = "DefaultCPUAllocator"


class OutOfMemory(RuntimeError):
    """Memory the command could not get; the message is the allocator's first line and a way on."""


@contextmanager
def memory_errors(way_on: str) -> Iterator[None]:
    """An allocation that failed, as OutOfMemory ending in ``way_on``: on the CPU torch says so only in a
    RuntimeError's text ("DefaultCPUAllocator: can't allocate memory", as for --crop 1000000 before it had a bound),
    on CUDA with torch.OutOfMemoryError, numpy with MemoryError. Each was a traceback. (An allocation the kernel
    granted and cannot back is another matter: the OOM killer ends the process.)"""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError | torch.OutOfMemoryError) and "can't allocate memory" not in str(exc):
            raise
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        first = first[first.find(_CPU_ALLOCATOR) :] if _CPU_ALLOCATOR in first else first  # not c10's "[enforce fail"
        raise OutOfMemory(f"out of memory: {first}; {way_on}") from exc
