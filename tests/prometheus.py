"""A real Prometheus for the tests: find (or install) the binaries, run one on loopback, query it.

Not a test module: ``tests/test_dashboards.py`` uses it to check the alert rules with promtool
and to evaluate every dashboard and alert expression against a Prometheus scraping a real proxy.

CI gets Prometheus from Debian's package, installed on first use (CI runs as root). Set
``ROUTER_SKIP_PROMETHEUS=1`` to skip these tests on a machine without it instead of installing.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests import procs
from tests.debian import ensure_package
from tests.procs import free_port

SKIP_ENV = "ROUTER_SKIP_PROMETHEUS"

T = TypeVar("T")


def ensure_prometheus() -> tuple[str, str]:
    """Return the paths of ``prometheus`` and ``promtool``, installing them if needed.

    Fails the calling test when they cannot be had (skips it instead when
    ``ROUTER_SKIP_PROMETHEUS=1``); the outcome is remembered for the session.
    """
    prometheus, tool = ensure_package("prometheus", ("prometheus", "promtool"), SKIP_ENV,
                                      "to test the dashboards and alerts")
    return prometheus, tool


def promtool(args: Sequence[str], stdin: bytes | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run promtool with ``args`` (and ``stdin``); return the finished process."""
    tool = ensure_prometheus()[1]
    return subprocess.run([tool, *args], input=stdin.decode() if stdin is not None else None,
                          capture_output=True, text=True, timeout=120, check=False)


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.1) -> T:
    """Call ``check`` until it returns something other than None or False; return that."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except (OSError, AssertionError, ValueError) as err:
            result, last_error = None, err
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


@contextmanager
def running_prometheus(target: str, rule_files: Sequence[str | Path] = (),
                       job: str = "router", interval: str = "1s",
                       metrics_path: str = "/metrics") -> Iterator[str]:
    """Run a real Prometheus scraping ``target`` (``host:port``) every ``interval``.

    It evaluates ``rule_files`` at the same interval, keeps its data in a temporary directory
    and listens on a free loopback port. Yields its base URL once ``/-/ready`` answers; stops
    it (and removes the data) on exit.
    """
    binary = ensure_prometheus()[0]
    with tempfile.TemporaryDirectory(prefix="router-prometheus-") as tmp:
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [{"job_name": job, "metrics_path": metrics_path,
                                "static_configs": [{"targets": [target]}]}],
        }
        config_path = Path(tmp, "prometheus.yml")
        config_path.write_text(yaml.safe_dump(config))
        log_path = Path(tmp, "prometheus.log")
        for attempt in range(3):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = [binary, f"--config.file={config_path}",
                    f"--storage.tsdb.path={Path(tmp, 'data')}",
                    f"--web.listen-address=127.0.0.1:{port}"]
            try:
                with procs.started(args, ready=procs.url_answers(f"{url}/-/ready"), log=log_path):
                    yield url
                    return
            except procs.ProcessFailed as err:
                if attempt < 2 and "address already in use" in str(err):
                    continue  # lost the port to someone else between probe and bind
                raise AssertionError(f"Prometheus did not become ready: {err}") from None


def api(base_url: str, path: str, **params: str) -> Any:
    """GET a Prometheus HTTP API endpoint; return its ``data``, or raise with its error."""
    query = urllib.parse.urlencode(params)
    status, body = _get(f"{base_url}{path}?{query}" if query else f"{base_url}{path}")
    payload = json.loads(body)
    if status != 200 or payload.get("status") != "success":
        raise ValueError(f"{path} {params}: HTTP {status}: {payload.get('errorType')}: "
                         f"{payload.get('error')}")
    return payload["data"]


def query(base_url: str, expr: str) -> list[dict[str, Any]]:
    """Evaluate ``expr`` now (``/api/v1/query``); return the result as a list of samples.

    Each sample is ``{"metric": {labels}, "value": float}``; a scalar result is one sample
    with no labels.
    """
    data = api(base_url, "/api/v1/query", query=expr)
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": float(data["result"][1])}]
    if data["resultType"] != "vector":
        raise ValueError(f"{expr}: unexpected result type {data['resultType']}")
    return [{"metric": item["metric"], "value": float(item["value"][1])}
            for item in data["result"]]


def value(base_url: str, expr: str) -> float | None:
    """The single value of ``expr`` now, or None when it has no (or a NaN) result."""
    samples = query(base_url, expr)
    if not samples:
        return None
    if len(samples) != 1:
        raise ValueError(f"{expr}: {len(samples)} series, expected one")
    result = samples[0]["value"]
    return None if math.isnan(result) else result


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s"}


def grafana_to_promql(expr: str) -> str:
    """Substitute the values Grafana would put for its built-in variables in ``expr``."""
    for name, replacement in GRAFANA_VARIABLES.items():
        expr = expr.replace("${" + name[1:] + "}", replacement).replace(name, replacement)
    if "$" in expr:
        raise ValueError(f"unsubstituted variable in {expr!r}")
    return expr


_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def comparisons_as_bool(expr: str) -> str:
    """Return ``expr`` with its outermost comparisons turned into ``bool`` ones.

    ``a > 0.05`` filters out the series where the condition is false; ``a > bool 0.05`` keeps
    every series with 0 or 1. Evaluating an alert's expression that way shows that all its
    parts have data and that its vector matching works, whether or not it fires now.
    Comparisons inside parentheses (filters such as ``max(budget > 0)``) stay as they are.
    """
    out: list[str] = []
    braces = 0
    parens = 0
    quote: str | None = None
    i = 0
    while i < len(expr):
        char = expr[i]
        if quote is not None:
            out.append(char)
            if char == "\\" and quote != "`" and i + 1 < len(expr):
                out.append(expr[i + 1])
                i += 1
            elif char == quote:
                quote = None
            i += 1
            continue
        if char in "\"'`":
            quote = char
        elif char == "{":
            braces += 1
        elif char == "}":
            braces -= 1
        elif char == "(":
            parens += 1
        elif char == ")":
            parens -= 1
        elif braces == 0 and parens == 0:
            operator = next((op for op in _COMPARISONS if expr.startswith(op, i)), None)
            if operator is not None:
                out.append(operator)
                i += len(operator)
                if not expr[i:].lstrip().startswith("bool"):
                    out.append(" bool")
                continue
        out.append(char)
        i += 1
    return "".join(out)
