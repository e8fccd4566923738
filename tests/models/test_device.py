"""``--device`` values: a bad one or a missing GPU is a one-line error, not torch's assertion from ``Module.to``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.device import pick_device
from training import evaluate

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "vqvae.safetensors"


def test_pick_device_names_the_choices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose one of auto, cpu, cuda"):
        pick_device("tpu")


def test_cuda_without_a_gpu_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        pick_device("cuda")


def test_evaluate_on_a_missing_gpu_exits_2_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--checkpoint", str(SHIPPED), "--data", str(tmp_path), "--split", "", "--device", "cuda"]
    assert evaluate.main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: --device cuda asked for, but torch sees no CUDA device"
