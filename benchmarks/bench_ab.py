"""Is a change to the service faster? Two source trees served side by side, A/B on the same machine.

    git worktree add /tmp/before HEAD~1
    PYTHONPATH=. python -m benchmarks.bench_ab --a /tmp/before --concurrency 1,16 --rounds 3
    git worktree remove /tmp/before

A is the tree given with ``--a`` (the code before a change), B this checkout unless ``--b``. Both serve the same
checkpoint with the same settings (``VQVAE_*`` from this environment is not passed on; ``--threads`` is), each
with its own code, and each with the environment variables given by ``--a-env`` and ``--b-env``: give the same
tree twice to compare settings alone, e.g. ``--a . --b-env VQVAE_PARALLEL_BATCHES=1``.

The servers run as deployed, under ``vqvae-serve`` (with ``VQVAE_LOG_LEVEL=warning``, so no access log, unless
``--a-env`` or ``--b-env`` says otherwise). Each round drives one block of closed-loop callers per endpoint and
concurrency at each server in turn, in ABBA order, so both meet this machine's slow and fast spells alike; the
other server idles meanwhile. Per block: requests/s, p50 latency, and the server's CPU seconds per request. The
ratios are B over A per round, and their median over the rounds; absolute figures drift within minutes on these
VMs, so compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from app.arguments import positive_int
from benchmarks.bench_service import Upload, drive_server, endpoint_list, make_uploads
from benchmarks.common import (
    REPO_ROOT,
    abba,
    benchmark_parser,
    fail,
    int_list,
    load_slices,
    print_header,
    resolved_checkpoint,
    write_json,
)
from benchmarks.server import Server, running_server
from training.outputs import clean_exits

TREES = ("A", "B")


@dataclass
class Block:
    """One block of requests at one server."""

    requests_per_s: float
    p50_s: float
    server_cpu_per_request_s: float


def source_tree(text: str) -> Path:
    """argparse type: a folder holding the service's code (``app/main.py``), as an absolute path."""
    path = Path(text).expanduser().resolve()
    if not (path / "app" / "main.py").is_file():
        raise argparse.ArgumentTypeError(f"{text}: no app/main.py there; give the root of a checkout of this project")
    return path


def env_pair(text: str) -> tuple[str, str]:
    """argparse type: 'NAME=value', any environment variable but PYTHONPATH, which names the tree's code."""
    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise argparse.ArgumentTypeError(f"expected NAME=value, got {text!r}")
    if name == "PYTHONPATH":
        raise argparse.ArgumentTypeError("PYTHONPATH is set by --a and --b (each server runs its own tree's code)")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, images=64)
    parser.add_argument("--a", type=source_tree, required=True, help="source tree A (the code before a change)")
    parser.add_argument(
        "--b", type=source_tree, default=REPO_ROOT, help="source tree B (default: this checkout, %(default)s)"
    )
    for tree in ("a", "b"):
        parser.add_argument(
            f"--{tree}-env",
            type=env_pair,
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable of server {tree.upper()} only (repeat for more)",
        )
    parser.add_argument(
        "--concurrency", type=int_list, default="1,16", help="comma-separated callers per block (default: 1,16)"
    )
    parser.add_argument(
        "--endpoints", type=endpoint_list, default="encode,reconstruct", help="comma-separated: encode, reconstruct"
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="blocks per tree and level (default: 3)")
    parser.add_argument(
        "--requests", type=positive_int, default=128, help="requests per block (default: 128), at least 4 per caller"
    )
    return parser


def run_block(server: Server, endpoint: str, uploads: list[Upload], concurrency: int, requests: int) -> Block:
    """One closed-loop block; every answer must be a 200."""
    driven = drive_server(server, endpoint, uploads, concurrency=concurrency, total=requests, timeout_s=120)
    failed = [o for o in driven.outcomes if o.status != 200]
    if failed:
        raise RuntimeError(f"/{endpoint}: {len(failed)} of {requests} requests failed, e.g. {failed[0]}")
    return Block(
        requests / driven.wall_s,
        statistics.median(o.latency_s for o in driven.outcomes),
        driven.server_cpu_s / requests,
    )


