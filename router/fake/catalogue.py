"""The models the fake serves: ids, names, limits and capabilities, in one table.

``CATALOGUE`` is what ``GET /v1/models`` lists and what ``POST /v1/messages`` enforces (the
output limit, the context window, the thinking types, the effort levels and the one
model-specific beta). The proxy's ``router.yaml`` carries the same values; keep them equal.
A model id that is neither an id nor a dated alias here is unknown: 404, as upstream answers.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from router.fake.errors import invalid_request

__all__ = [
    "CATALOGUE",
    "CONTEXT_1M_BETA",
    "EFFORT_LEVELS",
    "THINKING_TYPES",
    "ModelSpec",
    "find_model",
    "model_info",
    "models_page",
]

# The beta that lifts Sonnet 4.5 to a 1M-token context window (spec §6.2).
CONTEXT_1M_BETA = "context-1m-2025-08-07"
THINKING_TYPES = ("enabled", "adaptive", "disabled", "between_tools")
EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")

# Thinking types per generation. `disabled` is accepted wherever thinking can be switched off;
# the Fable and Mythos lines always think (spec §1.1: Fable 5 returns 400 for `disabled`).
_ENABLED = frozenset({"enabled", "disabled"})
_ENABLED_ADAPTIVE = frozenset({"enabled", "adaptive", "disabled"})
_ADAPTIVE = frozenset({"adaptive", "disabled", "between_tools"})
_ALWAYS_ADAPTIVE = frozenset({"adaptive"})

_NO_EFFORT: tuple[str, ...] = ()
_EFFORT_3 = ("low", "medium", "high")
_EFFORT_4 = ("low", "medium", "high", "max")
_EFFORT_5 = ("low", "medium", "high", "xhigh", "max")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the catalogue.

    Attributes:
        id: The model id, e.g. ``claude-haiku-4-5``.
        display_name: The name ``GET /v1/models`` shows, e.g. ``Claude Haiku 4.5``.
        created_at: RFC 3339 release date.
        context: Context window in tokens (input plus ``max_tokens``), without betas.
        max_output: The largest ``max_tokens`` accepted.
        line: The family, e.g. ``haiku``.
        thinking: The ``thinking.type`` values accepted.
        effort: The ``output_config.effort`` levels accepted; empty: no effort parameter.
        aliases: Dated ids that name the same model.
        context_1m_beta: Whether ``context-1m-2025-08-07`` lifts the window to 1M.
        lifecycle: ``active``, ``deprecated`` or ``retired``.
        deprecated_at: When it was deprecated, if it was.
        retires_at: When it retires, if announced.
    """

    id: str
    display_name: str
    created_at: str
    context: int
    max_output: int
    line: str
    thinking: frozenset[str]
    effort: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    context_1m_beta: bool = False
    lifecycle: str = "active"
    deprecated_at: str | None = None
    retires_at: str | None = None

    def context_window(self, betas: Collection[str]) -> int:
        """Returns the context window for a request sending these betas."""
        if self.context_1m_beta and CONTEXT_1M_BETA in betas:
            return 1_000_000
        return self.context


def _big(model_id: str, name: str, date: str, line: str, thinking: frozenset[str],
         effort: tuple[str, ...]) -> ModelSpec:
    """A 1M-context, 128K-output model: every generation from 4.6 on."""
    return ModelSpec(model_id, name, f"{date}T00:00:00Z", 1_000_000, 128_000, line, thinking,
                     effort)


