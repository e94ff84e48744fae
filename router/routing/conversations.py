"""Conversations as a unit of routing: who they are, what they remember, and when they move.

Most traffic that costs money is multi-turn (agent tool loops, chats, questions over a cached
document), and per-request routing breaks it twice: a model switch throws away the prompt cache
(the cache is per model), and thinking blocks carry signatures only the model that wrote them
accepts. So a conversation keeps its model unless moving is safe *and* worth it:

* **Identity.** The caller (a hash of its API key, never the key), Claude Code's session and
  agent ids when sent (a subagent is its own conversation), and a fingerprint of the opening
  message without its ``cache_control`` (a rolling breakpoint moves, the opening does not).
* **The current model** is the one that signed the latest thinking in the history (recorded
  when the answer was relayed), else the one the conversation last used.
* **Inside a tool loop** the model never changes.
* **At a new user turn** (``affinity: cache``) the conversation moves up when the rules ask for
  a higher tier, and down only when the saving over ``payback_turns`` beats rewriting the cached
  prefix on the cheaper model. Thinking signed by another model is stripped when it moves, as
  clients that switch models on purpose do.

Everything here is pure; the store I/O happens in the pipeline, which hands a
:class:`Conversation` to :func:`router.routing.decide.decide`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from router.config import ModelPrice
from router.parse import api_key_of
from router.wire import Block, MessageParam

_TEXT_HEAD = 4096
_TEXT_TAIL = 1024
"""How much of each opening text block the fingerprint reads: enough to tell conversations
apart, bounded so a 200k-token document costs no more than a one-liner."""

SIGNED_BLOCKS = ("thinking", "redacted_thinking")


def caller_of(headers: Mapping[str, str]) -> str:
    """Return a short, non-reversible id of the caller's credential (``x-api-key`` wins over a
    bearer token, as at the API)."""
    return hashlib.blake2b(api_key_of(headers).encode(), digest_size=8,
                           person=b"router-caller").hexdigest()


def conversation_id(caller: str, headers: Mapping[str, str],
                    messages: list[MessageParam]) -> str | None:
    """Return the id of the conversation a request belongs to, or None for an empty one."""
    opening = next((m for m in messages if m.role == "user"), None)
    if opening is None:
        return None
    digest = hashlib.blake2b(digest_size=12, person=b"router-conv")
    for part in (caller, headers.get("x-claude-code-session-id", ""),
                 headers.get("x-claude-code-agent-id", "")):
        digest.update(part.encode())
        digest.update(b"\0")
    _fingerprint(digest, opening.content)
    return digest.hexdigest()


def _fingerprint(digest: Any, content: str | list[Block]) -> None:
    if isinstance(content, str):
        _digest_text(digest, content)
        return
    for block in content:
        text = block.get("text")
        if isinstance(text, str):
            _digest_text(digest, text)
        else:
            # Images, documents, tool results: their content, never their cache_control, which
            # a client's rolling breakpoint adds and removes from turn to turn.
            rest = {k: v for k, v in block.items() if k != "cache_control"}
            digest.update(msgspec.json.encode(rest)[:_TEXT_HEAD])
        digest.update(b"\1")


def _digest_text(digest: Any, text: str) -> None:
    if len(text) > _TEXT_HEAD + _TEXT_TAIL:
        text = text[:_TEXT_HEAD] + text[-_TEXT_TAIL:] + str(len(text))
    digest.update(text.encode())


def signature_hash(signature: str) -> str:
    """Return the key a thinking signature (or redacted ``data``) is remembered under."""
    return hashlib.blake2b(signature.encode(), digest_size=12).hexdigest()


def signature_of(block: Block) -> str | None:
    """Return a thinking or redacted_thinking block's signature, else None."""
    kind = block.get("type")
    value = block.get("signature") if kind == "thinking" else (
        block.get("data") if kind == "redacted_thinking" else None)
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class History:
    """What the conversation so far says about continuity."""

    in_tool_loop: bool
    """The last turn answers tool calls, or the last assistant turn called a tool."""
    latest: tuple[str, ...]
    """Hashes of the thinking signatures of the latest assistant turn that has any."""
    signatures: tuple[str, ...]
    """Hashes of every thinking signature in the history, oldest first, without repeats; the
    pipeline fills it in only when the conversation may mix signers (see
    :func:`all_signatures`), else it is ``latest``."""


def history_of(messages: list[MessageParam]) -> History:
    """Return the continuity facts of a request's messages, reading from the end: a long tool
    loop costs what a short one does."""
    last_user: MessageParam | None = None
    last_assistant: MessageParam | None = None
    latest: tuple[str, ...] = ()
    for message in reversed(messages):
        # Trailing or mid-conversation `system` messages are context: they change nothing here.
        if message.role == "user":
            last_user = last_user or message
        elif message.role == "assistant":
            last_assistant = last_assistant or message
            latest = _signed(message)
            if latest:
                break
    loop = (last_user is not None and _has_block(last_user, "tool_result")) or (
        last_assistant is not None and _has_block(last_assistant, "tool_use"))
    return History(loop, latest, latest)


