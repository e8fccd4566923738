"""The reported SSIM (``models.quality.ssim``) in torch: batched and differentiable.

Two users need it: the training loss (gradients) and the service, which scores every /reconstruct batch on
its worker thread (scikit-image costs about 9 ms per 256x256 slice; this, in float64, a fraction of that).
In float64 it equals ``models.quality.ssim`` to rounding (tested) for images of at least 11x11 pixels: the
same 11-tap Gaussian (sigma 1.5, scikit-image's truncation), population statistics, data range 1, averaged
over the region that scikit-image keeps (the window never leaves the image there, so padding never matters).
"""

from __future__ import annotations

import torch

from models.quality import ssim

SIGMA = 1.5
RADIUS = 5  # scikit-image: int(3.5 * sigma + 0.5), an 11-tap window
MIN_SIZE = 2 * RADIUS + 1  # smaller images have no valid region (see ``ssim_per_image``)
C1, C2 = 0.01**2, 0.03**2  # (K1 * L)^2, (K2 * L)^2 with L = 1


def gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(-RADIUS, RADIUS + 1, dtype=dtype, device=device)
    window = torch.exp(-(coords**2) / (2 * SIGMA**2))
    return window / window.sum()  # (11,)


def blur_valid(t: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable filter over the last two axes, valid region only: (..., H, W) -> (..., H-10, W-10).

    On the CPU by shifted sums (``blur_shifted_sums``); elsewhere by products over unfolded windows
    (``blur_unfolded``): on a GPU each of the shifted sums' 22 operations per map (a product and 10 in-place adds
    per axis) is a kernel launch, and a training step of this model there is bound by its launches, not by its
    arithmetic.
    """
    if t.device.type == "cpu":
        return blur_shifted_sums(t, window)
    return blur_unfolded(t, window)


def blur_shifted_sums(t: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``blur_valid`` as shifted weighted sums accumulated in place: on the CPU several times faster than a
    depthwise conv2d for an 11-tap window (and than out-of-place sums, which allocate a new map per tap).
    Autograd-safe: an in-place add saves nothing for its backward.
    """
    weights = window.tolist()
    taps = len(weights)
    height, width = t.shape[-2:]
    rows = t[..., :, : width - taps + 1] * weights[0]
    for k in range(1, taps):
        rows.add_(t[..., :, k : k + width - taps + 1], alpha=weights[k])
    out = rows[..., : height - taps + 1, :] * weights[0]
    for k in range(1, taps):
        out.add_(rows[..., k : k + height - taps + 1, :], alpha=weights[k])
    return out


def blur_unfolded(t: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``blur_valid`` in a few kernels: per axis, the sliding windows (``unfold``, which the product copies out,
    11 times the map's size) times the window.

    A matrix product, not a convolution, because cuDNN may run fp32 convolutions in TF32 by default
    (``torch.backends.cudnn.allow_tf32``), which SSIM's differences of blurred squares cannot afford; fp32
    matrix products stay in fp32 unless ``torch.set_float32_matmul_precision`` says otherwise. Autocast is off
    for the same reason (it would run the products in bf16), and the window takes the map's dtype.
    """
    taps = window.numel()
    window = window.to(t.dtype)
    with torch.autocast(t.device.type, enabled=False):
        rows = t.unfold(-1, taps, 1) @ window  # (..., H, W-10, taps) @ (taps,) -> (..., H, W-10)
        return rows.unfold(-2, taps, 1) @ window  # (..., H-10, W-10, taps) @ (taps,) -> (..., H-10, W-10)


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1], H and W >= 11 -> SSIM map (B, C, H-10, W-10) in the dtype of ``x``.

    Blurs four maps, not five: the formula needs var_x + var_y only as a sum, which is blur(x^2 + y^2) minus
    the squared means (the filter is linear). Same value as scikit-image to rounding, about 30% less time.
    Each map is blurred on its own rather than stacked into one tensor: the blur is bound by memory traffic, and
    a quarter of the data stays in the CPU caches across its 22 passes. In an A/B on the 2-core Xeon: a 256x256
    pair in float64 5.1 -> 2.8 ms on one torch thread (2.6 -> 2.4 ms on two); the training loss at batch 16 of
    128x128 crops 25.7 -> 14.0 ms, forward and backward.
    """
    if min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x.shape[-2:])}")
    window = gaussian_window(x.dtype, x.device)
    mu_x, mu_y, squares, xy = (blur_valid(t, window) for t in (x, y, x * x + y * y, x * y))
    mu_xy = mu_x * mu_y
    mu_squares = mu_x * mu_x + mu_y * mu_y
    # (2 mu_x mu_y + C1)(2 cov + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2))
    return ((2 * mu_xy + C1) * (2 * (xy - mu_xy) + C2)) / ((mu_squares + C1) * (squares - mu_squares + C2))


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pairs -> (B,) SSIM of each image, in float64 so that it is the reported figure.

    One image at a time: a batch's float64 intermediates outgrow the CPU caches (measured here: 4 slices of
    256x256 take 8.0 ms together, 5.3 ms one after another). Single-channel images under 11 px a side have no
    valid region; they get ``models.quality.ssim``, whose smaller-window fallback is the reported figure there.
    """
    if min(x.shape[-2:]) < MIN_SIZE and x.shape[1] == 1:
        pairs = zip(x[:, 0].cpu().double().numpy(), y[:, 0].cpu().double().numpy(), strict=True)
        return torch.tensor([ssim(a, b) for a, b in pairs], dtype=torch.float64)
    return torch.stack([ssim_map(a[None].double(), b[None].double()).mean() for a, b in zip(x, y, strict=True)])


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pairs -> (B,) PSNR in dB for data range 1, in float64 (``models.quality.psnr``; +inf for
    identical images)."""
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    return -10.0 * torch.log10(mse)
