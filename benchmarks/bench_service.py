"""The real service under load, against the bare model measured in the same run.

1. In-process (before any server runs): the model's batched throughput and batch-1 time on the same slices,
   with the service's own forward pass (benchmarks.bench_model: stack -> model -> numpy, inference_mode).
2. A real server (``python -m uvicorn --factory app.main:create_app`` subprocess, settings by ``VQVAE_*``
   environment variables) driven by an async httpx client: for each endpoint and concurrency level a fixed
   number of requests (multipart PNG uploads; /reconstruct asks for JSON). Per level: req/s, p50/p95/p99
   latency, errors by status, the mean batch the server formed (from /metrics), CPU seconds of server and
   client (they share the machine), and the server's RSS (VmRSS, and VmHWM = peak since start) and PSS (its
   share of pages used by several processes, so that the sum over ``--workers`` processes is not overstated).
3. Overload: a second server with a small ``VQVAE_MAX_QUEUE``, driven above that bound; counts 503s (and their
   Retry-After) against any other error or timeout, and whether RSS stays bounded.

Ratios: service req/s / in-process best-batch images/s, and service p50 at concurrency 1 / in-process batch-1
time. This machine's speed swings by 2x within seconds, so each level runs in blocks with the in-process
reference re-measured before each block and after the last (the server idles meanwhile); each block is
compared with the mean of its two neighbouring references, and a level's ratio is the median over its blocks.
The service also does per-request work the in-process figure leaves out (HTTP, multipart, PNG decode; for
/reconstruct SSIM, PSNR, PNG encode and base64); its in-process cost is printed beside the ratios.

    PYTHONPATH=. python -m benchmarks.bench_service --requests 256 --concurrency 1,4,16,64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from app.arguments import non_negative_seconds, positive_int, positive_seconds, worker_count
from app.cli import threads_per_worker
from app.errors import settings_problems
from app.imaging import decode_image, encode_png
from app.settings import LOG_LEVELS, Settings
from benchmarks.bench_model import (
    DEFAULT_BATCH_SIZES,
    OperationFigures,
    measure_batch,
    measure_model,
    model_runner,
)
from benchmarks.common import (
    Slices,
    benchmark_parser,
    int_list,
    load_slices,
    percentiles,
    print_header,
    ratio,
    resolved_checkpoint,
    set_malloc,
    set_threads,
    time_calls,
    write_json,
)
from benchmarks.server import Server, running_server
from models.checkpoint import load
from models.device import pick_device
from models.quality_torch import psnr_per_image, ssim_per_image
from models.vqvae import VQVAE
from training.outputs import clean_exits

# endpoint -> (path, extra headers, a key its JSON answer must have)
ENDPOINTS: dict[str, tuple[str, dict[str, str], str]] = {
    "encode": ("/encode", {}, "indices"),
    "reconstruct": ("/reconstruct", {"Accept": "application/json"}, "ssim"),
}
TARGET_THROUGHPUT = 0.8  # issue 6: service at concurrency 16 >= 0.8 x in-process batched
TARGET_LATENCY = 1.3  # issue 6: p50 at concurrency 1 <= 1.3 x in-process batch 1


def endpoint_list(text: str) -> list[str]:
    """'encode,reconstruct' -> ["encode", "reconstruct"] (argparse type): endpoints a benchmark can drive."""
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    unknown = sorted(set(endpoints) - set(ENDPOINTS))
    if unknown or not endpoints:
        raise argparse.ArgumentTypeError(f"unknown endpoints {unknown}; choose from {', '.join(ENDPOINTS)}")
    return endpoints


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (Linux /proc): the server is several processes with ``--workers``."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(child) for child in task.read_text().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            pids += process_tree(child)
    return pids


MEMORY_FIELDS = {"status": ("VmRSS", "VmHWM"), "smaps_rollup": ("Pss",)}


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now), VmHWM (peak since start) and Pss (now) in MiB, summed over the process and its descendants.

    RSS counts a page shared by several processes (``--workers``: torch's and Python's libraries, which every
    process maps) once in each, so its sum overstates; Pss splits each shared page among its sharers, so its sum
    is the tree's real footprint. A field left out by any of the processes (not given by the kernel, unreadable,
    or the process gone) is left out of the answer rather than summed over the others; empty off Linux.
    """
    members = process_tree(pid)
    found: dict[str, list[float]] = {}
    for member in members:
        for source, keys in MEMORY_FIELDS.items():
            try:
                for line in Path(f"/proc/{member}/{source}").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in keys:
                        found.setdefault(key, []).append(int(value.split()[0]) / 1024.0)
            except (OSError, ValueError, IndexError):
                continue
    return {key: sum(values) for key, values in found.items() if len(values) == len(members)}


