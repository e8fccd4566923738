"""The one place that turns a ``--device`` value into a torch device (with a one-line error for a bad one), that
reads what the CPU offers, and that says how many images a bulk pass should batch there."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch

from models.cpus import default_torch_threads

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> the device.

    Raises ValueError with a one-line message, instead of torch's assertion deep inside ``Module.to``, for a name
    outside the choices, or a CUDA device that torch does not see (no GPU, no CUDA build, or no GPU number N).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def bulk_batch_size(device: torch.device) -> int:
    """Images per forward pass for reconstructing a whole set (validation, ``vqvae-eval``).

    On a CPU, batches above 4 run slower per image (memory traffic; the service's ``VQVAE_MAX_BATCH_SIZE`` is 4 for
    the same reason): a validation pass over 256 slices took 0.67x the time at 4 as at 32 on the project's VM. A GPU
    wants larger batches to stay busy.
    """
    return 4 if device.type == "cpu" else 32


# How much faster a bf16 matrix product must run than an fp32 one for bf16 training to pay. Measured (bench_train,
# 2-core VMs): a Xeon whose AVX-512 BF16 ran it at 0.5x the fp32 rate trained 1.4-1.6x slower in bf16; an AMD EPYC
# at 4.2x trained 1.5-1.7x faster; a Xeon with AMX at 2.6-3.8x trained 1.8x faster.
BF16_MATMUL_SPEEDUP_NEEDED = 1.5


def _cpu_flags(cpuinfo: Path) -> set[str]:
    """cpuinfo's flags (empty off Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}


@functools.cache
def cpu_bf16_matmul_speedup(side: int = 1024, repeats: int = 5) -> float:
    """fp32 time over bf16 time of a ``side`` x ``side`` matrix product on this CPU, best of ``repeats`` each,
    taken in turns; 0.1-0.4 s, once per process. It tells whether bf16 training pays far better than the flags
    do: AVX-512 BF16 ran it at 0.5x the fp32 rate on one CPU and at 4.2x on another."""
    floats = torch.rand(side, side)
    halves = floats.to(torch.bfloat16)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(repeats):
        for operand in (floats, halves):
            started = time.perf_counter()
            torch.mm(operand, operand)
            best[operand.dtype] = min(best[operand.dtype], time.perf_counter() - started)
    return best[torch.float32] / best[torch.bfloat16]


def cpu_prefers_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether bf16 training pays on this CPU: one with AMX (``cpu_has_amx``), or one with AVX-512 BF16 that runs a
    bf16 matrix product at least ``BF16_MATMUL_SPEEDUP_NEEDED`` times as fast as fp32. No probe on other CPUs."""
    if cpu_has_amx(cpuinfo):
        return True
    return "avx512_bf16" in _cpu_flags(cpuinfo) and cpu_bf16_matmul_speedup() >= BF16_MATMUL_SPEEDUP_NEEDED


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether oneDNN can use AMX bf16 tiles: ``amx_bf16`` among cpuinfo's flags (False off Linux), and, where
    this torch has it, its own check that the kernel grants the tiles (a guest may list the flag and still
    refuse them, and oneDNN then falls back to AVX-512 BF16, where bf16 was the slower precision)."""
    if "amx_bf16" not in _cpu_flags(cpuinfo):
        return False
    init_amx = getattr(torch._C._cpu, "_init_amx", None)  # private; torch 2.13 has it
    return bool(init_amx()) if init_amx is not None else True


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads for this process: ``threads``, or 0 for torch's default (a thread per core) capped at
    the CPU allowance, which counts a container's CPU limit (``models.cpus``). torch is left alone where it already
    agrees, as it was before the allowance. Shared by ``vqvae-train`` and the benchmarks."""
    wanted = threads or default_torch_threads(torch.get_num_threads())
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
