"""Classical codecs at a byte budget (what a user would pick instead of the VQ-VAE), scored with our SSIM."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TypedDict

import numpy as np
from PIL import Image

from models.quality import ssim

Encoder = Callable[[Image.Image, int], bytes]


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _webp(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality, method=6)
    return buffer.getvalue()


def _jpeg2000(image: Image.Image, level: int) -> bytes:
    """``level`` 1..100 maps to compression ratios from 400:1 down to 4:1 (higher level = better quality)."""
    buffer = io.BytesIO()
    ratio = 400.0 ** (1 - (level - 1) / 99) * 4.0 ** ((level - 1) / 99)
    image.save(buffer, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True)
    return buffer.getvalue()


CODECS: dict[str, tuple[Encoder, int, int]] = {
    "JPEG": (_jpeg, 1, 95),
    "WebP (method 6)": (_webp, 0, 100),
    "JPEG 2000": (_jpeg2000, 1, 100),
}


def best_fit(image: np.ndarray, codec: str, budget: int) -> bytes | None:
    """The largest quality setting whose file fits in ``budget`` bytes (binary search), or None if none fits."""
    encode, low, high = CODECS[codec]
    pil = Image.fromarray(image)
    best: bytes | None = None
    while low <= high:
        middle = (low + high) // 2
        data = encode(pil, middle)
        if len(data) <= budget:
            best, low = data, middle + 1
        else:
            high = middle - 1
    return best


def codec_ssim(image: np.ndarray, codec: str, budget: int) -> float | None:
    """SSIM (DESIGN.md metric) of the best-fitting encoding of a uint8 slice, or None when nothing fits."""
    data = best_fit(image, codec, budget)
    if data is None:
        return None
    with Image.open(io.BytesIO(data)) as decoded:
        restored = np.asarray(decoded.convert("L"), dtype=np.float64) / 255.0
    return ssim(image.astype(np.float64) / 255.0, restored)


class CodecRow(TypedDict):
    """One budget of a codec's curve: ``ssim`` is the mean over the images that fit, None where none does (JSON
    has no NaN)."""

    bytes: int
    bits: int
    fits: int
    images: int
    ssim: float | None


def codec_curve(images: list[np.ndarray], codec: str, budgets: list[int]) -> list[CodecRow]:
    """Per budget: mean SSIM over the images that fit, and how many fit."""
    rows: list[CodecRow] = []
    for budget in budgets:
        scores = [s for s in (codec_ssim(im, codec, budget) for im in images) if s is not None]
        rows.append(
            {
                "bytes": budget,
                "bits": 8 * budget,
                "fits": len(scores),
                "images": len(images),
                "ssim": float(np.mean(scores)) if scores else None,
            }
        )
    return rows
