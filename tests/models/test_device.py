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
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose one of auto, cpu, cuda, cuda:N"):
        pick_device("tpu")
    with pytest.raises(ValueError, match="unknown device 'mps'"):  # a torch device this project does not run on
        pick_device("mps")


def test_cuda_without_a_gpu_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=f"device '{name}' asked for, but torch sees no CUDA device"):
            pick_device(name)


def test_a_gpu_number_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1")  # a chosen GPU of several, as torch names it
    assert pick_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match="device 'cuda:2' asked for, but torch sees 2 CUDA device"):
        pick_device("cuda:2")


def test_evaluate_on_a_missing_gpu_exits_2_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--checkpoint", str(SHIPPED), "--data", str(tmp_path), "--split", "", "--device", "cuda"]
    assert evaluate.main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: device 'cuda' asked for, but torch sees no CUDA device"
