"""``router ledger export`` and ``router simulate``: the request ledger from the command line
(registered on :func:`router.cli.cli`; see docs/simulate.md)."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from router.cli_util import fail, policy_or_exit, settings_of

LEDGER_HELP = ("The ledger file [default: ledger.db in ledger.dir, else in the state directory, "
               "of the live config].")
LIVE_HELP = ("The live config, whose ledger is read [default: $ROUTER_CONFIG, else ./router.yaml, "
             "else the embedded default].")
SINCE_HELP = "How far back: 30m, 12h, 7d, 2w, a date (2026-11-15) or 'all'."


@click.group()
def ledger() -> None:
    """The request ledger: one record per request (what it asked, how it was routed, what it
    used and cost), never its text. Kept in ledger.db beside the state (see docs/simulate.md).

    \b
    Examples:
      router ledger export --since 7d > week.jsonl
      router ledger export --since 1d --format csv -o today.csv
      router ledger export --since 30d --format parquet -o month.parquet
    """


@ledger.command("export")
@click.option("--config", "config_path", metavar="PATH", help=LIVE_HELP)
@click.option("--ledger", "ledger_file", metavar="FILE", help=LEDGER_HELP)
@click.option("--since", default="7d", show_default=True, help=SINCE_HELP)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]),
              default="jsonl", show_default=True,
              help="jsonl: the records as they are; csv and parquet: one flat row each "
                   "(parquet needs pyarrow: pip install 'claude-router[parquet]').")
@click.option("--output", "-o", metavar="FILE", help="Where to write [default: stdout].")
def export_ledger(config_path: str | None, ledger_file: str | None, since: str, fmt: str,
                  output: str | None) -> None:
    """Write the ledger's records since a time, oldest first.

    \b
    Examples:
      router ledger export --since 7d > week.jsonl
      router ledger export --since 2026-11-15 --format csv -o since-15th.csv
      router ledger export --ledger /var/lib/claude-router/ledger.db --since all -o all.jsonl
    """
    from router.accounting.ledger_files import LedgerError, Reader, export

    path = _ledger_file(config_path, ledger_file)
    start = _since(since)
    if fmt == "parquet" and output is None:
        fail("--format parquet needs --output FILE")
    try:
        entries = Reader(path).entries(start)
        if output is None:
            count = export(entries, fmt, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with open(output, "wb") as out:
                count = export(entries, fmt, out)
    except (LedgerError, OSError) as err:
        fail(str(err))
    click.echo(f"router: {count:,} records from {path}", err=True)


@click.command()
@click.option("--config", "candidate_path", required=True, metavar="CANDIDATE.yaml",
              help="The candidate config to try on recorded traffic.")
@click.option("--since", default="7d", show_default=True, help=SINCE_HELP)
@click.option("--ledger", "ledger_file", metavar="FILE", help=LEDGER_HELP)
@click.option("--live", "live_path", metavar="PATH", help=LIVE_HELP)
@click.option("--html", "html_path", metavar="FILE",
              help="Also write the report as a self-contained HTML page with charts.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def simulate(candidate_path: str, since: str, ledger_file: str | None, live_path: str | None,
             html_path: str | None, as_json: bool) -> None:
    """Replay recorded traffic through a candidate config: what would move, and what it costs.

    Every recorded request is decided again by the candidate's rules (the real engine,
    conversations included), repriced on the model it would go to, and compared with what it
    cost. Prints, per rule and overall: requests moved between tiers, cost before and after,
    savings, and the requests that would move down more than one tier. Nothing is sent
    upstream.

    \b
    Examples:
      router simulate --config candidate.yaml
      router simulate --config candidate.yaml --since 2w --html report.html
      router simulate --config router.yaml --since 1d      # the live config: saves nothing
      router simulate --config candidate.yaml --json | jq .total
    """
    from router.accounting.ledger_files import LedgerError
    from router.accounting.report import html_report
    from router.accounting.simulate import render, simulate_ledger

    candidate = policy_or_exit(settings_of(candidate_path))
    path = _ledger_file(live_path, ledger_file)
    try:
        report = simulate_ledger(path, candidate, _since(since))
    except LedgerError as err:
        fail(str(err))
    if html_path:
        try:
            Path(html_path).write_text(html_report(report, str(path)), "utf-8")
        except OSError as err:
            fail(f"cannot write {html_path}: {err.strerror or err}")
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(render(report, str(path)))
    if html_path:
        click.echo(f"router: report written to {html_path}", err=True)


def _ledger_file(config_path: str | None, ledger_file: str | None) -> Path:
    """The ledger to read: ``--ledger``, else the live config's."""
    if ledger_file:
        return Path(ledger_file).expanduser()
    from router.accounting.ledger import ledger_path

    return ledger_path(policy_or_exit(settings_of(config_path)).config)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _since(text: str) -> float | None:
    """Unix seconds from ``--since`` (a duration back from now, or a date); None for all."""
    text = text.strip().lower()
    if text == "all":
        return None
    unit = DURATION_UNITS.get(text[-1:])
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * unit
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since wants 30m, 12h, 7d, 2w, a date or 'all', got {text!r}")
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()
