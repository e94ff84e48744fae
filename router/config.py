"""``router.yaml`` as types: what each section may say, with a docstring under every key.

Every section is a frozen msgspec Struct that rejects unknown keys, so a typo is an error at load
time instead of a setting that silently does nothing; tier and model lookups are methods of
:class:`Config`. Reading the file, the checks no type can express, and the YAML line of each
problem are :mod:`router.config_file`; ``router schema`` draws the JSON Schema from these types.
"""

from __future__ import annotations

import functools
from fnmatch import fnmatchcase
from typing import Any, Literal, TypeVar

import msgspec

Tier = Literal["haiku", "sonnet", "opus"]
TIERS: tuple[Tier, ...] = ("haiku", "sonnet", "opus")
"""The tiers, cheapest first: comparisons on tiers use this order."""



class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class TimeoutsConfig(_Section, frozen=True, kw_only=True):
    """Seconds the proxy waits on the upstream, fitted to each request; a tier may override any.

    The wait for a stream's first event is ``first_event + per_1k_input`` per 1,000 input tokens
    (prefill grows with the prompt); the wait for a non-streamed answer adds ``per_1k_output``
    per 1,000 ``max_tokens`` (the whole answer is generated before its status line). A first
    event or answer that does not come in time is retried or falls back: nothing has reached the
    client yet.
    """

    connect: float | None = None
    """To open a TCP/TLS connection."""
    first_event: float | None = None
    """Base wait for a stream's first event or a non-streamed answer, before the size terms."""
    per_1k_input: float | None = None
    """Added per 1,000 input tokens (prefill time)."""
    per_1k_output: float | None = None
    """Added per 1,000 ``max_tokens`` for a non-streamed answer (generation time)."""
    idle: float | None = None
    """Between two events while the model writes text; a silent stream ends with an ``error``
    event."""
    quiet: float | None = None
    """Between two events where the API itself may go quiet (thinking, tool input, server tools,
    requests with thinking or tools only); it pings there every 15-30 s."""
    total: float | None = None
    """For the whole request, retries and fallbacks included."""


class RetryConfig(_Section, frozen=True, kw_only=True):
    """Retries of one model before any byte of the answer reached the client."""

    attempts: int | None = None
    """Tries per model, the first included (1 = no retry). A timed-out model is not retried:
    the request moves to its fallback, if any."""
    base_delay: float | None = None
    """Seconds before the first retry; doubles each time, with jitter."""
    max_delay: float | None = None
    """Cap of one backoff delay; a longer ``retry-after`` is not waited for."""


class RetryBudgetConfig(_Section, frozen=True, kw_only=True):
    """How many extra upstream attempts (retries and fallbacks) a worker may make, in all.

    A token bucket: every request earns ``ratio`` of an attempt and every second earns
    ``min_per_second``, up to ``burst`` saved; each extra attempt spends one. Over any stretch
    of time, extra attempts <= ``ratio`` x requests + ``min_per_second`` x seconds + ``burst``.
    """

    ratio: float = 0.2
    """Extra attempts earned per request (0.2: at most 20% more attempts than requests)."""
    min_per_second: float = 1.0
    """Extra attempts earned per second whatever the traffic, so a quiet worker still retries."""
    burst: float = 10.0
    """Most extra attempts saved up."""


class BreakerConfig(_Section, frozen=True, kw_only=True):
    """The circuit breaker of each upstream model, on the failure rate of distinct requests.

    Each request counts once per model it tried: failed if the model's last answer to it was a
    529 or another 5xx worth retrying, a lost connection or a timeout; succeeded if the model
    answered (a 2xx, or a 4xx that is the request's own fault). A 429, or a 5xx the upstream
    marks final (``x-should-retry: false``), counts neither way.
    """

    failure_rate: float = 0.5
    """Share of failed requests in the window that opens the circuit."""
    min_requests: int = 20
    """Requests the window must hold before the rate means anything."""
    window: float = 30.0
    """Seconds of history the rate is taken over."""
    cooldown: float = 15.0
    """Seconds the circuit stays open (requests go to the fallback) before one probe."""


