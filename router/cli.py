"""The ``router`` command line: serve, check.

Arguments, output and exit codes only; the work is done by the modules it calls.
"""

from __future__ import annotations

import json
import os
import sys

import click

from router.config import ConfigError, config_as_dict, load_config, resolve_config_path

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
      router serve                          # embedded default config, port 8080
      router serve --config router.yaml --port 9000 --workers 2
      router check --config router.yaml     # validate, exit 1 with the bad key and line
    """


@cli.command()
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker processes.")
@click.option("--log-level", default=lambda: os.environ.get("ROUTER_LOG_LEVEL", "info"),
              type=click.Choice(["debug", "info", "warning", "error"]), show_default="info",
              help="Log level [env: ROUTER_LOG_LEVEL].")
def serve(config_path: str | None, host: str, port: int, workers: int, log_level: str) -> None:
    """Run the proxy.

    \b
    Examples:
      router serve
      ROUTER_UPSTREAM_URL=http://127.0.0.1:9999 router serve --port 8081
      router serve --config /etc/router/router.yaml --host 0.0.0.0 --workers 4

    Clients then use base_url http://HOST:PORT with their own API key.
    """
    import uvicorn

    from router.app import create_app
    from router.logs import configure_logging

    path = resolve_config_path(config_path)
    loaded = _load_or_exit(path)
    configure_logging(log_level)
    if path:
        # Workers re-read the config from the environment in their own process.
        os.environ["ROUTER_CONFIG"] = os.path.abspath(path)
    click.echo(
        f"router: serving on http://{host}:{port} -> {loaded.config.upstream.base_url} "
        f"(config {loaded.source}, {workers} worker{'s' if workers > 1 else ''})",
        err=True,
    )
    common = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        # The upstream's own date/server headers are relayed instead.
        "server_header": False,
        "date_header": False,
        "timeout_graceful_shutdown": 30,
    }
    if workers > 1:
        uvicorn.run("router.app:create_app", factory=True, workers=workers, **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(loaded), **common)  # type: ignore[arg-type]


@cli.command()
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the decoded config as JSON.")
def check(config_path: str | None, as_json: bool) -> None:
    """Validate a config file; exit 1 and name each bad key and its line.

    \b
    Examples:
      router check
      router check --config router.yaml
      router check --config router.yaml --json | jq .tiers
    """
    loaded = _load_or_exit(resolve_config_path(config_path))
    if as_json:
        click.echo(json.dumps(config_as_dict(loaded.config), indent=2))
    else:
        click.echo(f"{loaded.source}: ok (sha256 {loaded.sha256[:12]})")


def _load_or_exit(path: str | None):  # type: ignore[no-untyped-def]
    try:
        return load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            click.echo(f"{err.source}: {problem}", err=True)
        sys.exit(1)


def main() -> None:
    """Console entry point: read .env, then run the command line."""
    from dotenv import load_dotenv

    load_dotenv(override=False)
    cli()
