"""Differentiable SSIM for the training loss (the reported metric is models.quality.ssim)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(sigma: float, radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()  # (2r+1,)


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    """SSIM map of (B, 1, H, W) images in [0, 1] with the metric's settings (Gaussian 11x11, sigma 1.5,
    population statistics, data_range 1), over the valid region only as scikit-image crops it."""
    g = _gaussian_window(sigma, radius, x.device, x.dtype)
    gx, gy = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[1]  # depthwise, separable Gaussian, valid padding
        return F.conv2d(F.conv2d(t, gx.expand(c, 1, 1, -1), groups=c), gy.expand(c, 1, -1, 1), groups=c)

    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, H, W)
    mu_x, mu_y, xx, yy, xy = blur(stack).unbind(1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def reconstruction_loss(x: torch.Tensor, reconstruction: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    """(1 - w) * L1 + w * (1 - SSIM): L1 keeps intensities right, SSIM targets the reported metric
    (the mix of Zhao et al. 2017, "Loss functions for image restoration with neural networks")."""
    x, reconstruction = x.float(), reconstruction.float()
    l1 = (x - reconstruction).abs().mean()
    if ssim_weight == 0:
        return l1
    return (1 - ssim_weight) * l1 + ssim_weight * (1 - ssim_map(x, reconstruction).mean())