class UpstreamConfig(_Section, frozen=True, kw_only=True):
    """Where and how the proxy talks to the Messages API."""

    base_url: str = "https://api.anthropic.com"
    """Root URL of the upstream API; the env var ROUTER_UPSTREAM_URL overrides it."""
    trust_env: bool = False
    """Honour HTTP_PROXY/HTTPS_PROXY. Off by default: corporate proxies break TLS to the API."""
    max_connections: int = 1000
    """Size of the keep-alive pool, per worker."""
    timeouts: TimeoutsConfig = TimeoutsConfig(connect=5.0, first_event=7.0, per_1k_input=0.5,
                                              per_1k_output=28.125, idle=20.0, quiet=90.0,
                                              total=3600.0)
    """Defaults for every tier."""
    retry: RetryConfig = RetryConfig(attempts=3, base_delay=0.5, max_delay=8.0)
    """Defaults for every tier."""
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    breaker: BreakerConfig = BreakerConfig()


class TierConfig(_Section, frozen=True, kw_only=True):
    """One tier: the model it sends to and the requested models that belong to it."""

    model: str
    """The model id requests routed to this tier are sent to."""
    context_window: int = 200_000
    """Input tokens the tier's model holds; larger requests are never sent to it."""
    members: tuple[str, ...] = ()
    """Globs of requested model ids that count as this tier (e.g. ``claude-haiku-*``)."""
    token_factor: float = 1.0
    """Claude tokens per tiktoken token for this tier's model: the prior, refined from usage."""
    fallbacks: tuple[Tier, ...] = ()
    """Tiers tried, in order, when this tier's model stays overloaded or unavailable."""
    timeouts: TimeoutsConfig = TimeoutsConfig()
    """Overrides of ``upstream.timeouts`` for this tier."""
    retry: RetryConfig = RetryConfig()
    """Overrides of ``upstream.retry`` for this tier."""