def memory_text(memory: dict[str, float], key: str) -> str:
    return f"{memory[key]:.0f}" if key in memory else "?"


def proc_cpu_s(pid: int, *, main_threads: bool = False) -> float:
    """User + system CPU seconds of a process and its descendants (/proc/<pid>/stat); NaN off Linux. With
    ``main_threads``, of their main threads only: a server's event loops, without its model threads."""
    total = float("nan")
    for member in process_tree(pid):
        stat = Path(f"/proc/{member}/task/{member}/stat" if main_threads else f"/proc/{member}/stat")
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
        total = seconds if math.isnan(total) else total + seconds
    return total


def server_cpu_s(pid: int) -> tuple[float, float]:
    """(all threads, event loops) CPU seconds of a server (``proc_cpu_s``)."""
    return proc_cpu_s(pid), proc_cpu_s(pid, main_threads=True)


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batch_counters(base_url: str) -> dict[str, tuple[float, float]]:
    """operation -> (sum, count) of the server's batch-size histogram; empty when /metrics lacks it."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
        found: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "vqvae_inference_batch_size":
                continue
            for sample in family.samples:
                suffix = sample.name.rsplit("_", 1)[-1]
                if suffix in ("sum", "count"):
                    slot = found.setdefault(sample.labels.get("operation", "?"), [0.0, 0.0])
                    slot[0 if suffix == "sum" else 1] = sample.value
        return {op: (s, c) for op, (s, c) in found.items()}
    except (httpx.HTTPError, ValueError):
        return {}


# ---- load generation -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """A pre-encoded multipart body: the client builds it once, not per request (it shares the CPU)."""

    content: bytes
    content_type: str


def make_uploads(pngs: Sequence[bytes]) -> list[Upload]:
    uploads = []
    for png in pngs:
        request = httpx.Request("POST", "http://localhost/", files={"file": ("slice.png", png, "image/png")})
        uploads.append(Upload(request.read(), request.headers["content-type"]))
    return uploads


@dataclass
class Outcome:
    latency_s: float
    status: int | None  # None: no answer (see error)
    error: str | None = None
    retry_after: bool = False


async def one_request(client: httpx.AsyncClient, path: str, headers: dict[str, str], upload: Upload) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(
            path, content=upload.content, headers={**headers, "Content-Type": upload.content_type}
        )
    except httpx.TimeoutException:
        return Outcome(time.perf_counter() - started, None, "timeout")
    except httpx.HTTPError as exc:
        return Outcome(time.perf_counter() - started, None, type(exc).__name__)
    return Outcome(time.perf_counter() - started, response.status_code, retry_after="retry-after" in response.headers)


@dataclass
class Driven:
    """What one run of closed-loop callers did, from the moment all their connections were open."""

    outcomes: list[Outcome]
    wall_s: float
    server_cpu_s: float
    server_loop_cpu_s: float  # of that, the event loops' threads (the rest: the model's)
    client_cpu_s: float


async def drive(
    base_url: str,
    endpoint: str,
    uploads: Sequence[Upload],
    *,
    concurrency: int,
    total: int,
    timeout_s: float,
    server_pid: int,
) -> Driven:
    """``total`` requests by ``concurrency`` closed-loop callers; the clock and the CPU counts start once every
    caller's connection is open (or refused twice), and stop before the clients close.

    Each caller has its own client and connection, as independent users of a service do. One client shared by
    all callers cost this process, which shares the cores with the server, far more CPU per request in httpx's
    connection pool as callers were added (encode/httpx#3215). Against ``/healthz`` on the 2-core machine: 1.9 ms at
    concurrency 16 and 5.7 ms at 64 (555 and 182 requests/s), against 1.1 and 2.4 ms (1,543 and 1,806
    requests/s) with a client per caller.
    """
    path, headers, _ = ENDPOINTS[endpoint]
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits))
            for _ in range(concurrency)
        ]
        # Open the connections before the clock starts (a real client keeps them alive). A refused one is tried
        # once more, alone; if that fails too, its first timed request records the failure.
        opened = await asyncio.gather(*(client.get("/healthz") for client in clients), return_exceptions=True)
        for client, result in zip(clients, opened, strict=True):
            if isinstance(result, BaseException):
                with contextlib.suppress(httpx.HTTPError):
                    await client.get("/healthz")
        counter = itertools.count()
        outcomes: list[Outcome] = []

        async def caller(client: httpx.AsyncClient) -> None:
            while (index := next(counter)) < total:
                outcomes.append(await one_request(client, path, headers, uploads[index % len(uploads)]))

        server_at_start, client_at_start = server_cpu_s(server_pid), self_cpu_s()
        started = time.perf_counter()
        await asyncio.gather(*(caller(client) for client in clients))
        wall = time.perf_counter() - started
        server_total, server_loop = server_cpu_s(server_pid)
        return Driven(
            outcomes,
            wall,
            server_total - server_at_start[0],
            server_loop - server_at_start[1],
            self_cpu_s() - client_at_start,
        )


def drive_server(
    server: Server, endpoint: str, uploads: Sequence[Upload], *, concurrency: int, total: int, timeout_s: float
) -> Driven:
    """``drive`` against a running ``Server``, from synchronous code (each block runs its own event loop)."""
    return asyncio.run(
        drive(
            server.base_url,
            endpoint,
            uploads,
            concurrency=concurrency,
            total=total,
            timeout_s=timeout_s,
            server_pid=server.pid,
        )
    )


def check_endpoint(base_url: str, endpoint: str, upload: Upload, times: int = 3) -> str | None:
    """A few untimed requests (the server's first forward passes are slow); the problem, or None."""
    path, headers, key = ENDPOINTS[endpoint]
    for _ in range(times):
        response = httpx.post(
            f"{base_url}{path}",
            content=upload.content,
            headers={**headers, "Content-Type": upload.content_type},
            timeout=120,
        )
        if response.status_code != 200:
            return f"{path} answered {response.status_code}: {response.text[:300]}"
        if key not in response.json():
            return f"{path} answered 200 without '{key}': {response.text[:300]}"
    return None


@dataclass(frozen=True)
class Reference:
    """In-process figures of one operation, re-measured around every block of requests (see ``Block``)."""

    batch1_p50_s: float
    best_batch_size: int
    best_images_per_s: float

    @staticmethod
    def mean(references: Sequence[Reference]) -> Reference:
        return Reference(
            statistics.fmean(r.batch1_p50_s for r in references),
            references[0].best_batch_size,
            statistics.fmean(r.best_images_per_s for r in references),
        )


MeasureReference = Callable[[str], Reference]


@dataclass
class Block:
    """A slice of a level's requests between two in-process measurements, compared with their mean.

    This machine's speed swings by 2x within seconds (a fixed pure-Python loop measured 12 to 31 ms a few
    seconds apart, idle machine), so the service and the bare model are measured in alternation, and each
    ratio is taken between neighbours; a level's ratio is the median over its blocks.
    """

    requests: int
    ok: int
    wall_s: float
    p50_s: float
    reference: Reference

    @property
    def throughput_ratio(self) -> float:
        return ratio(self.ok / self.wall_s if self.wall_s > 0 else float("nan"), self.reference.best_images_per_s)

    @property
    def latency_ratio(self) -> float:
        return ratio(self.p50_s, self.reference.batch1_p50_s)


def block_count(requests: int, concurrency: int, most: int) -> int:
    """Blocks of at least 4 x ``concurrency`` requests (a block starts and ends with a partly filled pipeline)."""
    return max(1, min(most, requests // (4 * concurrency)))


@dataclass
class LevelFigures:
    endpoint: str
    concurrency: int
    requests: int
    wall_s: float
    ok: int
    throughput_rps: float  # answered 200 per second
    latency_s: dict[str, float]  # p50/p95/p99 of the 200s
    statuses: dict[str, int]
    failures: dict[str, int]  # no answer: timeout, connection errors ...
    retry_after: int  # 503s that carried Retry-After
    mean_batch: float | None
    server_cpu_s: float
    server_loop_cpu_s: float
    client_cpu_s: float
    server_memory_mb: dict[str, float] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    round: int = 1

    @property
    def errors(self) -> int:
        return self.requests - self.ok


def run_level(
    server: Server,
    endpoint: str,
    uploads: Sequence[Upload],
    *,
    concurrency: int,
    total: int,
    timeout_s: float,
    reference: MeasureReference | None = None,
    blocks: int = 1,
) -> LevelFigures:
    """``total`` requests in ``blocks`` blocks; with ``reference``, the in-process figures are measured before
    each block and after the last (the server idles meanwhile). CPU seconds count the timed requests only."""
    batches_before = batch_counters(server.base_url)
    outcomes: list[Outcome] = []
    measured: list[Block] = []
    wall = server_cpu = server_loop_cpu = client_cpu = 0.0
    before = reference(endpoint) if reference is not None else None
    for size in [total // blocks + (1 if k < total % blocks else 0) for k in range(blocks)]:
        driven = drive_server(server, endpoint, uploads, concurrency=concurrency, total=size, timeout_s=timeout_s)
        block, block_wall = driven.outcomes, driven.wall_s
        server_cpu += driven.server_cpu_s
        server_loop_cpu += driven.server_loop_cpu_s
        client_cpu += driven.client_cpu_s
        wall += block_wall
        outcomes += block
        if reference is not None and before is not None:
            after = reference(endpoint)
            answered = [o.latency_s for o in block if o.status == 200]
            p50 = percentiles(answered)["p50"]
            measured.append(Block(len(block), len(answered), block_wall, p50, Reference.mean([before, after])))
            before = after
    batches_after = batch_counters(server.base_url)
    mean_batch = None
    if endpoint in batches_after:
        start = batches_before.get(endpoint, (0.0, 0.0))
        count = batches_after[endpoint][1] - start[1]
        mean_batch = (batches_after[endpoint][0] - start[0]) / count if count else None
    ok = [o for o in outcomes if o.status == 200]
    return LevelFigures(
        endpoint=endpoint,
        concurrency=concurrency,
        requests=len(outcomes),
        wall_s=wall,
        ok=len(ok),
        throughput_rps=len(ok) / wall if wall > 0 else float("nan"),
        latency_s=percentiles([o.latency_s for o in ok]),
        statuses=dict(sorted(Counter(str(o.status) for o in outcomes if o.status is not None).items())),
        failures=dict(Counter(o.error for o in outcomes if o.error is not None)),
        retry_after=sum(1 for o in outcomes if o.status == 503 and o.retry_after),
        mean_batch=mean_batch,
        server_cpu_s=server_cpu,
        server_loop_cpu_s=server_loop_cpu,
        client_cpu_s=client_cpu,
        server_memory_mb=proc_memory_mb(server.pid),
        blocks=measured,
    )


# ---- in-process references -------------------------------------------------------------------------------
def request_side_ms(slices: Slices, reconstructions: Sequence[np.ndarray], settings: Settings) -> dict[str, float]:
    """In-process ms per image of the service's work around the model: PNG decode; SSIM (as the worker thread
    computes it) + PSNR + PNG encode."""
    pngs, floats = slices.pngs(), slices.floats()

    def decode(i: int) -> None:
        decode_image(pngs[i % len(pngs)], max_pixels=settings.max_pixels, min_size=settings.min_size)

    def score(i: int) -> None:
        original, reconstruction = floats[i % len(floats)], reconstructions[i % len(reconstructions)]
        pair = torch.from_numpy(original)[None, None], torch.from_numpy(reconstruction)[None, None]
        ssim_per_image(*pair)
        psnr_per_image(*pair)
        encode_png(reconstruction)

    calls = min(len(pngs), 16)
    return {
        "png_decode": 1000 * float(np.median(time_calls(decode, warmup=1, repeats=calls, seconds=0))),
        "ssim_psnr_png_encode": 1000 * float(np.median(time_calls(score, warmup=1, repeats=calls, seconds=0))),
    }


def reference_measurer(
    model: VQVAE, floats: Sequence[np.ndarray], inproc: dict[str, OperationFigures], args: argparse.Namespace
) -> MeasureReference:
    """Re-measures an operation at batch 1 and at the sweep's best batch size (the server idles meanwhile)."""

    def measure(operation: str) -> Reference:
        run = model_runner(model, operation)
        seconds = args.reference_seconds
        batch1 = measure_batch(run, floats, 1, warmup=1, repeats=args.repeats, seconds=seconds)
        size = inproc[operation].best.batch_size
        best = (
            batch1 if size == 1 else measure_batch(run, floats, size, warmup=1, repeats=args.repeats, seconds=seconds)
        )
        return Reference(batch1.call_p50_s, size, best.images_per_s)

    return measure


# ---- reporting -------------------------------------------------------------------------------------------
def level_reference(level: LevelFigures) -> Reference:
    """The mean of the level's block references (shown in the table; the ratios are taken block by block)."""
    if not level.blocks:
        raise ValueError(f"/{level.endpoint} at concurrency {level.concurrency} has no in-process reference")
    return Reference.mean([block.reference for block in level.blocks])


def throughput_ratio(level: LevelFigures) -> float:
    """Median over the level's blocks of (block req/s) / (in-process best-batch images/s around the block)."""
    return statistics.median(block.throughput_ratio for block in level.blocks)


def latency_ratio(level: LevelFigures) -> float:
    """Median over the level's blocks of (block p50) / (in-process batch-1 p50 around the block)."""
    return statistics.median(block.latency_ratio for block in level.blocks)


def grouped(levels: Sequence[LevelFigures]) -> dict[tuple[str, int], list[LevelFigures]]:
    """(endpoint, concurrency) -> that level's figures from every round, in the order measured."""
    groups: dict[tuple[str, int], list[LevelFigures]] = {}
    for level in levels:
        groups.setdefault((level.endpoint, level.concurrency), []).append(level)
    return groups


def spread(ratios: Sequence[float]) -> str:
    return "rounds: " + ", ".join(f"{r:.2f}x" for r in ratios)


# concurrency -> (ratio of a level, whether the target is a ceiling, the target, what is compared)
TARGETS: dict[int, tuple[Callable[[LevelFigures], float], bool, float, str]] = {
    1: (latency_ratio, True, TARGET_LATENCY, "p50 at concurrency 1 / in-process batch-1 time"),
    16: (throughput_ratio, False, TARGET_THROUGHPUT, "throughput at concurrency 16 / in-process best batch"),
}


def print_levels(levels: Sequence[LevelFigures]) -> None:
    print(
        f"{'round':>5} {'endpoint':<12} {'conc':>4} {'reqs':>5} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'batch':>5} {'blk':>3} {'ref b1 ms':>9} {'ref img/s':>9} {'/ best':>7} {'p50/b1':>7} "
        f"{'srv cpu':>8} {'loop ms':>7} {'cli cpu':>8} {'RSS MB':>7} {'peak MB':>7} {'PSS MB':>7}"
    )
    for lv in levels:
        ref = level_reference(lv)
        batch = f"{lv.mean_batch:.1f}" if lv.mean_batch is not None else "-"
        memory = lv.server_memory_mb
        print(
            f"{lv.round:>5} {lv.endpoint:<12} {lv.concurrency:>4} {lv.requests:>5} {lv.errors:>6} "
            f"{lv.throughput_rps:>7.1f} "
            f"{1000 * lv.latency_s['p50']:>8.1f} {1000 * lv.latency_s['p95']:>8.1f} {1000 * lv.latency_s['p99']:>8.1f} "
            f"{batch:>5} {len(lv.blocks):>3} {1000 * ref.batch1_p50_s:>9.1f} {ref.best_images_per_s:>9.1f} "
            f"{throughput_ratio(lv):>6.2f}x {latency_ratio(lv):>6.2f}x {lv.server_cpu_s:>7.1f}s "
            f"{1000 * lv.server_loop_cpu_s / lv.requests:>7.2f} {lv.client_cpu_s:>7.1f}s "
            f"{memory_text(memory, 'VmRSS'):>7} {memory_text(memory, 'VmHWM'):>7} {memory_text(memory, 'Pss'):>7}"
        )
        if lv.errors:
            print(f"{'':<24}statuses {lv.statuses}, no answer {lv.failures}")
    print(
        "columns: req/s = 200s per second; batch = mean requests per forward pass (server /metrics); blk = blocks "
        "the level was run in, with the in-process reference measured before each and after the last; ref = the "
        "mean of those (batch-1 p50, best-batch images/s); / best and p50/b1 = medians over the blocks of req/s "
        "over ref img/s and of p50 over ref b1, each block against the references on either side of it; "
        "cpu = CPU seconds of server and of this client during the timed requests; loop ms = the server's "
        "event-loop thread's CPU ms per request (HTTP, multipart, PNG decode, JSON; for /reconstruct also the PNG "
        "encode; the rest of srv cpu is the "
        "model's threads); RSS, peak and PSS = the "
        "server's memory after the level, summed over its processes (PSS shares out pages they have in common)"
    )


def print_targets(
    levels: Sequence[LevelFigures],
    overload: LevelFigures | None,
    *,
    max_queue: int,
    overload_queue: int,
) -> None:
    print("-- issue 6 targets (figures from this run; each block of requests against the references around it)")

    def verdict(good: bool) -> str:
        return "meets" if good else "MISSES"

    for (endpoint, concurrency), group in grouped(levels).items():
        if concurrency not in TARGETS:
            continue
        measure, at_most, target, what = TARGETS[concurrency]
        ratios = [measure(lv) for lv in group]
        r = statistics.median(ratios)
        print(
            f"{verdict(r <= target if at_most else r >= target)}: /{endpoint} {what}: median {r:.2f}x over "
            f"{len(group)} rounds ({spread(ratios)}); target {'<=' if at_most else '>='} {target}"
        )
    errors = sum(lv.errors for lv in levels if lv.concurrency <= 64)
    print(f"{verdict(errors == 0)}: errors up to concurrency 64 with max_queue {max_queue}: {errors}; target 0")
    if overload is not None:
        others = {k: v for k, v in overload.statuses.items() if k not in ("200", "503")}
        good = not others and not overload.failures
        print(
            f"{verdict(good)}: overload (max_queue {overload_queue}, concurrency {overload.concurrency}): "
            f"{overload.statuses.get('200', 0)} answered, "
            f"{overload.statuses.get('503', 0)} x 503 ({overload.retry_after} with Retry-After), other statuses "
            f"{others or 'none'}, no answer {overload.failures or 'none'}; target: 503s only, no timeouts"
        )


# ---- main ------------------------------------------------------------------------------------------------
def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("VQVAE_"):
        raise argparse.ArgumentTypeError(f"expected VQVAE_NAME=value, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, images=64)
    parser.add_argument(
        "--requests", type=positive_int, default=256, help="requests per endpoint and level (default: %(default)s)"
    )
    parser.add_argument("--concurrency", type=int_list, default=[1, 4, 16, 64], help="levels (default: 1,4,16,64)")
    parser.add_argument(
        "--endpoints", type=endpoint_list, default="encode,reconstruct", help="comma-separated: encode, reconstruct"
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="passes over all levels; targets use each level's median (default: 3)",
    )
    parser.add_argument("--timeout", type=positive_seconds, default=60.0, help="client timeout per request, seconds")
    parser.add_argument(
        "--server-env", type=env_pair, action="append", default=[], metavar="VQVAE_NAME=VALUE", help="server setting"
    )
    parser.add_argument(
        "--vqvae-serve",
        action="store_true",
        help="run the server as vqvae-serve, as deployed (its HTTP protocol, connection bound and event loop); by "
        "default, with one worker, a plain uvicorn --factory, as in the README's Xeon figures",
    )
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        help="server processes (vqvae-serve --workers; each gets 1/N of the CPUs for torch unless "
        "VQVAE_TORCH_THREADS is set); CPU and memory columns then sum over them (default: %(default)s)",
    )
    parser.add_argument(
        "--server-log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="warning",
        help="uvicorn log level (warning: no access log)",
    )
    parser.add_argument("--startup-timeout", type=positive_seconds, default=180.0, help="seconds to wait for /readyz")
    group = parser.add_argument_group("in-process reference (benchmarks.bench_model)")
    group.add_argument("--batch-sizes", type=int_list, default=DEFAULT_BATCH_SIZES, help="sweep (default: 1,...,32)")
    group.add_argument(
        "--seconds", type=non_negative_seconds, default=2.0, help="least timed seconds per batch size in the sweep"
    )
    group.add_argument("--repeats", type=positive_int, default=5, help="least timed calls per batch size")
    group.add_argument(
        "--reference-seconds",
        type=non_negative_seconds,
        default=0.5,
        help="least timed seconds per re-measurement around a block",
    )
    group.add_argument(
        "--blocks", type=positive_int, default=8, help="most blocks per level, of 4 x concurrency requests at least"
    )
    group = parser.add_argument_group("overload phase (a second server with a small queue)")
    group.add_argument("--no-overload", action="store_true", help="skip it")
    group.add_argument(
        "--overload-queue", type=positive_int, default=8, help="its VQVAE_MAX_QUEUE (default: %(default)s)"
    )
    group.add_argument("--overload-concurrency", type=positive_int, default=64, help="callers (default: %(default)s)")
    group.add_argument("--overload-requests", type=positive_int, default=512, help="requests (default: %(default)s)")
    return parser


def server_threads(settings: Settings, workers: int) -> str:
    """The server's torch thread count as vqvae-serve sets it (app.cli.share_cpus_among_workers)."""
    if settings.torch_threads:
        return str(settings.torch_threads)
    return f"{threads_per_worker(workers)} per worker" if workers > 1 else "default"


def server_env(args: argparse.Namespace, checkpoint: Path) -> dict[str, str]:
    """The server's VQVAE_* variables: checkpoint, log level, the benchmark's thread count, then --server-env."""
    env = {"VQVAE_CHECKPOINT": str(checkpoint), "VQVAE_LOG_LEVEL": args.server_log_level}
    if args.threads > 0:
        env["VQVAE_TORCH_THREADS"] = str(args.threads)
    env.update(dict(args.server_env))
    return env


def effective_settings(env: dict[str, str]) -> Settings:
    """What the server will run with, resolved the way it resolves them (raises ValidationError)."""
    with mock.patch.dict(os.environ, env):
        return Settings()


def measure_in_process(
    args: argparse.Namespace, model: VQVAE, settings: Settings, slices: Slices, endpoints: Sequence[str]
) -> tuple[dict[str, OperationFigures], dict[str, float]]:
    """Model figures on the server's device and thread count, and the cost of the service's per-request work."""
    floats = slices.floats()
    figures = measure_model(
        model, floats, operations=endpoints, batch_sizes=args.batch_sizes, repeats=args.repeats, seconds=args.seconds
    )
    extra_ms = request_side_ms(slices, model_runner(model, "reconstruct")(floats[:16]), settings)
    for op, fig in figures.items():
        at_max = fig.at(settings.max_batch_size)
        shown = f"; at the server's max batch {at_max.images_per_s:.1f} images/s" if at_max else ""
        print(
            f"{op}: batch 1 {1000 * fig.batch1.call_p50_s:.1f} ms p50 ({fig.batch1.images_per_s:.1f} images/s); "
            f"best batch {fig.best.batch_size} {fig.best.images_per_s:.1f} images/s{shown}"
        )
    print(
        f"per-request work the service adds (in-process, not in the figures above): PNG decode "
        f"{extra_ms['png_decode']:.1f} ms; for /reconstruct also SSIM + PSNR + PNG encode "
        f"{extra_ms['ssim_psnr_png_encode']:.1f} ms"
    )
    return figures, extra_ms


def measure_service(
    args: argparse.Namespace,
    env: dict[str, str],
    log_dir: Path,
    endpoints: Sequence[str],
    uploads: list[Upload],
    reference: MeasureReference,
) -> list[LevelFigures]:
    """Every endpoint at every concurrency level, on one server, each level right after its in-process
    reference (raises RuntimeError when the server misbehaves)."""
    started = time.perf_counter()
    levels: list[LevelFigures] = []
    with running_server(env, log_dir, **server_options(args)) as server:
        print(
            f"-- server pid {server.pid} at {server.base_url} ready in {time.perf_counter() - started:.1f} s, "
            f"RSS {memory_text(proc_memory_mb(server.pid), 'VmRSS')} MB; {args.requests} requests per level"
        )
        for endpoint in endpoints:
            problem = check_endpoint(server.base_url, endpoint, uploads[0])
            if problem:
                raise RuntimeError(f"{problem}\n{server.log_tail()}")
        for round_index in range(1, args.rounds + 1):
            for endpoint in endpoints:
                for concurrency in args.concurrency:
                    level = run_level(
                        server,
                        endpoint,
                        uploads,
                        concurrency=concurrency,
                        total=args.requests,
                        timeout_s=args.timeout,
                        reference=reference,
                        blocks=block_count(args.requests, concurrency, args.blocks),
                    )
                    levels.append(dataclasses.replace(level, round=round_index))
    return levels


def server_command(args: argparse.Namespace) -> str:
    """What runs the server: ``vqvae-serve`` (asked for, or for several workers), else a plain uvicorn."""
    return "vqvae-serve" if args.vqvae_serve or args.workers > 1 else "uvicorn --factory"


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """``running_server``'s options from the command line (the same for both servers of a run)."""
    return {
        "log_level": args.server_log_level,
        "startup_timeout_s": args.startup_timeout,
        "workers": args.workers,
        "cli": args.vqvae_serve,
    }


def measure_overload(
    args: argparse.Namespace, env: dict[str, str], log_dir: Path, endpoint: str, uploads: list[Upload]
) -> LevelFigures:
    """A fresh server with max_queue = --overload-queue, driven at --overload-concurrency."""
    env = {**env, "VQVAE_MAX_QUEUE": str(args.overload_queue)}
    with running_server(env, log_dir, **server_options(args)) as server:
        problem = check_endpoint(server.base_url, endpoint, uploads[0], times=1)
        if problem:
            raise RuntimeError(f"{problem}\n{server.log_tail()}")
        before = proc_memory_mb(server.pid)
        overload = run_level(
            server,
            endpoint,
            uploads,
            concurrency=args.overload_concurrency,
            total=args.overload_requests,
            timeout_s=args.timeout,
        )
    after = overload.server_memory_mb
    print(
        f"-- overload: /{endpoint}, max_queue {args.overload_queue}, concurrency {args.overload_concurrency}, "
        f"{overload.requests} requests in {overload.wall_s:.1f} s: statuses {overload.statuses}, no answer "
        f"{overload.failures or 'none'}; 200s: {overload.throughput_rps:.1f}/s, p99 "
        f"{1000 * overload.latency_s['p99']:.0f} ms; server RSS {memory_text(before, 'VmRSS')} -> "
        f"{memory_text(after, 'VmRSS')} MB (peak {memory_text(after, 'VmHWM')} MB)"
    )
    return overload


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    endpoints: list[str] = args.endpoints
    with resolved_checkpoint(args.checkpoint, args.random_preset) as checkpoint:
        env = server_env(args, checkpoint.path)
        try:
            settings = effective_settings(env)
            device = pick_device(settings.device)  # the server refuses a missing GPU the same way, in one line
        except ValidationError as exc:
            print(f"error: invalid server settings: {settings_problems(exc)}", file=sys.stderr)
            return 2
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        set_threads(settings.torch_threads)  # the in-process reference runs with the server's thread count
        malloc = set_malloc(settings.malloc_retain_mb)  # ... and its malloc settings
        info = print_header("service vs in-process")
        print(malloc)
        slices = load_slices(args.data, args.split, args.images)
        print(f"data: {slices.describe()}")
        print(
            f"server settings: max_batch_size {settings.max_batch_size}, max_wait_ms {settings.max_wait_ms}, "
            f"max_queue {settings.max_queue}, torch_threads {server_threads(settings, args.workers)}, "
            f"device {settings.device}, workers {args.workers}; server {server_command(args)}; "
            f"from env {dict(args.server_env) or 'defaults'}"
        )
        print("-- in-process reference (same slices; stack -> model -> numpy under inference_mode)")
        model = load(checkpoint.path, device)[0].for_inference()  # as the service runs it
        inproc, extra_ms = measure_in_process(args, model, settings, slices, endpoints)
        reference = reference_measurer(model, slices.floats(), inproc, args)

        uploads = make_uploads(slices.pngs())
        overload: LevelFigures | None = None
        with tempfile.TemporaryDirectory(prefix="vqvae-bench-logs-") as logs:
            try:
                levels = measure_service(args, env, Path(logs), endpoints, uploads, reference)
                print_levels(levels)
                if not args.no_overload:
                    endpoint = "reconstruct" if "reconstruct" in endpoints else endpoints[0]
                    overload = measure_overload(args, env, Path(logs), endpoint, uploads)
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        print_targets(levels, overload, max_queue=settings.max_queue, overload_queue=args.overload_queue)
        write_json(
            args.json,
            {
                "benchmark": "service",
                "machine": info,
                "data": slices.describe(),
                "checkpoint": checkpoint.label,
                "settings": settings.model_dump(mode="json"),
                "server_env": dict(args.server_env),
                "in_process": {op: figures.to_dict() for op, figures in inproc.items()},
                "request_side_ms": extra_ms,
                "levels": [{**asdict(lv), "errors": lv.errors} for lv in levels],
                "overload": {**asdict(overload), "errors": overload.errors, "max_queue": args.overload_queue}
                if overload
                else None,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
