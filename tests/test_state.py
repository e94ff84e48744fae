"""The state store: one behavioural suite run on every backend, then what is particular to each
(SQLite shared by processes and across restarts; Redis pipelined, down and back)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from click.testing import CliRunner

from router.cli import cli
from router.config import StateConfig
from router.config_file import ConfigError, default_config_text, parse_config
from router.settings import Settings
from router.state import StateError, Store, StoreUnavailable, open_store, opened_store
from router.state.memory import MemoryStore
from router.state.sqlite import FILE_NAME, open_sqlite, state_dir
from router.state.store import Charge
from tests.procs import free_port
from tests.redis_server import RedisServer, running_redis

T = TypeVar("T")
BACKENDS = ("memory", "sqlite", "redis")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def state_config(request: pytest.FixtureRequest, tmp_path: Path) -> StateConfig:
    """A fresh, empty store's config, for each backend."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        with server.client() as client:
            client.flushall()
        # A loaded CI machine can lag; these tests are about results, not speed.
        return StateConfig(backend="redis", url=server.url, redis_timeout=5.0)
    if request.param == "sqlite":
        return StateConfig(backend="sqlite", dir=str(tmp_path))
    return StateConfig(backend="memory")


class Fallbacks(list[tuple[str, BaseException]]):
    """An ``on_fallback`` callback that remembers what it was told."""

    def __call__(self, backend: str, error: BaseException) -> None:
        self.append((backend, error))


# ---- the same behaviour on every backend


def test_values_read_back_as_written(state_config: StateConfig) -> None:
    async def main() -> None:
        async with opened_store(state_config) as store:
            assert store.name == state_config.backend
            binary = bytes(range(256))
            await store.set_many({"a": b"one", "b": binary, "c": b""}, 60)
            assert await store.get_many(["a", "missing", "b", "c", "a"]) == [
                b"one", None, binary, b"", b"one"]
            await store.set_many({"a": b"two"}, 60)
            assert await store.get_many(["a"]) == [b"two"]
            assert await store.get_many([]) == []
            await store.set_many({}, 60)

    run(main())


def test_expired_keys_read_as_none(state_config: StateConfig) -> None:
    async def main() -> None:
        async with opened_store(state_config) as store:
            await store.set_many({"short": b"s", "long": b"l"}, 0.3)
            await store.set_many({"long": b"l"}, 60)  # a write renews the time-to-live
            await store.set_many({"gone": b"g"}, 0)
            assert await store.get_many(["short", "long"]) == [b"s", b"l"]
            await asyncio.sleep(0.5)
            assert await store.get_many(["short", "long", "gone"]) == [None, b"l", None]

    run(main())


def test_add_counts_from_zero_and_reads_back_as_digits(state_config: StateConfig) -> None:
    async def main() -> None:
        async with opened_store(state_config) as store:
            assert await store.add("n", 5, 60) == 5
            assert await store.add("n", -7, 60) == -2
            assert await store.add("n", 0, 60) == -2
            assert await store.get_many(["n"]) == [b"-2"]
            await store.set_many({"m": b"40"}, 60)
            assert await store.add("m", 2, 60) == 42
            await store.set_many({"text": b"hello", "padded": b"007"}, 60)
            for key in ("text", "padded"):
                with pytest.raises(ValueError, match="not an integer"):
                    await store.add(key, 1, 60)
            assert await store.get_many(["text"]) == [b"hello"]

    run(main())


def test_add_keeps_the_expiry_it_created_the_key_with(state_config: StateConfig) -> None:
    """A counter is a fixed window: later adds do not push its end back."""

    async def main() -> None:
        async with opened_store(state_config) as store:
            assert await store.add("window", 1, 0.4) == 1
            await asyncio.sleep(0.2)
            assert await store.add("window", 1, 60) == 2
            await asyncio.sleep(0.35)
            assert await store.get_many(["window"]) == [None]
            assert await store.add("window", 1, 60) == 1  # a new window

    run(main())


def test_concurrent_adds_each_see_a_distinct_total(state_config: StateConfig) -> None:
    async def main() -> None:
        async with opened_store(state_config) as store:
            results = await asyncio.gather(*(store.add("hits", 1, 60) for _ in range(300)))
            assert sorted(results) == list(range(1, 301))
            assert await store.get_many(["hits"]) == [b"300"]

    run(main())


