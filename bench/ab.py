"""CPU per request of two versions of the proxy, measured at the same moments: an A/B for a
change on a machine too busy for back-to-back runs to compare.

    .venv/bin/python bench/ab.py [--baseline main] [--candidate REV] [--rounds 8] [--seconds 3]
        [--stream]

Both proxies (the ``--baseline`` git revision and ``--candidate``, by default this working
tree, each with its own router.yaml) are pinned to the same core, the fake upstream and this
load generator to the other; each round, 64 connections send JSON requests, every other
connection to each proxy, so whatever else the machine runs slows both alike. Reports each
round's CPU milliseconds per request (utime+stime from /proc over the requests served) and the
median ratio B/A with its spread. A script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from run import (
    BODY,
    CONNECTIONS,
    HEADERS,
    STREAM_BODY,
    Server,
    exported,
    listening,
    pinned,
    procs,
    proxy_command,
    server,
)


async def round_of(targets: list[Server], body: bytes, seconds: float) -> list[float]:
    """One round: CPU ms per request of each target, both loaded at once."""
    done = [0] * len(targets)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(i: int, stop_at: float, count: bool) -> None:
            target = i % len(targets)
            while time.perf_counter() < stop_at:
                async with session.post(targets[target].url + "/v1/messages", data=body,
                                        headers=HEADERS) as r:
                    await r.read()
                    if count and r.status == 200:
                        done[target] += 1

        await asyncio.gather(*(worker(i, time.perf_counter() + 0.3, False)
                               for i in range(CONNECTIONS)))
        cpu0 = [t.cpu_seconds() for t in targets]
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(worker(i, stop, True) for i in range(CONNECTIONS)))
        cpu = [t.cpu_seconds() - c for t, c in zip(targets, cpu0, strict=True)]
    return [c / max(n, 1) * 1000 for c, n in zip(cpu, done, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision of A, or "
                        "`passthrough` / `passthrough-asgi` (bench/passthrough.py, calibration)")
    parser.add_argument("--candidate", help="git revision of B (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake = stack.enter_context(server("direct", pinned(
            [python, "-m", "router.fake"], "1"), work / "fake.log", listening))
        targets = []
        calibration = args.baseline.startswith("passthrough")
        if calibration:
            flags = ["--asgi"] if args.baseline == "passthrough-asgi" else []
            targets.append(stack.enter_context(server(args.baseline, pinned(
                [python, str(Path(__file__).with_name("passthrough.py")), "--upstream",
                 fake.url, *flags], "0"), work / "passthrough.log", listening)))
        trees = ([] if calibration else [exported(args.baseline, work)]) + [
            exported(args.candidate, work) if args.candidate else None]
        for i, tree in enumerate(trees):
            command, env = proxy_command(python, tree)
            config = str((tree or Path(__file__).resolve().parent.parent) / "router.yaml")
            port = procs.free_port()
            targets.append(stack.enter_context(server(
                f"proxy{i}", pinned([*command, "serve", "--config", config, "--port", str(port),
                                     "--log-level", args.log_level], "0"),
                work / f"proxy{i}.log", lambda _, p=port: f"http://127.0.0.1:{p}",
                env={**env, "ROUTER_UPSTREAM_URL": fake.url,
                     "ROUTER_STATE_DIR": str(work / f"state{i}")}, cwd=tree)))
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        ratios = []
        for r in range(args.rounds):
            a, b = asyncio.run(round_of(targets, STREAM_BODY if args.stream else BODY,
                                        args.seconds))
            ratios.append(b / a)
            print(f"round {r + 1}: A {a:.3f} ms, B {b:.3f} ms, B/A {b / a:.3f}", flush=True)
    print(f"B/A CPU per request: median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}–{max(ratios):.3f}] over {args.rounds} rounds "
          f"(A = {args.baseline}, B = {args.candidate or 'the working tree'})")


if __name__ == "__main__":
    main()
