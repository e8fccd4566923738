"""Where a route's image work runs: on the event loop when the image is small, on a worker thread when it is not.

Handing a call to a worker thread costs two thread switches (there and back to the loop), which on the 2-core
machine cost about as much as decoding a 256x256 PNG does: ``python -m benchmarks.bench_app`` measures both ways.
Images up to ``Settings.inline_max_pixels`` are therefore decoded and encoded on the loop; larger ones (a
4096x4096 upload takes over 100 ms to decode) go to a worker thread so that they cannot stall other callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")


async def run_sized(
    pixels: int, inline_max_pixels: int, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """``function(*args, **kwargs)`` for an image of ``pixels`` pixels: inline up to ``inline_max_pixels``."""
    if pixels <= inline_max_pixels:
        return function(*args, **kwargs)
    return await run_in_threadpool(function, *args, **kwargs)
