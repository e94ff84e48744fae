"""What every ``router`` command shares: one-line failures, the settings, the config."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from router.config_file import ConfigError
from router.routing.rules import Policy, load_policy
from router.settings import Settings, SettingsError, environ_with_dotenv


def fail(message: str) -> NoReturn:
    """Print ``message`` as one line on stderr and exit 1: a user's mistake, no traceback."""
    click.echo(f"router: {message}", err=True)
    sys.exit(1)


def settings_of(config_path: str | None, log_level: str | None = None) -> Settings:
    """The settings from the flags given, over the environment, over ``.env``."""
    try:
        return Settings.from_env(environ_with_dotenv(), config_path=config_path,
                                 log_level=log_level)
    except SettingsError as err:
        fail(str(err))


def policy_or_exit(settings: Settings) -> Policy:
    """The config the settings name, compiled; exit 1 with every problem, one per line."""
    try:
        return load_policy(settings.config_path, overrides=settings.overrides)
    except ConfigError as err:
        for problem in err.problems:
            click.echo(f"{err.source}: {problem}", err=True)
        sys.exit(1)
