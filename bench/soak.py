"""Bounded soak: many clients through the proxy while the upstream misbehaves, for a fixed time.

    .venv/bin/python bench/soak.py [--seconds 120] [--clients 32] [--json]

Runs the fake upstream in this process (so it can be re-scripted as it runs: a thread keeps its
queue topped up with a realistic fault mix) and `router serve` as a subprocess pointed at it
with ROUTER_UPSTREAM_URL, with short retry delays. N aiohttp clients send a mix of streamed and
plain Messages requests until the time is up. Everything stays on loopback and stops by itself.

Reports, as a Markdown table (or JSON): requests served, successes, errors by type as the client
saw them (status and error.type, mid-stream error events, cut streams), latency p50/p99, the
proxy's RSS after warmup and at the end, upstream attempts, the proxy's own retry / fallback /
breaker counters from /metrics, and whether the tokens it accounted (router_tokens_total) equal
the usage the fake billed. A script, not a test: it informs, it does not fail a build, though
it exits 1 when the token books do not balance or a request got a 500 from the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from router.config import default_config_text
from router.fake import (
    Behaviour,
    Drop,
    Fail,
    FakeUpstream,
    Reply,
    Stall,
    StreamError,
    running_fake,
)

MAX_SECONDS = 3600
MAX_CLIENTS = 512
API_KEY = "sk-ant-soak-0000"
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01",
           "content-type": "application/json"}
MODELS = ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7", "haiku", "sonnet"]
PROMPTS = [
    "Say hello in five words.",
    "What is the capital of France?",
    "Write a Python function that parses ISO 8601 durations, with tests, and explain the edge "
    "cases around months and leap years step by step.",
    "Summarise this: " + "the quick brown fox jumps over the lazy dog. " * 200,
]
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")


# --------------------------------------------------------------------------- the fault mix

Factory = Callable[[random.Random], Behaviour]
FAULT_MIX: list[tuple[str, float, Factory]] = [
    ("529 overloaded", 0.05, lambda r: Fail(529, "overloaded_error")),
    ("429 retry-after 0.2", 0.02,
     lambda r: Fail(429, "rate_limit_error", headers={"retry-after": "0.2"})),
    ("drop before answer", 0.01, lambda r: Drop()),
    ("drop mid-stream", 0.01, lambda r: Drop(after_events=r.randint(1, 6))),
    ("stall 0.5 s", 0.01, lambda r: Stall(0.5)),
    ("stream error event", 0.01,
     lambda r: StreamError(after_events=r.randint(1, 5), error_type="overloaded_error")),
]
"""Name, share of upstream attempts, behaviour. The rest are ordinary replies."""


def reply(r: random.Random) -> Behaviour:
    words = r.choice([3, 8, 20, 60])
    return Reply(text=" ".join(["word"] * words), event_delay=r.choice([0.0, 0.002, 0.01]))


class Scripter:
    """Keeps the fake's queue of behaviours topped up from a thread, with the fault mix."""

    def __init__(self, fake: FakeUpstream, seed: int, ahead: int = 512) -> None:
        self.fake = fake
        self.rng = random.Random(seed)
        self.ahead = ahead
        self.scripted: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripter", daemon=True)

    def __enter__(self) -> Scripter:
        self._top_up()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _draw(self) -> tuple[str, Behaviour]:
        x = self.rng.random()
        for name, share, make in FAULT_MIX:
            if x < share:
                return name, make(self.rng)
            x -= share
        return "reply", reply(self.rng)

    def _top_up(self) -> None:
        consumed = len(self.fake.received)  # every request here is one POST /v1/messages
        missing = consumed + self.ahead - len(self.scripted)
        if missing > 0:
            drawn = [self._draw() for _ in range(missing)]
            self.scripted.extend(name for name, _ in drawn)
            self.fake.script(*(behaviour for _, behaviour in drawn))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._top_up()

    def consumed_mix(self, consumed: int) -> Counter[str]:
        """What the first ``consumed`` upstream attempts were scripted to do (FIFO)."""
        return Counter(self.scripted[:consumed])


# --------------------------------------------------------------------------- the proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def soak_config(upstream: str) -> str:
    """The default config, pointed at the fake, with retry delays short enough for a soak."""
    text = default_config_text().replace("https://api.anthropic.com", upstream)
    retry = "retry: {attempts: 3, base_delay: 0.5, max_delay: 8}"
    if retry not in text:
        raise SystemExit("soak: the default config's retry line changed; update soak_config")
    return text.replace(retry, "retry: {attempts: 3, base_delay: 0.05, max_delay: 1}")


