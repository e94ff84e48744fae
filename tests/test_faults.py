"""Fault injection: the upstream fails in every way it can; the client always gets a complete
answer or one well-formed Anthropic error, attempts follow the policy, nothing leaks, and what
is accounted equals what the upstream billed."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import msgspec
import pytest

from router.config import BreakerConfig, RetryBudgetConfig, RetryConfig, TimeoutsConfig
from router.fake import (
    KEY_HEADER,
    Drop,
    Fail,
    FakeUpstream,
    Malformed,
    Reply,
    Stall,
    StreamError,
)
from router.routing.rules import Policy
from tests.conftest import API_KEY, RUNNING, make_policy, post, scrape, total, with_section
from tests.procs import wait_for

PROMPT = [{"role": "user", "content": "hello"}]
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01",
           "content-type": "application/json"}


def tuned(upstream_url: str, policy_yaml: str = "default: requested\n", *,
          attempts: int = 3, first_event: float = 2.0, idle: float = 2.0,
          quiet: float | None = None, per_1k_input: float = 0, per_1k_output: float = 0,
          total_s: float = 10.0, min_requests: int = 1000, failure_rate: float = 1.0,
          cooldown: float = 30.0, budget: RetryBudgetConfig | None = None) -> Policy:
    """The default tiers with fast retries and short, size-independent timeouts, so faults play
    out quickly; circuits that open only when asked to and a budget that never runs out, unless
    a test is about them."""
    policy = make_policy(upstream_url, policy_yaml)
    config = policy.config
    timeouts = TimeoutsConfig(connect=1.0, first_event=first_event, per_1k_input=per_1k_input,
                              per_1k_output=per_1k_output, idle=idle, quiet=quiet or idle,
                              total=total_s)
    tiers = {name: msgspec.structs.replace(tier, timeouts=TimeoutsConfig(), retry=RetryConfig())
             for name, tier in config.tiers.items()}
    upstream = msgspec.structs.replace(
        config.upstream, timeouts=timeouts,
        retry=RetryConfig(attempts=attempts, base_delay=0.02, max_delay=2.0),
        retry_budget=budget or RetryBudgetConfig(burst=10**6, min_per_second=10**6),
        breaker=BreakerConfig(failure_rate=failure_rate, min_requests=min_requests, window=60,
                              cooldown=cooldown))
    return policy.with_config(msgspec.structs.replace(config, tiers=tiers, upstream=upstream))


def body(model: str = "claude-haiku-4-5", **extra: Any) -> bytes:
    return json.dumps({"model": model, "max_tokens": 32, "messages": PROMPT, **extra}).encode()


def models_received(fake: FakeUpstream) -> list[str]:
    return [r.json()["model"] for r in fake.received if r.path == "/v1/messages"]


def test_529_burst_is_retried_and_the_client_never_sees_it(fake: FakeUpstream,
                                                           start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(Fail(529, "overloaded_error"), Fail(529, "overloaded_error"))
    status, headers, _ = post(url, body())
    assert status == 200
    assert models_received(fake) == ["claude-haiku-4-5"] * 3
    assert "x-router-fallback" not in headers
    samples = scrape(url)
    assert total(samples, "router_retries_total", reason="overloaded_error") == 2


def test_retry_after_is_honoured(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(Fail(429, "rate_limit_error", headers={"retry-after": "1"}))
    started = time.monotonic()
    status, _, _ = post(url, body())
    assert status == 200
    assert 0.95 <= time.monotonic() - started < 3
    fake.clear()
    fake.script(Fail(503, "api_error", headers={"retry-after-ms": "300", "retry-after": ""}))
    started = time.monotonic()
    assert post(url, body())[0] == 200
    assert 0.28 <= time.monotonic() - started < 2


def test_long_retry_after_goes_to_the_fallback_at_once(fake: FakeUpstream, start_proxy: Any
                                                       ) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(Fail(429, "rate_limit_error", headers={"retry-after": "30"}))
    started = time.monotonic()
    status, headers, _ = post(url, body())
    assert time.monotonic() - started < 1
    assert status == 200
    assert headers["x-router-fallback"] == "claude-haiku-4-5->claude-sonnet-4-6"
    assert headers["x-router-model"] == "claude-sonnet-4-6"
    assert models_received(fake) == ["claude-haiku-4-5", "claude-sonnet-4-6"]


@pytest.mark.parametrize("fail", [
    Fail(400, "invalid_request_error", "messages: bad"),
    Fail(401, "authentication_error"),
    Fail(413, "request_too_large"),
    Fail(400, "invalid_request_error", headers={"x-should-retry": "true"}),
    Fail(529, "overloaded_error", headers={"x-should-retry": "false"}),
    Fail(429, "rate_limit_error", "spend cap", headers={"retry-after": ""}),
])
def test_errors_that_must_not_be_retried(fake: FakeUpstream, start_proxy: Any, fail: Fail
                                         ) -> None:
    if fail.status == 429:
        fail = Fail(429, "rate_limit_error", "enforced_spend_limit_reached: spend_limit hit",
                    headers={"retry-after": ""})
    url = start_proxy(policy=tuned(fake.url))
    fake.script(fail)
    status, _, data = post(url, body())
    assert status == fail.status
    assert json.loads(data)["error"]["type"] == fail.error_type
    assert len(fake.received) == 1


def test_overloaded_tier_falls_back_down_its_chain(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(*[Fail(529, "overloaded_error")] * 3)
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
    raw = client.messages.with_raw_response.create(model="claude-opus-4-7", max_tokens=32,
                                                   messages=PROMPT)
    assert raw.parse().content[0].type == "text"
    assert raw.headers["x-router-fallback"] == "claude-opus-4-7->claude-sonnet-4-6"
    assert raw.headers["x-router-model"] == "claude-sonnet-4-6"
    assert raw.headers["x-router-tier"] == "sonnet"
    assert models_received(fake) == ["claude-opus-4-7"] * 3 + ["claude-sonnet-4-6"]
    samples = scrape(url)
    assert total(samples, "router_fallbacks_total", from_model="claude-opus-4-7",
                 to_model="claude-sonnet-4-6") == 1
    assert total(samples, "router_requests_total", model="claude-sonnet-4-6", status="2xx") == 1


def test_everything_overloaded_passes_the_last_error_through(fake: FakeUpstream,
                                                              start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(*[Fail(529, "overloaded_error")] * 6)
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="claude-opus-4-7", max_tokens=32, messages=PROMPT)
    assert info.value.status_code == 529
    assert info.value.request_id
    assert len(fake.received) == 6  # 3 attempts on opus, 3 on sonnet
    # The proxy retried and gave up: the SDK is told not to multiply it.
    assert info.value.response.headers["x-should-retry"] == "false"


PINNED = """\
default: requested
rules:
  - name: batch-pinned
    when: {app: batch}
    pin: true