def print_level(label: str, blocks: dict[str, list[Block]]) -> dict[str, float]:
    """Per-round figures of one endpoint and concurrency, and the median ratios B / A."""
    throughput = [b.requests_per_s / a.requests_per_s for a, b in zip(blocks["A"], blocks["B"], strict=True)]
    latency = [b.p50_s / a.p50_s for a, b in zip(blocks["A"], blocks["B"], strict=True)]
    for tree in TREES:
        rows = [
            f"{x.requests_per_s:6.1f} {1000 * x.p50_s:7.1f} {1000 * x.server_cpu_per_request_s:6.2f}"
            for x in blocks[tree]
        ]
        print(f"{label:<18} {tree}  " + "  |  ".join(rows))
    medians = {"requests_per_s": statistics.median(throughput), "p50": statistics.median(latency)}
    print(
        f"{label:<18} B/A req/s "
        + " ".join(f"{r:.2f}" for r in throughput)
        + f" (median {medians['requests_per_s']:.2f});"
        f" p50 " + " ".join(f"{r:.2f}" for r in latency) + f" (median {medians['p50']:.2f})"
    )
    return medians


def run_rounds(
    args: argparse.Namespace,
    servers: dict[str, tuple[dict[str, str], Path]],
    uploads: list[Upload],
    levels: list[tuple[str, int]],
) -> dict[tuple[str, int], dict[str, list[Block]]]:
    """Both servers (environment, source tree) started, then the ABBA rounds; RuntimeError if either fails."""
    blocks: dict[tuple[str, int], dict[str, list[Block]]] = {level: {t: [] for t in TREES} for level in levels}
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vqvae-bench-logs-")))
        running = {
            tree: stack.enter_context(
                running_server(env, logs, log_level="warning", startup_timeout_s=120, root=root, cli=True)
            )
            for tree, (env, root) in servers.items()
        }
        for server in running.values():  # untimed: the first requests of a process are slower
            for endpoint in args.endpoints:
                run_block(server, endpoint, uploads, 1, 4)
        for index in range(args.rounds):
            for endpoint, concurrency in levels:
                for tree in abba(index, TREES):
                    block = run_block(running[tree], endpoint, uploads, concurrency, args.requests)
                    blocks[endpoint, concurrency][tree].append(block)
    return blocks


@clean_exits
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    roots = {"A": args.a, "B": args.b}
    own_env = {"A": dict(args.a_env), "B": dict(args.b_env)}
    levels = [(endpoint, concurrency) for endpoint in args.endpoints for concurrency in args.concurrency]
    if args.requests < 4 * max(args.concurrency):
        fail(f"--requests {args.requests}: give at least 4 per caller ({4 * max(args.concurrency)})")
    with resolved_checkpoint(args.checkpoint, args.random_preset) as checkpoint:
        info = print_header("the service of two source trees, A/B (ABBA blocks)")
        slices = load_slices(args.data, args.split, args.images)
        print(f"data: {slices.describe()}")
        for tree in TREES:
            print(f"{tree}: {roots[tree]}" + (f", with {own_env[tree]}" if own_env[tree] else ""))
        print(f"checkpoint: {checkpoint.label}; {args.requests} requests per block")
        uploads = make_uploads(slices.pngs())
        env = {"VQVAE_CHECKPOINT": str(checkpoint.path), "VQVAE_LOG_LEVEL": "warning"}
        if args.threads > 0:
            env["VQVAE_TORCH_THREADS"] = str(args.threads)
        try:
            blocks = run_rounds(
                args, {tree: ({**env, **own_env[tree]}, roots[tree]) for tree in TREES}, uploads, levels
            )
        except RuntimeError as exc:  # a server that did not start, or a request that failed
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("per round: req/s, p50 ms, server CPU ms per request")
        medians = {f"{e} c{c}": print_level(f"/{e} c{c}", blocks[e, c]) for e, c in levels}
        write_json(
            args.json,
            {
                "benchmark": "ab",
                "machine": info,
                "data": slices.describe(),
                "checkpoint": checkpoint.label,
                "trees": {tree: str(root) for tree, root in roots.items()},
                "env": own_env,
                "requests_per_block": args.requests,
                "blocks": {f"{e} c{c}": {t: [asdict(x) for x in blocks[e, c][t]] for t in TREES} for e, c in levels},
                "median_ratio_b_over_a": medians,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
