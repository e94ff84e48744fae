"""Budgets and rate limits shared by processes: real `router serve` processes on the shipped
router.yaml (plus the keys, teams and state sections a test needs), one fake upstream.

Four replicas on a real Redis under 64 concurrent clients overspend one budget by at most one
request; restarted, they still know what was spent; with Redis killed mid-run they let requests
through (``on_redis_error: open``) or refuse them with a retryable 529 (``closed``), never a 500.
Two workers of one host on the default SQLite store share a budget and a rate limit exactly.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path

from router.budgets import key_hash
from router.budgets.admission import micros_of
from router.fake import FakeUpstream
from tests import procs
from tests.conftest import post
from tests.redis_server import running_redis
from tests.test_budgets import ADMIN, admin_report, budget_config, issued, section, spent

RACE = "sk-ant-team-race"
STEADY = "sk-ant-team-steady"
LIMITED = "sk-ant-rate-limited"
CLIENTS = 64
REQUEST = json.dumps({
    "model": "claude-opus-4-7", "max_tokens": 400,
    "messages": [{"role": "user", "content": "write a little [[reply:words=150]]"}]}).encode()


def shared_config(upstream: str, state: str, race_usd: float) -> str:
    """Teams `race` (a small daily budget) and `steady` (a large one, and a key limited to 30
    requests a minute); ``state`` replaces the state section when given."""
    text = budget_config(upstream, budgets="budgets:\n  downgrade_at: null\n", keys=f"""keys:
  admin: ["{key_hash(ADMIN)}"]
  issued:
{issued(("race", "race", RACE), ("steady", "steady", STEADY),
        ("limited", "steady", LIMITED, ", limits: {requests_per_minute: 30}"))}""",
                         teams=f"""teams:
  race: {{limits: {{usd_per_day: {race_usd}}}}}
  steady: {{limits: {{usd_per_day: 1000}}}}
""")
    return section(text, "state", state) if state else text


@contextmanager
def servers(configs: list[Path], env: dict[str, str], workers: int = 1) -> Iterator[list[str]]:
    """Run one `router serve` per config; yield their URLs."""
    with ExitStack() as stack:
        running = [stack.enter_context(procs.router(
            "serve", "--config", str(config), "--workers", str(workers), "--log-level", "error",
            env=env, timeout=60)) for config in configs]
        yield [server.url for server in running]


def race(urls: list[str], key: str, clients: int) -> tuple[list[int], list[int]]:
    """``clients`` threads, each sending requests (round robin over ``urls``) until refused,
    then one more until refused; return every status and the micro-dollar cost of every
    answer."""
    statuses: list[int] = []
    costs: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(1000):
            status, headers, _ = post(urls[(n + i) % len(urls)], REQUEST, {"x-api-key": key})
            with lock:
                statuses.append(status)
                if status == 200:
                    costs.append(micros_of(Decimal(headers["x-router-cost-usd"])))
            if status != 200:
                return

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    # A request refused while others were in flight saw their reservations, which settle at
    # less: once all have settled, one client alone spends what is left.
    client(0)
    return statuses, costs


def test_four_replicas_on_redis_share_a_budget_survive_restarts_and_a_redis_outage(
        fake: FakeUpstream, tmp_path: Path) -> None:
    limit = 0.5
    with running_redis() as redis:
        state = f"""state:
  backend: redis
  url: {redis.url}
  redis_timeout: 0.5
  redis_retry_seconds: 0.5
  on_redis_error: {{mode}}
"""
        configs = []
        for mode in ("open", "open", "closed", "closed"):
            path = tmp_path / f"router-{len(configs)}.yaml"
            path.write_text(shared_config(fake.url, state.replace("{mode}", mode), limit))
            configs.append(path)
        env = {"ROUTER_STATE_DIR": str(tmp_path / "state")}

        with servers(configs, env) as urls:
            statuses, costs = race(urls, RACE, CLIENTS)
            assert set(statuses) == {200, 429}, set(statuses)
            recorded = spent(urls[0], "team", "race")
        # Everything settled: the budget holds exactly what the answers cost.
        assert recorded == sum(costs)
        over = recorded - int(limit * 1e6)
        assert 0 <= over <= max(costs), (over, max(costs))
        assert len(costs) > 50

        # Restarted (one replica of each kind is enough from here on).
        with servers([configs[0], configs[2]], env) as urls:
            assert [spent(u, "team", "race") for u in urls] == [recorded] * 2
            assert post(urls[1], REQUEST, {"x-api-key": RACE})[0] == 429

            # Redis dies mid-run: the `open` replicas go on, the `closed` ones refuse with a
            # 529 the SDKs retry; nothing answers 500.
            # What each client thread got, in its own order: a thread has one request in
            # flight at a time, so its first answer after the kill may still be Redis's.
            lanes = [(u, lane) for u in urls for lane in "ab"]
            outcome: dict[tuple[str, str], list[int]] = {k: [] for k in lanes}
            stop = threading.Event()

            def traffic(key: tuple[str, str]) -> None:
                while not stop.is_set():
                    outcome[key].append(post(key[0], REQUEST, {"x-api-key": STEADY})[0])

            threads = [threading.Thread(target=traffic, args=(k,)) for k in lanes]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            redis.kill()
            killed = {k: len(s) for k, s in outcome.items()}
            time.sleep(2.0)
            stop.set()
            for thread in threads:
                thread.join()
            for url, mode in zip(urls, ("open", "closed"), strict=True):
                seen = [s for k in lanes if k[0] == url for s in outcome[k]]
                after = [s for k in lanes if k[0] == url for s in outcome[k][killed[k] + 1:]]
                assert after, f"{url} served nothing after the kill"
                assert set(seen) <= {200, 529}, seen
                assert set(after) == ({200} if mode == "open" else {529}), (mode, set(after))
            report = admin_report(urls[0])
            assert report["store_unreachable"] is True


def test_two_workers_share_a_budget_and_a_rate_limit_exactly_and_keep_spend_on_restart(
        fake: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    limit = 0.25
    config.write_text(shared_config(fake.url, "", limit))
    env = {"ROUTER_STATE_DIR": str(tmp_path / "state")}
    with servers([config], env, workers=2) as (url,):
        statuses, costs = race([url], RACE, 16)
        assert set(statuses) == {200, 429}
        recorded = spent(url, "team", "race")
        assert recorded == sum(costs)
        assert 0 <= recorded - int(limit * 1e6) <= max(costs)

        # 30 requests a minute for this key: each on its own connection, over both workers.
        started = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: post(url, REQUEST, {"x-api-key": LIMITED})[0],
                                    range(60)))
        refilled = int((time.monotonic() - started) * 30 / 60) + 1
        assert set(results) == {200, 429}
        assert 30 <= results.count(200) <= 30 + refilled, results.count(200)
    with servers([config], env, workers=2) as (url,):
        assert spent(url, "team", "race") == recorded
        assert post(url, REQUEST, {"x-api-key": RACE})[0] == 429