"""


def test_pinned_requests_do_not_fall_back(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, PINNED))
    fake.script(*[Fail(529, "overloaded_error")] * 3)
    status, _, _ = post(url, body("claude-opus-4-7"), {"x-app": "batch"})
    assert status == 529
    assert models_received(fake) == ["claude-opus-4-7"] * 3


def test_a_hung_model_with_nowhere_to_fall_back_is_waited_on_twice_not_six_times(
        fake: FakeUpstream, start_proxy: Any) -> None:
    """A pinned request whose model hangs: the proxy waits a second time itself, then tells
    the SDK not to retry, so the client hears within two waits instead of the SDK's three
    attempts of two waits each."""
    url = start_proxy(policy=tuned(fake.url, PINNED, first_event=0.3))
    fake.script(*[Stall(5)] * 6)
    started = time.monotonic()
    status, headers, data = post(url, body("claude-opus-4-7"), {"x-app": "batch"})
    assert time.monotonic() - started < 1.5
    assert status == 504 and json.loads(data)["error"]["type"] == "timeout_error"
    assert headers["x-should-retry"] == "false"
    assert models_received(fake) == ["claude-opus-4-7"] * 2
    fake.clear()
    fake.script(Stall(5))  # hung once only: the second wait answers
    status, _, _ = post(url, body("claude-opus-4-7"), {"x-app": "batch"})
    assert status == 200
    assert models_received(fake) == ["claude-opus-4-7"] * 2


def test_thinking_conversations_do_not_fall_back(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url))
    # Inside a tool loop whose thinking Sonnet signed, another model would refuse the history.
    history = [{"role": "user", "content": "list the files"},
               {"role": "assistant", "content": [
                   {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
                   {"type": "tool_use", "id": "tu_1", "name": "ls", "input": {}}]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": "tu_1", "content": "a.py b.py"}]}]
    fake.script(*[Fail(529, "overloaded_error")] * 3)
    status, headers, _ = post(url, json.dumps({
        "model": "claude-sonnet-4-6", "max_tokens": 2048, "messages": history,
        "thinking": {"type": "enabled", "budget_tokens": 1024}}).encode())
    assert status == 529
    assert headers["x-router-conversation"] == "tool-loop"
    assert models_received(fake) == ["claude-sonnet-4-6"] * 3


def test_connection_dropped_before_the_answer_is_retried(fake: FakeUpstream, start_proxy: Any
                                                         ) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(Drop(), Drop(after_events=0))
    status, _, data = post(url, body(stream=True))
    assert status == 200
    assert data.rstrip().endswith(b'data: {"type":"message_stop"}')
    assert len(fake.received) == 3


def test_stream_broken_after_its_first_byte_is_not_retried(fake: FakeUpstream, start_proxy: Any
                                                           ) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(StreamError(after_events=3))
    status, _, data = post(url, body(stream=True))
    assert status == 200
    events = [e for e in data.split(b"\n\n") if e.strip()]
    assert events[-1].startswith(b"event: error")
    assert json.loads(events[-1].split(b"data: ", 1)[1])["error"]["type"] == "overloaded_error"
    assert len(fake.received) == 1


def test_stall_past_the_first_event_wait_falls_back(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, first_event=0.4))
    fake.script(Stall(3.0))
    started = time.monotonic()
    status, _, _ = post(url, body())
    assert status == 200
    assert time.monotonic() - started < 2.5
    assert len(fake.received) == 2


def test_silent_stream_ends_with_a_timeout_error_event(fake: FakeUpstream, start_proxy: Any
                                                       ) -> None:
    url = start_proxy(policy=tuned(fake.url, idle=0.4))
    fake.script(Reply(text="a b c d", event_delay=1.5))
    started = time.monotonic()
    status, _, data = post(url, body(stream=True))
    assert time.monotonic() - started < 2.5
    assert status == 200
    events = [e for e in data.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"event: message_start")
    error = json.loads(events[-1].split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "timeout_error"


def test_a_stream_that_keeps_talking_outlives_its_idle_limit(fake: FakeUpstream,
                                                              start_proxy: Any) -> None:
    # Every gap is under the idle limit, the whole stream is several times over it: the limit
    # moves with each event and never fires.
    url = start_proxy(policy=tuned(fake.url, idle=0.4))
    fake.script(Reply(text="one two three four five six seven eight", event_delay=0.15))
    started = time.monotonic()
    status, _, data = post(url, body(stream=True))
    assert status == 200 and time.monotonic() - started > 1.2
    assert data.rstrip().endswith(b'data: {"type":"message_stop"}')


def test_a_client_that_leaves_during_a_retry_wait_frees_the_upstream_connection(
        fake: FakeUpstream, start_proxy: Any) -> None:
    # The 529 the proxy holds (to relay if no attempt does better) keeps its connection while
    # the proxy waits to retry; the client leaving then must give it back, or a few such
    # clients exhaust the pool and every later request waits for a slot that never frees.
    url = start_proxy(policy=tuned(fake.url, attempts=3))
    proxy = RUNNING[url]
    fake.script(*[Fail(529, "overloaded_error", headers={"retry-after": "2"})] * 3, Reply())

    async def leave_early() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await session.post(f"{url}/v1/messages", data=body("claude-opus-4-7"),
                                       headers={"x-api-key": API_KEY,
                                                "anthropic-version": "2023-06-01",
                                                "content-type": "application/json"})

    asyncio.run(leave_early())
    assert wait_for(lambda: proxy.state.upstream.connections()[0] == 0, 5), \
        "an upstream connection stayed taken after its client left"


def test_deadline_bounds_the_whole_request(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, first_event=5, total_s=1.0, attempts=5))
    fake.script(*[Stall(0.4, then=Fail(529, "overloaded_error"))] * 10)
    started = time.monotonic()
    status, _, data = post(url, body("claude-opus-4-7"))
    assert time.monotonic() - started < 2.0
    assert status in (504, 529)
    assert json.loads(data)["type"] == "error"


def test_malformed_upstream_answer_is_passed_on_not_crashed_on(fake: FakeUpstream,
                                                                start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(Malformed(b'{"type":"message","content":[', status=200))
    status, _, data = post(url, body())
    assert status == 200 and data == b'{"type":"message","content":['
    fake.script(Malformed(b"<html>bad gateway</html>", status=502, content_type="text/html"),
                Malformed(b"<html>bad gateway</html>", status=502, content_type="text/html"),
                Malformed(b"<html>bad gateway</html>", status=502, content_type="text/html"),
                Malformed(b"<html>bad gateway</html>", status=502, content_type="text/html"),
                Malformed(b"<html>bad gateway</html>", status=502, content_type="text/html"),
                Malformed(b"<html>bad gateway</html>", status=502, content_type="text/html"))
    status, _, data = post(url, body())
    assert status == 502
    assert data == b"<html>bad gateway</html>"


def test_circuit_breaker_skips_a_failing_model_then_probes_it(fake: FakeUpstream,
                                                              start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, attempts=1, min_requests=2, cooldown=1.0))
    for _ in range(2):
        fake.script(Fail(500, "api_error"))
        assert post(url, body())[0] == 200  # fell back to sonnet each time
    assert total(scrape(url), "router_circuit_opened_total", model="claude-haiku-4-5") == 1
    fake.clear()
    status, headers, _ = post(url, body())
    assert status == 200
    assert models_received(fake) == ["claude-sonnet-4-6"]  # haiku skipped: circuit open
    assert headers["x-router-model"] == "claude-sonnet-4-6"
    time.sleep(1.1)
    fake.clear()
    assert post(url, body())[0] == 200
    assert models_received(fake) == ["claude-haiku-4-5"]  # the probe, which closes it


def test_backpressure_answers_529_at_once(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=with_section(tuned(fake.url), "server", max_in_flight=2))
    fake.script(Stall(1.0), Stall(1.0))

    async def run() -> list[tuple[int, float, dict[str, str]]]:
        async with aiohttp.ClientSession() as session:
            async def one(delay: float) -> tuple[int, float, dict[str, str]]:
                await asyncio.sleep(delay)
                started = time.monotonic()
                async with session.post(url + "/v1/messages", data=body(),
                                        headers=HEADERS) as r:
                    await r.read()
                    lowered = {k.lower(): v for k, v in r.headers.items()}
                    return r.status, time.monotonic() - started, lowered
            return await asyncio.gather(one(0), one(0), one(0.3))

    results = asyncio.run(run())
    assert sorted(s for s, _, _ in results) == [200, 200, 529], results
    rejected = next(r for r in results if r[0] == 529)
    assert rejected[1] < 0.2
    assert rejected[2].get("retry-after") == "1", rejected
    # Released just after the last byte went out.
    assert wait_for(lambda: RUNNING[url].state.gate.requests == 0, 2)


def test_client_disconnect_cancels_upstream_and_still_accounts(fake: FakeUpstream,
                                                               start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url))
    fake.script(Reply(text=" ".join(["word"] * 40), event_delay=0.1,
                      usage={"input_tokens": 500, "output_tokens": 77}))

    async def run() -> None:
        async with aiohttp.ClientSession() as session, session.post(
                url + "/v1/messages", data=body(stream=True), headers=HEADERS) as r:
            await r.content.readuntil(b"\n\n")  # message_start, then hang up

    asyncio.run(run())
    # The upstream stops producing (and billing) soon after; the proxy accounts what it saw.
    assert wait_for(lambda: total(scrape(url), "router_requests_total") == 1)
    time.sleep(0.5)
    billed = fake.billed
    assert len(billed) == 1
    assert billed[0]["input_tokens"] == 500
    samples = scrape(url)
    assert total(samples, "router_tokens_total", type="input") == 500
    assert total(samples, "router_tokens_total", type="output") == billed[0]["output_tokens"]
    assert billed[0]["output_tokens"] < 77  # cut before the end: never billed in full
    assert total(samples, "router_requests_total", status="client_disconnected") == 1
    assert total(samples, "router_in_flight_requests") == 0


def test_many_clients_through_random_faults(fake: FakeUpstream, start_proxy: Any) -> None:
    """Every request ends in a complete answer or one well-formed error; attempts match the
    policy; usage accounted equals usage billed; no task or connection leaks."""
    # Timeouts well above what a loaded CI machine needs: a request the proxy timed out while
    # the fake went on to answer (and bill) could not be accounted exactly; timeouts have their
    # own tests above.
    url = start_proxy(policy=tuned(fake.url, first_event=4, idle=4, total_s=8))
    proxy = RUNNING[url]
    rng = random.Random(7)
    faults: list[Any] = [
        Fail(529, "overloaded_error"), Fail(429, "rate_limit_error",
                                            headers={"retry-after": "0.05"}),
        # Neither a reset mid-stream nor a stall past the timeout here: in both, the upstream can
        # bill bytes the proxy never receives (a reset discards them), which no gateway can
        # account. Both have their own tests above.
        Fail(500, "api_error"), Drop(), Drop(after_events=0),
        Stall(0.1), StreamError(after_events=5), Reply(event_delay=0.01),
        Reply(usage={"cache_read_input_tokens": 100, "cache_creation_input_tokens": 50}),
    ]
    n = 60
    fake.script(*[rng.choice(faults) if rng.random() < 0.5 else Reply() for _ in range(n * 3)])

    async def tasks_now() -> int:
        return len(asyncio.all_tasks())

    baseline = proxy.call(tasks_now())

    async def run() -> list[tuple[int, bytes, float, bool]]:
        connector = aiohttp.TCPConnector(limit=20)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(i: int) -> tuple[int, bytes, float, bool]:
                stream = i % 2 == 0
                model = ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7")[i % 3]
                started = time.monotonic()
                async with session.post(url + "/v1/messages", data=body(model, stream=stream),
                                        headers=HEADERS) as r:
                    data = await r.read()
                    return r.status, data, time.monotonic() - started, stream
            return await asyncio.gather(*(one(i) for i in range(n)))

    results = asyncio.run(run())
    for status, data, seconds, stream in results:
        assert seconds < 9, "every request ends within its deadline"
        if status == 200 and stream:
            events = [e for e in data.split(b"\n\n") if e.strip()]
            last = events[-1]
            if last.startswith(b"event: error"):
                assert json.loads(last.split(b"data: ", 1)[1])["type"] == "error"
            else:
                assert last == b'event: message_stop\ndata: {"type":"message_stop"}'
        elif status == 200:
            assert json.loads(data)["type"] == "message"
        else:
            error = json.loads(data)
            assert error["type"] == "error" and error["error"]["type"]
    # At most 3 attempts per model and 2 models per request.
    assert len(fake.received) <= n * 6
    assert sum(1 for s, *_ in results if s == 200) >= n * 0.9

    def settled() -> bool:
        return total(scrape(url), "router_requests_total") == n

    assert wait_for(settled)
    samples = scrape(url)
    billed = fake.billed
    for kind, field in [("input", "input_tokens"), ("output", "output_tokens"),
                        ("cache_read", "cache_read_input_tokens")]:
        assert total(samples, "router_tokens_total", type=kind) == sum(
            b.get(field, 0) for b in billed), kind
    assert total(samples, "router_in_flight_requests") == 0
    state = proxy.state
    assert state.gate.requests == 0 and state.gate.bytes == 0

    def no_leaks() -> bool:
        in_use, _ = state.upstream.connections()
        return in_use == 0 and proxy.call(tasks_now()) <= baseline

    assert wait_for(no_leaks, 5), "tasks or upstream connections leaked"


def test_probe_answered_with_a_client_error_closes_the_circuit(fake: FakeUpstream,
                                                               start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, attempts=1, min_requests=1, cooldown=0.5))
    fake.script(Fail(500, "api_error"))
    assert post(url, body())[1]["x-router-model"] == "claude-sonnet-4-6"  # opened, fell back
    time.sleep(0.6)
    fake.clear()
    fake.script(Fail(400, "invalid_request_error"))
    assert post(url, body())[0] == 400  # the probe: the model answered, the request was bad
    fake.clear()
    assert post(url, body())[0] == 200
    assert models_received(fake) == ["claude-haiku-4-5"]  # not stuck open


def test_skipping_an_open_circuit_is_reported_as_a_fallback(fake: FakeUpstream,
                                                            start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, attempts=1, min_requests=1, cooldown=30))
    fake.script(Fail(500, "api_error"))
    post(url, body())
    fake.clear()
    status, headers, _ = post(url, body())
    assert status == 200
    assert models_received(fake) == ["claude-sonnet-4-6"]
    assert headers["x-router-fallback"] == "claude-haiku-4-5->claude-sonnet-4-6"


def test_conversation_memory_keeps_the_model_that_answered(fake: FakeUpstream,
                                                           start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, "default: opus\n"))
    first_turn = [{"role": "user", "content": "Think, then list the files."}]
    fake.script(*[Fail(529, "overloaded_error")] * 3,
                Reply(text="", thinking="ls", tool_use={"id": "tu_1", "name": "ls",
                                                        "input": {}}))
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
    session = {"x-claude-code-session-id": "s-fallback"}
    raw = client.messages.with_raw_response.create(
        model="claude-opus-4-7", max_tokens=2048, messages=first_turn,
        thinking={"type": "adaptive"}, extra_headers=session)
    assert raw.headers["x-router-model"] == "claude-sonnet-4-6"  # opus overloaded: fallback
    second = [*first_turn, {"role": "assistant", "content": raw.parse().model_dump()["content"]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1",
                                            "content": "a.py"}]}]
    client.messages.create(model="claude-opus-4-7", max_tokens=2048, messages=second,
                           thinking={"type": "adaptive"}, extra_headers=session)
    # Sonnet signed the thinking block of the loop: the loop goes on on Sonnet, not Opus.
    assert models_received(fake)[-1] == "claude-sonnet-4-6"


def test_an_open_circuit_with_nowhere_to_go_still_sends_once(fake: FakeUpstream,
                                                               start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, PINNED, min_requests=1, failure_rate=0.5))
    fake.script(*[Fail(529, "overloaded_error")] * 3)
    status, headers, _ = post(url, body("claude-opus-4-7"), {"x-app": "batch"})
    assert status == 529 and headers["x-should-retry"] == "false"
    assert total(scrape(url), "router_circuit_opened_total", model="claude-opus-4-7") == 1
    fake.clear()
    fake.script(Fail(529, "overloaded_error"))
    status, headers, _ = post(url, body("claude-opus-4-7"), {"x-app": "batch"})
    # Open, and no fallback for a pinned request: one attempt, the upstream's own answer.
    assert status == 529 and "x-should-retry" not in headers
    assert models_received(fake) == ["claude-opus-4-7"]
    fake.clear()
    status, _, _ = post(url, body("claude-opus-4-7"), {"x-app": "batch"})
    assert status == 200  # the upstream could serve it, so it was asked
    assert models_received(fake) == ["claude-opus-4-7"]


def test_the_retry_budget_bounds_extra_attempts(fake: FakeUpstream, start_proxy: Any) -> None:
    budget = RetryBudgetConfig(ratio=0, min_per_second=0, burst=2)
    url = start_proxy(policy=tuned(fake.url, budget=budget))
    fake.script(*[Fail(529, "overloaded_error")] * 10)
    status, headers, _ = post(url, body())
    # Two retries paid from the budget, then no fallback: the upstream's answer as it is, so
    # the client's own retry (a fresh request) can still get through.
    assert status == 529 and "x-should-retry" not in headers
    assert models_received(fake) == ["claude-haiku-4-5"] * 3
    fake.clear()
    fake.script(*[Fail(529, "overloaded_error")] * 10)
    assert post(url, body())[0] == 529
    assert len(fake.received) == 1


def test_a_hung_model_falls_back_once_then_the_client_is_told(fake: FakeUpstream,
                                                               start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, first_event=0.3))
    fake.script(*[Stall(5)] * 3)
    started = time.monotonic()
    status, headers, data = post(url, body(stream=True))
    assert time.monotonic() - started < 1.5
    assert status == 504 and json.loads(data)["error"]["type"] == "timeout_error"
    assert headers["x-should-retry"] == "false"
    assert models_received(fake) == ["claude-haiku-4-5", "claude-sonnet-4-6"]  # not retried


def test_the_first_event_wait_grows_with_the_input(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, first_event=0.3, per_1k_input=0.5))
    fake.script(Stall(1.0))
    long_prompt = [{"role": "user", "content": "word " * 8000}]  # ~8k tokens: waits ~4.3 s
    status, headers, _ = post(url, json.dumps({"model": "claude-haiku-4-5", "max_tokens": 32,
                                               "stream": True, "messages": long_prompt}).encode())
    assert status == 200 and "x-router-fallback" not in headers
    assert len(fake.received) == 1
    fake.clear()
    fake.script(Stall(1.0))
    status, headers, _ = post(url, body(stream=True))  # a few tokens: waits 0.3 s
    assert status == 200 and headers["x-router-fallback"] == "claude-haiku-4-5->claude-sonnet-4-6"


def test_a_non_streamed_answer_is_waited_for_by_max_tokens(fake: FakeUpstream,
                                                           start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, first_event=0.3, per_1k_output=1.0))
    fake.script(Stall(1.0))
    assert post(url, body(max_tokens=4000))[0] == 200  # may take 4.3 s
    assert len(fake.received) == 1
    fake.clear()
    fake.script(Stall(1.0))
    assert post(url, body(max_tokens=32))[0] == 200  # may take 0.33 s: fell back
    assert len(fake.received) == 2


def test_a_thinking_stream_may_pause_longer_than_a_text_stream(fake: FakeUpstream,
                                                                start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url, idle=0.3, quiet=3.0))
    fake.script(Reply(text="", thinking="one two three four", event_delay=0.6))
    status, _, data = post(url, body(stream=True, max_tokens=2048,
                                     thinking={"type": "enabled", "budget_tokens": 1024}))
    assert status == 200
    assert data.rstrip().endswith(b'data: {"type":"message_stop"}')
    fake.script(Reply(text="one two three four", event_delay=0.6))
    status, _, data = post(url, body(stream=True))
    assert status == 200
    last = [e for e in data.split(b"\n\n") if e.strip()][-1]
    assert json.loads(last.split(b"data: ", 1)[1])["error"]["type"] == "timeout_error"


def test_a_stream_that_ends_without_message_stop_is_cut(fake: FakeUpstream,
                                                        start_proxy: Any) -> None:
    url = start_proxy(policy=tuned(fake.url))
    partial = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
               b'"type":"message","role":"assistant","content":[],"model":"claude-haiku-4-5",'
               b'"usage":{"input_tokens":9,"output_tokens":1}}}\n\n'
               b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
               b'"content_block":{"type":"text","text":""}}\n\n')
    fake.script(Malformed(partial, status=200, content_type="text/event-stream"))
    status, _, data = post(url, body(stream=True))
    assert status == 200
    assert data.startswith(partial)
    error = json.loads(data[len(partial):].split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "message_stop" in error["error"]["message"]
    samples = scrape(url)
    assert total(samples, "router_requests_total", status="stream_cut") == 1
    assert total(samples, "router_tokens_total", type="input") == 9


# --------------------------------------------------------------------------- the shipped config

Kind = Callable[[], list[Any]]
MIX: list[tuple[str, int, Kind]] = [
    ("plain", 66, lambda: []),
    ("20 ms delay", 30, lambda: [Stall(0.02)]),
    ("first two attempts 529", 50, lambda: [Fail(529, "overloaded_error")] * 2),
    ("always 529", 26, lambda: [Fail(529, "overloaded_error")] * 30),
    ("always 429, retry-after 1", 26,
     lambda: [Fail(429, "rate_limit_error", headers={"retry-after": "1"})] * 30),
    ("first attempt 429", 26, lambda: [Fail(429, "rate_limit_error")]),
    ("connection dropped", 26, lambda: [Drop()]),
    ("error event mid-stream", 26, lambda: [StreamError(after_events=3)]),
    ("never answers", 16, lambda: [Stall(3600)] * 30),
    ("stream stalls after a few events", 8, lambda: [Reply(stall_after=3)]),
]
"""The issue's mix: 300 requests, each with one upstream fault on every attempt it makes (its
retries and fallbacks through the proxy, and the SDK's own retries, alike)."""
SLOW_KINDS = ("never answers", "stream stalls after a few events")
CLIENT_DEADLINE = 60.0


