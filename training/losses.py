"""The training loss: L1 plus (1 - SSIM), with the SSIM that is reported (``models.quality_torch``)."""

from __future__ import annotations

import torch

from models.quality_torch import ssim_map


def reconstruction_loss(x: torch.Tensor, reconstruction: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    """(1 - w) * L1 + w * (1 - SSIM): L1 keeps intensities right, SSIM targets the reported metric
    (the mix of Zhao et al. 2017, "Loss functions for image restoration with neural networks")."""
    x, reconstruction = x.float(), reconstruction.float()
    l1 = (x - reconstruction).abs().mean()
    if ssim_weight == 0:
        return l1
    return (1 - ssim_weight) * l1 + ssim_weight * (1 - ssim_map(x, reconstruction).mean())
