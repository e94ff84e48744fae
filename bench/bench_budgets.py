"""What keys and budgets add per request: managed-key lookup, reserve and settle, p50/p99.

    .venv/bin/python bench/bench_budgets.py [--n 20000] [--redis-url redis://...]

A script, not a test. In-process calls, as the pipeline makes them, on the shipped router.yaml
in managed mode with one key whose team has day, week and month budgets and three per-minute
rates, and whose key has a daily budget of its own: a reservation charges 4 budget windows and
3 token buckets in one atomic call, a settlement 4 windows and 2 buckets. A second profile has
only the team's daily budget. Backends: memory; SQLite in a temporary directory, alone and with
a second worker process charging the same file; Redis on loopback (Debian's redis-server, as the
tests start it, unless --redis-url is given), where the commands Redis ran per request are
counted from INFO commandstats. Target (issue 12): ≤ 50 µs p99 with the embedded store, one
round trip to Redis per call.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from decimal import Decimal

import redis
from bench_state import header, other_worker, redis_url, row, timed  # run as bench/bench_budgets.py

from router.accounting.cost import PriceTable
from router.budgets import Budgets, key_hash
from router.config import StateConfig
from router.config_file import default_config_text, parse_config
from router.state import open_store
from router.wire import Usage

KEY = "sk-router-bench-key"
BIG = 10**9
FULL = f"""keys:
  mode: managed
  issued:
    - {{name: bench, team: platform, sha256: "{key_hash(KEY)}", limits: {{usd_per_day: {BIG}}}}}
teams:
  platform: {{limits: {{usd_per_day: {BIG}, usd_per_week: {BIG}, usd_per_month: {BIG},
              requests_per_minute: {BIG}, input_tokens_per_minute: {BIG},
              output_tokens_per_minute: {BIG}}}}}
"""
DAY_ONLY = f"""keys:
  mode: managed
  issued:
    - {{name: bench, team: platform, sha256: "{key_hash(KEY)}"}}
teams:
  platform: {{limits: {{usd_per_day: {BIG}}}}}
"""
BODY = b'{"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": []}'
USAGE = Usage(input_tokens=1800, output_tokens=420, cache_read_input_tokens=12_000)

CHARGER = """
import asyncio, sys, time
from router.config import StateConfig
from router.state import open_store
from router.state.store import Charge

async def main(directory, rate):
    store = await open_store(StateConfig(backend="sqlite", dir=directory))
    pause = 1.0 / rate
    while True:
        await store.charge([Charge("budget:team:other:day:x", 5, 3600, limit=10**12)],
                           int(time.time() * 1e6))
        time.sleep(pause)

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""

def config_with(sections: str) -> str:
    text = default_config_text()
    for name in ("keys", "teams"):
        start = text.index(f"\n{name}:")
        end = text.index("\n\n", start + 1)
        text = text[:start] + text[end:]
    return text + "\n" + sections


async def measure(label: str, state: StateConfig, sections: str, n: int) -> list[str]:
    loaded = parse_config(config_with(sections))
    config = loaded.config
    store = await open_store(state)
    budgets = Budgets(store, config, {"ANTHROPIC_API_KEY": "sk-ant-upstream"})
    price = PriceTable(config.pricing).cost
    headers = {"x-api-key": KEY}
    ids = iter(range(10**9))

    async def identify() -> None:
        budgets.identify(headers)

    async def request() -> None:
        identity = budgets.identify(headers)
        ticket = await budgets.reserve(identity, ["claude-sonnet-4-6"], 2000, 1024, BODY, price,
                                       f"req-{next(ids)}")
        assert ticket is not None
        await budgets.settle(ticket, Decimal("0.0123"), USAGE)

    rows = [row(f"{label}: key lookup + reserve + settle", await timed(request, n))]
    if label == "memory":
        rows.insert(0, row("managed-key lookup alone", await timed(identify, n)))
    if label.endswith("1 budget") and state.backend != "memory":
        # The yardstick of this machine at this moment: one plain call to the same backend.
        rows.append(row(f"({state.backend} add, for scale)",
                        await timed(lambda: store.add("bench:n", 1, 3600), n)))
    await store.close()
    return rows


def commands_per_request(url: str, sections: str, n: int = 200) -> str:
    """Count the commands Redis runs for ``n`` requests (INFO commandstats)."""
    client = redis.Redis.from_url(url)

    def calls() -> int:
        # Commands clients sent (a script's own redis.call()s are counted apart, not here).
        stats = client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items()
                   if k in ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_mget"))

    async def run() -> None:
        config = parse_config(config_with(sections)).config
        store = await open_store(StateConfig(backend="redis", url=url))
        budgets = Budgets(store, config, {"ANTHROPIC_API_KEY": "sk-ant-upstream"})
        price = PriceTable(config.pricing).cost
        for i in range(n):
            identity = budgets.identify({"x-api-key": KEY})
            ticket = await budgets.reserve(identity, ["claude-sonnet-4-6"], 2000, 1024, BODY,
                                           price, f"count-{i}")
            assert ticket is not None
            await budgets.settle(ticket, Decimal("0.0123"), USAGE)
        await store.close()

    before = calls()
    asyncio.run(run())
    per_request = (calls() - before - 1) / n  # the store's start-up check is one GET
    client.close()
    return (f"Redis ran {per_request:g} commands per request (reserve and settle, each one "
            "EVAL: one round trip each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="requests measured per row")
    parser.add_argument("--redis-url", help="an existing Redis (default: start one on loopback)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="charges per second of the second SQLite worker")
    args = parser.parse_args()
    print(header("per request", args.n))
    rows: list[str] = []
    profiles = [("7 limits", FULL), ("1 budget", DAY_ONLY)]
    for name, sections in profiles:
        rows += asyncio.run(measure("memory" if name == "7 limits" else f"memory, {name}",
                                    StateConfig(backend="memory"), sections, args.n))
    with tempfile.TemporaryDirectory(prefix="bench-budgets-") as tmp:
        state = StateConfig(backend="sqlite", dir=tmp)
        for name, sections in profiles:
            rows += asyncio.run(measure(f"sqlite, {name}", state, sections, args.n))
        with other_worker(tmp, args.rate, CHARGER):
            rows += asyncio.run(measure(f"sqlite, 7 limits, 2nd worker charging "
                                        f"{args.rate:g}/s", state, FULL, args.n))
    with redis_url(args.redis_url) as url:
        for name, sections in profiles:
            rows += asyncio.run(measure(f"redis, {name}", StateConfig(backend="redis", url=url),
                                        sections, args.n))
        count = commands_per_request(url, FULL)
    print("\n".join(rows))
    print(f"\n{count}")


if __name__ == "__main__":
    main()
