"""Proxy overhead bench: the same requests straight to the fake upstream, through the thinnest
pass-through (bench/passthrough.py) and through the proxy, in alternating rounds.

    .venv/bin/python bench/run.py [--rounds 5] [--requests 1000] [--seconds 3] [--json]
    .venv/bin/python bench/run.py --targets direct,proxy,proxy:2 --no-pin   # worker scaling
    .venv/bin/python bench/run.py --targets passthrough,proxy@main,proxy    # A/B against main

Method (issue 14): where ``taskset`` exists, the server under test (pass-through or proxy) is
pinned alone to one core and the fake upstream and this load generator to the other, so the
proxy's ratio to direct measures the proxy and not the three fighting over both cores. Each
round measures every target once, in an order rotated round by round; each figure is the median
over rounds of the difference (or ratio) to direct *within the same round*, with its spread
(min-max), so that a slow moment of a shared machine moves both sides of a pair.

Per target and round: latency p50/p99 at 1 connection (JSON), time to first SSE event p50/p99,
throughput at 64 connections (JSON and streamed), CPU per request of the server's processes
(utime+stime from /proc over the throughput run, divided by the requests it served), and peak
RSS (VmHWM) per process. The proxy runs the shipped router.yaml, at log level info, writing its
log to a file, its SQLite state in a temporary directory.

A script, not a test: numbers from a noisy machine inform, they do not fail CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import procs  # noqa: E402

BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Say hello in five words."}]}).encode()
STREAM_BODY = json.dumps({**json.loads(BODY), "stream": True}).encode()
HEADERS = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01",
           "content-type": "application/json"}
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CONNECTIONS = 64


# --------------------------------------------------------------------------- processes

@dataclass
class Server:
    """A server process started for the bench."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    sent: int = 0
    """Requests this bench completed against it (any status)."""

    def pids(self) -> list[int]:
        """The process and all its descendants (uvicorn's workers)."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return found

    def cpu_seconds(self) -> float:
        """utime + stime of the process tree so far."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total / TICK

    def peak_rss_mib(self) -> list[float]:
        """VmHWM of each process of the tree, in MiB."""
        out = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        out.append(int(line.split()[1]) / 1024)
        return out


def counted_requests(url: str) -> float:
    """The sum of ``router_requests_total`` on a proxy's /metrics (all workers)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("router_requests_total{"))


def pinned(args: list[str], cpus: str | None) -> list[str]:
    """``args`` run under ``taskset -c cpus`` when pinning is on and taskset exists."""
    return ["taskset", "-c", cpus, *args] if cpus and shutil.which("taskset") else args


@contextlib.contextmanager
def server(name: str, args: list[str], log: Path, url: Callable[[str], str | None],
           env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[Server]:
    """Run ``args`` (output to ``log``) until the block ends, through tests/procs.py; ready
    once ``url(its output)`` gives a base URL, and for a proxy once its ``/readyz`` answers."""

    def ready(running: procs.Running) -> bool:
        base = url(running.output())
        return base is not None and (not name.startswith("proxy")
                                     or procs.http_ok(base + "/readyz"))

    with procs.started(args, ready=ready, log=log, env=env, cwd=cwd, timeout=60) as running:
        base = url(running.output())
        assert base is not None
        yield Server(name, base, running.process)


def exported(rev: str, into: Path) -> Path:
    """The tree of git revision ``rev`` of this repository, written under ``into``."""
    tree = into / f"rev-{rev.replace('/', '-').replace('~', '-')}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def proxy_command(python: str, tree: Path | None, router: str | None = None
                  ) -> tuple[list[str], dict[str, str]]:
    """The command running ``router`` from this checkout, or from an exported ``tree``: then
    without site (-S), so the checkout's editable install does not shadow it, and with the
    venv's packages on PYTHONPATH instead (run it in ``tree``: ``-m`` puts the working
    directory first on the path)."""
    if tree is None:
        return [router or str(Path(python).with_name("router"))], {}
    packages = sysconfig.get_paths()["purelib"]
    return [python, "-S", "-m", "router"], {"PYTHONPATH": f"{tree}{os.pathsep}{packages}"}


def listening(text: str) -> str | None:
    """The URL in a ``listening on URL`` line."""
    for line in text.splitlines():
        if "listening on " in line:
            return line.split("listening on ", 1)[1].strip()
    return None


# --------------------------------------------------------------------------- load

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latencies(session: aiohttp.ClientSession, target: Server, n: int) -> list[float]:
    """Seconds per JSON request, one at a time."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(target.url + "/v1/messages", data=BODY, headers=HEADERS) as r:
            await r.read()
            target.sent += 1
            assert r.status == 200, r.status
        out.append(time.perf_counter() - t)
    return out


