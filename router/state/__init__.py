"""The one state store that conversations, budgets and rate limits share.

Backends: ``memory`` (one process), ``sqlite`` (the default: one file shared by the workers of
a host, surviving restarts) and ``redis`` (shared by replicas). See ``docs/state.md``.
"""

from router.state.factory import open_store, opened_store
from router.state.memory import MemoryStore
from router.state.store import (
    Charge,
    FallbackStore,
    OnFallback,
    StateError,
    Store,
    StoreUnavailable,
)

__all__ = [
    "Charge",
    "FallbackStore",
    "MemoryStore",
    "OnFallback",
    "StateError",
    "Store",
    "StoreUnavailable",
    "open_store",
    "opened_store",
]
