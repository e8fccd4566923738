"""How many CPUs this process may use, and how many torch threads a setting may ask for; without importing torch,
so that ``vqvae-serve``'s supervisor process (``app.cli``) can use it too."""

from __future__ import annotations

import os

THREADS_PER_CPU_LIMIT = 4


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (a container's or ``taskset``'s share), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def max_torch_threads() -> int:
    """The most torch threads a setting may ask for. Far more than the CPUs is a typo, not a tuning: 100000 threads
    ended the process with a segfault, and 4096 left the service stuck at start-up with 19 GB of memory."""
    return THREADS_PER_CPU_LIMIT * usable_cpus()
