"""Soak: a steady stream of requests through the proxy while the upstream misbehaves, for a
fixed time, watching the proxy's memory and internals for growth.

    .venv/bin/python bench/soak.py [--seconds 600] [--rate 40] [--clients 64] [--json]

Runs the fake upstream in this process (so it can be re-scripted as it runs: a thread keeps its
queue topped up with a mix of faults: 529s, 429s, dropped connections, stalls, hung attempts,
streams that stall or end without ``message_stop``, error events) and the proxy as a subprocess
with the shipped router.yaml, only pointed at the fake. Requests start at a steady ``--rate``
(at most ``--clients`` in flight), streamed and plain, a tenth of them with thinking in one of
50 conversations. Every 5 s the proxy process reports its RSS, open file descriptors, asyncio
tasks, upstream connections and the sizes of everything it keeps per key (conversations,
circuits, metric children, token cache, pending exact counts, the admission gate, the
conversation store's keys).

Reports, as a Markdown table (or JSON): requests served and how they ended (as the client saw
them), latency, the proxy's RSS and internals after warmup and at the end, upstream attempts and
the proxy's retry / fallback / breaker counters, and whether the tokens it accounted
(router_tokens_total) equal the usage the fake billed. A script, not a test: it informs, though
it exits 1 when the books do not balance, a request got a 500 or no answer, or RSS grew by more
than 5% after warmup.
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

from router.config_file import default_config_text
from router.fake import (
    Behaviour,
    Drop,
    Fail,
    FakeUpstream,
    Malformed,
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
CUT_STREAM = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_cut",'
              b'"type":"message","role":"assistant","content":[],"model":"claude-haiku-4-5",'
              b'"usage":{"input_tokens":7,"output_tokens":1}}}\n\n')
"""A stream that ends cleanly after its first event (a Malformed answer, which the fake does
not bill: the books add its usage, 7 input and 1 output token, to the fake's bill)."""
PROBE_EVERY = 5.0


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
    ("hung (never answers)", 0.003, lambda r: Stall(60)),
    ("stream stalls after 3 events", 0.003, lambda r: Reply(stall_after=3)),
    ("stream ends without message_stop", 0.005,
     lambda r: Malformed(CUT_STREAM, content_type="text/event-stream")),
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


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """Resident memory of a process from /proc, in MB (0 if unreadable)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(rf"{field_name}:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else 0.0


def probe(app: Any) -> dict[str, float]:
    """The proxy's memory and everything it keeps per key or per request, right now."""
    state = app.state.router
    in_use, idle = state.upstream.connections()
    return {
        "t": time.monotonic(),
        "rss_mb": rss_mb(os.getpid()),
        "open_fds": len(os.listdir("/proc/self/fd")),
        "asyncio_tasks": len(asyncio.all_tasks()),
        "upstream_connections_in_use": in_use,
        "upstream_connections_idle": idle,
        "requests_in_flight": state.gate.requests,
        "body_bytes_held": state.gate.bytes,
        "state_store_keys": store_keys(state.store),
        "circuits": len(state.breakers),
        "metric_children": len(state.metrics._children),
        "token_cache_entries": len(getattr(state.counter, "_cache", ())),
        "exact_counts_pending": len(state.background),
    }


def store_keys(store: Any) -> float:
    """Keys in the conversation store (SQLite rows, or a memory store's entries; -1 unknown)."""
    for candidate in (store, getattr(store, "_primary", None), getattr(store, "_local", None)):
        if hasattr(candidate, "count"):
            return float(candidate.count())
        if hasattr(candidate, "__len__"):
            return float(len(candidate))
    return -1.0


def serve_probed(config_path: str, port: int) -> None:
    """Child mode: serve the proxy as `router serve` does (one worker, uvloop), and print a
    :func:`probe` as a JSON line every PROBE_EVERY seconds."""
    import uvicorn

    from router.app import create_app
    from router.logs import configure_logging
    from router.routing.rules import load_policy

    configure_logging("warning")
    policy = load_policy(config_path)
    app = create_app(policy, config_path)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                            server_header=False, date_header=False,
                            timeout_graceful_shutdown=policy.config.server.grace_seconds)
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.ensure_future(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        while not serving.done():
            print(json.dumps(probe(app)), flush=True)
            await asyncio.wait([serving], timeout=PROBE_EVERY)

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())


