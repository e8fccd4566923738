"""Keep the objects made at start-up out of the garbage collector's full passes while the service runs.

Once the model is loaded the process holds about 340,000 objects that Python's collector tracks (torch, FastAPI,
pydantic, the model's modules). Python runs a full collection once the objects that survived into the oldest
generation since the last one number a quarter of those already there, and start-up leaves that count high: the
first full collection came with the first burst of requests, on the event loop, and scanned them all. It took
180 ms and freed nothing, a pause of every request in flight and, between their kernels, of the forward passes
(measured on the 2-core AMD EPYC VM: docs/performance.md, "Session 26"). Frozen, they are skipped by every
collection; the full ones after it scan only what requests left behind (1.6 ms there).

Requests leave almost nothing in the oldest generation (docs/performance.md, "Session 19"), so the objects frozen
here are what the service keeps. Freezing moves them without a scan, so start-up pays nothing for it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0  # apps serving in this process: the last one to stop hands the objects back to the collector
_thawed = False  # objects were unfrozen: a stopped app's, among them, wait for a full collection


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Freeze what the process holds now, for as long as the block runs (the lifespan of a started app).

    The last app of the process to stop unfreezes them, and the next app to start in the process first runs a full
    collection, so that a process that starts apps over and over (the tests, an in-process benchmark) gets the ones
    it dropped freed: a service and its model are held in reference cycles, and refreezing them before a collection
    kept every stopped app's model (a review: 12 of 12 after 12 starts). The service's own process starts one app,
    and pays for neither. An app stopped while another of the process serves stays frozen until that one stops.
    """
    global _holders, _thawed
    with _lock:
        if _holders == 0 and _thawed:
            gc.collect()
            _thawed = False
        gc.freeze()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                gc.unfreeze()
                _thawed = True