@contextmanager
def router_serve(upstream: str, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run `router serve` on a free loopback port; yield the process and its URL."""
    config = workdir / "router.yaml"
    config.write_text(soak_config(upstream))
    port = free_port()
    log = (workdir / "router.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "ROUTER_UPSTREAM_URL": upstream},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                output = (workdir / "router.log").read_text()
                raise SystemExit(f"soak: router serve exited:\n{output}")
            try:
                urllib.request.urlopen(url + "/readyz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("soak: router serve did not become ready") from None
                time.sleep(0.1)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """Resident memory of a process from /proc, in MB (0 if unreadable)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(rf"{field_name}:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else 0.0


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The proxy's /metrics as sample name -> [(labels, value)]."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            out.setdefault(family.name + "_total", [])  # exported, nothing counted yet
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def total(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str,
          by: str | None = None) -> Any:
    """Sum a sample over its labels (or by one label); None if the proxy does not export it."""
    if name not in metrics:
        return None
    if by is None:
        return sum(value for _, value in metrics[name])
    sums: Counter[str] = Counter()
    for labels, value in metrics[name]:
        sums[labels.get(by, "")] += int(value)
    return dict(sums)


def billed_tokens(billed: list[dict[str, Any]]) -> dict[str, int]:
    """The fake's billed usage summed the way the proxy splits it (see
    router.accounting.cost.tokens_of)."""
    sums = dict.fromkeys(TOKEN_TYPES, 0)
    for usage in billed:
        written = usage.get("cache_creation_input_tokens") or 0
        split = usage.get("cache_creation") or {}
        w1h = split.get("ephemeral_1h_input_tokens") or 0
        w5m = split.get("ephemeral_5m_input_tokens") or 0
        w5m += max(0, written - w5m - w1h)
        sums["input"] += usage.get("input_tokens") or 0
        sums["output"] += usage.get("output_tokens") or 0
        sums["cache_read"] += usage.get("cache_read_input_tokens") or 0
        sums["cache_write_5m"] += w5m
        sums["cache_write_1h"] += w1h
    return sums


# --------------------------------------------------------------------------- the clients


@dataclass
class Tally:
    """What the clients saw."""

    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    streamed: int = 0

    @property
    def served(self) -> int:
        return sum(self.outcomes.values())


def body_for(r: random.Random, stream: bool) -> bytes:
    request: dict[str, Any] = {
        "model": r.choice(MODELS), "max_tokens": r.choice([64, 256, 1024]),
        "messages": [{"role": "user", "content": r.choice(PROMPTS)}],
    }
    if stream:
        request["stream"] = True
    if r.random() < 0.2:
        request["system"] = "You are terse."
    return json.dumps(request).encode()


def sse_outcome(data: bytes) -> str:
    """Classify a streamed answer by its last event."""
    events = [e for e in data.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    if not events:
        return "stream: empty"
    last = events[-1]
    if last.startswith(b"event: message_stop"):
        return "ok"
    if last.startswith(b"event: error"):
        try:
            kind = json.loads(last.split(b"data: ", 1)[1])["error"]["type"]
        except (ValueError, KeyError, IndexError, TypeError):
            kind = "unreadable"
        return f"stream error event: {kind}"
    return "stream: ended without message_stop"


async def one_request(session: aiohttp.ClientSession, url: str, r: random.Random,
                      tally: Tally) -> None:
    stream = r.random() < 0.5
    started = time.perf_counter()
    try:
        async with session.post(url + "/v1/messages", data=body_for(r, stream),
                                headers=HEADERS) as response:
            data = await response.read()
            status = response.status
            content_type = response.headers.get("content-type", "")
    except aiohttp.ClientPayloadError:
        outcome = "stream cut (connection broke mid-body)"
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = f"client: {type(exc).__name__}"
    else:
        if status == 200 and content_type.startswith("text/event-stream"):
            tally.streamed += 1
            outcome = sse_outcome(data)
        elif status == 200:
            outcome = "ok"
        else:
            try:
                kind = json.loads(data)["error"]["type"]
            except (ValueError, KeyError, TypeError):
                kind = "not Anthropic-shaped"
            outcome = f"{status} {kind}"
    tally.latencies.append(time.perf_counter() - started)
    tally.outcomes[outcome] += 1


async def load(url: str, clients: int, seconds: float, seed: int, tally: Tally,
               on_tick: Callable[[float], None]) -> None:
    stop_at = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=clients)

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        r = random.Random(seed * 1000 + n)
        while time.monotonic() < stop_at:
            await one_request(session, url, r, tally)

    async def ticker() -> None:
        started = time.monotonic()
        while time.monotonic() < stop_at:
            await asyncio.sleep(1)
            on_tick(time.monotonic() - started)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tick = asyncio.ensure_future(ticker())
        await asyncio.gather(*(client(n, session) for n in range(clients)))
        tick.cancel()


# --------------------------------------------------------------------------- the run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run(seconds: float, clients: int, seed: int) -> dict[str, Any]:
    warmup = min(10.0, seconds * 0.1)
    with (running_fake() as fake, tempfile.TemporaryDirectory(prefix="soak-") as tmp,
          router_serve(fake.url, Path(tmp)) as (proxy, url), Scripter(fake, seed) as scripter):
        tally = Tally()
        rss: dict[str, float] = {}

        def on_tick(elapsed: float) -> None:
            if "start" not in rss and elapsed >= warmup:
                rss["start"] = rss_mb(proxy.pid)

        started = time.monotonic()
        asyncio.run(load(url, clients, seconds, seed, tally, on_tick))
        elapsed = time.monotonic() - started
        time.sleep(1.0)  # the account stage runs just after each answer went out
        rss["end"] = rss_mb(proxy.pid)
        rss["peak"] = rss_mb(proxy.pid, "VmHWM")
        metrics = scrape(url)
        attempts = len(fake.received)
        billed = billed_tokens(fake.billed)
        mix = scripter.consumed_mix(attempts)
    accounted_by_type = total(metrics, "router_tokens_total", by="type") or {}
    accounted = {t: int(accounted_by_type.get(t, 0)) for t in TOKEN_TYPES}
    return {
        "seconds": round(elapsed, 1),
        "clients": clients,
        "served": tally.served,
        "streamed_answers": tally.streamed,
        "successes": tally.outcomes["ok"],
        "outcomes": dict(tally.outcomes.most_common()),
        "rps": tally.served / elapsed if elapsed else 0.0,
        "latency_p50_ms": percentile(tally.latencies, 0.5) * 1000,
        "latency_p99_ms": percentile(tally.latencies, 0.99) * 1000,
        "latency_max_ms": max(tally.latencies, default=0.0) * 1000,
        "rss_start_mb": rss.get("start", 0.0),
        "rss_end_mb": rss["end"],
        "rss_peak_mb": rss["peak"],
        "upstream_attempts": attempts,
        "upstream_mix": dict(mix.most_common()),
        "proxy_requests": total(metrics, "router_requests_total"),
        "proxy_requests_by_status": total(metrics, "router_requests_total", by="status"),
        "proxy_retries": total(metrics, "router_retries_total"),
        "proxy_retries_by_reason": total(metrics, "router_retries_total", by="reason"),
        "proxy_fallbacks": total(metrics, "router_fallbacks_total"),
        "proxy_circuit_opened": total(metrics, "router_circuit_opened_total"),
        "tokens_billed": billed,
        "tokens_accounted": accounted,
        "tokens_match": billed == accounted,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def table(r: dict[str, Any]) -> str:
    """Render the results as Markdown."""

    def counted(value: Any) -> str:
        return "not exported" if value is None else f"{value:.0f}"

    errors = {k: v for k, v in r["outcomes"].items() if k != "ok"}
    lines = [
        f"Soak: {r['seconds']} s, {r['clients']} clients, {r['date']}, {r['machine']}, "
        f"Python {r['python']}; fake upstream (in the load generator's process), proxy and "
        "clients share the machine.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| requests served | {r['served']} ({r['rps']:.0f} req/s) |",
        f"| successes | {r['successes']} ({r['successes'] / max(1, r['served']):.2%}) |",
    ]
    lines += [f"| error: {name} | {count} |" for name, count in errors.items()]
    lines += [
        f"| latency p50 / p99 / max | {r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} / "
        f"{r['latency_max_ms']:.0f} ms |",
        f"| proxy RSS after warmup → end (peak) | {r['rss_start_mb']:.1f} → "
        f"{r['rss_end_mb']:.1f} MB ({r['rss_peak_mb']:.1f}) |",
        f"| upstream attempts (fake) | {r['upstream_attempts']} |",
        f"| proxy requests counted (router_requests_total) | {counted(r['proxy_requests'])} |",
        f"| proxy retries (router_retries_total) | {counted(r['proxy_retries'])} |",
        f"| proxy fallbacks (router_fallbacks_total) | {counted(r['proxy_fallbacks'])} |",
        f"| circuits opened (router_circuit_opened_total) | "
        f"{counted(r['proxy_circuit_opened'])} |",
        "",
        "| upstream behaviour | attempts |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {count} |" for name, count in r["upstream_mix"].items()]
    lines += ["", "| tokens | billed by the fake | accounted by the proxy | equal |",
              "|---|---:|---:|---|"]
    for kind in TOKEN_TYPES:
        b, a = r["tokens_billed"][kind], r["tokens_accounted"][kind]
        lines.append(f"| {kind} | {b} | {a} | {'yes' if a == b else '**no**'} |")
    lines.append(f"\nTokens accounted == tokens billed: **{'yes' if r['tokens_match'] else 'NO'}**")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120,
                        help=f"how long to run (at most {MAX_SECONDS})")
    parser.add_argument("--clients", type=int, default=32,
                        help=f"concurrent clients (at most {MAX_CLIENTS})")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault mix and requests")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if not 1 <= args.seconds <= MAX_SECONDS or not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--seconds must be 1..{MAX_SECONDS} and --clients 1..{MAX_CLIENTS}")
    results = run(args.seconds, args.clients, args.seed)
    print(json.dumps(results, indent=2) if args.json else table(results))
    proxy_500 = any(k.startswith("500 ") for k in results["outcomes"])
    sys.exit(0 if results["tokens_match"] and not proxy_500 else 1)


if __name__ == "__main__":
    main()
