"""The loaded model behind the routes: checkpoint loading, and batched encode / reconstruct / decode.

Every forward pass runs on the batcher's worker thread under ``torch.inference_mode()``; the routes only
await futures, so the event loop never runs the model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from app.batcher import MicroBatcher
from app.settings import Settings
from models.allocator import retain_freed_memory
from models.checkpoint import CheckpointError, load
from models.config import VQVAEConfig
from models.cpus import cpu_allowance, cpu_quota, default_torch_threads, usable_cpus
from models.decoder_id import decoder_id
from models.device import pick_device
from models.quality_torch import psnr_per_image, ssim_per_image
from models.temp_folder import temp_folder_problem
from models.vqvae import VQVAE

logger = logging.getLogger(__name__)

ObserveBatch = Callable[[str, int, float], None]  # (operation, requests in the batch, seconds of its pass)


WARM_UP_SIDE = 256  # the OASIS slice size: what most callers send
# Pixels one forward pass may gather from several requests (one larger image still runs, alone): four 512x512
# images, but no two of 1024x1024. Four of those would take about 4 x 326 MB of activations in one pass (one 1024x1024
# reconstruct: +326 MB with the shipped model, python -m benchmarks.bench_image_size), and batches gain little even
# for slices (README).
BATCH_PIXELS = 1024 * 1024
# torch's own default, read at import: torch.set_num_threads (which helper threads call) also changes the default
# that threads starting later inherit.
DEFAULT_TORCH_THREADS = torch.get_num_threads()


class Reconstruction(NamedTuple):
    """One /reconstruct answer from the model thread."""

    image: np.ndarray  # (H, W) float32 in [0, 1]
    ssim: float  # models.quality.ssim, computed in torch (float64)
    psnr: float  # dB; +inf for a perfect reconstruction


class StartupError(RuntimeError):
    """The service cannot start; the message is one line naming the file or setting at fault."""


def load_model(settings: Settings) -> tuple[VQVAE, dict[str, Any]]:
    """Checkpoint -> (model in eval mode on the configured device, metadata), or a one-line StartupError."""
    problem = temp_folder_problem()  # first: without one the model cannot run, whatever the checkpoint
    if problem is not None:
        raise StartupError(problem)
    try:
        device = pick_device(settings.device)
    except ValueError as exc:
        raise StartupError(f"VQVAE_DEVICE: {exc}") from exc
    try:
        model, metadata = load(settings.checkpoint, device)
    except CheckpointError as exc:
        raise StartupError(f"cannot load checkpoint: {exc}") from exc
    return model.for_inference(), metadata


def check_checkpoint(settings: Settings) -> None:
    """Load the checkpoint and drop it, on a short-lived thread: ``vqvae-serve``'s fail-fast check.

    The thread exits before the server starts, and with it the OpenMP team it created, so the model thread
    stays the only one with a team (see ``InferenceService``). Raises ``StartupError``.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-check") as pool:
        pool.submit(load_model, settings).result()


