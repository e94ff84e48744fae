"""Cost of routing by conversation, per request: identity, history, one store read, the decision,
and the write after the answer, compared with deciding the request alone.

    .venv/bin/python bench/bench_conversations.py [--n 20000] [--backend memory|sqlite|redis]
        [--turns 40]

A script, not a test. Target (issue 8): <= 50 µs p99 added with the embedded store, one round
trip to Redis. The request is a Claude Code tool loop `--turns` deep, with a thinking block
signed on every assistant turn (the worst case for signature lookups).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

import msgspec

from router.config import StateConfig, default_config_text
from router.parse import parse_messages
from router.pipeline import load_conversation, route, save_conversation
from router.routing.rules import parse_policy
from router.routing.tokens import FactorLearner, TokenCounter
from router.state import open_store
from router.upstream.forward import Outcome
from router.wire import CacheCreation, Usage


def agent_request(turns: int) -> bytes:
    """A Claude Code-shaped request: system, tools, a long tool loop, a trailing system."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "text", "text": "Find why the nightly build is flaky and fix it. " * 20}]}]
    for i in range(turns):
        messages.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": f"step {i}", "signature": f"sig-{i:04d}" * 40},
            {"type": "tool_use", "id": f"tu_{i}", "name": "Bash",
             "input": {"command": f"grep -rn flaky src/{i}"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"tu_{i}", "content": "line\n" * 40}]})
    messages.append({"role": "system", "content": "Reminder: be concise."})
    return msgspec.json.encode({
        "model": "claude-opus-4-8", "max_tokens": 32000, "stream": True,
        "thinking": {"type": "adaptive"}, "system": "You are a coding agent. " * 50,
        "tools": [{"name": "Bash", "description": "Run a command.",
                   "input_schema": {"type": "object"}}],
        "messages": messages,
    })


async def open_backend(name: str, url: str | None, directory: str) -> Any:
    return await open_store(StateConfig(backend=name, url=url, dir=directory))


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    samples.sort()
    return (samples[len(samples) // 2], samples[int(len(samples) * 0.99)],
            statistics.mean(samples))


async def run(n: int, backend: str, turns: int, url: str | None) -> None:
    policy = parse_policy(default_config_text())
    counter = TokenCounter.load()
    learner = FactorLearner()
    headers = {"x-api-key": "sk-ant-bench", "x-claude-code-session-id": "bench-session",
               "anthropic-version": "2023-06-01"}
    parsed = parse_messages(agent_request(turns), headers)
    estimate = counter.estimate(parsed.request)
    directory = tempfile.mkdtemp(prefix="bench-state-")
    store = await open_backend(backend, url, directory)
    usage = Usage(input_tokens=300, output_tokens=200, cache_read_input_tokens=40_000,
                  cache_creation_input_tokens=900, cache_creation=CacheCreation(900, 0))
    outcome = Outcome(status=200, model="claude-sonnet-4-6", usage=usage,
                      signatures=["new-signature" * 30])
    alone: list[float] = []
    added: list[float] = []
    for i in range(n + 500):
        t0 = time.perf_counter_ns()
        route(parsed, estimate, policy, learner)
        t1 = time.perf_counter_ns()
        conversation = await load_conversation(store, parsed)
        route(parsed, estimate, policy, learner, conversation)
        await save_conversation(store, conversation, outcome, 3600)  # type: ignore[arg-type]
        t2 = time.perf_counter_ns()
        if i >= 500:  # warm-up first
            alone.append((t1 - t0) / 1000)
            added.append((t2 - t1 - (t1 - t0)) / 1000)
    await store.close()
    a50, a99, _ = percentiles(alone)
    c50, c99, cmean = percentiles(added)
    print(f"| {backend}, tool loop of {turns} turns | {a50:.1f} / {a99:.1f} µs | "
          f"{c50:.1f} µs | {c99:.1f} µs | {cmean:.1f} µs | <= 50 µs p99 |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--backend", default="memory")
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--url", help="Redis URL for --backend redis")
    args = parser.parse_args()
    print("| store | decide alone p50 / p99 | added p50 | added p99 | added mean | target |")
    print("|---|---:|---:|---:|---:|---|")
    asyncio.run(run(args.n, args.backend, args.turns, args.url))


if __name__ == "__main__":
    main()
