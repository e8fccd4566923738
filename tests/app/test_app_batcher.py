"""app.batcher with a fake model: grouping, the lone-caller path, the bounded queue, errors and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import weakref
from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np
import pytest

from app.batcher import BatcherClosedError, MicroBatcher, QueueFullError

pytestmark = pytest.mark.anyio


class FakeModel:
    """Records each batch; the first batch can be held at a gate so that later requests pile up behind it."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[tuple[Hashable, list[Any]]] = []
        self.gate = threading.Event()
        self.running = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        self.running.set()
        self.gate.wait(10)
        self.batches.append((key, list(payloads)))
        if any(p == "boom" for p in payloads):
            raise RuntimeError("model failed")
        return [(key, p * 10 if isinstance(p, int) else p) for p in payloads]


def make(model: FakeModel, **options: Any) -> MicroBatcher:
    settings = {"max_batch_size": 4, "max_wait_s": 0.0, "max_queue": 16, **options}
    batcher = MicroBatcher(model, **settings)
    batcher.start()
    return batcher


@pytest.fixture
def held() -> Iterator[FakeModel]:
    model = FakeModel(hold_first=True)
    yield model
    model.gate.set()


async def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_queued_requests_are_grouped_by_key_and_answered_in_place(held: FakeModel) -> None:
    sizes: list[int] = []
    batcher = make(held, on_batch=lambda _key, size, _seconds: sizes.append(size))
    first = asyncio.ensure_future(batcher.submit("a", 0))
    await wait_until(held.running.is_set)
    calls = [asyncio.ensure_future(batcher.submit(key, n)) for n, key in enumerate("abababa", start=1)]
    await wait_until(lambda: batcher.queued == 7)
    held.gate.set()
    results = await asyncio.gather(first, *calls)
    assert results == [("a", 0)] + [(key, 10 * n) for n, key in enumerate("abababa", start=1)]
    # a is first in line: all four a's together (max_batch_size), then the three b's in one pass.
    assert [(key, len(items)) for key, items in held.batches] == [("a", 1), ("a", 4), ("b", 3)]
    assert sizes == [1, 4, 3]
    batcher.close()


async def test_a_lone_caller_does_not_wait_for_companions() -> None:
    batcher = make(FakeModel(), max_wait_s=2.0)
    start = time.perf_counter()
    assert await batcher.submit("a", 1) == ("a", 10)
    assert time.perf_counter() - start < 1.0
    batcher.close()


async def full_queue(held: FakeModel) -> tuple[MicroBatcher, asyncio.Future[Any], list[asyncio.Future[Any]]]:
    """A batcher whose queue of two is full behind a held batch: (batcher, the running call, the queued calls)."""
    batcher = make(held, max_queue=2)
    running = asyncio.ensure_future(batcher.submit("a", 0))
    await wait_until(held.running.is_set)
    queued = [asyncio.ensure_future(batcher.submit("a", n)) for n in (1, 2)]
    await wait_until(lambda: batcher.queued == 2)
    return batcher, running, queued


async def test_full_queue_refuses_at_once(held: FakeModel) -> None:
    batcher, running, queued = await full_queue(held)
    with pytest.raises(QueueFullError, match="2 requests already waiting") as caught:
        await batcher.submit("a", 3)
    assert caught.value.retry_after_s >= 1
    held.gate.set()
    assert len(await asyncio.gather(running, *queued)) == 3
    batcher.close()


async def test_check_room_says_what_enqueue_would_without_queueing(held: FakeModel) -> None:
    """The service asks before decoding an image: the same rules as ``enqueue``, nothing queued either way."""
    batcher = make(held, max_queue=2, max_queue_cost=100)
    running = asyncio.ensure_future(batcher.submit("a", 0, cost=1000))
    await wait_until(held.running.is_set)
    batcher.check_room(1000)  # none waits: never refused for its size alone
    queued = asyncio.ensure_future(batcher.submit("a", 1, cost=60))
    await wait_until(lambda: batcher.queued == 1)
    batcher.check_room(40)
    with pytest.raises(QueueFullError, match="1 requests of 60 pixels"):
        batcher.check_room(41)
    assert batcher.queued == 1
    held.gate.set()
    await asyncio.gather(running, queued)
    batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.check_room(1)


