"""Does micro-batching tax a lone caller? Issue #6 asks that it must not.

Two servers run at once on the same checkpoint:

- ``batching``: the service's defaults (batches of up to ``VQVAE_MAX_BATCH_SIZE``, a wait of up to
  ``VQVAE_MAX_WAIT_MS`` while others are queued, helper threads under load);
- ``none``: the same service that never batches (``VQVAE_MAX_BATCH_SIZE=1``, ``VQVAE_MAX_WAIT_MS=0``,
  ``VQVAE_PARALLEL_BATCHES=1``).

A lone caller sends a block of requests to each in turn, in ABBA order, so that both meet this machine's slow and
fast spells alike. Each round compares the p50 of the batching server's block with the other's. The ratio is about
1.0 if batching costs a lone caller nothing.

    PYTHONPATH=. python -m benchmarks.bench_batching --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from app.arguments import non_negative_int, positive_int
from benchmarks.bench_service import Upload, drive_server, endpoint_list, make_uploads
from benchmarks.common import (
    abba,
    benchmark_parser,
    load_slices,
    print_header,
    resolved_checkpoint,
    write_json,
)
from benchmarks.server import Server, running_server
from training.outputs import clean_exits

NO_BATCHING = {"VQVAE_MAX_BATCH_SIZE": "1", "VQVAE_MAX_WAIT_MS": "0", "VQVAE_PARALLEL_BATCHES": "1"}
VARIANTS = ("batching", "none")


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, images=64)
    parser.add_argument("--rounds", type=positive_int, default=8, help="blocks per server and endpoint (default: 8)")
    parser.add_argument("--requests", type=positive_int, default=48, help="requests per block (default: 48)")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=10, help="untimed requests per server and endpoint first"
    )
    parser.add_argument(
        "--endpoints", type=endpoint_list, default="encode,reconstruct", help="comma-separated: encode, reconstruct"
    )
    return parser


def lone_caller_p50_s(server: Server, endpoint: str, uploads: list[Upload], requests: int) -> float:
    """Median latency of ``requests`` sequential requests by one caller; every answer must be a 200."""
    driven = drive_server(server, endpoint, uploads, concurrency=1, total=requests, timeout_s=60)
    failed = [o for o in driven.outcomes if o.status != 200]
    if failed:
        raise RuntimeError(f"/{endpoint}: {len(failed)} of {requests} requests failed, e.g. {failed[0]}")
    return statistics.median(o.latency_s for o in driven.outcomes)


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    endpoints: list[str] = args.endpoints
    with resolved_checkpoint(args.checkpoint, args.random_preset) as checkpoint:
        info = print_header("a lone caller, with and without micro-batching (two servers, ABBA)")
        slices = load_slices(args.data, args.split, args.images)
        print(f"data: {slices.describe()}")
        print(f"servers: batching = the defaults; none = {NO_BATCHING}")
        uploads = make_uploads(slices.pngs())
        base_env = {"VQVAE_CHECKPOINT": str(checkpoint.path), "VQVAE_LOG_LEVEL": "warning"}
        if args.threads > 0:
            base_env["VQVAE_TORCH_THREADS"] = str(args.threads)
        p50s: dict[str, dict[str, list[float]]] = {e: {v: [] for v in VARIANTS} for e in endpoints}
        try:  # a server that did not start, or a request that failed: one line
            with (
                tempfile.TemporaryDirectory(prefix="vqvae-bench-logs-") as logs,
                running_server(base_env, Path(logs), log_level="warning", startup_timeout_s=120) as batching,
                running_server(
                    {**base_env, **NO_BATCHING}, Path(logs), log_level="warning", startup_timeout_s=120
                ) as none,
            ):
                servers = {"batching": batching, "none": none}
                for endpoint in endpoints:
                    for server in servers.values():
                        if args.warmup > 0:
                            lone_caller_p50_s(server, endpoint, uploads, args.warmup)
                    for index in range(args.rounds):
                        for variant in abba(index, VARIANTS):
                            p50 = lone_caller_p50_s(servers[variant], endpoint, uploads, args.requests)
                            p50s[endpoint][variant].append(p50)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"p50 ms of each block of {args.requests} requests; ratio: batching / none, per round")
        summary = {}
        for endpoint, by_variant in p50s.items():
            ratios = [b / n for b, n in zip(by_variant["batching"], by_variant["none"], strict=True)]
            summary[endpoint] = statistics.median(ratios)
            for variant in VARIANTS:
                print(f"/{endpoint:<12} {variant:<9} " + " ".join(f"{1000 * s:6.1f}" for s in by_variant[variant]))
            print(
                f"/{endpoint:<12} ratio     "
                + " ".join(f"{r:6.2f}" for r in ratios)
                + f"   median {summary[endpoint]:.3f}"
            )
        write_json(
            args.json,
            {
                "benchmark": "batching",
                "machine": info,
                "data": slices.describe(),
                "checkpoint": checkpoint.label,
                "no_batching_env": NO_BATCHING,
                "requests_per_block": args.requests,
                "p50_s": p50s,
                "median_ratio": summary,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
