"""The service's own work per request, without the model and without HTTP: the FastAPI app called directly over
ASGI, with a stand-in for the model that answers at once.

What it measures, in one process, variants alternating over rounds:

- ``/encode`` and ``/reconstruct`` per request (multipart parsing, routing, PNG decode, response; for
  /reconstruct also the PNG encode and base64):
  - ``inline``: images decoded and encoded on the event loop (the default, for uploads up to
    ``VQVAE_INLINE_MAX_BYTES`` and images up to ``VQVAE_INLINE_MAX_PIXELS``);
  - ``worker``: every image sent to a worker thread (both set to 0);
  - ``worker+def``: that, and the service dependency as a plain ``def``, which FastAPI also runs on a worker
    thread (the service before both changes);
- one round trip from the event loop to a worker thread and back (``run_in_threadpool`` of a no-op): what a
  plain ``def`` dependency or endpoint costs FastAPI on every request;
- the PNG decode and encode alone, for scale, and the worst crafted PNGs the event loop may be handed, of
  ``VQVAE_INLINE_MAX_BYTES``: one padded with empty chunks, one padded with compressed text chunks (refused once
  their text passes ``app.imaging.MAX_PNG_TEXT_BYTES``).

    PYTHONPATH=. python -m benchmarks.bench_app --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Message

from app.arguments import positive_int
from app.imaging import ImageError, decode_image, encode_png
from app.inference import Reconstruction
from app.main import create_app
from app.routes.deps import get_service
from app.settings import Settings
from benchmarks.bench_service import Upload, make_uploads
from benchmarks.common import (
    benchmark_parser,
    load_slices,
    print_header,
    ratio,
    time_calls,
    write_json,
)
from benchmarks.crafted_png import EMPTY_CHUNK, TEXT_BOMB_CHUNK, padded_png
from models.config import PRESETS, VQVAEConfig
from training.outputs import clean_exits

VARIANTS = {
    "inline": "images on the event loop (default)",
    "worker": "images on a worker thread",
    "worker+def": "that, and a def dependency",
}
ROUTES = ("encode", "reconstruct")


class StandInService:
    """What the routes use of ``InferenceService``, answering at once: the model's cost is not measured here."""

    ready = True
    decoder_id = "0" * 64  # the answers' tag: a sha256 in hex, as models.decoder_id gives

    def __init__(self, settings: Settings, config: VQVAEConfig) -> None:
        self.settings = settings
        self.config = config

    def check_room(self, pixels: int) -> None:
        """The queue's admission check: there is no queue here, so every image is let through."""

    async def encode(self, image: np.ndarray) -> np.ndarray:
        return np.zeros(self.config.grid_for(*image.shape), dtype=np.int64)  # (h, w)

    async def reconstruct(self, image: np.ndarray) -> Reconstruction:
        return Reconstruction(image, 1.0, float("inf"))


def stand_in_app(settings: Settings, config: VQVAEConfig, *, def_dependency: bool = False) -> FastAPI:
    """The real app (routes, middleware, error handlers) with the stand-in in place of the loaded model; with
    ``def_dependency`` the service is looked up by a plain ``def`` (FastAPI runs it on a worker thread)."""
    app = create_app(settings)
    service = StandInService(settings, config)
    app.state.service = service

    def plain_get_service() -> StandInService:
        return service

    if def_dependency:
        app.dependency_overrides[get_service] = plain_get_service
    return app