@dataclass
class Ending:
    kind: str
    stream: bool
    result: str
    """``ok``, ``error <status> <type>`` (an Anthropic-shaped error) or ``no answer: ...``."""
    seconds: float
    proxy_made_529: bool = False


async def sdk_request(client: anthropic.AsyncAnthropic, key: str, model: str, stream: bool,
                      max_tokens: int = 32) -> tuple[str, bool]:
    """One SDK call (its own retries included) within the client deadline: how it ended, and
    whether a 529 came from the proxy itself."""
    extra = {KEY_HEADER: key}
    try:
        async with asyncio.timeout(CLIENT_DEADLINE):
            if stream:
                events = await client.messages.create(model=model, max_tokens=max_tokens,
                                                      messages=PROMPT, stream=True,
                                                      extra_headers=extra)
                stopped = False
                async for event in events:
                    stopped = stopped or event.type == "message_stop"
                return ("ok" if stopped else "no answer: stream ended without message_stop",
                        False)
            message = await client.messages.create(model=model, max_tokens=max_tokens,
                                                   messages=PROMPT, extra_headers=extra)
            return ("ok" if message.content else "no answer: empty message"), False
    except anthropic.APIStatusError as error:
        body = error.body
        shaped = (isinstance(body, dict) and body.get("type") == "error"
                  and isinstance(body.get("error"), dict) and body["error"].get("type"))
        if not shaped:
            return f"no answer: not Anthropic-shaped {error.status_code} {body!r:.80}", False
        message = str(body["error"].get("message", ""))
        return (f"error {error.status_code} {body['error']['type']}",
                error.status_code == 529 and "routing proxy" in message)
    except (anthropic.APIConnectionError, TimeoutError) as error:
        return f"no answer: {type(error).__name__}", False


