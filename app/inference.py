"""The loaded model behind the routes: checkpoint loading, and batched encode / reconstruct / decode.

Every forward pass runs on the batcher's worker thread under ``torch.inference_mode()``; the routes only
await futures, so the event loop never runs the model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.batcher import MicroBatcher
from app.settings import Settings
from models.checkpoint import CheckpointError, load
from models.config import VQVAEConfig
from models.quality_torch import ssim_per_image
from models.vqvae import VQVAE

logger = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service cannot start; the message is one line naming the file or setting at fault."""


def load_model(settings: Settings) -> tuple[VQVAE, dict[str, Any]]:
    """Checkpoint -> (model in eval mode on the configured device, metadata), or a one-line StartupError."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise StartupError("VQVAE_DEVICE=cuda but torch sees no CUDA device")
    try:
        return load(settings.checkpoint, settings.device)
    except CheckpointError as exc:
        raise StartupError(f"cannot load checkpoint: {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class InferenceService:
    """The model, its provenance, and the micro-batcher that feeds it."""

    def __init__(
        self,
        model: VQVAE,
        metadata: dict[str, Any],
        settings: Settings,
        *,
        sha256: str,
        observe_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.model = model
        self.metadata = metadata
        self.settings = settings
        self.sha256 = sha256
        self.device = next(model.parameters()).device
        self._observe_batch = observe_batch
        self.batcher = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            on_batch=self._on_batch,
        )

    @classmethod
    def start(cls, settings: Settings, observe_batch: Callable[[str, int], None] | None = None) -> InferenceService:
        """Load the checkpoint once and start the worker thread (blocking; call it off the event loop)."""
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        model, metadata = load_model(settings)
        service = cls(model, metadata, settings, sha256=sha256_of(settings.checkpoint), observe_batch=observe_batch)
        service.batcher.start()
        logger.info(
            "loaded %s (grid %s for 256x256, %d codes) on %s",
            settings.checkpoint,
            model.config.grid_for(256, 256),
            model.config.codebook_size,
            service.device,
        )
        return service

    @property
    def config(self) -> VQVAEConfig:
        return self.model.config

    @property
    def ready(self) -> bool:
        return self.batcher.alive

    def close(self) -> None:
        self.batcher.close()

    async def encode(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float image -> (h, w) int64 index grid."""
        result: np.ndarray = await self.batcher.submit(("encode", image.shape), image)
        return result

    async def reconstruct(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(H, W) float image -> ((H, W) reconstruction in [0, 1], exactly ``model.reconstruct``; its SSIM)."""
        result: tuple[np.ndarray, float] = await self.batcher.submit(("reconstruct", image.shape), image)
        return result

    async def decode(self, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(h, w) index grid -> image in [0, 1] cropped to ``size`` (at most the grid times the stride)."""
        result: np.ndarray = await self.batcher.submit(("decode", indices.shape), (indices, size))
        return result

    def _on_batch(self, key: Hashable, size: int) -> None:
        if self._observe_batch is not None and isinstance(key, tuple):
            self._observe_batch(str(key[0]), size)

    def _run_batch(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        """One forward pass for a group of same-shaped inputs (runs on the worker thread)."""
        operation = key[0] if isinstance(key, tuple) else key
        with torch.inference_mode():
            if operation == "decode":
                grids = torch.from_numpy(np.stack([grid for grid, _ in payloads])).to(self.device)
                images = self.model.decode_indices(grids)[:, 0].clamp(0.0, 1.0).cpu().numpy()
                return [image[:h, :w] for image, (_, (h, w)) in zip(images, payloads, strict=True)]
            batch = torch.from_numpy(np.stack(payloads))[:, None].to(self.device)
            if operation == "encode":
                return list(self.model.encode(batch).cpu().numpy())
            if operation == "reconstruct":
                _, reconstruction = self.model.reconstruct(batch)  # (B, 1, H, W)
                # Scored here, in torch: scikit-image is several times slower and would compete for the cores.
                scores = ssim_per_image(batch, reconstruction).tolist()
                return list(zip(reconstruction[:, 0].cpu().numpy(), scores, strict=True))
        raise ValueError(f"unknown operation {operation!r}")
