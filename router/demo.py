"""``router demo``: the whole proxy working with no API key.

The simulated upstream is the same spec-faithful fake the tests use; a small traffic generator
sends a realistic mix of requests (one-line lookups, everyday coding, hard proofs, agent tool
loops, streamed and not, with the odd overloaded answer) through the real proxy, so /metrics
fills up, the dashboards light up and ``router explain`` has real examples.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import uvicorn

from router.app import create_app
from router.fake import Fail, FakeUpstream, Reply, StreamError, running_fake
from router.routing.rules import Policy
from router.settings import Settings

DEMO_KEY = "sk-ant-demo-not-a-real-key"

_CODING_SYSTEM = (
    "You are a coding agent working in the user's repository. Use the tools to read and edit "
    "files and run commands. Keep answers short. " * 20
)
_TOOLS = [
    {"name": name, "description": f"{name} tool", "input_schema": {"type": "object"}}
    for name in ("Read", "Edit", "Bash", "Grep")
]

SAMPLES: list[dict[str, Any]] = [
    {"model": "claude-opus-4-7", "max_tokens": 50, "messages": [
        {"role": "user", "content": "What is the capital of Australia? One word."}]},
    {"model": "claude-sonnet-4-6", "max_tokens": 200, "messages": [
        {"role": "user", "content": "Extract the email addresses from: 'Contact ana@example.com "
                                    "or ops@example.org for access.' Return JSON."}]},
    {"model": "claude-sonnet-4-6", "max_tokens": 2000, "messages": [
        {"role": "user", "content": "Write a Python function that parses ISO 8601 durations "
                                    "like P3DT4H into seconds, with unit tests."}]},
    {"model": "claude-haiku-4-5", "max_tokens": 8000, "messages": [
        {"role": "user", "content": "Prove that there is no largest prime, then generalise the "
         "argument to primes of the form 4k+3, and analyse step by step why the same approach "
         "fails for 4k+1. Compare the trade-offs of three proof strategies."}]},
    {"model": "claude-opus-4-7", "max_tokens": 4000, "system": _CODING_SYSTEM, "tools": _TOOLS,
     "messages": [
         {"role": "user", "content": "Rename the variable `cnt` to `count` in utils.py."}]},
    {"model": "claude-sonnet-4-6", "max_tokens": 16000, "system": _CODING_SYSTEM,
     "tools": _TOOLS, "messages": [
         {"role": "user", "content": "Design a migration plan to split our monolith's billing "
          "module into a separate service: architecture, data ownership, rollout phases, "
          "failure modes and rollback, and the trade-offs of each option."}]},
    {"model": "claude-sonnet-4-6", "max_tokens": 1000, "messages": [
        {"role": "user", "content": "Summarise the plot of Hamlet in three sentences."}]},
]


def sample_files(directory: Path) -> list[Path]:
    """Write the sample requests as JSON files (for ``router explain``) and return them."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sample in enumerate(SAMPLES, 1):
        path = directory / f"request-{i}.json"
        path.write_text(json.dumps(sample, indent=2))
        paths.append(path)
    return paths


def demo_policy(policy: Policy, upstream_url: str, ledger_dir: Path | None = None) -> Policy:
    """Return ``policy`` sending to the simulated upstream and keeping its ledger in
    ``ledger_dir`` (the demo's traffic stays out of a real ledger)."""
    config = policy.config
    upstream = msgspec.structs.replace(config.upstream, base_url=upstream_url)
    ledger = config.ledger if ledger_dir is None else msgspec.structs.replace(
        config.ledger, dir=str(ledger_dir))
    return policy.with_config(msgspec.structs.replace(config, upstream=upstream, ledger=ledger))


async def generate_traffic(url: str, fake: FakeUpstream, rate: float, seed: int = 1) -> None:
    """Send requests from :data:`SAMPLES` at about ``rate`` per second until cancelled."""
    rng = random.Random(seed)
    headers = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01",
               "content-type": "application/json", "x-app": "demo"}
    async with aiohttp.ClientSession() as session:
        pending: set[asyncio.Task[None]] = set()
        while True:
            roll = rng.random()
            if roll < 0.04:
                fake.script(Fail(529, "overloaded_error"))
            elif roll < 0.05:
                fake.script(StreamError(after_events=4))
            else:
                cached = rng.randint(0, 4000) if rng.random() < 0.5 else 0
                fake.script(Reply(usage={"cache_read_input_tokens": cached}))
            body = dict(rng.choice(SAMPLES), stream=rng.random() < 0.5)
            task = asyncio.create_task(_send(session, url, body, headers))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(rng.expovariate(rate))


async def _send(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                headers: dict[str, str]) -> None:
    try:
        async with session.post(url + "/v1/messages", json=body, headers=headers) as response:
            await response.read()
    except aiohttp.ClientError:
        pass


async def serve_demo(policy: Policy, host: str, port: int, rate: float, duration: float,
                     announce: Any, ledger_dir: Path | None = None) -> None:
    """Run the simulated upstream, the proxy and the traffic generator together."""
    with running_fake(default_event_delay=0.01) as fake:
        app = create_app(Settings(), demo_policy(policy, fake.url, ledger_dir))
        server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False,
            server_header=False, date_header=False))
        url = f"http://{host}:{port}"

        async def drive() -> None:
            while not server.started:
                await asyncio.sleep(0.05)
            announce(url, fake.url)
            stop_at = time.monotonic() + duration if duration > 0 else None
            traffic = asyncio.create_task(generate_traffic(url, fake, rate))
            try:
                while stop_at is None or time.monotonic() < stop_at:
                    await asyncio.sleep(0.2)
            finally:
                traffic.cancel()
                server.should_exit = True

        driver = asyncio.create_task(drive())
        await server.serve()
        driver.cancel()