def test_concurrent_readers_and_writers_see_whole_writes(state_config: StateConfig) -> None:
    """Many tasks of one worker writing and reading the same keys: every read sees one
    writer's complete set of values, never a mix."""

    async def writer(store: Store, n: int) -> None:
        value = str(n).encode()
        await store.set_many({"x": value, "y": value, "z": value}, 60)

    async def reader(store: Store) -> list[bytes | None]:
        return await store.get_many(["x", "y", "z"])

    async def main() -> None:
        async with opened_store(state_config) as store:
            await writer(store, 0)
            jobs = [writer(store, n) if n % 2 else reader(store) for n in range(200)]
            reads = [r for r in await asyncio.gather(*jobs) if r is not None]
            assert reads and all(len(set(r)) == 1 for r in reads)

    run(main())


def test_charge_applies_every_charge_or_none(state_config: StateConfig) -> None:
    """Budgets' reserve: counters refuse once at their limit, buckets once empty; one refusal
    and nothing changes; charges without a limit (settling) always apply."""
    now = 1_800_000_000_000_000

    async def main() -> None:
        async with opened_store(state_config) as store:
            spend = Charge("spend", 30, 60, limit=50)
            bucket = Charge("bucket", 20_000_000, 60, limit=60_000_000, bucket=True)
            assert await store.charge([spend, bucket], now) == (True, [30, now + 20_000_000])
            assert await store.charge([spend, bucket], now) == (True, [60, now + 40_000_000])
            # The spend is past its limit: neither key changes.
            assert await store.charge([spend, bucket], now) == (False, [60, now + 40_000_000])
            assert await store.get_many(["spend", "bucket"]) == [b"60",
                                                                 str(now + 40_000_000).encode()]
            # Settling gives back, without a limit; a bucket never goes below full.
            assert await store.charge([Charge("spend", -25, 60)], now) == (True, [35])
            assert await store.charge([Charge("bucket", -90_000_000, 60, bucket=True)], now) \
                == (True, [now])
            # A full bucket admits one charge bigger than itself, then waits for the refill.
            big = Charge("bucket", 70_000_000, 60, limit=60_000_000, bucket=True)
            assert await store.charge([big], now) == (True, [now + 70_000_000])
            small = Charge("bucket", 1, 60, limit=60_000_000, bucket=True)
            assert (await store.charge([small], now))[0] is False
            assert (await store.charge([small], now + 20_000_000))[0] is True
            assert await store.charge([], now) == (True, [])

    run(main())


def test_a_charge_keeps_its_counters_window_and_renews_its_buckets(
        state_config: StateConfig) -> None:
    now = 1_800_000_000_000_000

    async def main() -> None:
        async with opened_store(state_config) as store:
            await store.charge([Charge("window", 1, 0.4), Charge("b", 1, 0.4, bucket=True)], now)
            await asyncio.sleep(0.2)
            await store.charge([Charge("window", 1, 60), Charge("b", 1, 60, bucket=True)], now)
            await asyncio.sleep(0.35)
            assert await store.get_many(["window", "b"]) == [None, str(now + 2).encode()]

    run(main())


def test_concurrent_charges_overshoot_a_limit_by_at_most_one(state_config: StateConfig) -> None:
    async def main() -> None:
        async with opened_store(state_config) as store:
            results = await asyncio.gather(*(
                store.charge([Charge("spend", 7, 60, limit=100),
                              Charge("rate", 1, 60, limit=1000, bucket=True)], 5000)
                for _ in range(60)))
            applied = [values for ok, values in results if ok]
            # 15 charges of 7 reach 105: the 15th saw 98, below the limit; the 16th saw 105.
            assert len(applied) == 15
            assert sorted(v[0] for v in applied) == list(range(7, 106, 7))
            assert await store.get_many(["spend", "rate"]) == [b"105", b"5015"]

    run(main())


