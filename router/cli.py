"""The ``router`` command line: serve, check, explain, demo, schema.

Arguments, output and exit codes only; the work is done by the modules it calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from router.cli_util import fail as _fail
from router.cli_util import policy_or_exit as _load_or_exit
from router.cli_util import settings_of as _settings
from router.config_file import ConfigError, config_as_dict
from router.ledger_cli import ledger, simulate
from router.routing.rules import Policy
from router.settings import LOG_LEVELS, Settings

if TYPE_CHECKING:
    from router.config import StateConfig
    from router.parse import Parsed
    from router.routing.conversations import Conversation

CONFIG_HELP = (
    "Config file [default: $ROUTER_CONFIG, else ./router.yaml, else the embedded default]."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="claude-router", prog_name="router")
def cli() -> None:
    """A cost-aware routing proxy for the Anthropic Messages API.

    Point any Anthropic client's base_url at it; it picks Haiku, Sonnet or Opus for each request
    by the rules in router.yaml and forwards it to the API.

    \b
    Examples:
      router serve                          # ./router.yaml (or the embedded default), port 8080
      router serve --config router.yaml --port 9000 --workers 2
      router check --config router.yaml     # validate, exit 1 with each bad key and line
      router explain request.json           # which model a request would get, and why
      router simulate --config candidate.yaml --html report.html   # last week, re-decided
      router ledger export --since 1d --format csv -o today.csv
      router demo                           # everything, on a simulated upstream, no key
      router keys new --team platform       # a proxy key for managed mode, and its line
      router schema > router.schema.json    # JSON Schema of router.yaml, for editors
    """


@cli.command()
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker processes.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), show_default="info",
              help="Log level [env: ROUTER_LOG_LEVEL].")
def serve(config_path: str | None, host: str, port: int, workers: int,
          log_level: str | None) -> None:
    """Run the proxy.

    \b
    Examples:
      router serve
      ROUTER_UPSTREAM_URL=http://127.0.0.1:9999 router serve --port 8081
      router serve --config /etc/router/router.yaml --host 0.0.0.0 --workers 4

    Clients then use base_url http://HOST:PORT with their own API key.
    """
    import functools

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from router.accounting.metrics import fresh_multiprocess_dir, remove_multiprocess_dir
    from router.app import create_app
    from router.logs import configure_logging

    settings = _settings(config_path, log_level)
    policy = _load_or_exit(settings)
    _check_upstream_keys(policy, settings)
    configure_logging(settings.log_level)
    click.echo(
        f"router: serving on http://{host}:{port} -> {policy.config.upstream.base_url} "
        f"(config {policy.loaded.source}, {len(policy.rules)} rules, "
        f"{workers} worker{'s' if workers > 1 else ''})",
        err=True,
    )
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        # Nothing reads the client's address or scheme, so X-Forwarded-* need not be scanned
        # for on every request (the proxy's own log line is its access log).
        "proxy_headers": False,
        # The upstream's own date/server headers are relayed instead.
        "server_header": False,
        "date_header": False,
        "timeout_graceful_shutdown": policy.config.server.grace_seconds,
    }
    # uvicorn re-raises the SIGTERM it handled once shutdown is done; with this handler
    # in place that ends the process with status 0, as a clean stop should.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if workers == 1:
        single = dataclasses.replace(settings, multiprocess_dir=None)
        uvicorn.run(create_app(single, policy), **common)
        return
    # Workers sum their metrics through files in a directory private to this server. Each
    # worker gets the settings in its spawn arguments (pickled), not through the environment.
    shared = fresh_multiprocess_dir(settings.metrics_dir)
    factory = functools.partial(create_app, dataclasses.replace(settings, multiprocess_dir=shared))
    config = uvicorn.Config(factory, factory=True, workers=workers, **common)
    try:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        remove_multiprocess_dir(shared)


@cli.command()
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the decoded config as JSON.")
def check(config_path: str | None, as_json: bool) -> None:
    """Validate a config file; exit 1 with every problem, each naming the key and its line.

    Checks types and unknown keys, rule conditions (feature names, operators, value types),
    targets, unreachable rules and the default.

    \b
    Examples:
      router check
      router check --config router.yaml
      router check --config router.yaml --json | jq .rules
    """
    policy = _load_or_exit(_settings(config_path))
    if as_json:
        click.echo(json.dumps(config_as_dict(policy.config), indent=2))
    else:
        shadow = policy.shadow
        click.echo(f"{policy.loaded.source}: ok, {len(policy.rules)} rules, default "
                   f"{policy.config.default} (sha256 {policy.loaded.sha256[:12]})"
                   + (f"; shadow {shadow.loaded.source}: ok, {len(shadow.rules)} rules"
                      if shadow else ""))


@cli.command()
@click.argument("request_file", type=click.File("rb"), metavar="REQUEST.json")
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option("--header", "-H", "headers", multiple=True, metavar="NAME:VALUE",
              help="A request header the rules may test (x-app, user-agent, ...). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def explain(request_file: Any, config_path: str | None, headers: tuple[str, ...],
            as_json: bool) -> None:
    """Show how a Messages request would be routed, without calling the API.

    REQUEST.json is a POST /v1/messages body ('-' reads stdin). Prints the decision, every rule
    tried and whether it matched, and the request's features.

    \b
    Examples:
      router explain request.json
      router explain request.json -H 'x-app: cli' --json | jq .decision
      curl -s localhost:8080/v1/router/explain -d @request.json   # the same, from the server
    """
    from router.errors import RouterError
    from router.explain import explanation
    from router.parse import parse_messages
    from router.pipeline import route
    from router.routing.factor import FactorLearner
    from router.routing.tokens import TokenCounter

    settings = _settings(config_path)
    policy = _load_or_exit(settings)
    header_map = {}
    for item in headers:
        name, sep, value = item.partition(":")
        if not sep:
            _fail(f"--header wants NAME:VALUE, got {item!r}")
        header_map[name.strip().lower()] = value.strip()
    try:
        parsed = parse_messages(request_file.read(), header_map)
    except RouterError as err:
        _fail(f"{request_file.name}: {err.message}")
    counter = TokenCounter.load(settings.tiktoken_file)
    config = policy.config
    learner = FactorLearner(priors={t.model: t.token_factor for t in config.tiers.values()})
    conversation = asyncio.run(_conversation_of(parsed, config.state))
    report = explanation(route(parsed, counter.estimate(parsed.request), policy, learner,
                               conversation, explain=True), policy)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(render_explanation(report))


@cli.command()
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--rate", default=5.0, show_default=True, type=float,
              help="Requests per second the traffic generator sends.")
@click.option("--duration", default=0.0, show_default=True, type=float,
              help="Seconds to run; 0 runs until Ctrl-C.")
def demo(config_path: str | None, host: str, port: int, rate: float, duration: float) -> None:
    """See the whole thing work, with no API key: a simulated upstream, the proxy, and traffic.

    The proxy routes a realistic mix of requests by your router.yaml (or the default) to a
    simulated Messages API; point Prometheus and Grafana at it (dashboards/) and watch
    /metrics fill up. Sample requests are written for `router explain`.

    \b
    Examples:
      router demo                         # until Ctrl-C, on http://127.0.0.1:8080
      router demo --rate 20 --duration 60
      curl -s localhost:8080/metrics | grep router_cost_usd_total
    """
    import asyncio
    import tempfile

    from router.demo import sample_files, serve_demo
    from router.logs import configure_logging

    settings = _settings(config_path)
    policy = _load_or_exit(settings)
    path = settings.config_path
    configure_logging("warning")
    scratch = Path(tempfile.mkdtemp(prefix="router-demo-"))
    samples = sample_files(scratch)

    def announce(url: str, upstream: str) -> None:
        click.echo(f"router demo: proxy on {url} -> simulated upstream {upstream}\n"
                   f"  metrics:  {url}/metrics\n"
                   f"  explain:  router explain {samples[3]}\n"
                   f"            curl -s {url}/v1/router/explain -d @{samples[0]}\n"
                   f"  simulate: router simulate --ledger {scratch / 'ledger.db'} "
                   f"--config {path or 'router.yaml'}\n"
                   f"  traffic:  about {rate:g} requests/s"
                   + (f" for {duration:g} s" if duration > 0 else " (Ctrl-C to stop)"),
                   err=True)

    asyncio.run(serve_demo(policy, host, port, rate, duration, announce, scratch))


@cli.group()
def keys() -> None:
    """Issue proxy keys and hash existing ones (docs/budgets.md).

    \b
    Examples:
      router keys new --team platform --name alice-laptop
      router keys new --admin
      echo -n "$ANTHROPIC_API_KEY" | router keys hash
    """


@keys.command("new")
@click.option("--team", help="The team the key's spend counts against.")
@click.option("--name", help="A name for the key (default: the team and a random suffix).")
@click.option("--admin", is_flag=True, help="An admin key, for GET /v1/router/budgets.")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its hash as JSON.")
def keys_new(team: str | None, name: str | None, admin: bool, as_json: bool) -> None:
    """Print a new key, once, and the line to add to router.yaml (or the keys file).

    The key itself is not kept anywhere: give it to its holder now. router.yaml holds only its
    SHA-256, and a running proxy picks the line up when the file is saved.

    \b
    Examples:
      router keys new --team platform
      router keys new --team research --name batch-jobs --json
      router keys new --admin
    """
    from router.budgets import key_hash, new_key

    if not admin and not team:
        _fail("keys new needs --team (or --admin for an admin key)")
    key = new_key()
    digest = key_hash(key)
    name = name or (f"{team}-{digest[:6]}" if team else f"admin-{digest[:6]}")
    line = (f'- "{digest}"' if admin else
            f'- {{name: {json.dumps(name)}, team: {json.dumps(team)}, sha256: "{digest}"}}')
    where = "keys.admin" if admin else "keys.issued (or to the keys file)"
    if as_json:
        click.echo(json.dumps({"key": key, "sha256": digest, "name": None if admin else name,
                               "team": team, "admin": admin, "line": line}))
        return
    click.echo(f"key (shown once, give it to its holder): {key}")
    click.echo(f"add under {where} in router.yaml:")
    click.echo(f"  {line}")


@keys.command("hash")
@click.argument("key_file", type=click.File("r"), default="-", metavar="[FILE]")
def keys_hash(key_file: Any) -> None:
    """Print the SHA-256 of a key read from FILE or stdin (to list a passthrough key).

    \b
    Examples:
      echo -n "$ANTHROPIC_API_KEY" | router keys hash
    """
    from router.budgets import key_hash

    key = key_file.read().strip()
    if not key:
        _fail("no key on input")
    click.echo(key_hash(key))


async def _conversation_of(parsed: Parsed, state: StateConfig) -> Conversation | None:
    """The request's conversation as the server sees it, read from the configured store (the
    same SQLite file or Redis the server uses); without one, a conversation with no state."""
    from router.conversation_state import load_conversation
    from router.state import MemoryStore, StateError, open_store

    try:
        store = await open_store(state)
    except StateError:
        store = MemoryStore(state.memory_max_keys)
    try:
        return await load_conversation(store, parsed)
    finally:
        await store.close()


@cli.command()
def schema() -> None:
    """Print the JSON Schema of router.yaml, generated from the typed config.

    The same schema ships as router/router.schema.json; router.yaml's first line points editors
    with the YAML language server at it, so they complete keys and flag unknown ones as you type.

    \b
    Examples:
      router schema > router.schema.json
      router schema | jq '.["$defs"].TierConfig.properties | keys'
    """
    from router.schema import config_schema

    click.echo(json.dumps(config_schema(), indent=2, ensure_ascii=False))


def render_explanation(report: dict[str, Any]) -> str:
    """Return the human-readable form of an explain report."""
    d = report["decision"]
    lines = [
        f"model     {d['model']}  (tier {d['tier']}, requested {d['requested_model']})",
        f"rule      {d['rule']}: {d['reason']}",
        f"config    {report['config']['source']}",
    ]
    lines += _conversation_lines(d, report.get("conversation"))
    lines += ["", "rules tried, in order:"]
    for r in report["rules"]:
        mark = "✓" if r["matched"] else "·"
        lines.append(f"  {mark} {r['rule']:<28} {r['effect']:<24} when {r['when']}")
    c = report.get("complexity")
    if c:
        (p_up, p_opus), (l_up, l_opus), (b_up, b_opus) = c["probabilities"], c["logits"], c["base"]
        lines += ["", f"complexity {c['score']:g} -> {c['level']} (simple below "
                      f"{c['simple_below']:g}, complex from {c['complex_from']:g})",
                  f"  = 50 x (P(beyond haiku) {p_up:.3f} + P(opus) {p_opus:.3f}), from logits "
                  f"{l_up:+.2f} and {l_opus:+.2f}:",
                  f"  {'beyond':>7} {'opus':>6}",
                  f"  {b_up:+7.2f} {b_opus:+6.2f}  base (an average request)"]
        lines += [f"  {up:+7.2f} {opus:+6.2f}  {t['term']:<32} {t['value']}"
                  for t in c["contributions"] for up, opus in (t["logits"],)]
    lines += ["", "features:"]
    lines += [f"  {k:<22} {v}" for k, v in report["features"].items()]
    return "\n".join(lines)


_ACTIONS = {
    "new": "a new conversation: the rules decide",
    "stay": "the conversation stays on its model",
    "up": "the conversation moves up: the rules ask for a higher tier",
    "down": "the conversation moves down: it pays, or its cache is cold",
    "tool-loop": "inside a tool loop: the model never changes",
    "sticky": "sticky affinity: the first model holds",
    "turn": "decided on its own (affinity turn, or its model cannot serve it)",
    "passthrough": "no tier or rule names the model: sent as asked",
    "request": "no conversation considered",
}


def _conversation_lines(decision: dict[str, Any], conversation: dict[str, Any] | None
                        ) -> list[str]:
    """The plain-words account of what the conversation did, for ``router explain``."""
    lines = [f"turn      {_ACTIONS.get(decision.get('conversation', ''), '')}"]
    if decision.get("strip_thinking_blocks"):
        lines.append(f"          {decision['strip_thinking_blocks']} thinking block(s) another "
                     "model signed are removed from the history")
    for field in decision.get("dropped", ()):
        lines.append(f"          {field} is left out of this request: the model does not "
                     "take it (or the loop left the model that thought)")
    if conversation is None:
        return lines
    caches = ", ".join(f"{m}: {c['tokens']} tokens for {c['expires_in_seconds']} s more"
                       for m, c in conversation["caches"].items()) or "none warm"
    lines += [
        f"conversation {conversation['id']}: {conversation['turns_seen']} turn(s) seen, on "
        f"{conversation['current_model'] or 'no model yet'}"
        f"{', inside a tool loop' if conversation['in_tool_loop'] else ''}",
        f"          cached: {caches}",
        f"          thinking signatures: {conversation['signatures']} in the history, "
        f"{conversation['signatures_known']} with a known signer",
    ]
    return lines


def _check_upstream_keys(policy: Policy, settings: Settings) -> None:
    """Exit with one line per problem unless managed mode finds its upstream keys."""
    from router.budgets import Keyring

    try:
        Keyring(policy.config, settings.environ, policy.loaded.source)
    except ConfigError as err:
        for problem in err.problems:
            click.echo(f"{err.source}: {problem}", err=True)
        sys.exit(1)


def main() -> None:
    """Console entry point: run the command line."""
    cli()


cli.add_command(ledger)
cli.add_command(simulate)
