import numpy as np
import pytest
import torch

from models.quality import ssim
from training.losses import reconstruction_loss


def test_ssim_term_is_the_reported_metric() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((48, 40))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    x, y = (torch.tensor(v, dtype=torch.float64)[None, None] for v in (a, b))
    l1 = float(np.abs(a - b).mean())
    assert float(reconstruction_loss(x, y, 1.0)) == pytest.approx(1 - ssim(a, b), abs=1e-6)
    assert float(reconstruction_loss(x, y, 0.0)) == pytest.approx(l1, abs=1e-6)


def test_loss_is_zero_for_perfect_reconstruction_and_has_gradient() -> None:
    x = torch.rand(2, 1, 32, 32)
    assert float(reconstruction_loss(x, x.clone(), 0.84)) == pytest.approx(0.0, abs=1e-6)
    y = torch.rand(2, 1, 32, 32, requires_grad=True)
    loss = reconstruction_loss(x, y, 0.84)
    loss.backward()
    assert float(loss.detach()) > 0.1 and y.grad is not None and float(y.grad.abs().sum()) > 0
