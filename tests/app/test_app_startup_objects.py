"""app.startup_objects: a started app's objects are frozen out of the collector's passes, and handed back after."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.inference import StartupError

pytestmark = pytest.mark.anyio

Run = Callable[[FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]


def tracked(obj: Any) -> bool:
    """Whether the collector's generations hold ``obj`` (frozen objects are in none of them)."""
    return any(candidate is obj for candidate in gc.get_objects())


@pytest.fixture(autouse=True)
def _nothing_frozen_around() -> Any:
    """Each test starts and ends with nothing frozen: what it sees frozen, its apps froze."""
    assert gc.get_freeze_count() == 0
    yield
    assert gc.get_freeze_count() == 0


async def test_a_started_app_keeps_its_model_out_of_collections_until_it_stops(
    make_app: Callable[..., FastAPI], run: Run
) -> None:
    app = make_app()
    async with run(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        model = app.state.service.model
        assert gc.get_freeze_count() > 10_000  # torch, FastAPI, the model: everything start-up made
        assert not tracked(model)
        assert not tracked(app.state.service)
        gc.collect()  # a full collection leaves them where they are
        assert not tracked(model)
    assert tracked(model)  # stopped: back in the collector's care, to be freed once dropped


async def test_objects_stay_frozen_until_the_last_app_of_the_process_stops(
    make_app: Callable[..., FastAPI], run: Run
) -> None:
    first, second = make_app(), make_app()
    async with run(first):
        async with run(second):
            assert not tracked(second.state.service.model)
        assert gc.get_freeze_count() > 0
        assert not tracked(first.state.service.model)
    assert gc.get_freeze_count() == 0


async def test_an_app_that_fails_to_start_freezes_nothing(
    make_app: Callable[..., FastAPI], run: Run, tmp_path: Path
) -> None:
    app = make_app(checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(StartupError, match="checkpoint file not found"):
        async with run(app):
            pass
    assert gc.get_freeze_count() == 0


async def test_an_app_started_after_another_stopped_does_not_keep_that_one_s_model(
    make_app: Callable[..., FastAPI], run: Run
) -> None:
    """A service and its model are held in reference cycles: refrozen before a full collection, every stopped app's
    model was kept for as long as the process ran (a review: 12 models alive after 12 starts)."""
    first = make_app()
    async with run(first):
        model = weakref.ref(first.state.service.model)
    del first
    async with run(make_app()):
        assert model() is None
