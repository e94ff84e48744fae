"""Conversation state shared by workers and by replicas: a turn that lands on another process
still goes back to the model that signed its thinking, and keeps its tool loop on one model.

Real `router serve` processes, the shipped router.yaml, one fake upstream that refuses thinking
another model signed (so a wrong guess fails loudly, with a 400).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from router.fake import FakeUpstream
from tests import procs
from tests.conftest import config_text, post, scrape, total
from tests.redis_server import RedisServer, running_redis

TOOLS = [{"name": "Bash", "description": "Run a shell command.",
          "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]


@contextmanager
def serving(config: Path, env: dict[str, str], workers: int = 1) -> Iterator[str]:
    """Run `router serve` in a process of its own; yield its URL."""
    with procs.router("serve", "--config", str(config), "--workers", str(workers),
                      "--log-level", "warning", env=env) as server:
        yield server.url
        server.stop(20)


def first_turn(session: str) -> list[dict[str, Any]]:
    # The directive makes the fake answer with a Bash tool call, whatever else it was scripted.
    return [{"role": "user", "content": f"[{session}] list the files [[reply:tool=Bash]]"}]


def request(messages: list[dict[str, Any]]) -> bytes:
    # Asked of Opus; the shipped rules send a first tool-loop turn to Sonnet: the signer differs
    # from the requested model, so a process that does not know who signed guesses wrong.
    return json.dumps({"model": "claude-opus-4-7", "max_tokens": 2048, "tools": TOOLS,
                       "thinking": {"type": "adaptive"}, "messages": messages}).encode()


def tool_loop(fake: FakeUpstream, first: str, then: Callable[[], str], session: str
              ) -> tuple[str, str, int]:
    """Play a first turn through ``first`` and the tool result through ``then()``; return the
    models that served them and the second answer's status."""
    status, headers, body = post(first, request(first_turn(session)),
                                 {"x-claude-code-session-id": session})
    assert status == 200, body
    answer = json.loads(body)
    tool_use = next(b for b in answer["content"] if b["type"] == "tool_use")
    messages = [*first_turn(session), {"role": "assistant", "content": answer["content"]},
                {"role": "user", "content": [{"type": "tool_result",
                                              "tool_use_id": tool_use["id"],
                                              "content": "README.md src/ tests/"}]}]
    status2, headers2, _ = post(then(), request(messages), {"x-claude-code-session-id": session})
    return headers["x-router-model"], headers2.get("x-router-model", ""), status2


def test_a_loop_continues_on_another_process_sharing_the_sqlite_store(
        fake: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(config_text(fake.url))
    env = {"ROUTER_UPSTREAM_URL": fake.url, "ROUTER_STATE_DIR": str(tmp_path / "state")}
    with serving(config, env) as a, serving(config, env) as b:
        signer, second, status = tool_loop(fake, a, lambda: b, "shared-sqlite")
    assert signer == "claude-sonnet-4-6"
    assert (status, second) == (200, signer)


def test_without_shared_state_the_other_process_must_guess(fake: FakeUpstream,
                                                           tmp_path: Path) -> None:
    """The control: two processes with separate stores. The second cannot know who signed the
    thinking and takes the requested model for its signer; the upstream refuses the history."""
    config = tmp_path / "router.yaml"
    config.write_text(config_text(fake.url))
    with serving(config, {"ROUTER_UPSTREAM_URL": fake.url,
                          "ROUTER_STATE_DIR": str(tmp_path / "a")}) as a, \
            serving(config, {"ROUTER_UPSTREAM_URL": fake.url,
                             "ROUTER_STATE_DIR": str(tmp_path / "b")}) as b:
        _, second, status = tool_loop(fake, a, lambda: b, "separate")
    assert (status, second) == (400, "claude-opus-4-7")


def test_two_workers_keep_every_loop_on_its_signer(fake: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(config_text(fake.url))
    env = {"ROUTER_UPSTREAM_URL": fake.url, "ROUTER_STATE_DIR": str(tmp_path / "state")}
    # Each turn on a new connection: the kernel spreads them over both workers.
    with serving(config, env, workers=2) as url, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: tool_loop(fake, url, lambda: url, f"w{i}"),
                                range(16)))
    assert all(status == 200 and second == signer for signer, second, status in results), \
        results


@pytest.fixture()
def two_proxies_on_redis(fake: FakeUpstream, tmp_path: Path
                         ) -> Iterator[tuple[str, str, RedisServer]]:
    with running_redis() as server, ExitStack() as stack:
        config = tmp_path / "router.yaml"
        config.write_text(config_text(fake.url).replace(
            "  backend: sqlite\n", f"  backend: redis\n  url: {server.url}\n", 1))
        env = {"ROUTER_UPSTREAM_URL": fake.url}
        a = stack.enter_context(serving(config, {**env, "ROUTER_STATE_DIR": str(tmp_path / "a")}))
        b = stack.enter_context(serving(config, {**env, "ROUTER_STATE_DIR": str(tmp_path / "b")}))
        yield a, b, server


def test_a_loop_continues_on_another_replica_sharing_redis(
        fake: FakeUpstream, two_proxies_on_redis: tuple[str, str, RedisServer]) -> None:
    a, b, _ = two_proxies_on_redis
    signer, second, status = tool_loop(fake, a, lambda: b, "shared-redis")
    assert (status, second) == (200, signer)


def test_with_redis_down_conversations_go_on_from_local_memory(
        fake: FakeUpstream, two_proxies_on_redis: tuple[str, str, RedisServer]) -> None:
    a, _, redis = two_proxies_on_redis
    redis.kill()
    # Same process for both turns: its own memory stands in, and nothing fails.
    signer, second, status = tool_loop(fake, a, lambda: a, "redis-down")
    assert (status, second) == (200, signer)
    assert total(scrape(a), "router_state_fallbacks_total", backend="redis") >= 2