def run_mix(url: str, fake: FakeUpstream, concurrency: int) -> list[Ending]:
    plan = [(kind, make) for kind, count, make in MIX for _ in range(count)]
    random.Random(9).shuffle(plan)
    models = ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7")

    async def run() -> list[Ending]:
        gate = asyncio.Semaphore(concurrency)
        client = anthropic.AsyncAnthropic(base_url=url, api_key=API_KEY,
                                          timeout=CLIENT_DEADLINE)

        async def one(i: int, kind: str, make: Kind) -> Ending:
            stream = kind in SLOW_KINDS[1:] or i % 2 == 0
            key = f"mix-{i}"
            fake.script_for(key, *make())
            async with gate:
                started = time.monotonic()
                result, local = await sdk_request(client, key, models[i % 3], stream)
                return Ending(kind, stream, result, time.monotonic() - started, local)

        try:
            return await asyncio.gather(*(one(i, k, m) for i, (k, m) in enumerate(plan)))
        finally:
            await client.close()

    return asyncio.run(run())


def mix_table(endings: list[Ending]) -> str:
    """The figures of a mix run, by fault, for the docs."""
    lines = ["| upstream fault | requests | complete answers | Anthropic-shaped errors | "
             "no answer | slowest (s) |", "|---|---:|---:|---:|---:|---:|"]
    for kind, _, _ in MIX:
        rows = [e for e in endings if e.kind == kind]
        ok = sum(e.result == "ok" for e in rows)
        errors = sum(e.result.startswith("error") for e in rows)
        lines.append(f"| {kind} | {len(rows)} | {ok} | {errors} | {len(rows) - ok - errors} | "
                     f"{max(e.seconds for e in rows):.1f} |")
    return "\n".join(lines)