def test_memory_store_forgets_the_least_recently_used_past_its_bound() -> None:
    async def main() -> None:
        async with opened_store(StateConfig(backend="memory", memory_max_keys=3)) as store:
            await store.set_many({"a": b"1", "b": b"2", "c": b"3"}, 60)
            await store.get_many(["a"])  # now b is the least recently used
            await store.set_many({"d": b"4"}, 60)
            assert await store.get_many(["a", "b", "c", "d"]) == [b"1", None, b"3", b"4"]

    run(main())


# ---- configuration


def test_the_default_config_uses_sqlite_and_router_check_validates_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = parse_config(default_config_text()).config.state
    assert default.backend == "sqlite" and default.on_redis_error == "open"

    def problems(state_yaml: str) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            parse_config(default_config_text() + state_yaml)
        return caught.value.problems

    assert problems("state: {backend: redis}\n") == [
        "state.url: required with state.backend: redis (or set ROUTER_STATE_URL)"]
    assert problems("state: {backend: redis, url: 'http://cache:6379'}\n") == [
        "state.url: must start with redis://, rediss://, unix://"]
    assert problems("state: {lock_timeout: 0, on_redis_error: open}\n") == [
        "state.lock_timeout: must be positive"]
    [unknown] = problems("state: {bakend: redis}\n")
    assert unknown.startswith("state.bakend (line ") and "unknown field" in unknown
    [bad] = problems("state: {on_redis_error: maybe}\n")
    assert bad.startswith("state.on_redis_error (line ")

    # The password can live in the environment, and `router check --json` never shows it.
    path = tmp_path / "router.yaml"
    path.write_text(default_config_text() + "state: {backend: redis}\n")
    monkeypatch.setenv("ROUTER_STATE_URL", "redis://proxy:hunter2@cache.internal:6379/3")
    result = CliRunner().invoke(cli, ["check", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    state = json.loads(result.output)["state"]
    assert state["url"] == "redis://proxy:***@cache.internal:6379/3"
    assert "hunter2" not in result.output


# ---- SQLite


def test_sqlite_state_survives_a_restart(tmp_path: Path) -> None:
    config = StateConfig(backend="sqlite", dir=str(tmp_path / "nested" / "state"))

    async def write() -> None:
        async with opened_store(config) as store:
            await store.set_many({"conversation": b"claude-opus-4-7"}, 3600)
            await store.add("spend", 1234, 3600)

    async def read() -> list[bytes | None]:
        async with opened_store(config) as store:
            return await store.get_many(["conversation", "spend"])

    run(write())
    assert (tmp_path / "nested" / "state" / FILE_NAME).is_file()
    assert run(read()) == [b"claude-opus-4-7", b"1234"]


def test_sqlite_state_dir_comes_from_config_then_env_then_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = parse_config(default_config_text()).config
    assert base.state.dir is None

    def chosen(environ: dict[str, str], configured: str | None = None) -> Path:
        config = msgspec.structs.replace(
            base, state=msgspec.structs.replace(base.state, dir=configured))
        overrides = Settings.from_env(environ).overrides
        return state_dir(overrides.applied_to_state(config).state.dir)

    env = {"ROUTER_STATE_DIR": str(tmp_path / "env"), "XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert chosen(env, str(tmp_path / "conf")) == tmp_path / "conf"
    assert chosen(env) == tmp_path / "env"
    assert chosen({"XDG_STATE_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "claude-router"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert chosen({}) == tmp_path / "home" / ".local" / "state" / "claude-router"


def test_sqlite_unusable_state_dir_is_a_clear_error_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError) as caught:
        run(open_store(StateConfig(backend="sqlite", dir=str(blocker / "state"))))
    message = str(caught.value)
    assert str(blocker / "state") in message and "ROUTER_STATE_DIR" in message
    not_db = tmp_path / "junk"
    not_db.mkdir()
    (not_db / FILE_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot use the state database"):
        run(open_store(StateConfig(backend="sqlite", dir=str(not_db))))


WORKER = """
import asyncio, json, sys, time
from router.config import StateConfig
from router.state import open_store

async def main(directory, name, start_at, n):
    # A generous lock wait: on a loaded machine a worker holding the lock can be descheduled
    # for longer than the default, and this test is about counts, not waits.
    config = StateConfig(backend="sqlite", dir=directory, lock_timeout=10.0)
    store = await open_store(config, on_fallback=lambda _, err: sys.exit(f"fell back: {err}"))
    await store.set_many({"from:" + name: name.encode()}, 60)
    time.sleep(max(0.0, start_at - time.time()))
    first = time.time()
    totals = [await store.add("shared", 1, 60) for _ in range(n)]
    last = time.time()
    await asyncio.sleep(0.5)
    seen = await store.get_many(["from:a", "from:b"])
    await store.close()
    print(json.dumps({"totals": totals, "first": first, "last": last,
                      "seen": [v.decode() if v else None for v in seen]}))

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
"""


def test_sqlite_is_shared_by_two_processes(tmp_path: Path) -> None:
    """Two worker processes add to one counter at the same time: no increment is lost or seen
    twice, and each sees what the other wrote."""
    n = 3000
    start_at = time.time() + 3.0
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), name,
                                 str(start_at), str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        reports.append(json.loads(out))
    a, b = reports
    assert a["first"] < b["last"] and b["first"] < a["last"], "the workers did not overlap"
    assert sorted(a["totals"] + b["totals"]) == list(range(1, 2 * n + 1))
    assert a["seen"] == b["seen"] == ["a", "b"]

    async def read() -> list[bytes | None]:
        async with opened_store(StateConfig(backend="sqlite", dir=str(tmp_path))) as store:
            return await store.get_many(["shared"])

    assert run(read()) == [str(2 * n).encode()]


def test_a_worker_reads_what_another_wrote_after_it_last_read(tmp_path: Path) -> None:
    """Each worker keeps what it read and wrote, yet never serves a value another worker has
    since replaced, counted over, or purged."""
    async def main() -> None:
        a = open_sqlite(tmp_path, max_keys=1000, lock_timeout=0.25)
        b = open_sqlite(tmp_path, max_keys=1000, lock_timeout=0.25)
        await a.set_many({"turn": b"a1"}, 60)
        assert await a.get_many(["turn"]) == [b"a1"]
        await b.set_many({"turn": b"b2"}, 60)
        assert await a.get_many(["turn"]) == [b"b2"]
        await a.set_many({"turn": b"a3", "other": b"x"}, 60)
        assert await b.get_many(["turn", "other"]) == [b"a3", b"x"]
        assert await b.add("n", 5, 60) == 5
        assert await a.get_many(["n"]) == [b"5"]
        assert await a.add("n", 1, 60) == 6
        assert await a.get_many(["n"]) == [b"6"]
        await b.set_many({"turn": b"short"}, 0.05)
        await asyncio.sleep(0.1)
        assert await a.get_many(["turn", "other"]) == [None, b"x"]
        await a.close()
        await b.close()

    run(main())


def test_sqlite_writes_of_one_loop_turn_commit_together_and_each_writer_hears(
        tmp_path: Path) -> None:
    """Requests finishing at once write in one transaction; each gets its own value back, a
    later write of a key wins, another worker sees all of it, and a failed commit reaches every
    writer of that turn (none waits for ever)."""
    async def main() -> None:
        a = open_sqlite(tmp_path, max_keys=1000, lock_timeout=0.2)
        b = open_sqlite(tmp_path, max_keys=1000, lock_timeout=0.2)
        before = a._db.total_changes
        await asyncio.gather(*(a.set_many({f"conv:{i}": b"v%d" % i, "shared": b"%d" % i}, 60)
                               for i in range(20)))
        # One upsert statement for the turn: 21 rows changed, by one commit.
        assert a._db.total_changes - before == 21
        assert await b.get_many([f"conv:{i}" for i in range(20)]) == [
            b"v%d" % i for i in range(20)]
        assert await b.get_many(["shared"]) == [b"19"]
        holder = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        results = await asyncio.wait_for(asyncio.gather(
            *(a.set_many({f"late:{i}": b"x"}, 60) for i in range(3)), return_exceptions=True),
            5)
        assert all(isinstance(r, StoreUnavailable) and "locked" in str(r) for r in results)
        holder.execute("ROLLBACK")
        holder.close()
        await a.close()
        await b.close()

    run(main())


def test_sqlite_waits_for_a_held_lock_only_up_to_the_timeout(tmp_path: Path) -> None:
    """Another process holding the write lock makes a call wait at most ``lock_timeout``; then it is
    served from memory, told to on_fallback, and the next call uses the file again."""
    fallbacks = Fallbacks()
    config = StateConfig(backend="sqlite", dir=str(tmp_path), lock_timeout=0.2)

    async def main() -> None:
        async with opened_store(config, on_fallback=fallbacks) as store:
            await store.set_many({"k": b"before"}, 60)
            holder = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            await store.set_many({"k": b"during"}, 60)
            assert await store.add("n", 1, 60) == 1
            waited = time.monotonic() - started
            assert 0.35 <= waited < 1.0
            assert [backend for backend, _ in fallbacks] == ["sqlite", "sqlite"]
            assert all(isinstance(err, StoreUnavailable) and "locked" in str(err)
                       for _, err in fallbacks)
            # Reads are not blocked by a writer (WAL): they still see the file.
            assert await store.get_many(["k"]) == [b"before"]
            holder.execute("ROLLBACK")
            holder.close()
            await store.set_many({"k": b"after"}, 60)
            assert await store.get_many(["k"]) == [b"after"]
            assert len(fallbacks) == 2

    run(main())


def test_sqlite_purges_expired_rows_and_keeps_to_max_keys(tmp_path: Path) -> None:
    async def main() -> None:
        store = open_sqlite(tmp_path, max_keys=500, lock_timeout=0.25)
        await store.set_many({f"old{i}": b"x" for i in range(300)}, 2.0)
        expired_at = time.monotonic() + 2.0
        await store.maintain()  # also waits for the purge the first write started
        assert store.count() == 300
        for i in range(700):
            await store.set_many({f"live{i:04}": b"y"}, 100 + i)
        assert store.count() == 1000
        await asyncio.sleep(expired_at - time.monotonic() + 0.1)
        await store.maintain()
        assert store.count() == 500
        # The ones that would have expired first went: the oldest of the live keys.
        kept = await store.get_many([f"live{i:04}" for i in range(700)])
        assert kept == [None] * 200 + [b"y"] * 500
        await store.close()

    run(main())


# ---- Redis


def test_redis_calls_take_one_round_trip(redis_server: RedisServer) -> None:
    """Through a link that delays every client-to-Redis packet by 100 ms, get_many, set_many
    and add of three keys each take one delay, not three."""
    delay = 0.1

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pause: float) -> None:
        loop = asyncio.get_running_loop()
        while chunk := await reader.read(65536):
            loop.call_later(pause, writer.write, chunk)
        loop.call_later(pause, writer.close)

    async def link(client_reader: asyncio.StreamReader,
                   client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1",
                                                                     redis_server.port)
        await asyncio.gather(relay(client_reader, server_writer, delay),
                             relay(server_reader, client_writer, 0.0),
                             return_exceptions=True)

    async def main() -> None:
        proxy = await asyncio.start_server(link, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        config = StateConfig(backend="redis", url=f"redis://127.0.0.1:{port}/0",
                             redis_timeout=2.0)
        async with opened_store(config) as store:
            await store.get_many(["warm-up"])  # the connection's own handshake
            keys = {"a": b"1", "b": b"2", "c": b"3"}
            charges = [Charge(k, 1, 60, limit=10) for k in ("x", "y", "z")]
            for call in (store.set_many(keys, 60), store.get_many(list(keys)),
                         store.add("n", 1, 60), store.charge(charges, 0, once="r1")):
                started = time.monotonic()
                await call
                took = time.monotonic() - started
                assert delay <= took < 1.8 * delay, took
            assert await store.get_many(list(keys)) == [b"1", b"2", b"3"]
        await asyncio.sleep(2 * delay)  # the relays' delayed closes
        proxy.close()
        await proxy.wait_closed()

    run(main())


def test_redis_charge_with_an_id_applies_once(redis_server: RedisServer) -> None:
    """A charge retried after its reply was lost (same id) changes nothing the second time."""
    config = StateConfig(backend="redis", url=redis_server.url, redis_timeout=5.0)

    async def main() -> None:
        async with opened_store(config) as store:
            charge = [Charge("once-spend", 5, 60, limit=100)]
            assert await store.charge(charge, 0, once="req-1") == (True, [5])
            assert await store.charge(charge, 0, once="req-1") == (True, [5])
            assert await store.charge(charge, 0, once="req-2") == (True, [10])
            # A refused charge leaves no mark: retried once there is room, it applies.
            full = [Charge("once-spend", 200, 60, limit=10)]
            assert await store.charge(full, 0, once="req-3") == (False, [10])
            assert await store.charge([Charge("once-spend", -5, 60)], 0) == (True, [5])
            assert await store.charge(full, 0, once="req-3") == (True, [205])

    run(main())


def test_redis_down_falls_back_to_memory_and_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    """Kill Redis mid-run: calls keep answering from local memory at once, on_fallback hears
    of each, nothing shows the password; start Redis again and the store goes back to it."""
    password = "s3cret-redis-pw"
    fallbacks = Fallbacks()
    caplog.set_level(logging.WARNING, logger="router.state")
    with running_redis(password=password) as server:
        config = StateConfig(backend="redis", url=server.url, redis_retry_seconds=0.3)

        async def main() -> None:
            async with opened_store(config, on_fallback=fallbacks) as store:
                await store.set_many({"k": b"shared"}, 60)
                assert await store.add("n", 1, 60) == 1
                assert fallbacks == []

                server.kill()
                started = time.monotonic()
                await store.set_many({"k": b"local"}, 60)
                assert await store.get_many(["k"]) == [b"local"]
                assert await store.add("n", 5, 60) == 5  # memory starts from nothing
                for _ in range(100):
                    await store.get_many(["k"])
                assert time.monotonic() - started < 0.25  # no call waited for Redis
                assert len(fallbacks) == 103
                assert {backend for backend, _ in fallbacks} == {"redis"}
                with pytest.raises(StoreUnavailable):
                    await store.strict().add("n", 1, 60)

                server.start()
                await asyncio.sleep(0.4)
                await store.set_many({"k": b"shared again"}, 60)
                assert await store.add("n", 1, 60) == 1
                assert len(fallbacks) == 103
                assert await store.strict().get_many(["k"]) == [b"shared again"]

            with server.client() as client:
                assert client.get("k") == b"shared again"

        run(main())
    errors = [str(err) for _, err in fallbacks]
    assert all("127.0.0.1" in e for e in errors)
    assert password not in caplog.text + " ".join(errors)
    assert "state_unavailable" in caplog.text and "state_recovered" in caplog.text
    assert ":***@127.0.0.1" in caplog.text


def test_redis_unreachable_at_start_does_not_stop_the_proxy() -> None:
    fallbacks = Fallbacks()
    config = StateConfig(backend="redis", url=f"redis://127.0.0.1:{free_port()}/0",
                         on_redis_error="closed")

    async def main() -> None:
        async with opened_store(config, on_fallback=fallbacks) as store:
            assert store.on_error == "closed"
            await store.set_many({"k": b"v"}, 60)
            assert await store.get_many(["k"]) == [b"v"]
            with pytest.raises(StoreUnavailable, match="Error 111 connecting"):
                await store.strict().get_many(["k"])
        assert [backend for backend, _ in fallbacks] == ["redis", "redis"]

    run(main())


def test_redis_that_does_not_answer_costs_one_timeout() -> None:
    """A Redis that accepts connections but never answers: opening waits ``redis_timeout`` once,
    then
    calls are served from memory at once until the retry."""
    fallbacks = Fallbacks()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # never accepted: the kernel completes handshakes, nobody answers
        port = silent.getsockname()[1]
        config = StateConfig(backend="redis", url=f"redis://127.0.0.1:{port}/0",
                             redis_timeout=0.2, redis_retry_seconds=60)

        async def main() -> None:
            started = time.monotonic()
            async with opened_store(config, on_fallback=fallbacks) as store:
                opened = time.monotonic() - started
                assert opened < 1.0
                started = time.monotonic()
                for _ in range(50):
                    await store.set_many({"k": b"v"}, 60)
                assert time.monotonic() - started < 0.1
                assert await store.get_many(["k"]) == [b"v"]
            assert len(fallbacks) == 51

        run(main())


def test_memory_store_is_what_the_memory_backend_opens() -> None:
    store = run(open_store(StateConfig(backend="memory")))
    assert isinstance(store, MemoryStore) and store.strict() is store
