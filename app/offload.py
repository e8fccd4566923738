"""Where a route's image work runs: on the event loop when the image is small, on a worker thread when it is not.

Handing a call to a worker thread costs two thread switches (there and back to the loop), which on the 2-core
machine cost about as much as decoding a 256x256 PNG does (``python -m benchmarks.bench_app`` measures both ways).
So small PNG uploads are decoded, and small answers PNG-encoded, on the loop. What a caller can make the loop do
stays short (worst crafted cases measured by ``bench_app``):
- only PNG is opened on the loop: a progressive JPEG is decoded once per scan, so its pixel count does not bound
  its time, and BMP's RLE and TIFF's tags are parsed in Python;
- ``Settings.inline_max_bytes`` bounds the PNG file: Pillow walks its chunks in Python, and its compressed text
  chunks are capped by ``app.imaging.MAX_PNG_TEXT_BYTES``;
- ``Settings.inline_max_pixels`` bounds the image decoded or encoded: a few KiB of PNG can hold a 4096x4096 image.
Everything else runs on a worker thread, as all of it did before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.imaging import PNG_SIGNATURE, Pixels, encode_png, load_pixels, open_image
from app.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


async def run_sized(
    pixels: int, inline_max_pixels: int, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """``function(*args, **kwargs)`` for an image of ``pixels`` pixels: inline up to ``inline_max_pixels``."""
    if pixels <= inline_max_pixels:
        return function(*args, **kwargs)
    return await run_in_threadpool(function, *args, **kwargs)


Admit = Callable[[int], None]  # called with the image's pixel count once its header is read; raises to refuse it


async def decode_upload(data: bytes, settings: Settings, admit: Admit | None = None) -> Pixels:
    """Uploaded file -> float32 (H, W) in [0, 1] and notes (``app.imaging.decode_image``), on the loop when
    small. ``admit`` (the model's queue) may refuse the image between its header and its pixels."""
    if len(data) > settings.inline_max_bytes or not data.startswith(PNG_SIGNATURE):
        return await run_in_threadpool(decode_admitted, data, settings, admit)
    with _admitted(data, settings, admit) as image:
        return await run_sized(image.width * image.height, settings.inline_max_pixels, load_pixels, image)


def decode_admitted(data: bytes, settings: Settings, admit: Admit | None) -> Pixels:
    """``decode_image``, asking ``admit`` between the header and the pixels (on a worker thread)."""
    with _admitted(data, settings, admit) as image:
        return load_pixels(image)


@contextmanager
def _admitted(data: bytes, settings: Settings, admit: Admit | None) -> Iterator[Image.Image]:
    """The opened image (``app.imaging.open_image``: its header read and checked), once ``admit`` let it pass."""
    with open_image(data, max_pixels=settings.max_pixels, min_size=settings.min_size) as image:
        if admit is not None:
            admit(image.width * image.height)
        yield image


async def encode_answer(image: np.ndarray, settings: Settings) -> bytes:
    """Float (H, W) image -> PNG bytes (``app.imaging.encode_png``), on the loop when small."""
    return await run_sized(image.size, settings.inline_max_pixels, encode_png, image)