def test_the_fault_mix_with_the_shipped_config(fake: FakeUpstream, start_proxy: Any) -> None:
    """The 300-request mix through the shipped router.yaml, 16 SDK clients at a time, each
    giving up after 60 s: every request gets a complete answer or an Anthropic-shaped error,
    the recoverable ones recover, the hung ones end within 30 s, the proxy refuses nothing
    itself, and its extra attempts stay within the retry budget."""
    started = time.monotonic()
    url = start_proxy(None)  # router.yaml as shipped, only pointed at the fake
    config = RUNNING[url].state.policy.config
    endings = run_mix(url, fake, concurrency=16)
    elapsed = time.monotonic() - started
    print("\n" + mix_table(endings))
    no_answer = [e for e in endings if e.result.startswith("no answer")]
    assert not no_answer, no_answer
    for kind in ("plain", "20 ms delay", "first two attempts 529", "first attempt 429",
                 "connection dropped"):
        failed = [e for e in endings if e.kind == kind and e.result != "ok"]
        assert not failed, (kind, failed)
    assert not [e for e in endings if e.proxy_made_529]
    slow = [e for e in endings if e.kind in SLOW_KINDS and e.seconds >= 30]
    assert not slow, slow
    assert wait_for(lambda: total(scrape(url), "router_requests_total") >= len(endings), 10)
    proxy_requests = total(scrape(url), "router_requests_total")
    extra = len(fake.received) - proxy_requests
    budget = config.upstream.retry_budget
    allowed = budget.burst + budget.ratio * proxy_requests + budget.min_per_second * elapsed
    print(f"client requests {len(endings)}, proxy requests {proxy_requests:.0f}, upstream "
          f"attempts {len(fake.received)}, extra {extra:.0f} (budget {allowed:.0f}), "
          f"{elapsed:.0f} s")
    assert extra <= allowed


