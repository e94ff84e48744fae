"""The ledger's cost on the request path, its write throughput, and ``router simulate`` on a
million records.

    .venv/bin/python bench/bench_ledger.py hot [--n 20000]
    .venv/bin/python bench/bench_ledger.py write [--n 50000]
    .venv/bin/python bench/bench_ledger.py simulate [--rows 1000000] [--repeat 3] [--fresh]
    .venv/bin/python bench/bench_ledger.py week OUT.db [--rows 20000]   # a ledger for the docs

- ``hot``: the account stage per request with the ledger and without it (the ledger's share is
  one queue append; building and writing the record happens later, off the request path).
  Target: the ledger adds at most 20 µs at p99.
- ``write``: records built, fed to a shadow policy and written, per record (the background
  task's work), and the file's size per record.
- ``simulate``: a synthetic week of traffic (built by :func:`synthetic_week` from the routing
  development set's requests, decided by the real rules with conversations, priced by the real
  price table) is written once to a ledger file (kept in /tmp unless ``--fresh``), then replayed
  through the same config and through a candidate. Target: a million rows in under 30 s.

A script, not a test: the numbers inform, they do not fail a build. The machine is shared: run
``--repeat`` and read the medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import fit_scorer as fit  # noqa: E402
from router.accounting.account import Books, Record, account  # noqa: E402
from router.accounting.cost import PriceTable, Tokens  # noqa: E402
from router.accounting.entry import ConversationSeen, Entry, context_of, entry_of  # noqa: E402
from router.accounting.ledger import Ledger  # noqa: E402
from router.accounting.ledger_files import LedgerFiles, Reader  # noqa: E402
from router.accounting.metrics import Metrics  # noqa: E402
from router.accounting.replay import Replay  # noqa: E402
from router.accounting.simulate import render, simulate_ledger  # noqa: E402
from router.config import LedgerConfig  # noqa: E402
from router.config_file import default_config_text  # noqa: E402
from router.parse import parse_messages  # noqa: E402
from router.pipeline import route  # noqa: E402
from router.routing.conversations import (  # noqa: E402
    Conversation,
    ConversationState,
    History,
    state_after,
)
from router.routing.decide import decide  # noqa: E402
from router.routing.factor import FactorLearner  # noqa: E402
from router.routing.features import Features  # noqa: E402
from router.routing.rules import Policy, parse_policy  # noqa: E402
from router.routing.tokens import TokenCounter  # noqa: E402
from router.upstream.relay import Outcome  # noqa: E402
from router.wire import CacheCreation, Usage  # noqa: E402

CANDIDATE_EDIT = ("    when: {complexity: simple}\n    tier: haiku",
                  "    when: {complexity: [simple, moderate]}\n    tier: haiku")
"""The candidate: moderate work goes to Haiku too (the default policy sends it to Sonnet)."""
DEFAULT_DB = Path(tempfile.gettempdir()) / "router-bench-ledger-{rows}.db"


def live_policy() -> Policy:
    """The embedded default config."""
    return parse_policy(default_config_text(), "<embedded default>")


def candidate_policy() -> Policy:
    """The default config with :data:`CANDIDATE_EDIT` applied."""
    text = default_config_text()
    assert CANDIDATE_EDIT[0] in text, "the default config changed: update CANDIDATE_EDIT"
    return parse_policy(text.replace(*CANDIDATE_EDIT), "candidate (moderate to haiku)")


def request_pool() -> list[Features]:
    """The features of every request of the routing development set (real stages 1-2)."""
    counter = TokenCounter.load()
    learner = FactorLearner()
    policy = live_policy()
    pool = []
    for line in fit.default_set().read_text("utf-8").splitlines():
        if line.strip():
            parsed = parse_messages(json.dumps(json.loads(line)["request"]).encode(), {})
            pool.append(route(parsed, counter.estimate(parsed.request), policy, learner).features)
    return pool


def synthetic_week(rows: int, policy: Policy, seed: int = 7, days: float = 7.0,
                   end: float | None = None) -> Iterator[Entry]:
    """Ledger records of a synthetic week: conversations of 1-30 turns (about 8 at a time) over
    the development set's requests, each turn decided by ``policy`` (conversation state
    included, forgotten after ``memory_seconds``), its usage
    made up (input growing with the conversation, the cached prefix read while warm on the
    model and written when not, 50-2,000 output tokens) and priced by the config."""
    rng = random.Random(seed)
    pool = request_pool()
    prices = PriceTable(policy.config.pricing)
    end = time.time() if end is None else end
    start = end - days * 86400
    active: list[tuple[str, Features, int, ConversationState | None]] = []
    factors = {t.model: 1.0 + 0.1 * i for i, t in enumerate(policy.config.tiers.values())}
    memory = policy.config.conversations.memory_seconds
    for n in range(rows):
        ts = start + (end - start) * n / rows
        if not active or rng.random() < 0.1:
            cid = f"c{n:09d}"
            active.append((cid, rng.choice(pool), 0, None))
            if len(active) > 8:
                active.pop(0)
        slot = rng.randrange(len(active))
        cid, base, turn, state = active[slot]
        if state is not None and ts - state.updated_at > memory:
            state = None  # the store forgot it, as the proxy's would
        turn += 1
        grown = base.input_tokens + turn * rng.randint(200, 3000)
        features = msgspec.structs.replace(base, input_tokens=grown, user_turns=turn,
                                       messages=2 * turn - 1)
        seen = ConversationSeen(id=cid, state=state, caching=True, now=ts,
                                tool_loop=base.tool_loop_depth > 0)
        conversation = Conversation(cid, "caller", History(seen.tool_loop, (), ()), state, {},
                                    ts, True)
        decision = decide(features, policy, conversation=conversation)
        model = decision.model
        cache = state.caches.get(model) if state else None
        held = min(cache.tokens, grown) if cache and cache.expires_at > ts else 0
        uncached = rng.randint(20, 400)
        written = max(0, grown - held - uncached)
        output = rng.randint(50, 2000)
        tokens = Tokens(uncached, output, held, written, 0)
        cost = prices.cost_of(model, tokens)
        usage = tokens
        after = state_after(state, model, now=ts + 2.0, cache_read=held, cache_written=written,
                            written_1h=False, output_tokens=output, estimate=grown,
                            uncached=uncached)
        active[slot] = (cid, base, turn, after)
        if turn >= rng.randint(1, 30):
            active.pop(slot)
        yield Entry(ts=ts, request_id=f"req_{n:012d}", path="/v1/messages", status=200,
                    caller="c0ffee", requested_model=features.requested_model,
                    rule=decision.rule, tier=decision.tier, model=model,
                    action=decision.action, reason=decision.reason,
                    planned_fallbacks=decision.fallbacks, features=features,
                    thresholds=context_of(policy).thresholds, conversation=seen,
                    estimated_tokens=grown, factors=factors, answered_by=model, attempts=1,
                    usage=usage, cost_usd=str(cost) if cost is not None else None,
                    latency_ms=1500.0)


def write_ledger(path: Path, entries: Iterator[Entry], batch: int = 5000) -> tuple[int, float]:
    """Write records to a fresh ledger file; return (count, seconds)."""
    path.unlink(missing_ok=True)
    files = LedgerFiles(path, LedgerConfig(max_mb=1e9, max_age_days=3650))
    count, t0, chunk = 0, time.perf_counter(), []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == batch:
            files.write(chunk)
            count += len(chunk)
            chunk = []
    if chunk:
        files.write(chunk)
        count += len(chunk)
    files.close()
    return count, time.perf_counter() - t0


# --------------------------------------------------------------------------- hot


def bench_hot(n: int) -> None:
    """account() per request with and without the ledger."""
    policy = live_policy()
    usage = Usage(input_tokens=1200, output_tokens=300, cache_read_input_tokens=5000,
                  cache_creation_input_tokens=800, cache_creation=CacheCreation(800, 0))
    counter = TokenCounter.load()
    parsed = parse_messages(json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                                        "messages": [{"role": "user", "content": "hi"}]}
                                       ).encode(), {})
    routed = route(parsed, counter.estimate(parsed.request), policy, FactorLearner())
    outcome = Outcome(status=200, model="claude-sonnet-4-6", usage=usage, attempts=1,
                      first_sent_at=1.0, sent_at=1.0, upstream_seconds=0.5,
                      first_byte_seconds=0.1, first_token_seconds=0.2)
    record = Record("req_x", "POST", "/v1/messages", 200, routed.decision, "claude-opus-4-7",
                    outcome, 0.6, 0.999, None, 6000, routed=routed, caller="c0ffee")
    results: dict[str, list[float]] = {"without the ledger": [], "with the ledger": []}
    with tempfile.TemporaryDirectory() as tmp:
        books = {}
        for label in results:
            metrics, learner = Metrics(), FactorLearner()
            ledger = None
            if label == "with the ledger":
                ledger = Ledger(metrics, learner, max_pending=10 ** 9,
                                files=LedgerFiles(Path(tmp) / "ledger.db", LedgerConfig()))
            books[label] = Books(metrics, learner, ledger=ledger)
            books[label].configure(policy)
            books[label].logger.setLevel(logging.WARNING)  # measure accounting, not log I/O
            for _ in range(2000):
                account(record, books[label])
        # Alternating rounds of 1,000 (a second's traffic, then the flush empties the queue),
        # so that both sides see the same machine.
        for _ in range(n // 1000):
            for label, samples in results.items():
                for _ in range(1000):
                    t = time.perf_counter_ns()
                    account(record, books[label])
                    samples.append((time.perf_counter_ns() - t) / 1000)
                ledger = books[label].ledger
                if ledger is not None:
                    ledger._pending.clear()
        ledger = books["with the ledger"].ledger
        assert ledger is not None
        appends = results["Ledger.append alone"] = []
        for _ in range(n // 1000):
            for _ in range(1000):
                t = time.perf_counter_ns()
                ledger.append(record, None, None)
                appends.append((time.perf_counter_ns() - t) / 1000)
            ledger._pending.clear()
    for samples in results.values():
        samples.sort()
    print("| account stage per request | p50 | p99 | mean |")
    print("|---|---:|---:|---:|")
    for label, samples in results.items():
        print(f"| {label} ({n} requests) | {samples[len(samples) // 2]:.2f} µs | "
              f"{samples[int(len(samples) * 0.99)]:.2f} µs | {statistics.mean(samples):.2f} µs |")
    off, on = results["without the ledger"], results["with the ledger"]
    print(f"\nthe ledger adds {on[len(on) // 2] - off[len(off) // 2]:.2f} µs at p50, "
          f"{on[int(len(on) * .99)] - off[int(len(off) * .99)]:.2f} µs at p99 (target ≤ 20 µs)")


# --------------------------------------------------------------------------- write


def bench_write(n: int) -> None:
    """Building, shadowing and writing records, per record."""
    policy = live_policy()
    entries = list(synthetic_week(n, policy))
    counter = TokenCounter.load()
    parsed = parse_messages(json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                                        "messages": [{"role": "user", "content": "hi"}]}
                                       ).encode(), {})
    routed = route(parsed, counter.estimate(parsed.request), policy, FactorLearner())
    outcome = Outcome(status=200, model="claude-sonnet-4-6", usage=Usage(input_tokens=100),
                      attempts=1)
    record = Record("req_x", "POST", "/v1/messages", 200, routed.decision, "claude-opus-4-7",
                    outcome, 0.6, 0.999, routed=routed)
    learner, context = FactorLearner(), context_of(policy)
    t0 = time.perf_counter()
    for _ in range(n):
        entry_of(record, Decimal("0.001"), Decimal("0.002"), time.time(), learner, context)
    build = (time.perf_counter() - t0) / n * 1e6
    replay = Replay(candidate_policy())
    t0 = time.perf_counter()
    for entry in entries:
        replay.step(entry)
    shadow = (time.perf_counter() - t0) / n * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        count, seconds = write_ledger(path, iter(entries), batch=500)
        size = path.stat().st_size
    print("| background work per record | µs |")
    print("|---|---:|")
    print(f"| build the record (entry_of) | {build:.1f} |")
    print(f"| shadow policy (decide + reprice) | {shadow:.1f} |")
    print(f"| encode and write (batches of 500) | {seconds / count * 1e6:.1f} |")
    print(f"\nledger.db: {size / count:.0f} bytes per record")


# --------------------------------------------------------------------------- simulate


def bench_simulate(rows: int, repeat: int, fresh: bool, single: bool) -> None:
    """Write (once) and replay a synthetic week of ``rows`` records, as ``router simulate``
    does (split by conversation across the cores), and with ``single`` in one process too."""
    path = Path(str(DEFAULT_DB).format(rows=rows))
    live = live_policy()
    if fresh or not path.exists():
        t0 = time.perf_counter()
        count, seconds = write_ledger(path, synthetic_week(rows, live))
        print(f"wrote {count:,} records in {time.perf_counter() - t0:.1f} s "
              f"({seconds:.1f} s generating and writing), {path.stat().st_size / 1e6:.0f} MB")
    candidate = candidate_policy()
    t0 = time.perf_counter()
    count = sum(1 for _ in Reader(path).rows())
    read = time.perf_counter() - t0
    timings: dict[str, list[float]] = {}
    runs = [("same config", live, None), ("candidate", candidate, None)]
    if single:
        runs.append(("candidate, one process", candidate, 1))
    cpu: dict[str, list[float]] = {}
    for _ in range(repeat):
        for label, policy, workers in runs:
            t0, c0 = time.perf_counter(), _cpu_seconds()
            report = simulate_ledger(path, policy, workers=workers)
            timings.setdefault(label, []).append(time.perf_counter() - t0)
            cpu.setdefault(label, []).append(_cpu_seconds() - c0)
            if label == "same config":
                assert report.total.before == report.total.after, "replay is not exact"
    print(f"\n| simulate, {count:,} records | wall, runs (s) | wall, median (s) | "
          "CPU, median (s, all processes) | CPU per record |")
    print("|---|---|---:|---:|---:|")
    print(f"| read and decode only, one process | {read:.1f} | {read:.1f} | | |")
    for label, times in timings.items():
        used = statistics.median(cpu[label])
        print(f"| {label} | {', '.join(f'{t:.1f}' for t in times)} | "
              f"{statistics.median(times):.1f} | {used:.1f} | {used / count * 1e6:.1f} µs |")
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores)")
    print()
    print(render(report, str(path)))


def _cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    hot = sub.add_parser("hot")
    hot.add_argument("--n", type=int, default=20_000)
    write = sub.add_parser("write")
    write.add_argument("--n", type=int, default=50_000)
    sim = sub.add_parser("simulate")
    sim.add_argument("--rows", type=int, default=1_000_000)
    sim.add_argument("--repeat", type=int, default=3)
    sim.add_argument("--fresh", action="store_true")
    sim.add_argument("--single", action="store_true", help="also time one process alone")
    week = sub.add_parser("week")
    week.add_argument("out", type=Path)
    week.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    if args.what == "hot":
        bench_hot(args.n)
    elif args.what == "write":
        bench_write(args.n)
    elif args.what == "simulate":
        bench_simulate(args.rows, args.repeat, args.fresh, args.single)
    else:
        count, _ = write_ledger(args.out, synthetic_week(args.rows, live_policy()))
        print(f"wrote {count:,} records to {args.out}")


if __name__ == "__main__":
    main()
