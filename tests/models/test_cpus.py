"""models.cpus: a container's CPU limit (a cgroup quota) counts as CPUs, as the affinity mask does."""

from __future__ import annotations

from pathlib import Path

import pytest

import models.cpus as cpus
from models.cpus import cpu_allowance, cpu_quota, default_torch_threads, max_torch_threads, usable_cpus


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize(
    ("membership", "files", "quota"),
    [
        # cgroup v2 in a container (its own cgroup mounted as the root): docker run --cpus 0.5
        ("0::/\n", {"cpu.max": "50000 100000\n"}, 0.5),
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # v2 outside a namespace: the pod's limit on a folder above the container's, which has none of its own
        (
            "0::/kubepods/pod1/c1\n",
            {"kubepods/pod1/cpu.max": "150000 100000", "kubepods/pod1/c1/cpu.max": "max 100000", "cpu.max": "x"},
            1.5,
        ),
        # the smallest of the nested limits
        ("0::/a/b\n", {"a/cpu.max": "100000 100000", "a/b/cpu.max": "300000 100000"}, 1.0),
        # v1: the path /proc/self/cgroup names is the host's; the container's cgroup is the mounted root
        (
            "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
            {"cpu/cpu.cfs_quota_us": "250000\n", "cpu/cpu.cfs_period_us": "100000\n"},
            2.5,
        ),
        ("4:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ("0::/\n", {"cpu.max": "garbage"}, None),  # unreadable is no limit, not a failure
        ("0::/\n", {}, None),  # no cgroup file system at all
    ],
)
def test_the_cpu_quota_is_read_from_the_process_cgroups(
    membership: str, files: dict[str, str], quota: float | None, tmp_path: Path
) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    _files(root, files)
    (tmp_path / "cgroup_membership").write_text(membership)
    assert cpu_quota(root, tmp_path / "cgroup_membership") == quota


def test_no_membership_file_still_reads_the_mounted_root(tmp_path: Path) -> None:
    _files(tmp_path, {"cpu.max": "20000 100000"})
    assert cpu_quota(tmp_path, tmp_path / "missing") == 0.2


@pytest.mark.parametrize(("quota", "allowance"), [(None, 2), (0.2, 1), (0.5, 1), (1.5, 2), (2.0, 2), (16.0, 2)])
def test_the_cpu_allowance_is_the_affinity_lowered_to_the_quota_rounded_up(
    quota: float | None, allowance: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpus, "cpu_quota", lambda: quota)
    assert cpu_allowance() == allowance
    assert default_torch_threads(torch_default=2) == allowance
    assert default_torch_threads(torch_default=1) == 1  # torch's default (physical cores) is never raised
    # what a setting may ask for is not lowered: VQVAE_TORCH_THREADS=8 on 2 cores started before a CPU limit
    assert usable_cpus() == 2 and max_torch_threads() == 8
