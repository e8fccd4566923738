"""How much arithmetic a training step does, and a yardstick for the rate a machine does it at.

A training variant that is faster per pixel either does less arithmetic per pixel or does the same arithmetic at a
higher rate. Crops, channels_last and compile do the same convolutions per pixel as the eager baseline, so their
gain is bounded by how far below the machine's rate the baseline runs. ``benchmarks.bench_train`` prints both so a
ratio target can be judged against what the hardware allows.
"""

from __future__ import annotations

import functools
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import time_calls
from models.config import VQVAEConfig
from models.vqvae import VQVAE
from training.losses import reconstruction_loss


@functools.cache  # the same for every variant with the same crop and batch
def training_step_gflop(config: VQVAEConfig, *, batch: int, size: int, ssim_weight: float) -> float:
    """GFLOP of one training step's forward and backward for ``batch`` images of ``size`` x ``size``.

    Counted by ``torch.utils.flop_counter``, which counts convolutions and matrix products (the elementwise ops,
    SSIM's blur included, are not counted; they are a small share of the time). The count depends on shapes only,
    not on precision, memory layout, compile or device, so it runs on one image of a fresh eager model on the CPU
    and is scaled by the batch: every op of the model works per image.
    """
    model = VQVAE(config).train()
    x = torch.rand(1, config.in_channels, size, size)  # (1, C, size, size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        (reconstruction_loss(x, out.reconstruction, ssim_weight) + out.vq_loss).backward()
    return batch * counter.get_total_flops() / 1e9


def matmul_gflop_per_s(device: torch.device, dtype: torch.dtype, *, seconds: float = 0.5) -> float:
    """GFLOP/s of a square matrix product on ``device`` in ``dtype``: the median of ``seconds`` of timed calls,
    after as long a warm-up (the first calls of AMX or a GPU run slow).

    A yardstick rather than a ceiling: oneDNN's convolutions can run a little faster than this product, and a
    VM's rate drifts, so bench_train measures it before and after its rounds. On CUDA the fp32 product may use
    TF32 exactly when cuDNN's convolutions may (``torch.backends.cudnn.allow_tf32``, on by default), so that the
    two are held to the same arithmetic.
    """
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device).to(dtype)  # (size, size)
    b = torch.randn(size, size, device=device).to(dtype)

    def product(_: int) -> None:
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        time_calls(product, warmup=1, repeats=1, seconds=seconds)
        durations = time_calls(product, warmup=0, repeats=3, seconds=seconds)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    return 2 * size**3 / statistics.median(durations) / 1e9
