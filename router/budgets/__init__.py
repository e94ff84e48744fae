"""Keys, teams, spend budgets and rate limits (docs/budgets.md).

``keys``: who a request is from (managed keys, passthrough callers); ``windows``: the day, week
and month a budget counts in; ``counters``: the state store, with this worker's memory standing
in while it fails; ``admission``: reserve and settle; ``service``: the worker's
:class:`Budgets`, its report and gauges.
"""

from router.budgets.admission import WARNING_HEADER, BudgetExceeded, Ticket
from router.budgets.counters import Unavailable
from router.budgets.keys import Identity, Keyring, key_hash, new_key
from router.budgets.service import Budgets

__all__ = [
    "WARNING_HEADER",
    "BudgetExceeded",
    "Budgets",
    "Identity",
    "Keyring",
    "Ticket",
    "Unavailable",
    "key_hash",
    "new_key",
]
