"""Vector quantizer with an EMA codebook, dead-code restart and usage statistics."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # (B, D, h, w): code vectors (straight-through estimator in training)
    indices: torch.Tensor  # (B, h, w) int64
    loss: torch.Tensor  # () commitment loss
    perplexity: torch.Tensor  # () exp(entropy) of code use in this batch


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup, updated by exponential moving averages (k-means style).

    Why EMA rather than a codebook loss: it converges faster and keeps more codes alive (van den Oord et al.
    2017, appendix). Codes that stop being chosen are restarted from current encoder outputs so the whole
    codebook stays in use. With ``normalize`` the vectors live on the unit sphere (cosine lookup), which
    further improves codebook use (Yu et al. 2022, ViT-VQGAN). The codebook only changes in training mode.
    """

    codebook: torch.Tensor
    ema_count: torch.Tensor
    ema_sum: torch.Tensor

    def __init__(
        self,
        codebook_size: int,
        embedding_dim: int,
        *,
        normalize: bool = True,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        dead_code_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.embedding_dim = embedding_dim
        self.normalize = normalize
        self.commitment_cost = commitment_cost
        self.decay = decay
        self.epsilon = epsilon
        self.dead_code_threshold = dead_code_threshold
        init = torch.randn(codebook_size, embedding_dim)
        if normalize:
            init = F.normalize(init, dim=1)
        self.register_buffer("codebook", init)  # (K, D)
        self.register_buffer("ema_count", torch.ones(codebook_size))  # (K,)
        self.register_buffer("ema_sum", init.clone())  # (K, D)

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        return F.normalize(z, dim=1) if self.normalize else z

    def lookup(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (N, D) -> (N,)."""
        if self.normalize:
            return (flat @ self.codebook.t()).argmax(dim=1)  # max cosine = min distance on the sphere
        distances = (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)[None, :]
        )  # (N, K)
        return distances.argmin(dim=1)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for an index grid (B, h, w) -> (B, D, h, w)."""
        return self.codebook[indices].permute(0, 3, 1, 2)  # same memory layout as forward(), same conv kernels

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        # Quantize in fp32 even under autocast: bf16 distances pick wrong codes.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = self._prepare(z)  # (B, D, h, w)
            b, d, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
            indices = self.lookup(flat)  # (B*h*w,)
            counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (K,)
            if self.training:
                self._ema_update(flat, indices, counts)
            quantized = self.embed(indices.view(b, h, w))  # (B, D, h, w)
            loss = self.commitment_cost * F.mse_loss(z, quantized.detach())
            if self.training:  # straight-through gradient to the encoder; eval returns the exact code vectors
                quantized = z + (quantized - z).detach()
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return QuantizerOutput(quantized, indices.view(b, h, w), loss, perplexity)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)  # (K, D)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        codebook = self.ema_sum / smoothed[:, None]
        self.codebook.copy_(F.normalize(codebook, dim=1) if self.normalize else codebook)
        self._restart_dead_codes(flat)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        """Move codes whose EMA use fell below the threshold onto random encoder outputs of this batch."""
        dead = torch.nonzero(self.ema_count < self.dead_code_threshold).squeeze(1)  # (n_dead,)
        if dead.numel() == 0:
            return
        picks = flat[torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)]  # (n_dead, D)
        picks = picks + 1e-3 * torch.randn_like(picks)
        if self.normalize:
            picks = F.normalize(picks, dim=1)
        self.codebook[dead] = picks
        self.ema_sum[dead] = picks
        self.ema_count[dead] = 1.0

    @staticmethod
    def usage(indices: torch.Tensor, codebook_size: int) -> tuple[float, float]:
        """(fraction of codes used at least once, perplexity) over any set of indices."""
        counts = torch.bincount(indices.reshape(-1).cpu(), minlength=codebook_size).double()
        probs = counts / counts.sum()
        perplexity = float(torch.exp(-(probs * torch.log(probs + 1e-12)).sum()))
        return float((counts > 0).double().mean()), perplexity