def checkpoint_problem(settings: Settings | None = None) -> str | None:
    """``check_checkpoint`` with ``settings`` (by default, from the environment): what is wrong, or None.

    Run in a child process by ``vqvae-serve --workers N``, so that the supervisor, which serves nothing, never
    imports torch (about 210 MB of resident memory it would keep while the workers run).
    """
    try:
        check_checkpoint(settings or Settings())
    except StartupError as exc:
        return str(exc)
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class InferenceService:
    """The model, its provenance, and the micro-batcher whose one worker thread loads and runs it.

    Every torch call of the service runs on that one thread, the checkpoint load included. OpenMP (libgomp)
    keeps a team of worker threads for each thread that has run a parallel region; once two teams are alive,
    their threads outnumber the cores and libgomp stops spinning between parallel regions, so each of the
    hundreds of parallel regions in a forward pass has to wake its worker threads. On the 2-core CPU a batch-1
    encode took 1.8x as long when the checkpoint had been loaded on the (living) main thread
    (``python -m benchmarks.bench_threads``, docs/bench_threads.txt).

    Under load the batcher's helper threads run batches too, each with one torch thread, while the worker runs
    its own with one (``MicroBatcher``'s ``on_share``). One-thread forward passes never create an OpenMP team,
    so the worker's stays the only one; and with no team to keep in step, the event loop taking a core from a
    forward pass costs that pass only its own time, not its partner thread's wait at every barrier.
    """

    model: VQVAE
    metadata: dict[str, Any]
    sha256: str
    decoder_id: str  # models.decoder_id: tags /encode's answers, checked by /decode
    device: torch.device

    def __init__(self, settings: Settings, *, observe_batch: ObserveBatch | None = None) -> None:
        """Nothing is loaded yet: ``start`` loads the checkpoint on the worker thread."""
        self.settings = settings
        self._observe_batch = observe_batch
        # the worker's, when not shared; by default at most the usable CPUs, a container's CPU limit counted
        self._threads = settings.torch_threads or default_torch_threads(DEFAULT_TORCH_THREADS)
        self._shared = False
        self.batcher = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            max_queue_cost=settings.queue_pixels,
            max_batch_cost=BATCH_PIXELS,
            on_batch=self._on_batch,
            initializer=self._load,
            helpers=self.parallel_batches - 1,
            helper_initializer=self._start_helper,
            on_share=self._share,
        )

    @property
    def parallel_batches(self) -> int:
        """Forward passes at once under load: the setting, or by default one per torch thread (1 on CUDA)."""
        if self.settings.parallel_batches:
            return self.settings.parallel_batches
        return 1 if self.settings.device == "cuda" else self._threads

    @classmethod
    def start(cls, settings: Settings, observe_batch: ObserveBatch | None = None) -> InferenceService:
        """Load the checkpoint once (on the worker thread), warm the model up and serve (blocking; call it off
        the event loop). Raises ``StartupError``."""
        if settings.malloc_retain_mb and retain_freed_memory(settings.malloc_retain_mb * 1024 * 1024):
            logger.info(
                "malloc keeps up to %d MB freed per arena mapped (VQVAE_MALLOC_RETAIN_MB)", settings.malloc_retain_mb
            )
        service = cls(settings, observe_batch=observe_batch)
        service.batcher.start()
        logger.info(
            "loaded %s (grid %s for 256x256, %d codes) on %s",
            settings.checkpoint,
            service.config.grid_for(256, 256),
            service.config.codebook_size,
            service.device,
        )
        logger.info("%s", service.threads_line())
        return service

    def threads_line(self) -> str:
        """What the start-up log says of the CPUs used: an operator's one view of a container limit's effect."""
        quota = cpu_quota()
        limit = f" under a cgroup CPU limit of {quota:g}" if quota is not None else ""
        source = (
            "VQVAE_TORCH_THREADS, or vqvae-serve --workers' share of the CPUs"  # which sets it for its workers
            if self.settings.torch_threads
            else f"torch's default, at most {cpu_allowance()} of the {usable_cpus()} usable CPU(s){limit}"
        )
        return (
            f"{self._threads} torch thread(s) ({source}); up to {self.parallel_batches} forward pass(es) at once "
            "under load (VQVAE_PARALLEL_BATCHES)"
        )

    def _load(self) -> None:
        """Runs on the worker thread, before any request: threads, checkpoint, warm-up. Raises ``StartupError``."""
        torch.set_num_threads(self._threads)
        self.model, self.metadata = load_model(self.settings)
        try:
            self.sha256 = sha256_of(self.settings.checkpoint)
        except OSError as exc:
            raise StartupError(f"cannot read checkpoint {self.settings.checkpoint}: {exc}") from exc
        self.decoder_id = decoder_id(self.model)
        self.device = next(self.model.parameters()).device
        try:
            self._warm_up()
        except RuntimeError as exc:  # out of memory, an unsupported device...: one line, not a traceback
            raise StartupError(f"the model failed its warm-up pass on {self.device}: {exc}") from exc

    def _start_helper(self) -> None:
        """Runs on each helper thread after the worker's ``_load``: one torch thread, and its own warm-up."""
        torch.get_num_threads()  # first: a thread's first torch call would reset its count to the process default
        torch.set_num_threads(1)
        try:
            self._warm_up()
        except RuntimeError as exc:
            raise StartupError(f"the model failed its warm-up pass on a helper thread: {exc}") from exc

    def _share(self, shared: bool) -> None:
        """On the worker thread, before each of its batches: one torch thread while helpers may run theirs."""
        if shared != self._shared:
            torch.set_num_threads(1 if shared else self._threads)
            self._shared = shared

    def _warm_up(self, side: int = WARM_UP_SIDE) -> None:
        """One pass of each operation on a blank slice, so the first caller does not pay for the kernels'
        one-off set-up (not counted in the batch metrics)."""
        blank = np.zeros((side, side), dtype=np.float32)
        grid = np.zeros(self.config.grid_for(side, side), dtype=np.int64)
        self._run_batch(("encode", blank.shape), [blank])
        self._run_batch(("reconstruct", blank.shape), [blank])
        self._run_batch(("decode", grid.shape), [(grid, (side, side))])  # keyed as ``decode`` keys its batches

    @property
    def config(self) -> VQVAEConfig:
        return self.model.config

    @property
    def ready(self) -> bool:
        return self.batcher.alive

    def close(self) -> None:
        self.batcher.close()

    def check_room(self, pixels: int) -> None:
        """Raise ``QueueFullError`` (503) now if an image of ``pixels`` would be refused by the queue: asked once
        an upload's header is read, before its pixels are decoded (``app.offload.decode_upload``)."""
        self.batcher.check_room(pixels)

    async def encode(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float image -> (h, w) int64 index grid."""
        result: np.ndarray = await self.batcher.submit(("encode", image.shape), image, image.size)
        return result

    async def reconstruct(self, image: np.ndarray) -> Reconstruction:
        """(H, W) float image -> its reconstruction (exactly ``model.reconstruct``), SSIM and PSNR."""
        result: Reconstruction = await self.batcher.submit(("reconstruct", image.shape), image, image.size)
        return result

    async def decode(self, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(h, w) index grid -> image in [0, 1] cropped to ``size`` (at most the grid times the stride)."""
        result: np.ndarray = await self.batcher.submit(("decode", indices.shape), (indices, size), size[0] * size[1])
        return result

    def _on_batch(self, key: Hashable, size: int, seconds: float) -> None:
        if self._observe_batch is not None and isinstance(key, tuple):
            self._observe_batch(str(key[0]), size, seconds)

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
                peaks = psnr_per_image(batch, reconstruction).tolist()
                images = reconstruction[:, 0].cpu().numpy()
                return [Reconstruction(*fields) for fields in zip(images, scores, peaks, strict=True)]
        raise ValueError(f"unknown operation {operation!r}")
