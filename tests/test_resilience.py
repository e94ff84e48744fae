"""Unit tests of the resilience rules: retries, the retry budget, circuit breakers, waits, the
admission gate and the error renderer, each on its own with a hand-driven clock."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import BreakerConfig, RetryBudgetConfig, RetryConfig, TimeoutsConfig
from router.config_file import parse_config
from router.errors import (
    InvalidRequest,
    MethodNotAllowed,
    Overloaded,
    RequestTimeout,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_response,
    retry_after_value,
)
from router.upstream.resilience import (
    Breakers,
    Gate,
    RetryBudget,
    Shape,
    backoff,
    retry_after,
    should_retry,
    waits_for,
)
from tests.conftest import config_text


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- retry rules


@pytest.mark.parametrize(("status", "headers", "body", "expected"), [
    (529, {}, b"", True),
    (500, {}, b"", True),
    (503, {}, b"", True),
    (408, {}, b"", True),
    (429, {}, b"", True),
    (429, {}, b'{"error":{"details":{"error_code":"enforced_spend_limit_reached"}}}', False),
    (529, {"x-should-retry": "false"}, b"", False),
    (501, {"x-should-retry": "TRUE"}, b"", True),
    (400, {"x-should-retry": "true"}, b"", False),
    (401, {}, b"", False),
    (413, {}, b"", False),
    (409, {}, b"", False),
])
def test_should_retry(status: int, headers: dict[str, str], body: bytes, expected: bool) -> None:
    assert should_retry(status, headers, body) is expected


def test_retry_after_in_every_form() -> None:
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "0.5"}) == 0.5
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after-ms": "soon", "retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "-4"}) == 0.0
    assert retry_after({"retry-after": "whenever"}) is None
    assert retry_after({}) is None
    now = 1_700_000_000.0
    date = formatdate(now + 30, usegmt=True)
    assert retry_after({"retry-after": date}, now=lambda: now) == pytest.approx(30)


def test_backoff_follows_the_sdk_curve() -> None:
    retry = RetryConfig(base_delay=0.5, max_delay=8.0)
    assert backoff(retry, 0, rng=lambda: 0.0) == 0.5
    assert backoff(retry, 1, rng=lambda: 0.0) == 1.0
    assert backoff(retry, 10, rng=lambda: 0.0) == 8.0
    assert backoff(retry, 1, rng=lambda: 1.0) == 0.75


# --------------------------------------------------------------------------- waits

SHIPPED = parse_config(config_text("http://127.0.0.1:9")).config.upstream.timeouts


def test_waits_grow_with_input_and_for_non_streams_with_max_tokens() -> None:
    small_stream = waits_for(SHIPPED, Shape(input_tokens=200, max_tokens=4096, stream=True))
    big_stream = waits_for(SHIPPED, Shape(input_tokens=200_000, max_tokens=4096, stream=True))
    small_json = waits_for(SHIPPED, Shape(input_tokens=200, max_tokens=64))
    long_json = waits_for(SHIPPED, Shape(input_tokens=200, max_tokens=21_333))
    assert small_stream.first is not None and big_stream.first is not None
    assert small_stream.first < 10  # max_tokens does not delay a stream's first event
    assert big_stream.first == pytest.approx(small_stream.first + 0.5 * 199.8)
    assert small_json.first is not None and small_json.first < 12
    # The SDKs refuse non-streamed requests they expect to take over 600 s; the proxy waits
    # at least that long for the largest they allow.
    assert long_json.first is not None and long_json.first >= 600


def test_the_quiet_wait_is_only_for_streams_that_may_pause() -> None:
    plain = waits_for(SHIPPED, Shape(stream=True))
    thinking = waits_for(SHIPPED, Shape(stream=True, may_pause=True))
    assert plain.quiet == plain.idle == SHIPPED.idle
    assert thinking.idle == SHIPPED.idle
    assert thinking.quiet == SHIPPED.quiet
    assert SHIPPED.quiet is not None and SHIPPED.idle is not None
    assert SHIPPED.quiet > 30 > SHIPPED.idle  # pings come at most ~30 s apart


def test_a_small_hung_request_ends_within_30_seconds_with_the_shipped_config() -> None:
    """A timed-out model is not retried but falls back, once: two waits at most."""
    for shape in (Shape(input_tokens=2000, max_tokens=128), Shape(input_tokens=2000, stream=True)):
        first = waits_for(SHIPPED, shape).first
        assert first is not None and 2 * first < 30, shape
    assert SHIPPED.idle is not None and SHIPPED.idle < 30


def test_sizes_below_zero_do_not_shorten_the_wait() -> None:
    waits = waits_for(SHIPPED, Shape(input_tokens=-(10**30), max_tokens=-(10**55)))
    assert waits.first == SHIPPED.first_event


def test_no_timeouts_means_no_limit() -> None:
    waits = waits_for(TimeoutsConfig(), Shape(input_tokens=10, max_tokens=10))
    assert (waits.connect, waits.first, waits.idle, waits.quiet) == (None, None, None, None)


# --------------------------------------------------------------------------- the retry budget


def test_budget_spends_its_burst_then_earns_per_request_and_per_second() -> None:
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_second=1.0, burst=3), clock)
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]
    for _ in range(4):
        budget.earn()  # 0.8 of an attempt
    assert not budget.spend()
    budget.earn()
    assert budget.spend()
    clock.now += 2.0
    assert budget.spend() and budget.spend() and not budget.spend()
    clock.now += 100.0
    assert sum(budget.spend() for _ in range(10)) == 3  # never more than the burst saved


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["request", "retry"]),
                          st.floats(min_value=0, max_value=2)), max_size=300))
def test_budget_bound_holds_for_any_traffic(events: list[tuple[str, float]]) -> None:
    """Extra attempts never exceed burst + ratio x requests + min_per_second x seconds."""
    clock = Clock()
    config = RetryBudgetConfig(ratio=0.2, min_per_second=1.0, burst=10)
    budget = RetryBudget(config, clock)
    started = clock.now
    requests = extra = 0
    for kind, pause in events:
        clock.now += pause
        if kind == "request":
            budget.earn()
            requests += 1
        elif budget.spend():
            extra += 1
        bound = config.burst + config.ratio * requests + config.min_per_second * (
            clock.now - started)
        assert extra <= bound + 1e-9


def test_a_zero_budget_never_retries() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0, min_per_second=0, burst=0), Clock())
    budget.earn()
    assert not budget.spend()


# --------------------------------------------------------------------------- circuit breakers


def breakers(clock: Clock) -> Breakers:
    return Breakers(BreakerConfig(failure_rate=0.5, min_requests=4, window=10, cooldown=5), clock)


def tripped(clock: Clock) -> Breakers:
    """Breakers whose model ``m`` has just opened: four failed requests of four."""
    b = breakers(clock)
    assert [b.record("m", failed=True) for _ in range(4)] == [False, False, False, True]
    return b


def test_opens_on_the_failure_rate_once_the_window_holds_enough() -> None:
    clock = Clock()
    b = breakers(clock)
    assert not b.record("m", failed=True)
    assert not b.record("m", failed=True)
    assert not b.record("m", failed=True)  # 3 of 3 failed, but 3 < min_requests
    assert b.allows("m")
    assert b.record("m", failed=True)
    assert not b.allows("m")


def test_successes_keep_it_closed() -> None:
    clock = Clock()
    b = breakers(clock)
    for _ in range(10):
        assert not b.record("m", failed=False)
        assert not b.record("m", failed=False)
        assert not b.record("m", failed=True)  # a third fail: under half
    assert b.allows("m")


def test_old_verdicts_leave_the_window() -> None:
    clock = Clock()
    b = breakers(clock)
    for _ in range(3):
        b.record("m", failed=True)
    clock.now += 11  # those three are out of the window
    assert not b.record("m", failed=True)
    assert b.allows("m")


def test_open_then_one_probe_then_closed() -> None:
    clock = Clock()
    b = tripped(clock)
    clock.now += 4.9
    assert not b.allows("m")
    clock.now += 0.2
    assert b.allows("m")  # the probe
    assert not b.allows("m")  # one at a time
    b.record("m", failed=False)
    assert b.allows("m") and b.allows("m")
    assert not b.is_open("m")


def test_a_failed_probe_opens_it_again_for_a_full_cooldown() -> None:
    clock = Clock()
    b = tripped(clock)
    clock.now += 5.1
    assert b.allows("m")
    assert b.record("m", failed=True)
    clock.now += 4.9
    assert not b.allows("m")
    clock.now += 0.2
    assert b.allows("m")


def test_a_probe_without_a_verdict_frees_its_slot() -> None:
    clock = Clock()
    b = tripped(clock)
    clock.now += 6
    assert b.allows("m")
    b.release("m")
    assert b.allows("m")


def test_a_request_sent_while_open_that_succeeds_closes_it() -> None:
    clock = Clock()
    b = tripped(clock)
    assert not b.record("m", failed=True)  # sent anyway (nowhere else to go): no change
    assert b.is_open("m")
    b.record("m", failed=False)
    assert not b.is_open("m")


def test_models_are_independent_and_bounded_in_number() -> None:
    clock = Clock()
    b = tripped(clock)
    b.max_models = 3
    assert not b.allows("m") and b.allows("b")
    for name in ("b", "c", "d", "e"):
        b.record(name, failed=False)
    assert len(b) == 3


# --------------------------------------------------------------------------- the gate


def test_gate_bounds_requests_and_bytes() -> None:
    gate = Gate(max_requests=2, max_bytes=100)
    gate.enter()
    gate.enter()
    with pytest.raises(Overloaded) as refused:
        gate.enter()
    assert refused.value.retry_after == 1
    gate.leave()
    gate.enter()
    gate.reserve(60)
    gate.reserve(40)
    with pytest.raises(Overloaded):
        gate.reserve(1)
    gate.release(100)
    gate.reserve(500)  # alone, a body larger than the bound still passes
    assert gate.bytes == 500


# --------------------------------------------------------------------------- error rendering


def rendered(err: Exception) -> tuple[int, dict[str, str], dict[str, object]]:
    assert isinstance(err, (InvalidRequest, MethodNotAllowed, Overloaded, RequestTimeout,
                            UpstreamTimeout, UpstreamUnavailable))
    response = error_response(err, "req_test")
    headers = response.header_dict()
    assert headers["content-length"] == str(len(response.body))
    return response.status, headers, json.loads(response.body)


def test_every_error_has_the_envelope_and_a_request_id() -> None:
    for err in (InvalidRequest("bad"), Overloaded("busy", retry_after=1),
                UpstreamTimeout("slow"), RequestTimeout("slow body"),
                MethodNotAllowed("no", allow="POST"), UpstreamUnavailable("gone")):
        status, headers, body = rendered(err)
        assert status == err.status_code
        assert headers["request-id"] == "req_test" == body["request_id"]
        assert headers["content-type"] == "application/json"
        assert body["type"] == "error"
        assert body["error"] == {"type": err.error_type, "message": err.message}


def test_x_should_retry_follows_the_status_unless_the_proxy_already_retried() -> None:
    assert rendered(InvalidRequest("bad"))[1]["x-should-retry"] == "false"
    assert rendered(UpstreamUnavailable("gone"))[1]["x-should-retry"] == "true"
    assert rendered(RequestTimeout("slow"))[1]["x-should-retry"] == "true"
    assert rendered(UpstreamTimeout("slow", should_retry=False))[1]["x-should-retry"] == "false"


def test_a_405_names_the_methods_allowed() -> None:
    status, headers, _ = rendered(MethodNotAllowed("GET is not allowed", allow="POST"))
    assert status == 405
    assert headers["allow"] == "POST"


@pytest.mark.parametrize(("seconds", "header"), [
    (0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (26.4, "27"), (27.0, "27")])
def test_retry_after_is_rounded_up(seconds: float, header: str) -> None:
    assert retry_after_value(seconds) == header
    assert rendered(Overloaded("busy", retry_after=seconds))[1]["retry-after"] == header


def test_no_retry_after_when_the_client_is_told_not_to_retry() -> None:
    headers = rendered(UpstreamTimeout("slow", retry_after=3, should_retry=False))[1]
    assert "retry-after" not in headers
