"""The one place that turns a ``--device`` value into a torch device (with a one-line error for a bad one), that
reads what the CPU offers, and that says how many images a bulk pass should batch there."""

from __future__ import annotations

from pathlib import Path

import torch

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


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether oneDNN can use AMX bf16 tiles: ``amx_bf16`` among cpuinfo's flags (False off Linux), and, where
    this torch has it, its own check that the kernel grants the tiles (a guest may list the flag and still
    refuse them, and oneDNN then falls back to AVX-512 BF16, where bf16 was the slower precision)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    if not any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines()):
        return False
    init_amx = getattr(torch._C._cpu, "_init_amx", None)  # private; torch 2.13 has it
    return bool(init_amx()) if init_amx is not None else True
