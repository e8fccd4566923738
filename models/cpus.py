"""How many CPUs this process may use, and how many torch threads a setting may ask for; without importing torch,
so that ``vqvae-serve``'s supervisor process (``app.cli``) can use it too.

A container's CPU limit (Kubernetes' ``resources.limits.cpu``, ``docker run --cpus``) is a cgroup quota of CPU
time, not a set of cores: the process still sees every core of the node, and torch's default is a thread per core.
With a 0.5-CPU quota on 2 cores the service's two threads were throttled: a lone ``/reconstruct`` took 185-194 ms
against 103-104 ms on one thread (docs/performance.md, "A container's CPU limit"). So the quota, rounded up, caps
the default thread count (``cpu_allowance``), though not what a setting may ask for.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

THREADS_PER_CPU_LIMIT = 4
CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLER = "cpu"  # v1 mounts the cpu controller at <root>/cpu (often a link to cpu,cpuacct)


def cpu_quota(root: Path = CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs' worth of time the process's cgroups allow (the smallest quota from its own cgroup up to the root), or
    None where none is set or none can be read: cgroup v2's ``cpu.max``, v1's ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``."""
    quotas = []
    for folder in _own_cgroups(root, membership):
        quota = _read_quota(folder)
        if quota is not None:
            quotas.append(quota)
    return min(quotas, default=None)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (a container's cpuset, ``taskset``), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_allowance() -> int:
    """CPUs' worth of time this process may use: the usable CPUs, lowered to its cgroup's quota rounded up."""
    cores, quota = usable_cpus(), cpu_quota()
    return max(1, min(cores, math.ceil(quota)) if quota is not None else cores)


def default_torch_threads(torch_default: int) -> int:
    """The torch threads a process runs with when no setting asks for a number: torch's own default (a thread per
    core it sees) but at most the CPU allowance, which counts a cgroup quota that torch does not see."""
    return max(1, min(torch_default, cpu_allowance()))


def max_torch_threads() -> int:
    """The most torch threads a setting may ask for. Far more than the CPUs is a typo, not a tuning: 100000 threads
    ended the process with a segfault, and 4096 left the service stuck at start-up with 19 GB of memory. Counted
    from the usable CPUs, not the quota: an operator's choice under a CPU limit (more threads than its CPUs, which
    may pay where the passes wait on memory) stays theirs, and what worked before a limit still starts."""
    return THREADS_PER_CPU_LIMIT * usable_cpus()


def _own_cgroups(root: Path, membership: Path) -> list[Path]:
    """The cgroup folders that may hold the process's CPU limit: its own cgroup and each one above it, for v2 and
    v1 alike. In a container the root mounted is the container's own cgroup, and /proc/self/cgroup may name a path
    of the host's that does not exist in it: then the root is all there is."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    folders: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: "0::/path"
            base = root
        elif _V1_CONTROLLER in controllers.split(","):
            base = root / _V1_CONTROLLER
        else:
            continue
        own = base / path.lstrip("/")
        folders += [own, *(parent for parent in own.parents if parent.is_relative_to(base))]
    for base in (root, root / _V1_CONTROLLER):  # a container's own cgroup, whatever /proc/self/cgroup says
        if base not in folders:
            folders.append(base)
    return folders


def _read_quota(folder: Path) -> float | None:
    """One cgroup folder's quota in CPUs, or None (no limit, no such file, or one that cannot be parsed)."""
    try:
        if (folder / "cpu.max").is_file():  # v2: "<quota> <period>" or "max <period>"
            quota_text, period_text = (folder / "cpu.max").read_text().split()
        else:  # v1: -1 is no limit
            quota_text = (folder / "cpu.cfs_quota_us").read_text().strip()
            period_text = (folder / "cpu.cfs_period_us").read_text().strip()
        quota, period = int(quota_text), int(period_text)
    except (OSError, ValueError):  # missing, unreadable, "max", or not two fields
        return None
    return quota / period if quota > 0 and period > 0 else None