def count_attempts(base_url: str, fake: FakeUpstream, n: int, concurrency: int) -> int:
    """Upstream attempts for ``n`` SDK calls (default retries) under a 529 that never ends."""
    fake.clear()
    fake.script(*[Fail(529, "overloaded_error")] * (n * 12))

    async def run() -> list[str]:
        gate = asyncio.Semaphore(concurrency)
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key=API_KEY, timeout=30)

        async def one(i: int) -> str:
            async with gate:
                return (await sdk_request(client, f"overload-{i}", "claude-sonnet-4-6",
                                          stream=i % 2 == 0))[0]
        try:
            return await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await client.close()

    results = asyncio.run(run())
    assert all(r == "error 529 overloaded_error" for r in results), results
    return len(fake.received)


def test_a_persistent_overload_is_not_multiplied(fake: FakeUpstream, start_proxy: Any) -> None:
    """Every model answers 529 forever: through the shipped config the SDK's calls reach the
    upstream at most 1.5x as often as the SDK calling the API directly."""
    n = 40
    direct = count_attempts(fake.url, fake, n, concurrency=8)
    url = start_proxy(None)
    proxied = count_attempts(url, fake, n, concurrency=8)
    print(f"\nupstream attempts per client request under a persistent 529: SDK direct "
          f"{direct / n:.2f}, through the proxy {proxied / n:.2f} "
          f"(ratio {proxied / direct:.2f})")
    assert direct == 3 * n  # the SDK's own 2 retries
    assert proxied <= 1.5 * direct