class ServerConfig(_Section, frozen=True, kw_only=True):
    """Limits of the HTTP surface."""

    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body accepted (the API's own limit is 32 MB)."""
    reload_poll_seconds: float = 1.0
    """How often the config file is checked for changes; 0 turns polling off (SIGHUP still
    reloads)."""
    max_in_flight: int = 512
    """Requests served at once per worker; past it the proxy answers 529 at once."""
    max_buffered_bytes: int = 512 * 1024 * 1024
    """Request-body bytes held at once per worker; past it the proxy answers 529 at once."""
    grace_seconds: float = 30.0
    """On SIGTERM, how long in-flight requests and streams may run before the worker exits."""
    body_timeout: float = 60.0
    """Seconds a client has to send its whole request body; a slower one gets a 408."""


class RuleConfig(_Section, frozen=True, kw_only=True):
    """One routing rule. With ``tier``, ``model`` or ``pin`` it routes (first match wins);
    with only ``cap``/``floor`` it is a guard that bounds whatever routes."""

    name: str
    """Shown in the ``x-router-rule`` header, logs, metrics and ``router explain``."""
    description: str = ""
    when: Any = None
    """Conditions on the request's features; absent means always (see ``router/rules.py``)."""
    tier: Tier | None = None
    """Send to this tier's model."""
    model: str | None = None
    """Send to this exact model id."""
    pin: bool = False
    """Keep the model the client asked for."""
    cap: Tier | None = None
    """Never route above this tier."""
    floor: Tier | None = None
    """Never route below this tier."""
    allow_model_switch: bool = False
    """Let this rule move a conversation that carries thinking blocks to another model."""


class ComplexityConfig(_Section, frozen=True, kw_only=True):
    """Where ``complexity_score`` splits into the ``complexity`` levels rules test."""

    simple_below: float | None = None
    """Scores below this are ``simple``; unset: the fitted model's cross-validated threshold."""
    complex_from: float | None = None
    """Scores from this up are ``complex``; unset: the fitted model's cross-validated
    threshold."""


Affinity = Literal["cache", "turn", "sticky"]
ResponseModel = Literal["requested", "actual"]


class ConversationConfig(_Section, frozen=True, kw_only=True):
    """How a conversation's turns are routed together (see docs/conversations.md)."""

    affinity: Affinity = "cache"
    """``cache``: keep a conversation's model while its prompt cache is warm, move up when the
    rules ask for more, move down only when the saving pays for rewriting the cache; ``turn``:
    decide every request on its own; ``sticky``: the first decision holds for the whole
    conversation. Tool loops never change model, and thinking signatures always go back to the
    model that signed them, whatever the affinity."""
    payback_turns: float = 2.0
    """Turns (the move's own included) within which moving a warm conversation down must pay
    for the cache it rewrites. Short on purpose: a conversation that needed a higher tier once
    often needs it again, and each move back rewrites its cache."""
    tool_loop_floor: Tier | None = "sonnet"
    """The lowest tier for a user turn that may start a tool loop (tools offered, tool choice
    not forced): the loop cannot change model once it runs. ``null`` turns it off."""
    large_prefix_tokens: int = 16_000
    """A conversation whose first turn marks cache breakpoints over at least this many input
    tokens starts no lower than the tier the client asked for: every later move would rewrite
    that prefix, so it is written once where it may be needed most, and the conversation
    moves down only when that pays. 0 turns it off."""
    response_model: ResponseModel = "requested"
    """The ``model`` an answer reports: the one the client asked for (Claude Code drops thinking
    from answers whose model differs, which breaks its cache and tool loops), or the one that
    actually answered. ``x-router-model`` always tells the truth."""
    memory_seconds: float = 3600.0
    """How long a conversation's state (model, cache, thinking signatures) is kept after its
    last request (in the ``state`` store)."""


class ModelConfig(_Section, frozen=True, kw_only=True):
    """What one model can serve: hard limits, like context windows. A request is never routed to
    a model that cannot serve it."""

    context_window: int
    """Input plus output tokens the model holds."""
    max_output_tokens: int
    """The largest ``max_tokens`` it accepts."""
    thinking: tuple[str, ...] = ("enabled",)
    """The ``thinking.type`` values it accepts besides ``disabled`` (``enabled``, ``adaptive``,
    ``between_tools``)."""
    thinking_required: bool = False
    """It refuses ``thinking: {type: disabled}``."""
    effort: tuple[str, ...] = ()
    """The ``output_config.effort`` levels it accepts; empty: it accepts no effort at all."""
    betas: tuple[str, ...] = ()
    """Model-specific ``anthropic-beta`` values it accepts (e.g. the 1M-context beta). A beta
    that some model lists and this one does not makes the request unservable here."""
    aliases: tuple[str, ...] = ()
    """Other ids of the same model (dated snapshots)."""


class LongContextPrice(_Section, frozen=True, kw_only=True):
    """Rates that apply to a whole request once its input exceeds ``threshold`` tokens."""

    threshold: int
    input: float
    output: float


class ModelPrice(_Section, frozen=True, kw_only=True):
    """List prices of one model, USD per million tokens."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    aliases: tuple[str, ...] = ()
    """Other ids billed the same (dated snapshots)."""
    long_context: LongContextPrice | None = None
    geo_multiplier: bool = False
    """Whether ``inference_geo`` multipliers apply to this model."""


class PricingConfig(_Section, frozen=True, kw_only=True):
    """The dated price table: cost is computed from the usage the API reports and these rates."""

    checked: str
    """The date the prices were last checked against the source."""
    source: str = ""
    web_search_per_1000: float = 10.0
    """USD per 1,000 web searches (server tool)."""
    batch_discount: float = 0.5
    """Share of the price paid when the API reports ``service_tier: batch``."""
    inference_geo: dict[str, float] = {}
    """Multipliers by reported ``inference_geo`` (e.g. ``us: 1.1``), for models that opt in."""
    models: dict[str, ModelPrice] = {}


class Limits(_Section, frozen=True, kw_only=True):
    """What a key, a team or a passthrough caller may use (docs/budgets.md). Unset: no limit.

    Spend counts what the account stage prices from reported usage; rates are token buckets
    that refill continuously (a full minute's worth at most)."""

    usd_per_day: float | None = None
    usd_per_week: float | None = None
    usd_per_month: float | None = None
    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    """Uncached input plus cache writes, as the API counts them (cache reads are free)."""
    output_tokens_per_minute: int | None = None
    """Reserved at ``max_tokens`` when a request starts, the unused part given back at its end."""


class KeyConfig(_Section, frozen=True, kw_only=True):
    """One API key the proxy knows (``router keys new`` prints the line to add)."""

    name: str
    """Shown in logs, metrics' budget gauges and ``GET /v1/router/budgets``; never the key."""
    team: str
    sha256: str
    """Hex SHA-256 of the whole key: the key itself is never stored."""
    revoked: bool = False
    """Refuse it with a 401 (kept listed so its spend stays attributed)."""
    limits: Limits = Limits()


class TeamConfig(_Section, frozen=True, kw_only=True):
    """A team: its shared limits and, in managed mode, the upstream key its requests use."""

    limits: Limits = Limits()
    upstream_key_env: str | None = None
    """Environment variable holding this team's Anthropic key (default: the keys section's)."""


class KeysConfig(_Section, frozen=True, kw_only=True):
    """Who calls the proxy (docs/budgets.md)."""

    mode: Literal["passthrough", "managed"] = "passthrough"
    """``passthrough``: clients send their own Anthropic keys, forwarded as they are (a listed
    key gets its name, team and limits); ``managed``: clients send keys the proxy issued, which
    never go upstream, and any other key gets a 401."""
    file: str | None = None
    """A YAML file with more keys (a list shaped like ``issued``), relative to router.yaml."""
    upstream_key_env: str = "ANTHROPIC_API_KEY"
    """Managed mode: the environment variable holding the Anthropic key requests are sent with
    (read once, at start)."""
    admin: tuple[str, ...] = ()
    """Hex SHA-256 of the keys that may read ``GET /v1/router/budgets``."""
    issued: tuple[KeyConfig, ...] = ()


class BudgetsConfig(_Section, frozen=True, kw_only=True):
    """Spend budgets: the daily figure alerts compare against, and when the limits of keys and
    teams warn, downgrade and refuse."""

    daily_usd: float | None = None
    """The whole proxy's daily budget, for the spend alerts (enforced by nothing)."""
    timezone: str = "UTC"
    """Where days, weeks (from Monday) and months begin, as an IANA zone name."""
    warn_at: float = 0.8
    """Share of a budget spent from which answers carry ``x-router-budget-warning``."""
    downgrade_at: float | None = 0.9
    """Share from which requests are capped at ``downgrade_to`` (null: never)."""
    downgrade_to: Tier = "haiku"
    callers: Limits = Limits()
    """Passthrough mode: the limits of each caller (a hash of its key) not listed in keys."""


class StateConfig(_Section, frozen=True, kw_only=True):
    """Where conversation state, spend and rate-limit counters live (see ``docs/state.md``).
    A change takes a restart."""

    backend: Literal["memory", "sqlite", "redis"] = "sqlite"
    """``sqlite``: one file shared by the workers of a host, kept across restarts; ``redis``:
    shared by replicas; ``memory``: each worker its own, lost on restart."""
    dir: str | None = None
    """Directory of the SQLite file; default $ROUTER_STATE_DIR, else
    ~/.local/state/claude-router. Created if missing."""
    url: str | None = None
    """Redis URL (``redis://host:6379/0``, ``rediss://`` for TLS); the env var
    ROUTER_STATE_URL overrides it, so that a password can stay out of this file."""
    on_redis_error: Literal["open", "closed"] = "open"
    """While Redis is unreachable, budgets and rate limits let requests through (``open``) or
    refuse them (``closed``). Conversations always go on from local memory."""
    redis_timeout: float = 1.0
    """Seconds a Redis call may take before it is served from local memory instead."""
    redis_retry_seconds: float = 1.0
    """After Redis failed, seconds before a call tries it again (meanwhile: local memory)."""
    lock_timeout: float = 0.25
    """Seconds a worker waits for another's SQLite write lock (its event loop waits too)
    before the call is served from local memory instead."""
    max_keys: int = 1_000_000
    """Most keys in the SQLite file; beyond it the soonest to expire go (checked every
    minute)."""
    memory_max_keys: int = 100_000
    """Most keys held in memory per worker (the memory backend, and the stand-in while Redis
    or SQLite fails); the least recently used go first."""


class LedgerConfig(_Section, frozen=True, kw_only=True):
    """The request ledger: one record per request, for ``router simulate`` and export (see
    ``docs/simulate.md``). Never prompt or answer text unless ``store_bodies``."""

    enabled: bool = True
    """Write the ledger (SQLite file ``ledger.db``)."""
    dir: str | None = None
    """Directory of ``ledger.db``; unset: the state directory (``state.dir``)."""
    store_bodies: bool = False
    """Also keep each request's body (its prompt): for staging only. ``router simulate`` then
    re-runs the whole classifier, not only the rules."""
    jsonl_dir: str | None = None
    """Also append every record to ``ledger-YYYY-MM-DD.jsonl`` (UTC) here, for shipping."""
    max_age_days: float = 30.0
    """Records (and JSONL files) older than this are deleted."""
    max_mb: float = 1024.0
    """Largest ``ledger.db``; beyond it the oldest records go."""
    flush_seconds: float = 1.0
    """Records are written in one batch at most this often, off the request path."""
    max_pending: int = 100_000
    """Records held in memory while the disk lags; beyond it the oldest are dropped (and
    counted in ``router_ledger_records_total{result="dropped"}``)."""


class Config(_Section, frozen=True, kw_only=True):
    """The whole of ``router.yaml``."""

    version: int = 1
    upstream: UpstreamConfig = UpstreamConfig()
    server: ServerConfig = ServerConfig()
    tiers: dict[Tier, TierConfig]
    rules: tuple[Any, ...] = ()
    """Decoded rule by rule (see :class:`RuleConfig`) so that every bad rule is reported."""
    default: str = "sonnet"
    """Where requests no rule routes go: a tier name, a model id, or ``requested`` (keep it)."""
    complexity: ComplexityConfig = ComplexityConfig()
    conversations: ConversationConfig = ConversationConfig()
    models: dict[str, ModelConfig] = {}
    """Capabilities per model id: what each can serve."""
    pricing: PricingConfig | None = None
    budgets: BudgetsConfig = BudgetsConfig()
    keys: KeysConfig = KeysConfig()
    teams: dict[str, TeamConfig] = {}
    state: StateConfig = StateConfig()
    ledger: LedgerConfig = LedgerConfig()
    shadow: str | None = None
    """A candidate config (path, relative to this file) whose rules are evaluated beside the
    live ones on every request, without calling upstream: ``router_shadow_*`` metrics."""

    def tier_model(self, tier: Tier) -> str:
        """Return the model id a tier sends to."""
        return self.tiers[tier].model

    def tier_of_model(self, model: str) -> Tier | None:
        """Return the tier a model id belongs to: a tier's own model, a member glob, or a tier
        name; None when it belongs to none."""
        for tier in TIERS:
            if model == tier or self.tiers[tier].model == model:
                return tier
        for tier in TIERS:
            if any(fnmatchcase(model, glob) for glob in self.tiers[tier].members):
                return tier
        return None

    def resolve_model(self, requested: str) -> str:
        """Return the model id for a requested name: a tier name maps to its model."""
        return self.tiers[requested].model if requested in self.tiers else requested

    def timeouts(self, tier: Tier | None) -> TimeoutsConfig:
        """Return the timeouts of a tier: its own settings over ``upstream.timeouts``."""
        merged: TimeoutsConfig = _merged(self.upstream.timeouts,
                                         self.tiers[tier].timeouts if tier else None)
        return merged

    def retry(self, tier: Tier | None) -> RetryConfig:
        """Return the retry settings of a tier: its own over ``upstream.retry``."""
        merged: RetryConfig = _merged(self.upstream.retry, self.tiers[tier].retry if tier else None)
        return merged


S = TypeVar("S", TimeoutsConfig, RetryConfig)


@functools.lru_cache(maxsize=256)
def _merged(base: S, override: S | None) -> S:
    """Return ``base`` with every field ``override`` sets replaced."""
    if override is None:
        return base
    changes = {f: v for f in override.__struct_fields__ if (v := getattr(override, f)) is not None}
    return msgspec.structs.replace(base, **changes)
