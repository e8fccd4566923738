"""models.allocator: with its malloc settings a repeated forward pass stops page-faulting its buffers in.

Each case runs in a fresh interpreter: the settings are process-wide and only affect later allocations.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "weights" / "vqvae.safetensors"

# Minor page faults of batch-1 reconstructs of a 256x256 slice after three warm-up passes; printed as JSON.
PASSES = """
import json, resource, sys
import torch
from models.allocator import retain_freed_memory
from models.checkpoint import load

applied = retain_freed_memory(256 * 1024 * 1024) if sys.argv[1] == "retain" else False
model, _ = load(sys.argv[2], "cpu")
image = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
faults = []
with torch.inference_mode():
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model.reconstruct(image)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults[3:]}))
"""


def faults_per_pass(mode: str) -> tuple[bool, int]:
    """(whether the settings were applied, median minor faults per pass) in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PASSES, mode, str(SHIPPED)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["applied"], int(statistics.median(result["faults"]))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's (mallopt)")
def test_retained_memory_stops_the_page_faults_of_each_pass() -> None:
    applied, retained = faults_per_pass("retain")
    default_applied, default = faults_per_pass("default")
    assert applied and not default_applied
    # glibc's defaults hand the decoder's large buffers back after every pass (about 3,900 faults here)
    assert default > 1000, f"glibc's defaults no longer fault ({default} per pass): the setting may be moot"
    assert retained < 100, f"{retained} page faults per pass with the memory retained"


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C library has no glibc entry points, nothing is called and the answer is False."""
    from models import allocator

    class NotGlibc:
        def __init__(self, name: str | None) -> None:
            self.name = name

    monkeypatch.setattr(allocator.ctypes, "CDLL", NotGlibc)
    assert allocator.retain_freed_memory(1024) is False