async def post(app: FastAPI, path: str, upload: Upload) -> int:
    """One POST straight into the ASGI app, as uvicorn would make it; the response status."""
    headers = [
        (b"host", b"bench"),
        (b"content-type", upload.content_type.encode()),
        (b"content-length", str(len(upload.content)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    body_sent = asyncio.Event()
    status = 0

    async def receive() -> Message:
        if not body_sent.is_set():
            body_sent.set()
            return {"type": "http.request", "body": upload.content, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves; the app does not ask once it has the body
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def per_request_s(app: FastAPI, route: str, uploads: Sequence[Upload], requests: int) -> float:
    """Mean seconds per request over ``requests`` sequential requests (after a few untimed ones)."""
    loop = asyncio.get_running_loop()
    for upload in uploads[:3]:
        if (status := await post(app, f"/{route}", upload)) != 200:
            raise RuntimeError(f"/{route} answered {status}")
    started = loop.time()
    for index in range(requests):
        await post(app, f"/{route}", uploads[index % len(uploads)])
    return (loop.time() - started) / requests


async def thread_round_trip_s(calls: int) -> float:
    """Mean seconds of ``run_in_threadpool`` of a no-op, from the event loop and back."""
    loop = asyncio.get_running_loop()
    await run_in_threadpool(lambda: None)
    started = loop.time()
    for _ in range(calls):
        await run_in_threadpool(lambda: None)
    return (loop.time() - started) / calls


def open_and_load(data: bytes, settings: Settings) -> None:
    """What the event loop does with a small PNG; a refusal counts as done (it is the answer)."""
    with contextlib.suppress(ImageError):
        decode_image(data, max_pixels=settings.max_pixels, min_size=settings.min_size)


def median_ms(values: Sequence[float]) -> float:
    return 1000 * statistics.median(values)


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, images=16, checkpoint=False)
    parser.add_argument("--requests", type=positive_int, default=200, help="requests per variant and round")
    parser.add_argument("--rounds", type=positive_int, default=5, help="passes over the variants (default: 5)")
    return parser


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    info = print_header("the app's own work per request (ASGI, stand-in model, no HTTP)")
    slices = load_slices(args.data, args.split, args.images)
    print(f"data: {slices.describe()}")
    uploads = make_uploads(slices.pngs())
    config = PRESETS["default"]
    offloading = Settings(inline_max_bytes=0, inline_max_pixels=0)
    apps = {
        "inline": stand_in_app(Settings(), config),
        "worker": stand_in_app(offloading, config),
        "worker+def": stand_in_app(offloading, config, def_dependency=True),
    }
    figures: dict[str, dict[str, list[float]]] = {v: {r: [] for r in ROUTES} for v in VARIANTS}
    round_trips: list[float] = []

    async def measure_round() -> None:
        for route in ROUTES:
            for variant, app in apps.items():
                figures[variant][route].append(await per_request_s(app, route, uploads, args.requests))
        round_trips.append(await thread_round_trip_s(args.requests))

    try:
        for _ in range(args.rounds):
            asyncio.run(measure_round())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    pngs, floats = slices.pngs(), slices.floats()
    settings = Settings()
    kib = settings.inline_max_bytes // 1024
    empty_chunks = padded_png(pngs[0], EMPTY_CHUNK, settings.inline_max_bytes)
    text_chunks = padded_png(pngs[0], TEXT_BOMB_CHUNK, settings.inline_max_bytes)
    codec_ms: dict[str, Callable[[int], Any]] = {
        "PNG decode": lambda i: decode_image(
            pngs[i % len(pngs)], max_pixels=settings.max_pixels, min_size=settings.min_size
        ),
        "PNG encode": lambda i: encode_png(floats[i % len(floats)]),
        f"a {kib} KiB PNG of empty chunks": lambda i: open_and_load(empty_chunks, settings),
        f"a {kib} KiB PNG of text chunks": lambda i: open_and_load(text_chunks, settings),
    }
    alone = {name: median_ms(time_calls(call, warmup=1, repeats=50, seconds=0)) for name, call in codec_ms.items()}

    print(f"ms per request, median of {args.rounds} rounds of {args.requests} sequential requests; x: vs default")
    print(f"{'variant':<36} " + " ".join(f"{'/' + route:>20}" for route in ROUTES))
    for variant, label in VARIANTS.items():
        cells = []
        for route in ROUTES:
            ms = median_ms(figures[variant][route])
            cells.append(f"{ms:>12.2f} {ratio(ms, median_ms(figures['inline'][route])):>6.2f}x")
        print(f"{label:<36} " + " ".join(cells))
    print(f"one round trip to a worker thread and back (run_in_threadpool of a no-op): {median_ms(round_trips):.2f} ms")
    print("alone, in-process: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in alone.items()))
    write_json(
        args.json,
        {
            "benchmark": "app",
            "machine": info,
            "data": slices.describe(),
            "requests": args.requests,
            "rounds_per_request_s": figures,
            "thread_round_trip_s": round_trips,
            "alone_ms": alone,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