async def test_the_queue_refuses_work_past_its_cost_budget_but_never_a_lone_item(held: FakeModel) -> None:
    """Counting requests alone let 256 of the largest images queue: minutes of work and gigabytes of memory from a
    few hundred KB of uploads (a security review). The service's cost is an image's pixels."""
    batcher = make(held, max_queue=16, max_queue_cost=100)
    running = asyncio.ensure_future(batcher.submit("a", 0, cost=1000))  # taken at once: nothing waits before it
    await wait_until(held.running.is_set)
    alone = asyncio.ensure_future(batcher.submit("a", 1, cost=150))  # over the budget, but the queue is empty
    await wait_until(lambda: batcher.queued == 1)
    with pytest.raises(QueueFullError, match=r"1 requests of 150 pixels in all already waiting") as caught:
        await batcher.submit("a", 2, cost=1)
    assert caught.value.retry_after_s >= 1
    alone.cancel()  # a caller who gives up frees its share at once
    await wait_until(lambda: batcher.queued == 0)
    small = [asyncio.ensure_future(batcher.submit("a", n, cost=50)) for n in (3, 4)]
    await wait_until(lambda: batcher.queued == 2)
    with pytest.raises(QueueFullError, match="2 requests of 100 pixels"):
        await batcher.submit("a", 5, cost=1)
    held.gate.set()
    assert len(await asyncio.gather(running, *small)) == 3
    batcher.close()


async def test_a_batch_gathers_no_more_than_its_cost_budget(held: FakeModel) -> None:
    """Four of the largest images in one pass took four times the memory; one image over the budget still runs."""
    batcher = make(held, max_batch_size=4, max_batch_cost=100)
    first = asyncio.ensure_future(batcher.submit("a", 0, cost=500))  # alone over the budget: runs all the same
    await wait_until(held.running.is_set)
    queued = [asyncio.ensure_future(batcher.submit("a", n, cost=40)) for n in range(1, 6)]
    await wait_until(lambda: batcher.queued == 5)
    held.gate.set()
    await asyncio.gather(first, *queued)
    assert [len(payloads) for _, payloads in held.batches] == [1, 2, 2, 1]  # 40 + 40 fit in 100, a third would not
    batcher.close()


async def test_a_failing_batch_fails_its_callers_only() -> None:
    batcher = make(FakeModel())
    with pytest.raises(RuntimeError, match="model failed"):
        await batcher.submit("a", "boom")
    assert await batcher.submit("a", 2) == ("a", 20)
    batcher.close()


async def test_cancelled_callers_are_skipped(held: FakeModel) -> None:
    batcher = make(held)
    running = asyncio.ensure_future(batcher.submit("a", 0))
    await wait_until(held.running.is_set)
    abandoned = asyncio.ensure_future(batcher.submit("a", 1))
    kept = asyncio.ensure_future(batcher.submit("a", 2))
    await wait_until(lambda: batcher.queued == 2)
    abandoned.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await abandoned  # by now the queued item is marked cancelled too
    held.gate.set()
    assert await asyncio.gather(running, kept) == [("a", 0), ("a", 20)]
    assert [items for _, items in held.batches] == [[0], [2]]
    batcher.close()


async def test_callers_who_gave_up_leave_the_queue_at_once(held: FakeModel) -> None:
    """Before, their jobs kept their places until the worker popped them: with two abandoned, a live caller got 503."""
    batcher, running, abandoned = await full_queue(held)
    for caller in abandoned:
        caller.cancel()
    await asyncio.gather(*abandoned, return_exceptions=True)
    await wait_until(lambda: batcher.queued == 0)
    kept = asyncio.ensure_future(batcher.submit("a", 3))  # no QueueFullError
    held.gate.set()
    assert await asyncio.gather(running, kept) == [("a", 0), ("a", 30)]
    assert [items for _, items in held.batches] == [[0], [3]]
    batcher.close()