def all_signatures(messages: list[MessageParam]) -> tuple[str, ...]:
    """Hashes of every thinking signature in ``messages``, oldest first, without repeats."""
    seen: dict[str, None] = {}
    for message in messages:
        if message.role == "assistant":
            seen.update(dict.fromkeys(_signed(message)))
    return tuple(seen)


def _signed(message: MessageParam) -> tuple[str, ...]:
    if not isinstance(message.content, list):
        return ()
    return tuple(signature_hash(s) for b in message.content if (s := signature_of(b)) is not None)


def _has_block(message: MessageParam, kind: str) -> bool:
    return isinstance(message.content, list) and any(b.get("type") == kind
                                                     for b in message.content)


class ModelCache(msgspec.Struct, frozen=True):
    """What a conversation has cached on one model, as the API's usage reported it."""

    tokens: int
    """Tokens read from or written to the cache by the last answer: the cached prefix."""
    expires_at: float
    """Wall-clock seconds when the entry lapses (a hit refreshes it)."""
    ttl: float
    """300 or 3600: which write price a rewrite would pay."""


class ConversationState(msgspec.Struct, frozen=True):
    """What the store keeps per conversation."""

    model: str
    """The model that answered last."""
    turns: int = 0
    output_tokens: float = 0.0
    """Running mean of output tokens per answer: the expected size of the next one."""
    caches: dict[str, ModelCache] = {}
    updated_at: float = 0.0
    signers: tuple[str, ...] = ()
    """Models that signed thinking in this conversation: more than one means a history that
    may mix signers, whose every signature must then be checked."""
    estimate: int = 0
    """The router's input-token estimate of the last request..."""
    reported: int = 0
    """...and the input the API reported for it (uncached, read and written): together they
    turn the next request's estimate into the API's tokens."""


def state_after(state: ConversationState | None, model: str, *, now: float, cache_read: int,
                cache_written: int, written_1h: bool, output_tokens: int,
                signed: bool = False, estimate: int = 0, uncached: int = 0
                ) -> ConversationState:
    """Return a conversation's state after an answer from ``model`` with the given usage
    (``signed``: the answer carried thinking)."""
    caches = dict(state.caches) if state else {}
    cached = cache_read + cache_written
    if cached:
        previous = caches.get(model)
        # A read of an hour-long entry refreshes the hour, whatever the turn wrote beside it.
        long = written_1h or (cache_read and previous is not None and previous.ttl > 300)
        ttl = 3600.0 if long else 300.0
        caches[model] = ModelCache(cached, now + ttl, ttl)
    caches = {m: c for m, c in caches.items() if c.expires_at > now}
    turns = state.turns + 1 if state else 1
    mean = state.output_tokens if state else 0.0
    signers = state.signers if state else ()
    if signed and model not in signers:
        signers = (*signers, model)
    return ConversationState(model, turns, mean + (output_tokens - mean) / min(turns, 8), caches,
                             now, signers, estimate, uncached + cache_read + cache_written)


class Conversation(msgspec.Struct, frozen=True):
    """One request's view of its conversation, loaded from the store by the pipeline (a
    Struct: built for every request, and for every record ``router simulate`` replays)."""

    id: str
    caller: str
    history: History
    state: ConversationState | None
    owners: Mapping[str, str] = msgspec.field(default_factory=dict)
    """Known signers: signature hash -> model."""
    now: float = 0.0
    caching: bool = False
    """The request marks cache breakpoints: the client means to reuse its prefix."""

    def current_model(self) -> str | None:
        """The model the conversation is on: the signer of its latest thinking, else the one it
        last used; None for a new conversation."""
        for signature in reversed(self.history.latest):
            owner = self.owners.get(signature)
            if owner is not None:
                return owner
        return self.state.model if self.state else None

    def foreign(self, model: str, assumed: str | None = None) -> frozenset[str]:
        """Hashes of the signatures in the history that ``model`` did not write; those nobody
        recorded count as ``assumed``'s (the likeliest signer), or as foreign without one."""
        if not self.history.signatures:
            return _NO_SIGNATURES
        return frozenset(h for h in self.history.signatures
                         if self.owners.get(h, assumed) != model)

    def unknown_signatures(self) -> bool:
        """Whether the history carries thinking whose signer nobody recorded."""
        return any(h not in self.owners for h in self.history.signatures)


