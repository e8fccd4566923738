"""``vqvae-train --device cuda``: bf16 autocast on the GPU, checkpoints that load on the CPU, and resume.

Runs only where torch sees a CUDA device; CI has none, so it reports these tests as skipped. They passed on an
NVIDIA H200 with ``bash benchmarks/gpu_suite.sh`` (docs/cuda_h200_suite.txt).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import load, read_metadata
from training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")

TINY = ["--preset", "tiny", "--batch-size", "4", "--crop", "32", "--warmup-steps", "2", "--no-progress"]


def test_training_on_cuda_saves_cpu_loadable_checkpoints_and_resumes(
    fixture_oasis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data", str(fixture_oasis), "--out", str(tmp_path), "--device", "cuda", *TINY]
    assert train.main([*args, "--epochs", "1"]) == 0
    training = read_metadata(tmp_path / "last.safetensors")["training"]
    assert training["device"].startswith("cuda")
    assert training["precision"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "fp32")
    model, _ = load(tmp_path / "best.safetensors")  # on the CPU
    assert all(p.device.type == "cpu" and bool(torch.isfinite(p).all()) for p in model.parameters())
    _, reconstruction = model.reconstruct(torch.rand(1, 1, 40, 40))
    assert reconstruction.shape == (1, 1, 40, 40)

    steps = json.loads((tmp_path / "history.json").read_text())[0]["step"]
    capsys.readouterr()
    assert train.main([*args, "--epochs", "2", "--resume"]) == 0
    assert f"resumed from {tmp_path} after epoch 1, step {steps}" in capsys.readouterr().out  # not a fresh run
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["step"] == 2 * history[0]["step"]
    assert read_metadata(tmp_path / "last.safetensors")["training"]["epochs"] == 2
