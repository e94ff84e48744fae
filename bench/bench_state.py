"""What the state store adds per request: p50/p99 of get_many and set_many of 3 keys per backend.

    .venv/bin/python bench/bench_state.py [--n 20000] [--redis-url redis://...]

A script, not a test. In-process calls, as the proxy makes them: memory; SQLite in a temporary
directory, alone and with a second worker process writing to the same file; Redis on loopback
(started from Debian's redis-server, as the tests do, unless --redis-url is given), next to a
PING, the cost of one round trip through the same client. Targets (issues 8 and 12): ≤ 50 µs
p99 added per request with the embedded store; one round trip to Redis per call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.config import StateConfig
from router.state import Store, open_store
from tests import procs

KEYS = {"conv:caller:session:model": b"claude-opus-4-7",
        "conv:caller:session:cache": b"\x00" * 48,
        "conv:caller:session:signers": b"\x01" * 96}

WRITER = """
import asyncio, sys, time
from router.config import StateConfig
from router.state import open_store

async def main(directory, rate):
    store = await open_store(StateConfig(backend="sqlite", dir=directory))
    pause, i = 1.0 / rate, 0
    while True:
        i += 1
        await store.set_many({f"other:{i % 5000}:{k}": b"x" * 64 for k in range(3)}, 3600)
        await store.add("other:requests", 1, 3600)
        time.sleep(pause)

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


Samples = tuple[list[float], list[float]]


async def timed(call: Callable[[], Awaitable[object]], n: int) -> Samples:
    """Return ``n`` wall-clock and CPU durations of ``call`` in microseconds, after a warm-up.

    The CPU time (this thread's, kernel included) is what the call costs; the wall time adds
    waiting: for Redis's answer, for another worker's lock, and for the CPU on a busy machine.
    """
    for _ in range(min(n, 2000)):
        await call()
    wall, cpu = [], []
    for _ in range(n):
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        await call()
        cpu.append((time.thread_time_ns() - start_cpu) / 1000)
        wall.append((time.perf_counter_ns() - start) / 1000)
    return wall, cpu


def row(label: str, samples: Samples) -> str:
    cells = []
    for series in samples:
        series.sort()
        cells += [series[len(series) // 2], series[int(len(series) * 0.99)]]
    return f"| {label} | " + " | ".join(f"{c:.1f} µs" for c in cells) + " |"


async def measure(label: str, config: StateConfig, n: int) -> list[str]:
    store: Store = await open_store(config)
    keys = list(KEYS)
    counter = iter(range(10**9))

    async def request() -> None:
        await store.get_many(keys)
        await store.set_many(KEYS, 3600)

    async def fresh_set() -> None:
        # A new conversation each time: inserts, not only updates.
        i = next(counter)
        await store.set_many({f"{key}:{i}": value for key, value in KEYS.items()}, 3600)

    rows = [row(f"{label}: get_many(3)", await timed(lambda: store.get_many(keys), n)),
            row(f"{label}: set_many(3), same keys", await timed(lambda: store.set_many(KEYS, 3600),
                                                               n)),
            row(f"{label}: set_many(3), new keys", await timed(fresh_set, n)),
            row(f"{label}: add", await timed(lambda: store.add("bench:n", 1, 3600), n)),
            row(f"{label}: get_many(3) + set_many(3)", await timed(request, n))]
    await store.close()
    return rows


async def ping_rows(url: str, n: int) -> list[str]:
    client = redis.asyncio.Redis.from_url(url)
    rows = [row("redis-py PING (one round trip)", await timed(client.ping, n))]
    await client.aclose()
    return rows


@contextlib.contextmanager
def other_worker(directory: str, rate: float, script: str = WRITER) -> Iterator[None]:
    """Run a second process writing to the same SQLite file ``rate`` times a second (what it
    writes: ``script``, run with the directory and the rate as arguments)."""
    with procs.started([sys.executable, "-c", script, directory, str(rate)],
                       ready=lambda _: True):
        time.sleep(2.0)  # started and writing
        yield


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from tests.redis_server import running_redis

    with running_redis() as server:
        yield server.url


def header(what: str, n: int) -> str:
    """The versions, the machine's load and the table's head."""
    return (f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"redis-py {redis.__version__}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}, n={n} per row\n\n"
            f"| {what} | wall p50 | wall p99 | CPU p50 | CPU p99 |\n|---|---:|---:|---:|---:|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls measured per row")
    parser.add_argument("--redis-url", help="an existing Redis (default: start one on loopback)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="writes per second of the second SQLite worker")
    args = parser.parse_args()
    print(header("call", args.n))
    rows = asyncio.run(measure("memory", StateConfig(backend="memory"), args.n))
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        config = StateConfig(backend="sqlite", dir=tmp)
        rows += asyncio.run(measure("sqlite", config, args.n))
        with other_worker(tmp, args.rate):
            rows += asyncio.run(measure(f"sqlite, 2nd worker writing {args.rate:g}/s", config,
                                        args.n))
    with redis_url(args.redis_url) as url:
        rows += asyncio.run(ping_rows(url, args.n))
        rows += asyncio.run(measure("redis", StateConfig(backend="redis", url=url), args.n))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
