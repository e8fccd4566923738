"""benchmarks.flops: the arithmetic of a training step and the matrix-product yardstick."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks.flops import matmul_gflop_per_s, training_step_gflop
from models.config import PRESETS
from models.vqvae import VQVAE

TINY = PRESETS["tiny"]


def forward_conv_gflop(size: int) -> float:
    """Convolution GFLOP of one forward pass, by hand from the layers' shapes (2 per multiply-add)."""
    flops = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal flops
        assert isinstance(module, nn.Conv2d | nn.ConvTranspose2d)
        kh, kw = module.kernel_size
        spatial = inputs[0].shape[-2:] if isinstance(module, nn.ConvTranspose2d) else output.shape[-2:]
        flops += 2 * module.in_channels * module.out_channels * kh * kw * spatial[0] * spatial[1]

    model = VQVAE(TINY)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            module.register_forward_hook(count)
    model(torch.rand(1, 1, size, size))
    return flops / 1e9


def test_step_work_is_forward_plus_backward() -> None:
    """Backward costs about twice the forward (less for the first layer, whose input needs no gradient)."""
    step, forward = training_step_gflop(TINY, batch=1, size=32, ssim_weight=0.84), forward_conv_gflop(32)
    assert 2.5 * forward < step <= 3.0 * forward * 1.01  # + the quantizer's matrix products


def test_step_work_scales_with_pixels_and_batch() -> None:
    one = training_step_gflop(TINY, batch=1, size=32, ssim_weight=0.84)
    assert training_step_gflop(TINY, batch=3, size=32, ssim_weight=0.84) == pytest.approx(3 * one, rel=1e-12)
    assert training_step_gflop(TINY, batch=1, size=64, ssim_weight=0.84) == pytest.approx(4 * one, rel=1e-12)


def test_matmul_rate_is_a_plausible_cpu_figure() -> None:
    rate = matmul_gflop_per_s(torch.device("cpu"), torch.float32, seconds=0)
    assert math.isfinite(rate) and 0.1 < rate < 100_000
