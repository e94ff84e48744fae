"""``router.yaml`` as a file: read, decoded into :mod:`router.config`'s types, checked, and
every problem reported with the key and YAML line it is about.

The types reject unknown keys and wrong types; :func:`semantic_problems` adds the checks no type
can express (missing tiers, positive numbers, URL schemes). :class:`Overrides` are the settings
from the environment that change every config loaded, reloads included.
"""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import yaml

from router.config import TIERS, Config, KeyConfig, Limits, StateConfig

DEFAULT_CONFIG_NAME = "default.yaml"


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with where it came from."""

    config: Config
    source: str
    """The file path, or ``<embedded default>``."""
    sha256: str
    """Hash of the file's bytes, exported so dashboards can tell which config is live."""
    lines: dict[str, int] = field(default_factory=dict)
    """YAML line of each key, by path (``$.rules[2].when``), for messages about the file."""
    files: tuple[str, ...] = ()
    """Other files the config read (the keys file): a change to them reloads it too."""

    def line_of(self, path: str) -> int | None:
        """Return the YAML line of ``path`` or of its nearest ancestor in the file."""
        return _nearest_line(path, self.lines)


class ConfigError(Exception):
    """The config file is unreadable or invalid; ``problems`` holds one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def default_config_text() -> str:
    """Return the embedded default ``router.yaml`` shipped inside the package."""
    return resources.files("router").joinpath(DEFAULT_CONFIG_NAME).read_text("utf-8")


@dataclass(frozen=True)
class Overrides:
    """Settings from the environment (:mod:`router.settings`) that change every config loaded,
    reloads included."""

    upstream_url: str | None = None
    """Replaces ``upstream.base_url`` ($ROUTER_UPSTREAM_URL)."""
    state_url: str | None = None
    """Replaces ``state.url`` ($ROUTER_STATE_URL), so that a password can stay out of the file."""
    state_dir: str | None = None
    """``state.dir`` where the file leaves it unset ($ROUTER_STATE_DIR, else under
    $XDG_STATE_HOME)."""

    def applied_to_state(self, config: Config) -> Config:
        """Return ``config`` with the state overrides (checked with the file's own keys)."""
        state = config.state
        if self.state_url:
            state = msgspec.structs.replace(state, url=self.state_url)
        if self.state_dir and state.dir is None:
            state = msgspec.structs.replace(state, dir=self.state_dir)
        return config if state is config.state else msgspec.structs.replace(config, state=state)

    def applied(self, config: Config) -> Config:
        """Return ``config`` with every override."""
        return self.applied_to_upstream(self.applied_to_state(config))

    def applied_to_upstream(self, config: Config) -> Config:
        """Return ``config`` with the upstream override."""
        if not self.upstream_url:
            return config
        upstream = msgspec.structs.replace(config.upstream, base_url=self.upstream_url)
        return msgspec.structs.replace(config, upstream=upstream)


NO_OVERRIDES = Overrides()


def load_config(path: str | None = None, *, overrides: Overrides = NO_OVERRIDES) -> LoadedConfig:
    """Read, decode and validate a config file (or the embedded default when ``path`` is None),
    with ``overrides`` applied.

    Raises:
        ConfigError: the file cannot be read or is invalid; the message names the key and line.
    """
    source = path or "<embedded default>"
    try:
        text = Path(path).read_text("utf-8") if path else default_config_text()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from exc
    return parse_config(text, source, overrides=overrides)


def parse_config(text: str, source: str = "<string>", *, overrides: Overrides = NO_OVERRIDES
                 ) -> LoadedConfig:
    """Decode and validate config text. See :func:`load_config`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}".replace("\n", " ")]) from exc
    lines = _key_lines(node) if node is not None else {}
    return decode_config(data, source, text, lines, overrides=overrides)


def decode_config(data: Any, source: str = "<data>", text: str = "",
                  lines: dict[str, int] | None = None, *, overrides: Overrides = NO_OVERRIDES
                  ) -> LoadedConfig:
    """Decode and validate config data as YAML decodes it. See :func:`load_config`.

    Args:
        data: the decoded document (None for an empty one).
        source: where it came from, for messages.
        text: the file's text, hashed (with the keys file it names) into ``sha256``.
        lines: the YAML line of each key, for messages.
        overrides: settings from the environment that change the config.
    """
    lines = lines or {}
    try:
        config = msgspec.convert(data if data is not None else {}, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(source, [located(str(exc), lines)]) from exc
    config = overrides.applied_to_state(config)
    digest = hashlib.sha256(text.encode())
    files: tuple[str, ...] = ()
    if config.keys.file:
        path = _beside(source, config.keys.file)
        keys_text, issued = _read_keys_file(path, source)
        digest.update(keys_text.encode())
        files = (str(path),)
        keys = msgspec.structs.replace(config.keys, issued=config.keys.issued + issued)
        config = msgspec.structs.replace(config, keys=keys)
    problems = semantic_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return LoadedConfig(overrides.applied_to_upstream(config), source, digest.hexdigest(), lines,
                        files)


def _beside(source: str, name: str) -> Path:
    """``name`` as a path: relative ones are relative to the config file's directory."""
    path = Path(name).expanduser()
    if path.is_absolute() or source.startswith("<"):
        return path
    return Path(source).parent / path


def _read_keys_file(path: Path, source: str) -> tuple[str, tuple[KeyConfig, ...]]:
    """Return the text of a keys file and the keys it lists.

    Raises:
        ConfigError: the file cannot be read or is not a list of keys.
    """
    try:
        text = path.read_text("utf-8")
        data = yaml.safe_load(text)
        issued = msgspec.convert(data or [], tuple[KeyConfig, ...], strict=False)
    except OSError as exc:
        raise ConfigError(source, [f"keys.file: cannot read {path}: {exc.strerror or exc}"]
                          ) from exc
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        detail = str(exc).replace("\n", " ")
        raise ConfigError(source, [f"keys.file: {path} is not a list of keys: {detail}"]
                          ) from exc
    return text, issued


def semantic_problems(config: Config) -> list[str]:
    """Return what is wrong with a config that decoded fine (missing tiers, bad values)."""
    problems = [f"tiers.{t}: missing" for t in TIERS if t not in config.tiers]
    for name, tier in config.tiers.items():
        if not tier.model:
            problems.append(f"tiers.{name}.model: empty")
        if tier.context_window <= 0:
            problems.append(f"tiers.{name}.context_window: must be positive")
    for model, caps in config.models.items():
        if caps.context_window <= 0 or caps.max_output_tokens <= 0:
            problems.append(f"models.{model}: context_window and max_output_tokens must be "
                            "positive")
        bad = sorted(set(caps.thinking) - {"enabled", "adaptive", "between_tools"})
        if bad:
            problems.append(f"models.{model}.thinking: unknown type {bad[0]!r} "
                            "(enabled, adaptive, between_tools)")
    if config.conversations.payback_turns < 0:
        problems.append("conversations.payback_turns: must not be negative")
    if not config.upstream.base_url.startswith(("http://", "https://")):
        problems.append("upstream.base_url: must start with http:// or https://")
    if config.server.max_body_bytes <= 0:
        problems.append("server.max_body_bytes: must be positive")
    low, high = config.complexity.simple_below, config.complexity.complex_from
    if low is not None and high is not None and low > high:
        problems.append("complexity.simple_below: must not be above complexity.complex_from")
    for name, tier in config.tiers.items():
        if tier.token_factor <= 0:
            problems.append(f"tiers.{name}.token_factor: must be positive")
        if name in tier.fallbacks:
            problems.append(f"tiers.{name}.fallbacks: a tier cannot fall back to itself")
    for scope, timeouts in [("upstream", config.upstream.timeouts)] + [
        (f"tiers.{n}", t.timeouts) for n, t in config.tiers.items()
    ]:
        for key in timeouts.__struct_fields__:
            value = getattr(timeouts, key)
            if value is None:
                continue
            if key.startswith("per_1k_"):
                if value < 0:
                    problems.append(f"{scope}.timeouts.{key}: must not be negative")
            elif value <= 0:
                problems.append(f"{scope}.timeouts.{key}: must be positive")
    for scope, retry in [("upstream", config.upstream.retry)] + [
        (f"tiers.{n}", t.retry) for n, t in config.tiers.items()
    ]:
        if retry.attempts is not None and retry.attempts < 1:
            problems.append(f"{scope}.retry.attempts: must be at least 1")
    breaker, budget = config.upstream.breaker, config.upstream.retry_budget
    if not 0 < breaker.failure_rate <= 1:
        problems.append("upstream.breaker.failure_rate: must be above 0 and at most 1")
    if breaker.min_requests < 1:
        problems.append("upstream.breaker.min_requests: must be at least 1")
    for key in ("window", "cooldown"):
        if getattr(breaker, key) <= 0:
            problems.append(f"upstream.breaker.{key}: must be positive")
    for key in budget.__struct_fields__:
        if getattr(budget, key) < 0:
            problems.append(f"upstream.retry_budget.{key}: must not be negative")
    if config.server.body_timeout <= 0:
        problems.append("server.body_timeout: must be positive")
    return problems + _state_problems(config.state) + _keys_problems(config) + [
        f"ledger.{key}: must be positive" for key in
        ("max_age_days", "max_mb", "flush_seconds", "max_pending")
        if getattr(config.ledger, key) <= 0]


def _state_problems(state: StateConfig) -> list[str]:
    problems = []
    if state.backend == "redis" and not state.url:
        problems.append("state.url: required with state.backend: redis (or set ROUTER_STATE_URL)")
    if state.url and (problem := redis_url_problem(state.url)):
        problems.append(f"state.url: {problem}")
    for key in ("redis_timeout", "lock_timeout", "max_keys", "memory_max_keys"):
        if getattr(state, key) <= 0:
            problems.append(f"state.{key}: must be positive")
    if state.redis_retry_seconds < 0:
        problems.append("state.redis_retry_seconds: must not be negative")
    return problems


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _keys_problems(config: Config) -> list[str]:
    """What is wrong in the keys, teams and budgets sections."""
    problems = []
    names: set[str] = set()
    hashes: set[str] = set()
    for i, key in enumerate(config.keys.issued):
        where = f"keys.issued[{i}] '{key.name}'"
        if not key.name.strip() or not key.team.strip():
            problems.append(f"{where}: name and team must not be empty")
        if not _SHA256.fullmatch(key.sha256):
            problems.append(f"{where}: sha256 must be 64 lower-case hex digits (the output of "
                            "`router keys new`)")
        if key.name in names:
            problems.append(f"{where}: another key has this name")
        if key.sha256 in hashes:
            problems.append(f"{where}: another key has this sha256")
        names.add(key.name)
        hashes.add(key.sha256)
        problems += _limits_problems(key.limits, f"{where}.limits")
    problems += [f"keys.admin[{i}]: must be 64 lower-case hex digits"
                 for i, h in enumerate(config.keys.admin) if not _SHA256.fullmatch(h)]
    for team, settings in config.teams.items():
        problems += _limits_problems(settings.limits, f"teams.{team}.limits")
    budgets = config.budgets
    problems += _limits_problems(budgets.callers, "budgets.callers")
    for share in ("warn_at", "downgrade_at"):
        value = getattr(budgets, share)
        if value is not None and not 0 < value <= 1:
            problems.append(f"budgets.{share}: must be above 0 and at most 1 (a share of the "
                            "budget)")
    if budgets.timezone != "UTC":
        try:
            zoneinfo.ZoneInfo(budgets.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            problems.append(f"budgets.timezone: unknown time zone {budgets.timezone!r} "
                            "(an IANA name such as Europe/Paris)")
    return problems


def _limits_problems(limits: Limits, where: str) -> list[str]:
    return [f"{where}.{name}: must be positive" for name in limits.__struct_fields__
            if (value := getattr(limits, name)) is not None and value <= 0]


REDIS_SCHEMES = ("redis", "rediss", "unix")


def redis_url_problem(url: str) -> str | None:
    """Return what is wrong with a Redis URL, or None when it is usable."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in REDIS_SCHEMES:
        return "must start with " + ", ".join(s + "://" for s in REDIS_SCHEMES)
    if parts.scheme != "unix" and not parts.hostname:
        return "names no host"
    return None


def redacted_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for logs and output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _key_lines(node: yaml.Node, prefix: str = "$") -> dict[str, int]:
    """Map msgspec-style paths (``$.tiers.haiku.model``, ``$.rules[2]``) to 1-based YAML lines."""
    found: dict[str, int] = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}"
            found[path] = key.start_mark.line + 1
            found.update({k: v for k, v in _key_lines(value, path).items() if k != path})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found.update(_key_lines(item, f"{prefix}[{i}]"))
    return found


def located(message: str, lines: dict[str, int], root: str = "$") -> str:
    """Rewrite a msgspec error ``… - at `$.a.b` `` as ``a.b (line N): …``.

    Args:
        message: msgspec's error text.
        lines: YAML line of each key (:attr:`LoadedConfig.lines`).
        root: where the decoded value sits in the file (``$.rules[2]`` for one rule).
    """
    text, sep, where = message.rpartition(" - at `")
    if not sep:
        text, where = message, "$"
    where = where.rstrip("`")
    if where.startswith("key` in `"):
        # A bad mapping key: name the key itself.
        where = where.removeprefix("key` in `") + "." + text.rpartition(" ")[2].strip("'")
    elif text.startswith("Object contains unknown field"):
        # msgspec reports the parent's path; name the offending key itself.
        where = f"{where}.{text.split('`')[1]}"
    path = _concrete_path(root + where.removeprefix("$"), lines)
    line = _nearest_line(path, lines)
    label = path.removeprefix("$").removeprefix(".") or "(top level)"
    return f"{label} (line {line}): {text}" if line else f"{label}: {text}"


def _concrete_path(path: str, lines: dict[str, int]) -> str:
    """Fill msgspec's ``[...]`` (an unnamed mapping key) with the first key that fits."""
    if "[...]" not in path:
        return path
    pattern = re.compile(
        "".join(r"\.[^.\[]+" if part == "[...]" else re.escape(part)
                for part in re.split(r"(\[\.\.\.\])", path))
    )
    return next((known for known in lines if pattern.fullmatch(known)), path)


def _nearest_line(path: str, lines: dict[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            break
        path = path[:cut]
    return lines.get("$")


def config_as_dict(config: Config) -> dict[str, Any]:
    """Return the config as plain data (for ``router check --json``)."""
    result: dict[str, Any] = msgspec.to_builtins(config)
    if config.state.url:
        result["state"]["url"] = redacted_url(config.state.url)
    return result
