"""Checkpoint format: safetensors tensors + JSON metadata in the header. Loading never executes code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from models.config import VQVAEConfig
from models.vqvae import VQVAE

FORMAT_VERSION = 1
METADATA_KEY = "vqvae"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def save(model: VQVAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the model's tensors and ``{"format_version", "config", **metadata}`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {**(metadata or {}), "format_version": FORMAT_VERSION, "config": model.config.to_dict()}
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={METADATA_KEY: json.dumps(header)})
    partial.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, validated, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (corrupt or truncated?): {exc}") from exc
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file has no '{METADATA_KEY}' metadata; not a VQ-VAE checkpoint")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: checkpoint metadata must be a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format_version {version!r} (expected {FORMAT_VERSION})")
    return metadata


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQVAE, dict[str, Any]]:
    """Rebuild the model from the file alone -> (model in eval mode, metadata)."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        config = VQVAEConfig.from_dict(metadata["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid architecture config in checkpoint: {exc}") from exc
    model = VQVAE(config)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        model.load_state_dict(tensors, strict=True)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: tensors do not match the config in the checkpoint: {exc}") from exc
    return model.to(device).eval(), metadata