# Newest first, the order the real list endpoint uses.
CATALOGUE: tuple[ModelSpec, ...] = (
    _big("claude-fable-5-2", "Claude Fable 5.2", "2026-11-09", "fable", _ALWAYS_ADAPTIVE,
         _EFFORT_5),
    _big("claude-mythos-5-2", "Claude Mythos 5.2", "2026-11-09", "mythos", _ALWAYS_ADAPTIVE,
         _EFFORT_5),
    _big("claude-haiku-5-5", "Claude Haiku 5.5", "2026-10-07", "haiku", _ENABLED_ADAPTIVE,
         _EFFORT_3),
    _big("claude-sonnet-5-5", "Claude Sonnet 5.5", "2026-10-01", "sonnet", _ADAPTIVE, _EFFORT_5),
    _big("claude-opus-5-5", "Claude Opus 5.5", "2026-09-22", "opus", _ADAPTIVE, _EFFORT_5),
    _big("claude-fable-5-1", "Claude Fable 5.1", "2026-09-01", "fable", _ALWAYS_ADAPTIVE,
         _EFFORT_5),
    _big("claude-mythos-5-1", "Claude Mythos 5.1", "2026-09-01", "mythos", _ALWAYS_ADAPTIVE,
         _EFFORT_5),
    _big("claude-opus-5", "Claude Opus 5", "2026-07-24", "opus", _ADAPTIVE, _EFFORT_5),
    _big("claude-sonnet-5", "Claude Sonnet 5", "2026-06-30", "sonnet", _ADAPTIVE, _EFFORT_5),
    _big("claude-fable-5", "Claude Fable 5", "2026-06-09", "fable", _ALWAYS_ADAPTIVE,
         _EFFORT_5),
    _big("claude-mythos-5", "Claude Mythos 5", "2026-06-09", "mythos", _ALWAYS_ADAPTIVE,
         _EFFORT_5),
    _big("claude-opus-4-8", "Claude Opus 4.8", "2026-05-28", "opus", _ADAPTIVE, _EFFORT_5),
    _big("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16", "opus", _ADAPTIVE, _EFFORT_5),
    _big("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17", "sonnet", _ENABLED_ADAPTIVE,
         _EFFORT_4),
    _big("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05", "opus", _ENABLED_ADAPTIVE,
         _EFFORT_4),
    ModelSpec("claude-opus-4-5", "Claude Opus 4.5", "2025-11-24T00:00:00Z", 200_000, 64_000,
              "opus", _ENABLED, _EFFORT_3, aliases=("claude-opus-4-5-20251101",)),
    ModelSpec("claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-15T00:00:00Z", 200_000, 64_000,
              "haiku", _ENABLED, _NO_EFFORT, aliases=("claude-haiku-4-5-20251001",)),
    ModelSpec("claude-sonnet-4-5", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z", 200_000,
              64_000, "sonnet", _ENABLED, _NO_EFFORT, aliases=("claude-sonnet-4-5-20250929",),
              context_1m_beta=True, lifecycle="deprecated",
              deprecated_at="2026-05-15T00:00:00Z", retires_at="2026-11-30T00:00:00Z"),
)

_BY_ID: dict[str, ModelSpec] = {
    name: spec for spec in CATALOGUE for name in (spec.id, *spec.aliases)
}


def find_model(model_id: str) -> ModelSpec | None:
    """Returns the catalogue entry for a model id or dated alias, or None if unknown."""
    return _BY_ID.get(model_id)


def model_info(spec: ModelSpec) -> dict[str, Any]:
    """Returns the ``ModelInfo`` object ``GET /v1/models`` serves for a model (spec §1.5)."""
    yes = {"supported": True}
    no = {"supported": False}

    def flag(on: bool) -> dict[str, bool]:
        return yes if on else no

    return {
        "type": "model",
        "id": spec.id,
        "display_name": spec.display_name,
        "created_at": spec.created_at,
        "max_input_tokens": spec.context,
        "max_tokens": spec.max_output,
        "lifecycle": spec.lifecycle,
        "deprecated_at": spec.deprecated_at,
        "retires_at": spec.retires_at,
        "line": spec.line,
        "capabilities": {
            "batch": yes,
            "citations": yes,
            "code_execution": yes,
            "context_management": {
                "supported": True,
                "clear_thinking_20251015": yes,
                "clear_tool_uses_20250919": yes,
                "compact_20260112": yes,
            },
            "effort": {
                "supported": bool(spec.effort),
                **{level: flag(level in spec.effort) for level in EFFORT_LEVELS},
            },
            "image_input": yes,
            "pdf_input": yes,
            "server_tools": {"supported": True, "code_execution": yes, "web_search": yes},
            "structured_outputs": yes,
            "thinking": {
                "supported": True,
                "types": {kind: flag(kind in spec.thinking) for kind in THINKING_TYPES},
            },
        },
    }


def models_page(
    limit: int, after_id: str | None, before_id: str | None, lifecycles: Collection[str]
) -> dict[str, Any]:
    """Returns one page of ``GET /v1/models``, newest first.

    Args:
        limit: Page size, 1 to 1000.
        after_id: Start after this id (paging forwards).
        before_id: End before this id (paging backwards).
        lifecycles: Lifecycles to list; empty lists active and deprecated models, as the API.

    Raises:
        Invalid: A limit out of range, both cursors, or a cursor that is not listed.
    """
    if not 1 <= limit <= 1000:
        raise invalid_request(
            "limit: Input should be greater than or equal to 1 and less than or equal to 1000"
        )
    wanted = lifecycles or {"active", "deprecated"}
    models = [spec for spec in CATALOGUE if spec.lifecycle in wanted]
    ids = [spec.id for spec in models]
    if after_id is not None and before_id is not None:
        raise invalid_request("Only one of after_id and before_id may be given")
    for name, cursor in (("after_id", after_id), ("before_id", before_id)):
        if cursor is not None and cursor not in ids:
            raise invalid_request(f"{name}: invalid cursor {cursor!r}")
    if before_id is not None:
        end = ids.index(before_id)
        start = max(0, end - limit)
        has_more = start > 0
    else:
        start = ids.index(after_id) + 1 if after_id is not None else 0
        end = min(len(models), start + limit)
        has_more = end < len(models)
    page = models[start:end]
    return {
        "data": [model_info(spec) for spec in page],
        "has_more": has_more,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }
