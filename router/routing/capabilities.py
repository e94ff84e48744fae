"""Whether a model can serve a request: output limit, context window, thinking, effort, betas.

Most are hard limits, like context windows: routing a request to a model that refuses it turns
a routing choice into the client's error, so the router picks another model. Two are requests
the API lets a client drop, and the router drops them rather than give up a cheaper model:
``adaptive`` thinking (the model may skip thinking anyway) and ``output_config.effort`` (a hint;
without it the model works at its default). Claude Code sends both on every request, so
treating them as hard would keep every coding turn off Haiku 4.5. The table lives in
``router.yaml`` (``models:``); a model it does not list is assumed capable, since only the
upstream knows better.
"""

from __future__ import annotations

import msgspec

from router.config import ModelConfig
from router.routing.features import Features
from router.wire import Block


class Needs(msgspec.Struct, frozen=True, kw_only=True):
    """What a request asks of the model that serves it (a Struct: built for every request, and
    for every record ``router simulate`` replays, five times faster than a frozen dataclass)."""

    tokens: int
    """Input tokens (estimated) plus ``max_tokens``."""
    max_tokens: int
    thinking: str
    """``none``, ``disabled``, ``enabled``, ``adaptive`` or ``between_tools``."""
    effort: str
    """``output_config.effort``, empty when not set."""
    betas: frozenset[str]
    """The ``anthropic-beta`` values sent."""


def needs_of(features: Features, thinking: Block | None, beta_header: str) -> Needs:
    """Return what a request needs, from its features, its ``thinking`` field and its
    ``anthropic-beta`` header."""
    betas = frozenset(b.strip() for b in beta_header.split(",") if b.strip())
    kind = thinking.get("type") if thinking else None
    return Needs(
        tokens=features.input_tokens + features.max_tokens,
        max_tokens=features.max_tokens,
        thinking=kind if kind in ("enabled", "adaptive", "disabled", "between_tools") else "none",
        effort=features.effort,
        betas=betas,
    )


def unmet_limit(model: str, caps: ModelConfig | None, needs: Needs,
                model_betas: frozenset[str]) -> str | None:
    """Return why ``model`` cannot serve the request (one line), or None when it can.

    Args:
        model: the model id, for the message.
        caps: its capabilities, or None when the table does not list it.
        needs: what the request asks.
        model_betas: every beta some model lists as model-specific.
    """
    if caps is None:
        return None
    if needs.max_tokens > caps.max_output_tokens:
        return f"max_tokens {needs.max_tokens} > {caps.max_output_tokens} on {model}"
    if needs.tokens > caps.context_window:
        return f"{needs.tokens} tokens > {model}'s {caps.context_window} window"
    if needs.thinking in ("enabled", "between_tools") and needs.thinking not in caps.thinking:
        return f"{model} does not take {needs.thinking} thinking"
    if needs.thinking == "disabled" and caps.thinking_required:
        return f"{model} refuses thinking disabled"
    for beta in sorted(needs.betas & model_betas):
        if beta not in caps.betas:
            return f"{model} does not take beta {beta}"
    return None


def dropped_for(model: str, caps: ModelConfig | None, needs: Needs) -> tuple[str, ...]:
    """Return what must leave the request for ``model`` to take it: ``thinking`` (adaptive, on
    a model without it) and ``effort`` (a level it does not take)."""
    if caps is None:
        return ()
    dropped: list[str] = []
    if needs.thinking == "adaptive" and "adaptive" not in caps.thinking:
        dropped.append("thinking")
    if needs.effort and needs.effort not in caps.effort:
        dropped.append("effort")
    return tuple(dropped)
