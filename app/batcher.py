"""Dynamic micro-batching (as Triton's dynamic batcher does): one forward pass per group of requests.

Requests are queued from the event loop and answered through futures; the worker thread takes the oldest
request plus every queued request with the same key (same operation and shape, so no padding changes a
result), up to ``max_batch_size``. It waits up to ``max_wait_s`` for more companions only when other requests
were already queued: a lone caller runs at once. Under load, requests that arrive during a forward pass form
the next batch by themselves. The queue is bounded; a full queue raises ``QueueFullError`` (HTTP 503).

An ``initializer`` runs on the worker thread before the first batch (``start`` waits for it and re-raises its
error), so that whatever must live on that thread (the model, its torch thread settings) is set up there.

Under load, ``helpers`` more threads run batches beside the worker: a lone caller is served by the worker alone
(with all of its torch threads), but while a batch still waits when the worker takes its own, the worker runs
its batch "shared" and a helper takes the next. ``on_share(shared)`` runs on the worker thread before each of its
batches, so that it can use one torch thread while helpers run theirs. Helpers only start a batch while the
worker's is shared, so the threads never outnumber what ``on_share`` allows.

``on_batch(key, size, seconds)`` reports each batch that ``run_batch`` completed (its size and time) before its
callers hear back; a batch that raised is not reported (its callers get the error).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]


class QueueFullError(RuntimeError):
    """Too many requests, or too much work, are waiting; the caller should retry after ``retry_after_s`` seconds."""

    def __init__(self, waiting: str, retry_after_s: int = 1) -> None:
        super().__init__(f"server busy: {waiting} already waiting for the model; retry shortly")
        self.retry_after_s = retry_after_s


class BatcherClosedError(RuntimeError):
    """The service is shutting down and takes no more work."""


@dataclass(eq=False)  # identity: ``deque.remove`` must find this job, not compare payloads (numpy arrays)
class _Job:
    key: Hashable
    payload: Any
    cost: int = 1  # its share of ``max_queue_cost``: the service counts pixels
    future: Future[Any] = field(default_factory=Future)


class MicroBatcher:
    """Groups concurrent ``submit`` calls into calls of ``run_batch(key, payloads) -> results`` on one thread."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        max_queue_cost: float = math.inf,
        max_batch_cost: float = math.inf,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
        initializer: Callable[[], None] | None = None,
        name: str = "inference",
        helpers: int = 0,
        helper_initializer: Callable[[], None] | None = None,
        on_share: Callable[[bool], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0 or helpers < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_s and helpers >= 0")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._max_queue_cost = max_queue_cost
        self._max_batch_cost = max_batch_cost
        self._on_batch = on_batch
        self._initializer = initializer
        self._initialized: Future[None] = Future()
        self._pending: deque[_Job] = deque()
        lock = threading.Lock()
        self._condition = threading.Condition(lock)  # the worker waits on it, the helpers on the other
        self._helper_wakeup = threading.Condition(lock)
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._helper_initializer = helper_initializer
        self._on_share = on_share
        self._sharing = False  # the worker runs a shared batch: helpers may start one
        self._helpers_busy = 0
        self._helpers = [
            threading.Thread(target=self._help, args=(k,), name=f"{name}-helper-{k + 1}", daemon=True)
            for k in range(helpers)
        ]
        self._helpers_ready: list[Future[None]] = [Future() for _ in range(helpers)]

    def start(self) -> None:
        """Start the worker thread, then the helpers; return once every initializer has run, or raise the first
        error (the batcher is then closed)."""
        with self._condition:
            if self._closed:
                raise BatcherClosedError("the service is shutting down")
        self._thread.start()
        try:
            self._initialized.result()
        except BaseException:
            self._thread.join()
            raise
        for helper in self._helpers:
            helper.start()
        try:
            for ready in self._helpers_ready:
                ready.result()
        except BaseException:
            self.close()
            raise

    @property
    def helper_thread_ids(self) -> list[int | None]:
        return [helper.ident for helper in self._helpers]

    @property
    def thread_id(self) -> int | None:
        """The worker thread's ident (None before ``start``)."""
        return self._thread.ident

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    @property
    def queued(self) -> int:
        """Requests waiting for the worker (not counting the batch it is running)."""
        with self._condition:
            return len(self._pending)

    async def submit(self, key: Hashable, payload: Any, cost: int = 1) -> Any:
        """Queue one item and wait for its result; cancelling the caller drops the item if not yet started."""
        return await asyncio.wrap_future(self.enqueue(key, payload, cost))

    def enqueue(self, key: Hashable, payload: Any, cost: int = 1) -> Future[Any]:
        """Thread-safe, non-blocking: the future is resolved by the worker thread. Refused (``QueueFullError``) when
        ``max_queue`` items wait, or when this one's ``cost`` would take the waiting ones' past ``max_queue_cost``;
        an item is never refused for its cost alone when none waits."""
        job = _Job(key, payload, cost)
        with self._condition:
            self._refuse_if_full(cost)
            self._pending.append(job)
            job.future.add_done_callback(self._forget)  # not bound to the job: job -> future -> job would be a cycle
            self._condition.notify()
            if self._sharing:  # helpers only take work then: waking them otherwise costs a lone caller time
                self._helper_wakeup.notify_all()  # one helper may be waiting for companions of another key
        return job.future

    def check_room(self, cost: int = 1) -> None:
        """Raise what ``enqueue`` would raise for an item of ``cost`` now, without queueing anything: the service
        asks before decoding an image, whose pixels it knows from the header, so that a flood refused with 503s
        does not pay for decoding every image first (a security review). The queue may fill in between: ``enqueue``
        checks again."""
        with self._condition:
            self._refuse_if_full(cost)

    def _refuse_if_full(self, cost: int) -> None:
        """The admission rules (``enqueue``); the caller holds the lock."""
        if self._closed:
            raise BatcherClosedError("the service is shutting down")
        if len(self._pending) >= self._max_queue:
            raise QueueFullError(f"{self._max_queue} requests")
        queued_cost = sum(waiting.cost for waiting in self._pending)  # at most max_queue of them
        if self._pending and queued_cost + cost > self._max_queue_cost:
            raise QueueFullError(f"{len(self._pending)} requests of {queued_cost} pixels in all")

    def _forget(self, future: Future[Any]) -> None:
        """A caller that gave up (hung up, timed out) leaves the queue at once. Before, its job kept a place until a
        worker popped it: two callers who hung up while a large image ran made a live one's request a 503.

        Found by its future (the queue holds at most ``max_queue``): a callback holding the job made a reference
        cycle that a Future never breaks, so every request's image and answer waited for the cycle collector
        (a review measured 554 MB peak against 110 MB for 400 requests of 4 MB)."""
        if not future.cancelled():
            return
        with self._condition:  # a job already taken into a batch is not found here: ``_execute`` skips it
            for job in self._pending:
                if job.future is future:
                    self._pending.remove(job)
                    return

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the running batches, fail the queued ones, stop the threads."""
        self._refuse_all(BatcherClosedError("the service is shutting down"))
        deadline = time.monotonic() + timeout_s
        for thread in [self._thread, *self._helpers]:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _refuse_all(self, error: Exception) -> None:
        """Close, and fail every queued job with ``error``."""
        with self._condition:
            self._closed = True
            abandoned = list(self._pending)
            self._pending.clear()
            self._condition.notify_all()
            self._helper_wakeup.notify_all()
        for job in abandoned:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    def _work(self) -> None:
        try:
            if self._initializer is not None:
                self._initializer()
        except BaseException as exc:  # handed to start(), which re-raises it in the caller
            self._refuse_all(BatcherClosedError(f"the model thread failed to start: {exc}"))
            self._initialized.set_exception(exc)
            return
        self._initialized.set_result(None)
        while (batch := self._next_batch(helper=False)) is not None:
            with self._condition:
                # shared when another batch already waits for a helper, or a helper is still running one
                self._sharing = bool(self._helpers) and (bool(self._pending) or self._helpers_busy > 0)
                shared = self._sharing
                if shared:
                    self._helper_wakeup.notify_all()
            prepare = None if self._on_share is None else functools.partial(self._on_share, shared)
            try:
                self._execute(batch, prepare)
            finally:
                with self._condition:
                    self._sharing = False

    def _help(self, index: int) -> None:
        try:
            if self._helper_initializer is not None:
                self._helper_initializer()
        except BaseException as exc:
            self._helpers_ready[index].set_exception(exc)
            return
        self._helpers_ready[index].set_result(None)
        while (batch := self._next_batch(helper=True)) is not None:
            try:
                self._execute(batch)
            finally:
                with self._condition:
                    self._helpers_busy -= 1

    def _next_batch(self, *, helper: bool) -> list[_Job] | None:
        """The next batch for the worker, or for a helper (only while the worker runs a shared batch)."""
        wakeup = self._helper_wakeup if helper else self._condition
        with self._condition:
            while not self._closed and not (self._pending and (not helper or self._sharing)):
                wakeup.wait()
            if self._closed:
                return None
            batch = [self._pending.popleft()]
            if helper:
                self._helpers_busy += 1
            crowded = bool(self._pending)
            self._take_matching(batch)
            if crowded and self._max_wait_s > 0:
                deadline = time.monotonic() + self._max_wait_s
                while self._has_room(batch) and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    wakeup.wait(remaining)
                    self._take_matching(batch)
            return batch

    def _has_room(self, batch: list[_Job]) -> bool:
        """Whether one more job of the batch's key fits it: ``max_batch_size`` jobs, ``max_batch_cost`` in all (a
        key's jobs cost alike: the service keys by image shape and counts pixels)."""
        return len(batch) < self._max_batch_size and sum(job.cost for job in batch) + batch[0].cost <= (
            self._max_batch_cost
        )

    def _take_matching(self, batch: list[_Job]) -> None:
        """Move queued jobs with the batch's key into it while it has room, keeping the others in arrival order."""
        key = batch[0].key
        others: deque[_Job] = deque()
        while self._pending and self._has_room(batch):
            job = self._pending.popleft()
            (batch if job.key == key else others).append(job)
        others.extend(self._pending)
        self._pending = others

    def _execute(self, batch: list[_Job], prepare: Callable[[], None] | None = None) -> None:
        """Run one batch and answer its callers; ``prepare`` runs first, and its failure fails the batch."""
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip cancelled callers
        batch.clear()  # the thread's loop keeps this list until its next batch: not the jobs, images and answers
        if not live:
            return
        key = live[0].key
        try:
            if prepare is not None:
                prepare()
            start = time.perf_counter()
            results = self._run_batch(key, [job.payload for job in live])
            if self._on_batch is not None:  # before any caller hears back, so that /metrics already counts it
                self._on_batch(key, len(live), time.perf_counter() - start)
            if len(results) != len(live):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} inputs")
        except Exception as exc:  # the callers get (and log) the error; the worker lives on
            logger.debug("batch failed (key=%r, size=%d): %r", key, len(live), exc)
            for job in live:
                job.future.set_exception(exc)
            # The callers' exception keeps this frame (its traceback): not the jobs, images and all, with it.
            del job
            live.clear()
            return
        for job, result in zip(live, results, strict=True):
            job.future.set_result(result)