_NO_SIGNATURES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Payback:
    """The arithmetic of moving a warm conversation to a cheaper model, in USD."""

    pays: bool
    stay: float
    """The next turn on the current model, its cache warm."""
    move: float
    """The next turn on the cheaper model, rewriting its cache."""
    later: float
    """The saving of each later turn once moved."""
    turns: float

    def describe(self, current: str, target: str) -> str:
        """One line a person can check."""
        total = self.stay - self.move + (self.turns - 1) * self.later
        verdict = "moves down" if self.pays else "stays"
        return (f"{verdict}: next turn ${self.stay:.4f} on {current} (cache warm) vs "
                f"${self.move:.4f} on {target} (cache rewritten), then ${self.later:.4f} saved a "
                f"turn; over {self.turns:g} turns moving {'saves' if total > 0 else 'costs'} "
                f"${abs(total):.4f}")


def turn_cost(conversation: Conversation, model: str, price: ModelPrice,
              input_tokens: int) -> float:
    """Estimated USD of the next turn on ``model``: what its warm cache holds is read, the rest
    written (at the conversation's cache TTL), and the answer at the usual length."""
    state = conversation.state
    if state is None:
        return 0.0
    total = _reported_input(state, input_tokens)
    warm = state.caches.get(model)
    held = warm.tokens if warm and warm.expires_at > conversation.now else 0
    held = min(held, total)
    write = price.cache_write_1h if _long_lived(state) else price.cache_write_5m
    return (held * price.cache_read + (total - held) * write
            + state.output_tokens * price.output) / 1e6


def _reported_input(state: ConversationState, input_tokens: int) -> int:
    """This turn's input in the API's tokens: last turn's reported input plus what the
    estimate grew by since, scaled to the API's tokenizer."""
    if not state.estimate or not state.reported:
        return input_tokens
    scale = state.reported / state.estimate
    return state.reported + max(int((input_tokens - state.estimate) * scale), 0)


def _long_lived(state: ConversationState) -> bool:
    return any(c.ttl > 300 for c in state.caches.values())


def payback(conversation: Conversation, current: str, target: str, input_tokens: int,
            prices: tuple[ModelPrice, ModelPrice], turns: float) -> Payback | None:
    """Return whether moving from ``current`` to the cheaper ``target`` pays, or None when the
    conversation has nothing warm on ``current`` (moving then costs nothing extra)."""
    state = conversation.state
    warm = state.caches.get(current) if state else None
    if warm is None or warm.expires_at <= conversation.now or state is None:
        return None
    here, there = prices
    stay = turn_cost(conversation, current, here, input_tokens)
    move = turn_cost(conversation, target, there, input_tokens)
    total = _reported_input(state, input_tokens)
    # Once moved, both would read the whole prefix: a later turn saves the price difference.
    later = (total * (here.cache_read - there.cache_read)
             + state.output_tokens * (here.output - there.output)) / 1e6
    saved = stay - move + (turns - 1) * later
    return Payback(saved > 0, stay, move, later, turns)


def strip_signed(body: dict[str, object], drop: Iterable[str]) -> int:
    """Remove from a decoded request body the thinking blocks whose signature hash is in
    ``drop``; return how many went. An assistant turn left empty keeps its blocks: the API
    refuses empty turns, and one stray block fails no worse than before."""
    drop = frozenset(drop)
    removed = 0
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        kept = [b for b in content if not (isinstance(b, dict)
                                           and (s := signature_of(b)) is not None
                                           and signature_hash(s) in drop)]
        if kept and len(kept) != len(content):
            removed += len(content) - len(kept)
            message["content"] = kept
    return removed


# --------------------------------------------------------------------------- what the store keeps

SIGNATURES_LOOKED_UP = 64
"""The most recent signatures whose owners a request looks up (one store round trip)."""

_state_decoder = msgspec.json.Decoder(ConversationState)


def state_key(conversation: str) -> str:
    """The store key of a conversation's state."""
    return f"conv:{conversation}"


def signature_key(caller: str, signature: str) -> str:
    """The store key of a signature's owner: per caller, so no tenant can claim another's."""
    return f"sig:{caller}:{signature}"


def encode_state(state: ConversationState) -> bytes:
    """Serialise a state for the store."""
    return msgspec.json.encode(state)


def decode_state(raw: bytes | None) -> ConversationState | None:
    """Read a state from the store; None when absent or unreadable (an older format)."""
    if raw is None:
        return None
    try:
        return _state_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def rewritten_body(body: bytes, strip: frozenset[str], drop: tuple[str, ...]) -> bytes:
    """Return ``body`` without the thinking blocks another model signed, and without the fields
    in ``drop`` (``thinking``, ``effort``); the model name is left for the forward stage."""
    data = msgspec.json.decode(body)
    if not isinstance(data, dict):
        return body
    strip_signed(data, strip)
    if "thinking" in drop:
        data.pop("thinking", None)
    output = data.get("output_config")
    if "effort" in drop and isinstance(output, dict):
        output.pop("effort", None)
        if not output:
            data.pop("output_config")
    return msgspec.json.encode(data)
