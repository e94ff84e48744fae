"""Cost of the account stage per request (metrics, cost, counterfactual, log decision).

    .venv/bin/python bench/bench_account.py [--n 20000]

A script, not a test. Target: ≤ 50 µs per request.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from router.accounting.account import Books, Record, account
from router.accounting.metrics import Metrics
from router.config_file import default_config_text
from router.routing.decide import Decision
from router.routing.factor import FactorLearner
from router.routing.rules import parse_policy
from router.upstream.relay import Outcome
from router.wire import CacheCreation, Usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    policy = parse_policy(default_config_text())
    books = Books(Metrics(), FactorLearner())
    books.configure(policy)
    books.logger.setLevel(logging.WARNING)  # measure accounting, not log I/O
    usage = Usage(input_tokens=1200, output_tokens=300, cache_read_input_tokens=5000,
                  cache_creation_input_tokens=800, cache_creation=CacheCreation(800, 0))
    cases = []
    for model, tier, rule, stream in [("claude-haiku-4-5", "haiku", "simple-to-haiku", True),
                                      ("claude-sonnet-4-6", "sonnet", "default", False),
                                      ("claude-opus-4-7", "opus", "complex-to-opus", True)]:
        outcome = Outcome(status=200, model=model, usage=usage, stream=stream, attempts=1,
                          first_sent_at=1.0, sent_at=1.0, upstream_seconds=0.5,
                          first_byte_seconds=0.1, first_token_seconds=0.2)
        decision = Decision(model, tier, rule, "bench")  # type: ignore[arg-type]
        cases.append(Record("req_x", "POST", "/v1/messages", 200, decision,
                            "claude-opus-4-7", outcome, 0.6, 0.999, None, 6000))
    for record in cases * 500:  # warm up: label children get bound
        account(record, books)
    samples = []
    for i in range(args.n):
        record = cases[i % 3]
        t = time.perf_counter_ns()
        account(record, books)
        samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    print("| account stage | p50 | p99 | mean | target |")
    print("|---|---:|---:|---:|---|")
    print(f"| per request ({args.n} requests) | {samples[len(samples) // 2]:.1f} µs | "
          f"{samples[int(len(samples) * 0.99)]:.1f} µs | {statistics.mean(samples):.1f} µs "
          "| ≤ 50 µs |")


if __name__ == "__main__":
    main()