async def first_event_times(session: aiohttp.ClientSession, target: Server, n: int
                            ) -> list[float]:
    """Seconds from sending a streamed request to its first complete SSE event."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(target.url + "/v1/messages", data=STREAM_BODY,
                                headers=HEADERS) as r:
            target.sent += 1
            assert r.status == 200, r.status
            buffer = b""
            while b"\n\n" not in buffer:
                chunk = await r.content.readany()
                if not chunk:
                    break
                buffer += chunk
            out.append(time.perf_counter() - t)
            await r.read()
    return out


def own_cpu_seconds() -> float:
    """utime + stime of this process (the load generator) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def throughput(target: Server, body: bytes, seconds: float
                     ) -> tuple[float, float, int, float]:
    """Requests per second at 64 connections, the server's CPU ms per request, failures, and
    the load generator's own CPU ms per request."""
    done = failed = 0
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(stop_at: float, count: bool) -> None:
            nonlocal done, failed
            while time.perf_counter() < stop_at:
                async with session.post(target.url + "/v1/messages", data=body,
                                        headers=HEADERS) as r:
                    await r.read()
                    target.sent += 1
                    if count:
                        done += r.status == 200
                        failed += r.status != 200

        # A short unmeasured burst opens the 64 connections first.
        await asyncio.gather(*(worker(time.perf_counter() + 0.3, False)
                               for _ in range(CONNECTIONS)))
        cpu0, own0, t0 = target.cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker(t0 + seconds, True) for _ in range(CONNECTIONS)))
        elapsed, cpu = time.perf_counter() - t0, target.cpu_seconds() - cpu0
        own = own_cpu_seconds() - own0
    return done / elapsed, cpu / max(done, 1) * 1000, failed, own / max(done, 1) * 1000