async def test_a_request_s_data_is_freed_when_it_is_answered_not_by_the_cycle_collector() -> None:
    """Before: a done-callback bound to the job (job -> future -> callback -> job) kept every image and answer
    until the cycle collector ran; a review measured 554 MB peak against 110 MB for 400 requests of 4 MB. A failed
    batch's exception kept them too, through its traceback's frame."""

    def model(key: Hashable, payloads: list[Any]) -> list[Any]:
        if key == "fails":
            raise RuntimeError("model failed")
        return [np.zeros(4) for _ in payloads]

    batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.0, max_queue=16)
    batcher.start()
    gc.disable()
    try:
        payload = np.zeros(1000)
        alive = weakref.ref(payload)
        result = await batcher.submit("a", payload)
        answer = weakref.ref(result)
        del payload, result
        await wait_until(lambda: alive() is None and answer() is None, timeout_s=2.0)  # once the worker is done
        failed = np.zeros(1000)
        gone = weakref.ref(failed)
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.submit("fails", failed)
        del failed
        await wait_until(lambda: gone() is None, timeout_s=2.0)
    finally:
        gc.enable()
        batcher.close()


async def test_close_fails_queued_requests_and_refuses_new_ones(held: FakeModel) -> None:
    batcher = make(held)
    running = asyncio.ensure_future(batcher.submit("a", 0))
    await wait_until(held.running.is_set)
    queued = asyncio.ensure_future(batcher.submit("a", 1))
    await wait_until(lambda: batcher.queued == 1)
    closing = asyncio.ensure_future(asyncio.to_thread(batcher.close))
    with pytest.raises(BatcherClosedError, match="shutting down"):
        await queued
    held.gate.set()
    await closing
    assert await running == ("a", 0)  # the batch already running is finished
    assert not batcher.alive
    with pytest.raises(BatcherClosedError):
        await batcher.submit("a", 2)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(FakeModel(), max_batch_size=0, max_wait_s=0.0, max_queue=1)


def test_initializer_runs_on_the_worker_thread_before_any_batch() -> None:
    seen: list[str] = []
    model = FakeModel()

    def initializer() -> None:
        seen.append(threading.current_thread().name)
        assert not model.batches

    batcher = MicroBatcher(model, max_batch_size=2, max_wait_s=0.0, max_queue=4, initializer=initializer, name="w")
    batcher.start()
    assert seen == ["w"]  # done by the time start() returns
    assert batcher.thread_id is not None and batcher.thread_id != threading.get_ident()
    assert batcher.alive
    batcher.close()


def test_a_failing_initializer_fails_start_and_its_queued_work() -> None:
    def initializer() -> None:
        raise OSError("no checkpoint here")

    batcher = MicroBatcher(FakeModel(), max_batch_size=2, max_wait_s=0.0, max_queue=4, initializer=initializer)
    early = batcher.enqueue("a", 1)  # queued before start: failed, not left hanging
    with pytest.raises(OSError, match="no checkpoint here"):
        batcher.start()
    assert not batcher.alive
    with pytest.raises(BatcherClosedError, match="failed to start: no checkpoint here"):
        early.result(timeout=5)
    with pytest.raises(BatcherClosedError):
        batcher.enqueue("a", 1)


def test_start_after_close_runs_nothing() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(
        FakeModel(), max_batch_size=2, max_wait_s=0.0, max_queue=4, initializer=lambda: calls.append(1)
    )
    batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.start()
    assert calls == [] and not batcher.alive


