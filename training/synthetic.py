"""Brain-like synthetic slices: the stand-in for OASIS in tests, smoke runs and benchmarks where it is absent."""

from __future__ import annotations

import numpy as np


def synthetic_slice(rng: np.random.Generator, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """A uint8 (H, W) slice: a bright textured ellipse with darker blobs on a black background."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    ry, rx = h * rng.uniform(0.3, 0.42), w * rng.uniform(0.25, 0.38)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = np.where(inside, 150 + 40 * np.sin(xx / rng.uniform(2, 5)) * np.cos(yy / rng.uniform(2, 5)), 0.0)
    for _ in range(3):
        by, bx, r = rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.3 * w, 0.7 * w), rng.uniform(2, h / 8)
        image = np.where(((yy - by) ** 2 + (xx - bx) ** 2 <= r * r) & inside, 60.0, image)
    return np.clip(image, 0, 255).astype(np.uint8)
