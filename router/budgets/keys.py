"""Who a request is from: a key the proxy issued or knows, or a passthrough caller.

Keys are kept as SHA-256 hashes only (``keys.issued`` in router.yaml, or the keys file it
names). In ``managed`` mode a client sends a key the proxy issued, which never goes upstream:
the request is sent with an Anthropic key from the environment (the team's, else the default),
read once when the config is loaded. Any other key gets the API's own 401. In ``passthrough``
mode (the default) a client's key goes upstream as it came; a listed one still gets its name,
team and limits, any other is a *caller* known by a keyed hash of its key, with the limits of
``budgets.callers``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from router.config import Config, KeyConfig, Limits
from router.config_file import ConfigError
from router.errors import AuthenticationFailed
from router.parse import api_key_of
from router.routing.conversations import caller_of

KEY_PREFIX = "sk-router-"
NO_LIMITS = Limits()


def new_key() -> str:
    """Return a fresh proxy key: the prefix and 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """Return the hex SHA-256 of a key, as ``keys.issued[].sha256`` and ``keys.admin`` hold."""
    return hashlib.sha256(key.encode()).hexdigest()


def has_limits(limits: Limits) -> bool:
    """Whether any limit is set."""
    return any(getattr(limits, f) is not None for f in limits.__struct_fields__)


@dataclass(frozen=True, slots=True)
class Scope:
    """A team, key or caller, and its limits."""

    kind: Literal["team", "key", "caller"]
    name: str
    limits: Limits

    def describe(self) -> str:
        """How messages name it."""
        if self.kind == "caller":
            return f"this API key (caller {self.name})"
        return f"{self.kind} '{self.name}'"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is charged to."""

    kind: Literal["key", "caller"]
    """``key``: a listed key; ``caller``: a passthrough key nobody listed."""
    name: str
    """The key's name, or the caller's hash: never the key."""
    team: str | None
    scopes: tuple[Scope, ...] = ()
    """Whose limits the request counts against: its team's, then its own (those with any)."""
    upstream_key: str | None = field(default=None, repr=False)
    """Managed mode: the Anthropic key the request goes upstream with."""

    def upstream_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The headers to send upstream: in managed mode the client's key is replaced by the
        upstream key (both its headers: a bearer token would otherwise reach the API)."""
        if self.upstream_key is None:
            return headers
        kept = [(k, v) for k, v in headers if k.lower() not in (b"x-api-key", b"authorization")]
        return [*kept, (b"x-api-key", self.upstream_key.encode("latin-1"))]


class Keyring:
    """The keys and teams of one config, with the upstream keys of managed mode."""

    def __init__(self, config: Config, environ: Mapping[str, str], source: str = "") -> None:
        """Index the config's keys.

        Raises:
            ConfigError: managed mode, and an upstream key's environment variable is unset.
        """
        keys = config.keys
        self.mode = keys.mode
        self.teams: dict[str, Limits] = {team: t.limits for team, t in config.teams.items()}
        for key in keys.issued:
            self.teams.setdefault(key.team, NO_LIMITS)
        self.callers = config.budgets.callers
        self._by_hash: dict[str, KeyConfig] = {k.sha256: k for k in keys.issued}
        self._caller_scopes = has_limits(self.callers)
        self._admin = frozenset(keys.admin)
        self._upstream: dict[str | None, str] = {}
        if self.mode == "managed":
            wanted = {None: keys.upstream_key_env} | {
                team: t.upstream_key_env for team, t in config.teams.items()
                if t.upstream_key_env}
            missing = sorted({v for v in wanted.values() if not environ.get(v)})
            if missing:
                raise ConfigError(source or "<config>", [
                    f"keys.mode is managed but ${name} is not set: requests go upstream with "
                    "the Anthropic key it holds" for name in missing])
            # It goes into a header as it is: printable ASCII only (the value is never shown).
            unusable = sorted({v for v in wanted.values()
                               if not (environ[v].isascii() and environ[v].isprintable())})
            if unusable:
                raise ConfigError(source or "<config>", [
                    f"${name} holds characters an API key cannot have (a line break, a "
                    "non-ASCII letter)" for name in unusable])
            self._upstream = {team: environ[name] for team, name in wanted.items()}
        # Built once: a request looks its identity up, with the limits it counts against.
        self._identities = {k.sha256: self._identity_of(k) for k in keys.issued}

    def _identity_of(self, key: KeyConfig) -> Identity:
        scopes = [Scope("team", key.team, self.teams[key.team]), Scope("key", key.name,
                                                                       key.limits)]
        upstream = (self._upstream.get(key.team) or self._upstream[None]
                    if self._upstream else None)
        return Identity("key", key.name, key.team,
                        tuple(s for s in scopes if has_limits(s.limits)), upstream)

    def identify(self, headers: Mapping[str, str]) -> Identity:
        """Return who the request is from.

        Raises:
            AuthenticationFailed: managed mode, and the key is unknown or revoked.
        """
        digest = key_hash(api_key_of(headers)) if self._by_hash else ""
        listed = self._identities.get(digest)
        if listed is not None:
            if self._by_hash[digest].revoked:
                raise AuthenticationFailed("invalid x-api-key: this key was revoked")
            return listed
        if self.mode == "managed":
            raise AuthenticationFailed("invalid x-api-key")
        caller = caller_of(headers)
        scopes = (Scope("caller", caller, self.callers),) if self._caller_scopes else ()
        return Identity("caller", caller, None, scopes)

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        """Whether the request carries one of ``keys.admin``."""
        key = api_key_of(headers)
        return bool(key) and key_hash(key) in self._admin

    def listed(self) -> list[KeyConfig]:
        """Every listed key (revoked ones included)."""
        return list(self._by_hash.values())
