"""The replay engine of ``router simulate`` and the shadow policy: a recorded request decided
again by a candidate policy, and repriced on the model it would go to (see
:mod:`router.accounting.simulate` for the whole story and the report)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from router.accounting.cost import PriceTable, Tokens
from router.accounting.entry import ConversationSeen, Entry
from router.config import TIERS
from router.routing.capabilities import Needs
from router.routing.conversations import (
    Conversation,
    ConversationState,
    History,
    state_after,
)
from router.routing.decide import Decision, budget_bound, decide
from router.routing.features import Features
from router.routing.rules import Policy
from router.routing.scorer import default_scorer

OTHER = "other"
MAX_CONVERSATIONS = 200_000
"""Candidate conversation states kept at once (least recently continued dropped first)."""
WHO = ("app", "user_agent", "user_id", "session_id", "request_class", "agent_id",
       "is_subagent", "compaction", "api_key_alias")
"""Features that come from headers: kept as recorded when a stored body is classified again."""


class Step(msgspec.Struct, frozen=True):
    """One recorded request, decided again by the candidate."""

    entry: Entry
    decision: Decision
    model: str | None
    """The model the request is priced on (a recorded fallback's, if the choice is the same)."""
    usage: Tokens
    """Its usage there, as recorded or estimated."""
    cost: Decimal | None
    """At the candidate's prices; None when the model has no price or nothing was billed."""

    @property
    def tier(self) -> str:
        """The candidate's tier (``other`` for a model in none)."""
        return self.decision.tier or OTHER

    @property
    def rule(self) -> str:
        """The candidate's deciding rule."""
        return self.decision.rule


@dataclass(slots=True)
class _Track:
    """The candidate's side of one conversation."""

    state: ConversationState | None
    diverged: bool = False
    """A turn went to another model than recorded: from then on the state is the candidate's
    own."""


@dataclass(slots=True)
class _Shared:
    """The prefix a caller's conversations share (its system prompt and tools), and on which
    models it is warm, as recorded and in the candidate's world."""

    size: float = 0.0
    """Its length in estimated tokens (a model's tokens divided by its factor): what the first
    turn of a conversation read from a cache it had not written."""
    live: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Model -> (when it cools, estimated tokens) of the caller's latest cached prefix there,
    as recorded."""
    candidate: dict[str, tuple[float, float]] = field(default_factory=dict)
    """The same where the candidate sent the caller's requests."""


class Replay:
    """Decides recorded requests again under a candidate policy, conversation by conversation.

    Feed it records in order of arrival; it keeps each conversation's candidate state between
    turns (bounded: :data:`MAX_CONVERSATIONS`).
    """

    def __init__(self, policy: Policy, *, reclassify: bool = True) -> None:
        self.policy = policy
        self.prices = PriceTable(policy.config.pricing)
        self.scorer = default_scorer()
        self.thresholds = self.scorer.thresholds(policy.config.complexity)
        self.memory_seconds = policy.config.conversations.memory_seconds
        self.reclassify = reclassify
        self.priors = {t.model: t.token_factor for t in policy.config.tiers.values()}
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self._counter: Any = None
        self._requested_tiers: dict[str, str] = {}
        self._histories: dict[tuple[bool, int, int], History] = {}
        self._shared: OrderedDict[str, _Shared] = OrderedDict()
        self._needs_seen: dict[tuple[Any, ...], Needs] = {}

    def step(self, entry: Entry) -> Step | None:
        """Decide one record again; None when it never reached routing (a bad request, the
        model list), which no policy changes."""
        features = entry.features
        if entry.rule is None or entry.model is None or features is None:
            return None
        features = self._features(entry, features)
        seen = entry.conversation
        track = self._track(seen)
        conversation = self._conversation(entry, seen, track)
        needs = self._needs(entry, features)
        down = entry.unavailable
        available = (lambda m: m not in down) if down else _always
        decision = decide(features, self.policy, needs=needs, conversation=conversation,
                          available=available)
        if entry.budget_cap in TIERS:
            # A budget near its limit capped the request: the candidate meets the same cap.
            capped = decide(features, self.policy, needs=needs, conversation=conversation,
                            available=available, bound=budget_bound(entry.budget_cap, "budget"))
            if capped.model != decision.model:
                decision = msgspec.structs.replace(capped, rule="budget")
        source = entry.answered_by or entry.model
        # The same choice meets the same fate: a recorded fallback happens again.
        target = source if decision.model == entry.model else decision.model
        usage = entry.usage
        if seen is not None and track is not None and conversation is not None:
            live, state, now = seen.state, conversation.state, seen.now
            shared = self._shared_of(entry.caller or "")
            shared_live = self._shared_warm(entry, shared.live, source, shared, now)
            shared_candidate = self._shared_warm(entry, shared.candidate, target, shared, now)
            if target != source or state is not live or shared_live != shared_candidate:
                lasting = any(c.ttl > 300 for c in (state.caches.values() if state else ()))
                usage = self.repriced(entry, source, target, _warm(live, source, now),
                                      _warm(state, target, now), shared_live, shared_candidate,
                                      lasting=lasting)
            if entry.status == 200 and entry.answered_by is not None:
                self._remember(entry, features, track, state, target, target != source, usage)
                if usage.cached or entry.usage.cached:
                    self._share(entry, shared, source, target, usage)
        elif target != source:
            usage = self.repriced(entry, source, target, 0, 0, 0, 0)
        cost = None
        if target is not None and (usage.input_side or usage.output or usage.web_searches):
            cost = self.prices.cost_of(target, usage, inference_geo=entry.inference_geo,
                                       service_tier=entry.service_tier)
        return Step(entry, decision, target, usage, cost)

    def _needs(self, entry: Entry, features: Features) -> Needs:
        """What the recorded request asked of a model (the same few, over and over: kept)."""
        key = (features.input_tokens + features.max_tokens, features.max_tokens, entry.thinking,
               features.effort, entry.betas)
        needs = self._needs_seen.get(key)
        if needs is None:
            if len(self._needs_seen) >= 4096:
                self._needs_seen.clear()
            needs = self._needs_seen[key] = Needs(
                tokens=key[0], max_tokens=key[1], thinking=entry.thinking,
                effort=features.effort,
                betas=frozenset(entry.betas) if entry.betas else _NO_BETAS)
        return needs

    # -- features

    def _features(self, entry: Entry, features: Features) -> Features:
        """The features the candidate sees: classified again from a stored body, the
        ``complexity`` level under its thresholds, the requested tier under its tiers."""
        if entry.body is not None and self.reclassify:
            features = self._classified(entry, features)
        changes: dict[str, Any] = {}
        if entry.thresholds is not None and entry.thresholds != self.thresholds:
            level = self.scorer.level(features.complexity_score, self.policy.config.complexity)
            if level != features.complexity:
                changes["complexity"] = level
        tier = self._requested_tiers.get(features.requested_model)
        if tier is None:
            config = self.policy.config
            tier = self.policy.tier_of(config.resolve_model(features.requested_model)) or OTHER
            if len(self._requested_tiers) < 4096:  # clients name models: bounded
                self._requested_tiers[features.requested_model] = tier
        if tier != features.requested_tier:
            changes["requested_tier"] = tier
        if not changes:
            return features
        # Features, or a FeatureRow as router simulate reads them: both are Structs.
        return msgspec.structs.replace(features, **changes)

    def _classified(self, entry: Entry, recorded: Features) -> Features:
        from router.errors import RouterError
        from router.parse import parse_messages
        from router.routing.classify import classify
        from router.routing.tokens import TokenCounter

        assert entry.body is not None
        if self._counter is None:
            self._counter = TokenCounter.load()
        try:
            parsed = parse_messages(entry.body.encode(), {})
        except RouterError:
            return recorded
        requested = self.policy.config.resolve_model(recorded.requested_model)
        factor = entry.factors.get(requested, self.priors.get(requested, 1.0))
        fresh = classify(parsed, self._counter.estimate(parsed.request), token_factor=factor,
                         requested_tier=recorded.requested_tier,
                         complexity=self.policy.config.complexity)
        return msgspec.structs.replace(fresh, **{name: getattr(recorded, name) for name in WHO})

    # -- conversations

    def _track(self, seen: ConversationSeen | None) -> _Track | None:
        if seen is None:
            return None
        tracks = self._tracks
        track = tracks.get(seen.id)
        if track is None:
            track = tracks[seen.id] = _Track(None)
            if len(tracks) > MAX_CONVERSATIONS:
                tracks.popitem(last=False)
        else:
            tracks.move_to_end(seen.id)
        return track

    def _conversation(self, entry: Entry, seen: ConversationSeen | None,
                      track: _Track | None) -> Conversation | None:
        """The conversation as the candidate would have loaded it."""
        if seen is None or track is None:
            return None
        live = seen.state
        state = live
        signers = seen.signers
        if track.diverged:
            own = track.state
            fresh = own is not None and seen.now - own.updated_at <= self.memory_seconds
            state = own if fresh else None
            if live is not None and state is not None and live.model != state.model:
                # What the recorded model signed, the candidate's model signed.
                signers = tuple(state.model if s == live.model else s for s in signers)
        key = (seen.tool_loop, len(signers), seen.latest)
        history = self._histories.get(key)
        if history is None:
            # Signatures are known by position: stand-in hashes serve as well as the real ones.
            hashes = tuple(f"s{i}" for i in range(len(signers)))
            history = History(seen.tool_loop, hashes[len(hashes) - seen.latest:], hashes)
            if len(self._histories) < 4096:
                self._histories[key] = history
        owners = {h: s for h, s in zip(history.signatures, signers, strict=True)
                  if s is not None} if signers else {}
        return Conversation(seen.id, entry.caller or "", history, state, owners, seen.now,
                            seen.caching)

    def _remember(self, entry: Entry, features: Features, track: _Track,
                  state: ConversationState | None, model: str | None, moved: bool,
                  usage: Tokens) -> None:
        """Keep the candidate's state after its answer (a 200), as the pipeline saves the live
        one."""
        if model is None:
            return
        track.diverged = track.diverged or moved
        if not track.diverged:
            return
        track.state = state_after(
            state, model, now=entry.ts + entry.latency_ms / 1000,
            cache_read=usage.cache_read,
            cache_written=usage.cache_write_5m + usage.cache_write_1h,
            written_1h=bool(usage.cache_write_1h), output_tokens=usage.output,
            signed=entry.signed, estimate=features.input_tokens, uncached=usage.input)

    def _shared_of(self, caller: str) -> _Shared:
        shared = self._shared.get(caller)
        if shared is None:
            shared = self._shared[caller] = _Shared()
            if len(self._shared) > MAX_CONVERSATIONS:
                self._shared.popitem(last=False)
        return shared

    def _shared_warm(self, entry: Entry, warm: dict[str, tuple[float, float]],
                     model: str | None, shared: _Shared, now: float) -> int:
        """Tokens of the caller's shared prefix warm on ``model`` at ``now``."""
        if model is None or not shared.size:
            return 0
        cools, tokens = warm.get(model, (0.0, 0.0))
        if cools <= now:
            return 0
        return round(min(shared.size, tokens) * self.factor(entry, model))

    def _share(self, entry: Entry, shared: _Shared, source: str | None, target: str | None,
               usage: Tokens) -> None:
        """Learn the caller's shared prefix from a first turn's reads, and note where the
        recorded answer (a 200) and the candidate's cached a prefix (which holds the shared
        one)."""
        recorded = entry.usage
        seen = entry.conversation
        if seen is not None and seen.state is None and recorded.cache_read and source:
            shared.size = recorded.cache_read / self.factor(entry, source)
        done = entry.ts + entry.latency_ms / 1000
        live = self._cached(entry, source, recorded, done)
        if live is not None and source is not None:
            shared.live[source] = live
        # The candidate's answer where the recorded one went is the recorded one.
        same = source == target and usage is recorded
        candidate = live if same else self._cached(entry, target, usage, done)
        if candidate is not None and target is not None:
            shared.candidate[target] = candidate

    def _cached(self, entry: Entry, model: str | None, used: Tokens, done: float
                ) -> tuple[float, float] | None:
        """(When it cools, estimated tokens) of the prefix an answer on ``model`` cached."""
        cached = used.cached
        if model is None or not cached:
            return None
        ttl = 3600.0 if used.cache_write_1h else 300.0
        return done + ttl, cached / self.factor(entry, model)

    # -- repricing

    def factor(self, entry: Entry, model: str) -> float:
        """Claude tokens per estimated token on ``model``: as recorded, else the candidate's
        configured factor for it, else 1."""
        return entry.factors.get(model) or self.priors.get(model, 1.0)

    def repriced(self, entry: Entry, source: str | None, target: str | None,
                 own_live: int, own_candidate: int, shared_live: int, shared_candidate: int,
                 *, lasting: bool = False) -> Tokens:
        """Estimate the usage of a recorded answer on ``target``, from its usage on ``source``.

        Input and output scale by the two models' token factors. Of the cached prefix, the
        part warm where the request goes is read and the rest written: warm is the longer of
        the conversation's own cache there (``own_*``, its tokens) and the caller's shared
        prefix there (``shared_*``), as recorded on ``source`` and in the candidate's world on
        ``target``. What the recorded reads differ from that account of them (a prefix that
        changed, reads the router never saw written) carries over. ``lasting``: the candidate's
        conversation caches for an hour, so its new writes would too.
        """
        u = entry.usage
        scale = 1.0
        if source is not None and target is not None and source != target:
            scale = self.factor(entry, target) / self.factor(entry, source)
        prefix = round(u.cached * scale)
        explained = min(prefix, max(own_live, shared_live) * scale)
        residual = u.cache_read * scale - explained
        cache_read = max(0, min(prefix, round(min(prefix, max(own_candidate, shared_candidate))
                                             + residual)))
        written = prefix - cache_read
        recorded_writes = u.cache_write_5m + u.cache_write_1h
        if recorded_writes:
            long = round(written * u.cache_write_1h / recorded_writes)
        else:
            long = written if lasting else 0
        return Tokens(input=round(u.input * scale), output=round(u.output * scale),
                      cache_read=cache_read, cache_write_5m=written - long, cache_write_1h=long,
                      web_searches=u.web_searches)


_NO_BETAS: frozenset[str] = frozenset()


def _always(model: str) -> bool:
    return True


def _warm(state: ConversationState | None, model: str | None, now: float) -> int:
    """Tokens ``state`` has cached on ``model`` at ``now``."""
    if state is None or model is None:
        return 0
    cache = state.caches.get(model)
    return cache.tokens if cache is not None and cache.expires_at > now else 0
