"""What the fake received, sent and billed: the records tests read, safe from any thread."""

from __future__ import annotations

import copy
import threading
from collections import deque
from typing import Any

from router.fake.behaviours import Received

__all__ = ["Ledger"]


class Ledger:
    """Requests received, answer bytes sent and usage billed, each in arrival order."""

    def __init__(self, history_limit: int | None = None) -> None:
        """Creates empty records.

        Args:
            history_limit: Keep at most this many of each (oldest dropped); None keeps all.
        """
        self._lock = threading.Lock()
        self._received: deque[Received] = deque(maxlen=history_limit)
        self._billed: deque[dict[str, Any]] = deque(maxlen=history_limit)
        self._sent: deque[bytes] = deque(maxlen=history_limit)

    @property
    def received(self) -> list[Received]:
        """A snapshot of every request received."""
        with self._lock:
            return list(self._received)

    @property
    def billed(self) -> list[dict[str, Any]]:
        """A snapshot of the usage of every answer produced (deep copies)."""
        with self._lock:
            return copy.deepcopy(list(self._billed))

    @property
    def sent(self) -> list[bytes]:
        """A snapshot of the body bytes of every answer written."""
        with self._lock:
            return list(self._sent)

    def clear(self) -> None:
        """Forgets everything recorded."""
        with self._lock:
            self._received.clear()
            self._billed.clear()
            self._sent.clear()

    def receive(self, item: Received) -> None:
        """Records a request."""
        with self._lock:
            self._received.append(item)

    def record_sent(self, data: bytes) -> None:
        """Records the body bytes of one answer."""
        with self._lock:
            self._sent.append(data)

    def bill(self, usage: dict[str, Any]) -> None:
        """Records an answer's usage; the same dict may later be rebilled or unbilled."""
        with self._lock:
            self._billed.append(usage)

    def unbill(self, usage: dict[str, Any]) -> None:
        """Removes a usage recorded by ``bill``."""
        with self._lock:
            # Identity, not equality: two answers may carry equal usage.
            for index, entry in enumerate(self._billed):
                if entry is usage:
                    del self._billed[index]
                    break

    def rebill(self, entry: dict[str, Any], usage: dict[str, Any]) -> None:
        """Replaces a billed usage in place (a stream's usage grows as it goes)."""
        with self._lock:
            entry.clear()
            entry.update(copy.deepcopy(usage))