async def measure(target: Server, n: int, seconds: float) -> dict[str, float]:
    """One round's figures for one target."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        await latencies(session, target, 50)  # warm the connection and caches
        lat = await latencies(session, target, n)
        ttfe = await first_event_times(session, target, max(n // 2, 1))
    rps, cpu_ms, failed, load_ms = await throughput(target, BODY, seconds)
    rps_stream, cpu_stream_ms, failed_stream, _ = await throughput(target, STREAM_BODY, seconds)
    return {
        "p50_ms": percentile(lat, 0.5) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "ttfe_p50_ms": percentile(ttfe, 0.5) * 1000,
        "ttfe_p99_ms": percentile(ttfe, 0.99) * 1000,
        "rps": rps,
        "rps_stream": rps_stream,
        "cpu_ms": cpu_ms,
        "cpu_stream_ms": cpu_stream_ms,
        "load_generator_cpu_ms": load_ms,
        "failed": failed + failed_stream,
    }


# --------------------------------------------------------------------------- summary

def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(rounds: list[dict[str, dict[str, float]]], names: list[str]) -> dict[str, Any]:
    """Per target: medians over rounds of the paired differences and ratios to direct."""
    out: dict[str, Any] = {}
    for name in names:
        per = [r[name] for r in rounds]
        direct = [r["direct"] for r in rounds]
        row: dict[str, Any] = {k: spread([p[k] for p in per]) for k in per[0]}
        pairs = list(zip(per, direct, strict=True))
        for key in ("p50_ms", "p99_ms", "ttfe_p50_ms", "ttfe_p99_ms"):
            row["added_" + key] = spread([p[key] - d[key] for p, d in pairs])
        for key in ("rps", "rps_stream"):
            row["share_" + key] = spread([p[key] / d[key] for p, d in pairs])
        out[name] = row
    return out


def scaling(rounds: list[dict[str, dict[str, float]]], name: str, workers: int) -> str:
    """How ``name`` (``workers`` workers) compares with one worker, and the most this machine
    allows: the proxy, the fake upstream and the load generator share its cores, so N workers
    can serve at most cores / (proxy + fake + load CPU per request) requests a second."""
    ratio = spread([r[name]["rps"] / r["proxy"]["rps"] for r in rounds])
    cores = os.cpu_count() or 1
    ceilings = []
    for r in rounds:
        proxy, fake = r["proxy"]["cpu_ms"], r["direct"]["cpu_ms"]
        total = proxy + fake + r["proxy"]["load_generator_cpu_ms"]
        ceilings.append(min(workers, cores * proxy / total))
    ceiling = spread(ceilings)
    return (f"\n{name} vs one worker: {ratio['median']:.2f}× the throughput "
            f"[{ratio['min']:.2f}–{ratio['max']:.2f}]; the CPU this machine has allows at most "
            f"{ceiling['median']:.2f}× [{ceiling['min']:.2f}–{ceiling['max']:.2f}] (its {cores} "
            "cores also run the fake upstream and the load generator).")


def table(summary: dict[str, Any], rss: dict[str, list[float]]) -> str:
    """The Markdown table docs/speed.md keeps: median over rounds [min-max]."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        s = row[key]
        return f"{s['median']:{fmt}} [{s['min']:{fmt}}–{s['max']:{fmt}}]"

    lines = ["| target | added p50 / p99, 1 conn (ms) | added TTFE p50 / p99 (ms) | "
             "req/s, 64 conn (share of direct) | streams (share) | CPU ms/req (streams) | "
             "peak RSS MiB |", "|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        peak = rss.get(name, [])
        rss_text = (f"{max(peak):.0f}" + (f" ×{len(peak)}" if len(peak) > 1 else "")
                    if peak else "")
        if name == "direct":
            lines.append(
                f"| direct (fake upstream) | p50 {cell(row, 'p50_ms', '.2f')}, "
                f"p99 {cell(row, 'p99_ms', '.2f')} | p50 {cell(row, 'ttfe_p50_ms', '.2f')}, "
                f"p99 {cell(row, 'ttfe_p99_ms', '.2f')} | {cell(row, 'rps', '.0f')} | "
                f"{cell(row, 'rps_stream', '.0f')} | {cell(row, 'cpu_ms', '.3f')} "
                f"({cell(row, 'cpu_stream_ms', '.3f')}) | {rss_text} |")
            continue
        lines.append(
            f"| {name} | {cell(row, 'added_p50_ms', '+.2f')} / "
            f"{cell(row, 'added_p99_ms', '+.2f')} | {cell(row, 'added_ttfe_p50_ms', '+.2f')} / "
            f"{cell(row, 'added_ttfe_p99_ms', '+.2f')} | {cell(row, 'rps', '.0f')} "
            f"({cell(row, 'share_rps', '.0%')}) | {cell(row, 'rps_stream', '.0f')} "
            f"({cell(row, 'share_rps_stream', '.0%')}) | {cell(row, 'cpu_ms', '.3f')} "
            f"({cell(row, 'cpu_stream_ms', '.3f')}) | {rss_text} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--requests", type=int, default=1000,
                        help="sequential requests per target and round (half as many streamed)")
    parser.add_argument("--seconds", type=float, default=3,
                        help="length of each throughput run (JSON, then streamed)")
    parser.add_argument("--targets", default="direct,passthrough,proxy",
                        help="comma-separated: direct, passthrough (aiohttp), passthrough-asgi "
                        "(uvicorn), proxy, proxy:N (N workers), proxy@REV (a git revision of "
                        "this repository, with its own router.yaml), proxy:N@REV")
    parser.add_argument("--config", default=str(ROOT / "router.yaml"), help="the proxy's config")
    parser.add_argument("--log-level", default="info", help="the proxy's log level")
    parser.add_argument("--router", help="the `router` command of another install (a server's "
                        "install, without the test tools) for the proxy targets")
    parser.add_argument("--server-cpus", default="0",
                        help="cores for the pass-through and proxy (taskset -c)")
    parser.add_argument("--load-cpus", default="1",
                        help="cores for the fake upstream and this load generator")
    parser.add_argument("--no-pin", action="store_true", help="let everything share all cores")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON to PATH")
    args = parser.parse_args()

    pin = not args.no_pin and shutil.which("taskset") is not None
    server_cpus = args.server_cpus if pin else None
    load_cpus = args.load_cpus if pin else None
    if load_cpus:
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})
    names = ["direct", *[t for t in args.targets.split(",") if t != "direct"]]
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake = stack.enter_context(server(
            "direct", pinned([python, "-m", "router.fake", "--port", "0"], load_cpus),
            work / "fake.log", listening))
        servers = {"direct": fake}
        for name in names[1:]:
            if name.startswith("passthrough"):
                flags = ["--asgi"] if name == "passthrough-asgi" else []
                servers[name] = stack.enter_context(server(name, pinned(
                    [python, str(ROOT / "bench" / "passthrough.py"), "--upstream", fake.url,
                     *flags], server_cpus), work / f"{name}.log", listening))
                continue
            kind, _, rev = name.partition("@")
            workers = kind.partition(":")[2] or "1"
            tree = exported(rev, work) if rev else None
            command, env = proxy_command(python, tree, args.router)
            config = str(tree / "router.yaml") if tree else args.config
            port = procs.free_port()
            state_dir = work / f"state-{len(servers)}"
            servers[name] = stack.enter_context(server(name, pinned(
                [*command, "serve", "--config", config, "--port", str(port),
                 "--workers", workers, "--log-level", args.log_level],
                server_cpus), work / f"server-{len(servers)}.log",
                lambda _, p=port: f"http://127.0.0.1:{p}",
                env={**env, "ROUTER_UPSTREAM_URL": fake.url, "ROUTER_STATE_DIR": str(state_dir)},
                cwd=tree))
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        rounds: list[dict[str, dict[str, float]]] = []
        for i in range(args.rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            result = {name: asyncio.run(measure(servers[name], args.requests, args.seconds))
                      for name in order}
            rounds.append(result)
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(
                f"{n} {result[n]['rps']:.0f} req/s {result[n]['cpu_ms']:.3f} ms CPU"
                for n in names), file=sys.stderr)
        rss = {name: s.peak_rss_mib() for name, s in servers.items()}
        # Every request the bench completed must be in the proxy's metrics, whichever worker
        # served it (scraped twice: a worker may not have written its last count yet).
        metrics = {}
        for name, s in servers.items():
            if name.startswith("proxy"):
                counted = counted_requests(s.url)
                if counted != s.sent:
                    time.sleep(1)
                    counted = counted_requests(s.url)
                metrics[name] = f"{counted:.0f} of {s.sent}"
    summary = summarise(rounds, names)
    about = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "pinned": f"servers on cpu {server_cpus}, fake + load on cpu {load_cpus}" if pin
        else "unpinned",
        "load_average": os.getloadavg(),
        "rounds": args.rounds,
        "failed_requests": sum(r[n]["failed"] for r in rounds for n in names),
        "metrics_counted": metrics,
    }
    raw = json.dumps({"about": about, "summary": summary, "rounds": rounds,
                      "peak_rss_mib": rss}, indent=2)
    if args.save:
        Path(args.save).write_text(raw + "\n")
    if args.json:
        print(raw)
        return
    print(table(summary, rss))
    for name in names:
        workers = int(name.partition("@")[0].partition(":")[2] or 1)
        if workers > 1 and "proxy" in names:
            print(scaling(rounds, name, workers))
    print(f"\n{about['date']}, {about['machine']}, Python {about['python']}, {about['pinned']}, "
          f"{args.rounds} rounds (median [min–max] of per-round differences to direct), "
          f"load average at end {about['load_average'][0]:.1f}, "
          f"{about['failed_requests']} failed requests; requests in router_requests_total: "
          + ", ".join(f"{n} {c}" for n, c in metrics.items()) + ".")


if __name__ == "__main__":
    main()
