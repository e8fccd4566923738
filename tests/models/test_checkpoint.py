from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint import CheckpointError, load, read_metadata, save
from models.config import PRESETS
from models.vqvae import VQVAE


@pytest.fixture
def saved(tmp_path: Path) -> tuple[VQVAE, Path]:
    torch.manual_seed(0)
    model = VQVAE(PRESETS["tiny"])
    model.train()
    model(torch.rand(4, 1, 32, 32))  # move the EMA buffers away from their initial values
    return model.eval(), save(model, tmp_path / "model.safetensors", {"data": {"root": "fixture"}, "steps": 3})


def test_round_trip_gives_identical_outputs(saved: tuple[VQVAE, Path]) -> None:
    model, path = saved
    loaded, metadata = load(path)
    assert loaded.config == model.config
    assert metadata["data"] == {"root": "fixture"} and metadata["steps"] == 3
    assert metadata["format_version"] == 1
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.encode(x), model.encode(x))
        assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: checkpoint file not found"):
        load(tmp_path / "nope.safetensors")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"corrupt\.safetensors: not a readable safetensors checkpoint"):
        load(path)


def test_truncated_file(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    _, path = saved
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors: not a readable safetensors checkpoint"):
        load(truncated)


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a VQ-VAE checkpoint"):
        read_metadata(path)


def test_tensors_not_matching_config(saved: tuple[VQVAE, Path], tmp_path: Path) -> None:
    _, path = saved
    _, metadata = load(path)
    other = VQVAE(PRESETS["grid64"])
    bad = tmp_path / "mismatch.safetensors"
    save(other, bad, metadata)
    # Rewrite the header to claim the tiny architecture while holding grid64 tensors.
    from safetensors import safe_open

    with safe_open(str(bad), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        header = handle.metadata()
    header["vqvae"] = header["vqvae"].replace('"codebook_size": 64', '"codebook_size": 32')
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(CheckpointError, match=r"mismatch\.safetensors: tensors do not match"):
        load(bad)
