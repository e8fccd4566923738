"""The one place that turns a ``--device`` value into a torch device, with a one-line error for a bad one."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or ``cuda`` -> the device.

    Raises ValueError with a one-line message, instead of torch's assertion deep inside ``Module.to``, for a name
    outside the choices or ``cuda`` on a machine where torch sees no GPU (or has no CUDA build).
    """
    if name not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)