@contextmanager
def proxy_process(upstream: str, workdir: Path, probes: list[dict[str, float]]
                  ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run the proxy (shipped router.yaml, pointed at ``upstream``) on a free loopback port in
    a child process; yield it and its URL while a thread collects its probes."""
    config = workdir / "router.yaml"
    config.write_text(default_config_text())
    port = free_port()
    log = (workdir / "router.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-probed", str(config), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=log,
        env={**os.environ, "ROUTER_UPSTREAM_URL": upstream, "ROUTER_STATE_DIR": str(workdir)},
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    def collect() -> None:
        for line in stdout:
            probes.append(json.loads(line))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                output = (workdir / "router.log").read_text()
                raise SystemExit(f"soak: the proxy exited:\n{output}")
            try:
                urllib.request.urlopen(url + "/readyz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("soak: the proxy did not become ready") from None
                time.sleep(0.1)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        log.close()


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
    not_started: int = 0
    """Requests due while ``--clients`` were already in flight (the load generator's limit)."""

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
    if r.random() < 0.1:
        # Thinking, in one of 50 conversations: the conversation memory fills, then holds.
        request["max_tokens"] = 2048
        request["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        request["metadata"] = {"user_id": f"soak-user-{r.randrange(50)}"}
    return json.dumps(request).encode()


def sse_outcome(data: bytes) -> str:
    """Classify a streamed answer by its last event."""
    events = [e for e in data.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    if not events:
        return "no answer: empty stream"
    last = events[-1]
    if last.startswith(b"event: message_stop"):
        return "ok"
    if last.startswith(b"event: error"):
        try:
            kind = json.loads(last.split(b"data: ", 1)[1])["error"]["type"]
        except (ValueError, KeyError, IndexError, TypeError):
            kind = "unreadable"
        return f"stream error event: {kind}"
    return "no answer: stream ended without message_stop or an error event"


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
        outcome = "no answer: connection broke mid-body"
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = f"no answer: {type(exc).__name__}"
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


async def load(url: str, rate: float, clients: int, seconds: float, seed: int,
               tally: Tally) -> None:
    """Start a request every 1/rate seconds (open loop), at most ``clients`` in flight."""
    r = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=clients)
    in_flight = asyncio.Semaphore(clients)
    running: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, request_rng: random.Random) -> None:
        try:
            await one_request(session, url, request_rng, tally)
        finally:
            in_flight.release()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while (due := start + n / rate) < start + seconds:
            n += 1
            await asyncio.sleep(max(0.0, due - loop.time()))
            if in_flight.locked():
                tally.not_started += 1
                continue
            await in_flight.acquire()
            task = asyncio.ensure_future(one(session, random.Random(r.getrandbits(64))))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)


# --------------------------------------------------------------------------- the run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def window(probes: list[dict[str, float]], start: float, end: float) -> dict[str, float]:
    """The mean of each probed quantity between two times (a steady rate fluctuates)."""
    inside = [p for p in probes if start <= p["t"] <= end] or probes[-1:]
    return {k: sum(p[k] for p in inside) / len(inside) for k in inside[0] if k != "t"}


def run(seconds: float, rate: float, clients: int, seed: int) -> dict[str, Any]:
    warmup = min(60.0, seconds * 0.1)
    probes: list[dict[str, float]] = []
    with (running_fake() as fake, tempfile.TemporaryDirectory(prefix="soak-") as tmp,
          proxy_process(fake.url, Path(tmp), probes) as (proxy, url),
          Scripter(fake, seed) as scripter):
        tally = Tally()
        started = time.monotonic()
        asyncio.run(load(url, rate, clients, seconds, seed, tally))
        elapsed = time.monotonic() - started
        time.sleep(PROBE_EVERY + 1)  # the account stage runs just after each answer went out
        peak = rss_mb(proxy.pid, "VmHWM")
        metrics = scrape(url)
        attempts = len(fake.received)
        billed = billed_tokens(fake.billed)
        mix = scripter.consumed_mix(attempts)
    # A cut stream (the fake's Malformed answer) is not in its bill; its first event's usage
    # would be, as the fake bills any stream cut after message_start.
    billed["input"] += 7 * mix["stream ends without message_stop"]
    billed["output"] += 1 * mix["stream ends without message_stop"]
    accounted_by_type = total(metrics, "router_tokens_total", by="type") or {}
    accounted = {t: int(accounted_by_type.get(t, 0)) for t in TOKEN_TYPES}
    first_t = probes[0]["t"] if probes else 0.0
    after_warmup = window(probes, first_t + warmup, first_t + warmup + 60)
    at_end = window(probes, first_t + seconds - 60, first_t + seconds)
    idle = probes[-1] if probes else {}
    rss_growth = (at_end["rss_mb"] / after_warmup["rss_mb"] - 1) if probes else 0.0
    return {
        "seconds": round(elapsed, 1),
        "rate": rate,
        "clients": clients,
        "served": tally.served,
        "not_started": tally.not_started,
        "streamed_answers": tally.streamed,
        "successes": tally.outcomes["ok"],
        "outcomes": dict(tally.outcomes.most_common()),
        "rps": tally.served / elapsed if elapsed else 0.0,
        "latency_p50_ms": percentile(tally.latencies, 0.5) * 1000,
        "latency_p99_ms": percentile(tally.latencies, 0.99) * 1000,
        "latency_max_ms": max(tally.latencies, default=0.0) * 1000,
        "after_warmup": after_warmup,
        "at_end": at_end,
        "idle_after": {k: v for k, v in idle.items() if k != "t"},
        "rss_peak_mb": peak,
        "rss_growth": rss_growth,
        "probes": len(probes),
        "upstream_attempts": attempts,
        "upstream_mix": dict(mix.most_common()),
        "proxy_requests": total(metrics, "router_requests_total"),
        "proxy_requests_by_status": total(metrics, "router_requests_total", by="status"),
        "proxy_retries": total(metrics, "router_retries_total"),
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
        f"Soak: {r['seconds']} s at {r['rate']:g} requests/s (at most {r['clients']} in "
        f"flight), {r['date']}, {r['machine']}, Python {r['python']}; shipped router.yaml; "
        "fake upstream (in the load generator's process), proxy and clients share the machine.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| requests served | {r['served']} ({r['rps']:.1f} req/s; "
        f"{r['not_started']} not started, the generator at its limit) |",
        f"| complete answers | {r['successes']} ({r['successes'] / max(1, r['served']):.2%}) |",
    ]
    lines += [f"| {name} | {count} |" for name, count in errors.items()]
    lines += [
        f"| latency p50 / p99 / max | {r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} / "
        f"{r['latency_max_ms']:.0f} ms |",
        f"| upstream attempts (fake) | {r['upstream_attempts']} |",
        f"| proxy requests counted (router_requests_total) | {counted(r['proxy_requests'])} |",
        f"| proxy retries (router_retries_total) | {counted(r['proxy_retries'])} |",
        f"| proxy fallbacks (router_fallbacks_total) | {counted(r['proxy_fallbacks'])} |",
        f"| circuits opened (router_circuit_opened_total) | "
        f"{counted(r['proxy_circuit_opened'])} |",
        "",
        "The proxy process, mean over the first minute after warmup, the last minute, and once "
        "idle after the run:",
        "",
        "| | after warmup | last minute | idle after |",
        "|---|---:|---:|---:|",
    ]
    for key, start in r["after_warmup"].items():
        lines.append(f"| {key} | {start:.1f} | {r['at_end'][key]:.1f} | "
                     f"{r['idle_after'].get(key, 0):.0f} |")
    lines += [
        f"\nRSS growth after warmup: **{r['rss_growth']:+.1%}** (peak {r['rss_peak_mb']:.1f} MB)",
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
    parser.add_argument("--seconds", type=float, default=600,
                        help=f"how long to run (at most {MAX_SECONDS})")
    parser.add_argument("--rate", type=float, default=40, help="requests started per second")
    parser.add_argument("--clients", type=int, default=64,
                        help=f"most requests in flight (at most {MAX_CLIENTS})")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault mix and requests")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--serve-probed", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_probed:
        serve_probed(args.serve_probed, args.port)
        return
    if not 1 <= args.seconds <= MAX_SECONDS or not 1 <= args.clients <= MAX_CLIENTS \
            or args.rate <= 0:
        parser.error(f"--seconds must be 1..{MAX_SECONDS}, --clients 1..{MAX_CLIENTS}, "
                     "--rate positive")
    results = run(args.seconds, args.rate, args.clients, args.seed)
    print(json.dumps(results, indent=2) if args.json else table(results))
    proxy_500 = any(k.startswith("500 ") for k in results["outcomes"])
    no_answer = any(k.startswith("no answer") for k in results["outcomes"])
    flat = results["rss_growth"] <= 0.05
    sys.exit(0 if results["tokens_match"] and not proxy_500 and not no_answer and flat else 1)


if __name__ == "__main__":
    main()
