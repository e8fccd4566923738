"""Fixtures for the service tests: a tiny checkpoint, settings, in-process clients and image files."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from PIL import Image

from app.main import create_app
from app.settings import Settings
from models.checkpoint import load, save
from models.config import PRESETS
from models.vqvae import VQVAE

OASIS_TEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "oasis" / "keras_png_slices_test"
METADATA = {
    "data": {"root": "fixture", "train": {"split": "train", "images": 3}},
    "metrics": {"test": {"images": 3, "ssim": {"mean": 0.5, "median": 0.5, "p5": 0.4}}, "validate": {"images": 2}},
    "git_commit": "0123abc",
}

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's VQVAE_* variables must not leak into the settings under test."""
    for name in list(os.environ):
        if name.startswith("VQVAE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model: enough to test the HTTP layer, fast on two cores."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VQVAE(PRESETS["tiny"])
    return save(model, tmp_path_factory.mktemp("weights") / "tiny.safetensors", METADATA)


@pytest.fixture(scope="session")
def model(checkpoint: Path) -> VQVAE:
    """The same checkpoint loaded in-process: the reference the service must match."""
    return load(checkpoint)[0]


@pytest.fixture
def make_settings(checkpoint: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return Settings(**{"checkpoint": checkpoint, **overrides})

    return make


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (it loads the model) and talk to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> FastAPI:
    """An app with default settings; the ``client`` fixture of the same test runs it."""
    return create_app(make_settings())


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as started:
        yield started


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> Callable[..., FastAPI]:
    """``make_app(max_queue=2)``: an app with these settings, not started."""

    def make(**overrides: Any) -> FastAPI:
        return create_app(make_settings(**overrides))

    return make


@pytest.fixture
def run() -> Callable[[FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]:
    """``async with run(app) as client``: start an app made by ``make_app``."""
    return running


@pytest.fixture
def serve(make_app: Callable[..., FastAPI]) -> Serve:
    """``async with serve(max_pixels=...) as client``: a running app with these settings."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return running(make_app(**overrides))

    return start


@pytest.fixture
def image_file() -> Callable[..., bytes]:
    """``image_file(array, "PNG")`` -> the bytes of that array saved in that format."""

    def encode(array: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return encode


@pytest.fixture
def noise() -> Callable[..., np.ndarray]:
    """``noise(h, w, seed)`` -> a reproducible uint8 image with structure (gradient + noise)."""

    def make(height: int, width: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        ramp = np.add.outer(np.linspace(0, 120, height), np.linspace(0, 100, width))
        return np.clip(ramp + rng.integers(0, 36, (height, width)), 0, 255).astype(np.uint8)

    return make


@pytest.fixture
def as_upload() -> Callable[..., dict[str, tuple[str, bytes, str]]]:
    """``as_upload(data, name)`` -> the multipart ``files=`` argument for one image in the ``file`` field."""

    def files(data: bytes, name: str = "slice.png") -> dict[str, tuple[str, bytes, str]]:
        return {"file": (name, data, "application/octet-stream")}

    return files


@pytest.fixture
def corrupt_tiff(image_file: Callable[..., bytes], noise: Callable[..., np.ndarray]) -> bytes:
    """A deflate-compressed TIFF whose strip is damaged: libtiff decodes it, and fails (writing to stderr)."""
    data = image_file(noise(64, 64), "TIFF", compression="tiff_deflate")
    return data[:20] + bytes(byte ^ 0xFF for byte in data[20:60]) + data[60:]  # the deflate stream's start


@pytest.fixture
def oasis_slice() -> Path:
    """One real OASIS test slice, when ../shared/data holds the data set."""
    slices = sorted(OASIS_TEST.glob("*.png")) if OASIS_TEST.is_dir() else []
    if not slices:
        pytest.skip(f"OASIS test slices not found at {OASIS_TEST}")
    return slices[0]
