"""Proxy overhead bench: the same requests straight to the fake upstream and through the proxy.

    .venv/bin/python bench/run.py [--requests 2000] [--seconds 10] [--workers 1] [--json]

Starts the fake upstream (zero delay) and `router serve` as subprocesses on loopback, then
measures in one run: latency p50/p99 at 1 connection, throughput at 64 connections, time to
first SSE event, and the proxy's peak RSS. A script, not a test: numbers from a noisy machine
inform, they do not fail CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import procs  # noqa: E402

LISTENING = re.compile(r"listening on (http://\S+)")
BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Say hello in five words."}]}).encode()
STREAM_BODY = json.dumps({**json.loads(BODY), "stream": True}).encode()
HEADERS = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01",
           "content-type": "application/json"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latencies(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url + "/v1/messages", data=BODY, headers=HEADERS) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append(time.perf_counter() - t)
    return out


async def first_event_times(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url + "/v1/messages", data=STREAM_BODY, headers=HEADERS) as r:
            buffer = b""
            while b"\n\n" not in buffer:
                chunk = await r.content.readany()
                if not chunk:
                    break
                buffer += chunk
            out.append(time.perf_counter() - t)
            await r.read()
    return out


async def throughput(url: str, connections: int, seconds: float) -> float:
    connector = aiohttp.TCPConnector(limit=connections)
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            async with session.post(url + "/v1/messages", data=BODY, headers=HEADERS) as r:
                await r.read()
                if r.status == 200:
                    done += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        return done / (time.perf_counter() - started)


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of a process and its children (the uvicorn workers), in MB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        m = re.search(r"VmHWM:\s+(\d+) kB", status)
        total += int(m.group(1)) if m else 0
    return total / 1024


async def measure(direct: str, proxied: str, n: int, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for url in (direct, proxied):  # warm both paths up
            await latencies(session, url, 200)
            await first_event_times(session, url, 50)
        d_lat = await latencies(session, direct, n)
        p_lat = await latencies(session, proxied, n)
        d_ttfe = await first_event_times(session, direct, n // 2)
        p_ttfe = await first_event_times(session, proxied, n // 2)
    for name, d, p in (("latency", d_lat, p_lat), ("ttfe", d_ttfe, p_ttfe)):
        for q in (0.5, 0.99):
            key = f"p{int(q * 100)}"
            results[f"{name}_direct_{key}_ms"] = percentile(d, q) * 1000
            results[f"{name}_proxy_{key}_ms"] = percentile(p, q) * 1000
            results[f"{name}_added_{key}_ms"] = (percentile(p, q) - percentile(d, q)) * 1000
    results["latency_direct_mean_ms"] = statistics.mean(d_lat) * 1000
    results["rps_direct_64"] = await throughput(direct, 64, seconds)
    results["rps_proxy_64"] = await throughput(proxied, 64, seconds)
    results["rps_ratio"] = results["rps_proxy_64"] / results["rps_direct_64"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path")
    parser.add_argument("--seconds", type=float, default=10, help="length of each throughput run")
    parser.add_argument("--workers", type=int, default=1, help="proxy worker processes")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    fake_args = procs.python_module("router.fake", "--port", "0")
    with procs.started(fake_args, ready=procs.log_matches(LISTENING)) as fake:
        listening = LISTENING.search(fake.output())
        assert listening is not None
        fake_url = listening.group(1)
        with procs.router("serve", "--workers", str(args.workers), "--log-level", "warning",
                          env={"ROUTER_UPSTREAM_URL": fake_url}) as proxy:
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            results = asyncio.run(measure(fake_url, proxy.url, args.requests, args.seconds))
            results["proxy_peak_rss_mb"] = peak_rss_mb(proxy.pid)
    results.update(machine=f"{platform.machine()}, {os.cpu_count()} cores",
                   python=platform.python_version(), workers=args.workers,
                   date=time.strftime("%Y-%m-%d"))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results))


def table(r: dict[str, Any]) -> str:
    """Render the results as the Markdown table the README keeps."""
    rows = [
        ("latency p50, 1 connection", r["latency_direct_p50_ms"], r["latency_proxy_p50_ms"],
         r["latency_added_p50_ms"], "≤ 1 ms added"),
        ("latency p99, 1 connection", r["latency_direct_p99_ms"], r["latency_proxy_p99_ms"],
         r["latency_added_p99_ms"], "≤ 3 ms added"),
        ("time to first event p50", r["ttfe_direct_p50_ms"], r["ttfe_proxy_p50_ms"],
         r["ttfe_added_p50_ms"], ""),
        ("time to first event p99", r["ttfe_direct_p99_ms"], r["ttfe_proxy_p99_ms"],
         r["ttfe_added_p99_ms"], "≤ 2 ms added"),
    ]
    lines = ["| measure | direct | through proxy | added | target |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {n} | {d:.2f} ms | {p:.2f} ms | {a:+.2f} ms | {t} |" for n, d, p, a, t in rows]
    lines.append(f"| throughput, 64 connections | {r['rps_direct_64']:.0f} req/s | "
                 f"{r['rps_proxy_64']:.0f} req/s | {r['rps_ratio']:.0%} of direct | ≥ 40% |")
    lines.append(f"| proxy peak RSS | | {r['proxy_peak_rss_mb']:.0f} MB | | |")
    lines.append(f"\n{r['date']}, {r['machine']}, Python {r['python']}, "
                 f"{r['workers']} proxy worker(s); fake upstream, proxy and load generator "
                 "share the machine.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
