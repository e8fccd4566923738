"""Small uploads are decoded and encoded on the event loop, large ones on a worker thread; the answers agree."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import httpx
import pytest

from app.offload import run_sized
from benchmarks.crafted_png import EMPTY_CHUNK, padded_png

pytestmark = pytest.mark.anyio

Files = Callable[..., dict[str, tuple[str, bytes, str]]]
Serve = Callable[..., Any]


async def test_inline_up_to_the_limit_then_on_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    assert await run_sized(100, 100, threading.get_ident) == loop_thread
    assert await run_sized(101, 100, threading.get_ident) != loop_thread
    assert await run_sized(1, 0, lambda a, *, b: a + b, 2, b=3) == 5  # arguments pass through


@pytest.fixture
def worker_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the functions sent to a worker thread (Starlette's and FastAPI's thread pool is AnyIO's)."""
    calls: list[str] = []
    original = anyio.to_thread.run_sync

    async def counting(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        named = getattr(function, "func", function)  # Starlette hands over a functools.partial
        calls.append(getattr(named, "__name__", repr(named)))
        return await original(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return calls


async def round_trip(client: httpx.AsyncClient, upload: dict[str, tuple[str, bytes, str]]) -> list[Any]:
    encoded = (await client.post("/encode", files=upload)).json()
    decoded = await client.post("/decode", json={"indices": encoded["indices"], "image_size": encoded["image_size"]})
    reconstructed = (await client.post("/reconstruct", files=upload)).json()
    return [encoded, decoded.content, base64.b64decode(reconstructed["image_png_base64"]), reconstructed["ssim"]]


async def test_a_slice_sized_request_never_waits_for_a_worker_thread(
    serve: Serve, as_upload: Files, image_file: Any, noise: Any, worker_calls: list[str]
) -> None:
    """Each hand-off to a worker thread and back cost about as much as decoding the slice itself
    (``python -m benchmarks.bench_app``); the service dependency is ``async`` for the same reason."""
    upload = as_upload(image_file(noise(64, 80)))
    async with serve() as client:
        worker_calls.clear()  # the lifespan loads the model on one
        inline = await round_trip(client, upload)
        assert worker_calls == []
    async with serve(inline_max_pixels=64 * 80 - 1) as client:
        worker_calls.clear()
        offloaded = await round_trip(client, upload)
        # decode for /encode and /reconstruct, PNG encode for /decode and /reconstruct
        assert sorted(worker_calls) == ["encode_png", "encode_png", "load_pixels", "load_pixels"]
    assert offloaded == inline


async def test_a_large_file_is_opened_on_a_worker_thread_even_when_its_image_is_small(
    serve: Serve, as_upload: Files, image_file: Any, noise: Any, worker_calls: list[str]
) -> None:
    """Opening reads the header, and a crafted header is slow to read (``python -m benchmarks.bench_app``)."""
    png = image_file(noise(16, 16))
    padded = padded_png(png, EMPTY_CHUNK, len(png) + 1200)
    async with serve(inline_max_bytes=len(padded) - 1) as client:
        worker_calls.clear()
        small = await client.post("/encode", files=as_upload(png))
        large = await client.post("/encode", files=as_upload(padded))
        assert worker_calls == ["decode_admitted"]
    assert small.status_code == large.status_code == 200
    assert small.json() == large.json()


async def test_only_png_is_opened_on_the_event_loop(
    serve: Serve, as_upload: Files, image_file: Any, noise: Any, worker_calls: list[str]
) -> None:
    """A progressive JPEG is decoded once per scan, BMP's RLE and TIFF's tags in Python: small is not cheap."""
    pixels = noise(16, 16)
    async with serve() as client:
        worker_calls.clear()
        for fmt in ("JPEG", "BMP", "TIFF"):
            response = await client.post("/encode", files=as_upload(image_file(pixels, fmt)))
            assert response.status_code == 200, response.text
        assert worker_calls == ["decode_admitted"] * 3
