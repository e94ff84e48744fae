"""A short-lived, bounded memory of which model each conversation was sent to.

Thinking blocks carry signatures bound to the model that wrote them, so a conversation that has
them must go back to that model. The memory is keyed by the client's session id (Claude Code's
``x-claude-code-session-id``) together with a fingerprint of the conversation's first message,
so it works for clients that send no session id at all.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from router.wire import MessageParam

_FINGERPRINT_BYTES = 64 * 1024
"""Enough of the first message to tell conversations apart without hashing huge pastes."""


def conversation_key(messages: list[MessageParam], session_id: str) -> str | None:
    """Return a stable key for the conversation, or None for an empty one."""
    if not messages:
        return None
    first = msgspec.json.encode(messages[0])
    digest = hashlib.blake2b(first[:_FINGERPRINT_BYTES], digest_size=12)
    digest.update(len(first).to_bytes(8, "little"))
    return f"{session_id}:{digest.hexdigest()}"


class ConversationMemory:
    """LRU map of conversation key -> model, with a time-to-live; safe across threads."""

    def __init__(
        self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def model_for(self, key: str) -> str | None:
        """Return the model the conversation last used, if remembered and not expired."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            model, seen = entry
            if self._clock() - seen > self._ttl:
                del self._entries[key]
                return None
            return model

    def remember(self, key: str, model: str) -> None:
        """Record the model a conversation was just sent to."""
        with self._lock:
            self._entries[key] = (model, self._clock())
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
