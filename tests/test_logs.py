"""The JSON log line: one object per line that log shippers can parse, whatever the fields."""

from __future__ import annotations

import json
import logging
import re
import sys
from decimal import Decimal

from router.logs import JsonFormatter


def line_of(msg: object, *args: object, exc: bool = False) -> dict[str, object]:
    record = logging.LogRecord("router.access", logging.INFO, __file__, 1, msg, args,
                               sys.exc_info() if exc else None)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    decoded: dict[str, object] = json.loads(text)
    return decoded


def test_a_dict_message_becomes_the_fields_of_the_line() -> None:
    line = line_of({"event": "request", "status": 200, "cost_usd": Decimal("0.000336"),
                    "retries": ["overloaded_error"], "reason": "naïve \"quoted\"\nnewline"})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["ts"]))
    assert line["level"] == "info" and line["logger"] == "router.access"
    assert line["event"] == "request" and line["status"] == 200
    assert line["cost_usd"] == "0.000336"  # money stays exact: a string, not a float
    assert line["retries"] == ["overloaded_error"]
    assert line["reason"] == "naïve \"quoted\"\nnewline"


def test_a_text_message_is_formatted_and_a_traceback_kept() -> None:
    assert line_of("token counter: %s", "cl100k_base")["message"] == "token counter: cl100k_base"
    try:
        raise ValueError("boom")
    except ValueError:
        line = line_of({"event": "internal_error"}, exc=True)
    assert line["event"] == "internal_error"
    assert "ValueError: boom" in str(line["exception"])


def test_values_json_cannot_hold_are_written_as_text() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert line_of({"value": Odd()})["value"] == "odd"
