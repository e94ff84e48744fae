"""Time stage 2 (token estimate + classify) and the rules, for conversations of growing size.

Usage::

    python bench/bench_classify.py [--runs N] [--sizes 1000,8000,...]

Each size is an agent-style conversation (a coding-agent system prompt, tool definitions, then
turns of prose, code and tool results) grown until the token counter reports about that many
tokens. *Cold* times use a fresh :class:`TokenCounter` each run, so every block is tokenized;
*warm* times reuse one counter that has already seen the conversation, which is the steady state
of a chat or agent loop that resends its history each turn. Parsing (stage 1) is not included.
Each timed run is the whole of stages 2-3 as the proxy runs them: the estimate, ``classify``
(features and the fitted complexity model) and ``decide`` over the embedded default rules. The
scorer alone is timed too (its budget is 30 µs).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.parse import Parsed, parse_messages  # noqa: E402
from router.pipeline import DEFER_CHARS  # noqa: E402
from router.routing.classify import classify  # noqa: E402
from router.routing.decide import decide  # noqa: E402
from router.routing.encoding import find_encoding  # noqa: E402
from router.routing.rules import load_policy  # noqa: E402
from router.routing.scorer import default_scorer  # noqa: E402
from router.routing.tokens import TokenCounter  # noqa: E402

SIZES = (1_000, 8_000, 32_000, 128_000, 200_000)

_SYSTEM = (
    "You are an autonomous software engineering agent working in the user's repository. "
    "Read files before editing them, keep changes minimal, run the tests after each change, "
    "and explain what you did in one or two sentences.\n"
) * 3
_TOOLS = [
    {
        "name": name,
        "description": f"{name}: operate on the repository ({name} semantics as documented).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "pattern": {"type": "string"}},
            "required": ["path"],
        },
    }
    for name in ("bash", "read_file", "write_file", "edit_file", "glob", "grep", "todo_write")
]
_CODE = "\n".join(
    f"    def method_{i}(self, value: int) -> int:\n        return value * {i} + self.offset"
    for i in range(40)
)
_PROSE = (
    "The handler reads the request, validates the payload against the schema, and writes an "
    "audit record before committing. Errors are mapped to HTTP status codes in one place. "
) * 10


def conversation(target_tokens: int, counter: TokenCounter) -> dict[str, Any]:
    """Build a request body whose estimate is just over ``target_tokens``."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Add retry with backoff to the upstream client and tests."}
    ]
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 16000,
        "system": _SYSTEM,
        "tools": _TOOLS,
        "messages": messages,
    }
    turn = 0
    while True:
        turn += 1
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": f"Step {turn}: reading the next file.\n{_PROSE}"},
                    {"type": "tool_use", "id": f"t{turn}", "name": "read_file",
                     "input": {"path": f"src/mod_{turn}.py"}},
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": f"t{turn}",
                     "content": f"# src/mod_{turn}.py\nclass Mod{turn}:\n{_CODE}"},
                ],
            }
        )
        parsed = _parse(body)
        if counter.estimate(parsed.request).tokens >= target_tokens:
            return body


def _parse(body: dict[str, Any]) -> Parsed:
    return parse_messages(msgspec.json.encode(body), {"x-app": "cli"})


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def main(argv: list[str] | None = None) -> int:
    """Print the p50/p99 table; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per cell")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="token targets")
    args = parser.parse_args(argv)

    encoding, source = find_encoding()
    policy = load_policy(None)  # the embedded default: its rules are always evaluated
    print(f"encoding: {source}; rules: {len(policy.rules)} of {policy.loaded.source}")
    print(f"{'tokens':>8} {'msgs':>5} {'cold p50':>9} {'cold p99':>9} {'warm p50':>9} "
          f"{'warm p99':>9}   (ms: estimate + classify + rules)")
    for target in (int(s) for s in args.sizes.split(",")):
        body = conversation(target, TokenCounter(encoding, source=source))
        parsed = _parse(body)

        def once(counter: TokenCounter, parsed: Parsed = parsed) -> float:
            t0 = time.perf_counter()
            # What the proxy does on the request path: a little new text is approximated and
            # counted exactly in a thread afterwards (not timed: it is off the path).
            estimate = counter.estimate(parsed.request, defer_up_to=DEFER_CHARS)
            features = classify(parsed, estimate, token_factor=1.0, requested_tier="sonnet",
                                complexity=policy.config.complexity)
            decide(features, policy)
            return time.perf_counter() - t0

        cold_runs = max(5, args.runs // 10) if target > 32_000 else args.runs
        gc.collect()  # start each series clean; collections during it are part of the cost
        cold = [once(TokenCounter(encoding, source=source)) for _ in range(cold_runs)]
        warm_counter = TokenCounter(encoding, source=source)
        warm_counter.estimate(parsed.request)  # the conversation's earlier turns, seen
        gc.collect()
        warm = [once(warm_counter) for _ in range(args.runs)]
        tokens = warm_counter.estimate(parsed.request).tokens
        c50, c99 = _ms(cold)
        w50, w99 = _ms(warm)
        print(f"{tokens:>8} {len(body['messages']):>5} {c50:>9.2f} {c99:>9.2f} {w50:>9.3f} "
              f"{w99:>9.3f}")
    counter = TokenCounter(encoding, source=source)
    parsed = _parse(conversation(8_000, counter))
    features = classify(parsed, counter.estimate(parsed.request), token_factor=1.0,
                        requested_tier="sonnet")
    scorer, values = default_scorer(), msgspec.structs.asdict(features)
    timings = []
    for _ in range(max(1000, args.runs * 10)):
        t0 = time.perf_counter()
        scorer.score(values)
        timings.append(time.perf_counter() - t0)
    s50, s99 = _ms(timings)
    print(f"scorer alone ({len(scorer.terms)} terms): p50 {s50 * 1000:.1f} µs, "
          f"p99 {s99 * 1000:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