class ThreadRecorder:
    """A model that records which thread ran each key; keys in ``held`` wait at their own gate."""

    def __init__(self, *held: Hashable) -> None:
        self.threads: dict[Hashable, str] = {}
        self.entered: dict[Hashable, threading.Event] = {}
        self.gates = {key: threading.Event() for key in held}
        self.lock = threading.Lock()

    def started(self, key: Hashable) -> threading.Event:
        with self.lock:
            return self.entered.setdefault(key, threading.Event())

    def __call__(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        self.threads[key] = threading.current_thread().name
        self.started(key).set()
        if key in self.gates:
            self.gates[key].wait(10)
        return payloads

    def release(self) -> None:
        for gate in self.gates.values():
            gate.set()


def with_helper(model: ThreadRecorder, shares: list[bool]) -> MicroBatcher:
    batcher = MicroBatcher(
        model, max_batch_size=4, max_wait_s=0.0, max_queue=16, name="w", helpers=1, on_share=shares.append
    )
    batcher.start()
    return batcher


async def test_a_lone_caller_is_served_by_the_worker_unshared_and_helpers_wait() -> None:
    """While the worker runs an unshared batch (all its torch threads), a new request waits for it."""
    model, shares = ThreadRecorder("a"), []
    batcher = with_helper(model, shares)
    first = asyncio.ensure_future(batcher.submit("a", 1))
    await wait_until(model.started("a").is_set)
    second = asyncio.ensure_future(batcher.submit("b", 2))
    await asyncio.sleep(0.05)
    assert not model.started("b").is_set() and batcher.queued == 1  # no helper took it
    model.release()
    assert await asyncio.gather(first, second) == [1, 2]
    assert model.threads == {"a": "w", "b": "w"}
    assert shares == [False, False]
    batcher.close()


async def test_under_load_the_worker_shares_and_a_helper_runs_the_next_batch_beside_it() -> None:
    model, shares = ThreadRecorder("z", "a"), []
    batcher = with_helper(model, shares)
    blocker = asyncio.ensure_future(batcher.submit("z", 0))  # holds the worker while a and b queue up
    await wait_until(model.started("z").is_set)
    queued = [asyncio.ensure_future(batcher.submit(key, n)) for n, key in enumerate("ab", start=1)]
    await wait_until(lambda: batcher.queued == 2)
    model.gates["z"].set()  # the worker takes a with b still queued: shared, so the helper takes b
    assert await asyncio.wait_for(queued[1], 5) == 2  # answered while the worker is still held in a
    await wait_until(model.started("a").is_set)
    assert model.threads == {"z": "w", "a": "w", "b": "w-helper-1"}
    assert shares == [False, True]
    model.release()
    assert await asyncio.gather(blocker, queued[0]) == [0, 1]
    batcher.close()


def test_a_failing_helper_initializer_fails_start_and_closes() -> None:
    def broken() -> None:
        raise RuntimeError("no memory for a second model thread")

    batcher = MicroBatcher(
        FakeModel(), max_batch_size=2, max_wait_s=0.0, max_queue=4, helpers=1, helper_initializer=broken
    )
    with pytest.raises(RuntimeError, match="no memory"):
        batcher.start()
    assert not batcher.alive
    assert batcher.thread_id not in {thread.ident for thread in threading.enumerate()}  # the worker stopped too


async def test_the_worker_stays_shared_while_a_helper_still_runs() -> None:
    """Otherwise the worker would take all its torch threads while a helper's one-thread pass still runs."""
    model, shares = ThreadRecorder("z", "a", "b"), []
    batcher = with_helper(model, shares)
    blocker = asyncio.ensure_future(batcher.submit("z", 0))
    await wait_until(model.started("z").is_set)
    queued = [asyncio.ensure_future(batcher.submit(key, n)) for n, key in enumerate("ab", start=1)]
    await wait_until(lambda: batcher.queued == 2)
    model.gates["z"].set()  # the worker takes a (shared, b waits), the helper takes b; both are held
    await wait_until(lambda: model.started("a").is_set() and model.started("b").is_set())
    model.gates["a"].set()
    assert await asyncio.wait_for(queued[0], 5) == 1
    later = asyncio.ensure_future(batcher.submit("c", 3))  # alone in the queue, but the helper is still busy
    assert await asyncio.wait_for(later, 5) == 3
    assert model.threads == {"z": "w", "a": "w", "b": "w-helper-1", "c": "w"}
    assert shares == [False, True, True]
    model.release()
    assert await asyncio.gather(blocker, queued[1]) == [0, 2]
    batcher.close()
