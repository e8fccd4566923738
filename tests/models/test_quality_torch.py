from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.quality import psnr, ssim
from models.quality_torch import (
    MIN_SIZE,
    blur_shifted_sums,
    blur_unfolded,
    gaussian_window,
    psnr_per_image,
    ssim_map,
    ssim_per_image,
)


def _pair(shape: tuple[int, int], noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    return a, np.clip(a + rng.normal(0, noise, shape), 0, 1)


@pytest.mark.parametrize("shape", [(11, 11), (48, 40), (256, 256), (13, 200)])
def test_float64_equals_the_reported_metric(shape: tuple[int, int]) -> None:
    pairs = [_pair(shape, noise, seed) for seed, noise in enumerate((0.02, 0.2, 0.5))]
    x = torch.tensor(np.stack([a for a, _ in pairs]))[:, None]  # (3, 1, H, W)
    y = torch.tensor(np.stack([b for _, b in pairs]))[:, None]
    got = ssim_per_image(x, y).tolist()
    assert got == pytest.approx([ssim(a, b) for a, b in pairs], abs=1e-12)
    assert len(set(np.round(got, 6))) == 3  # three different scores, not one broadcast value


def test_real_slices_equal_the_reported_metric(oasis_root: Path) -> None:
    files = sorted((oasis_root / "keras_png_slices_test").glob("*.png"))[:4]
    images = np.stack([np.asarray(Image.open(f), dtype=np.float64) / 255 for f in files])
    shifted = np.clip(images * 0.9 + 0.03, 0, 1)
    got = ssim_per_image(torch.tensor(images)[:, None], torch.tensor(shifted)[:, None])
    assert got.tolist() == pytest.approx([ssim(a, b) for a, b in zip(images, shifted, strict=True)], abs=1e-12)


def test_float32_map_is_close_and_differentiable() -> None:
    a, b = _pair((40, 40), 0.1, 3)
    x = torch.tensor(a, dtype=torch.float32)[None, None]
    y = torch.tensor(b, dtype=torch.float32)[None, None].requires_grad_(True)
    value = ssim_map(x, y).mean()
    assert float(value.detach()) == pytest.approx(ssim(a, b), abs=1e-5)
    value.backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


LAYOUTS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "transposed": lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_both_blurs_agree_in_value_and_gradient(dtype: torch.dtype, layout: str) -> None:
    """The GPU's blur (unfolded windows) against the CPU's (shifted sums), both run here on the CPU."""
    t = LAYOUTS[layout](torch.rand(2, 3, 19, 31, dtype=dtype, generator=torch.Generator().manual_seed(5)))
    window = gaussian_window(dtype, t.device)
    outputs, grads = [], []
    for blur in (blur_shifted_sums, blur_unfolded):
        leaf = t.clone().requires_grad_(True)
        out = blur(leaf, window)
        (out * torch.linspace(0, 1, out.shape[-1], dtype=dtype)).sum().backward()  # a non-uniform gradient
        outputs.append(out.detach())
        grads.append(leaf.grad)
    assert outputs[0].shape == (2, 3, 9, 21)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=tolerance)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=tolerance)
    assert float(grads[0].std()) > 0.01  # the gradient does vary over the image


def test_unfolded_blur_ignores_autocast() -> None:
    """Under autocast its products would run in bf16; SSIM's differences of blurred squares need full precision."""
    t = torch.rand(2, 1, 24, 24)
    window = gaussian_window(torch.float32, t.device)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blurred = blur_unfolded(t, window)
    assert blurred.dtype == torch.float32
    torch.testing.assert_close(blurred, blur_shifted_sums(t, window), rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
def test_cuda_scores_equal_the_cpu_scores() -> None:
    """On a GPU the blur is the unfolded form: the reported float64 SSIM must not change with the device."""
    a, b = _pair((64, 48), 0.1, 7)
    x, y = torch.tensor(a)[None, None], torch.tensor(b)[None, None]  # (1, 1, H, W) float64
    on_gpu = ssim_per_image(x.cuda(), y.cuda()).cpu()
    torch.testing.assert_close(on_gpu, ssim_per_image(x, y), rtol=0, atol=1e-12)


def test_too_small_is_refused() -> None:
    x = torch.rand(1, 1, MIN_SIZE - 1, 32)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_map(x, x)


def test_psnr_equals_the_reported_metric() -> None:
    pairs = [_pair((30, 50), noise, seed) for seed, noise in enumerate((0.01, 0.3))]
    x = torch.tensor(np.stack([a for a, _ in pairs] + [pairs[0][0]]))[:, None].float()  # (3, 1, H, W)
    y = torch.tensor(np.stack([b for _, b in pairs] + [pairs[0][0]]))[:, None].float()
    expected = [psnr(a.numpy(), b.numpy()) for a, b in zip(x[:, 0], y[:, 0], strict=True)]
    got = psnr_per_image(x, y)
    assert got.dtype == torch.float64
    assert got[:2].tolist() == pytest.approx(expected[:2], abs=1e-9)
    assert expected[0] != pytest.approx(expected[1], abs=1.0)
    assert got[2].item() == expected[2] == float("inf")  # identical images
