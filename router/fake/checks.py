"""Request validation: headers, body shape, and what the chosen model can serve.

Every refusal is an ``Invalid`` carrying the status, type and message the API uses (spec §5);
the capability messages follow the API's wording where it is known (e.g. ``max_tokens: 100000
> 64000, which is the maximum allowed number of output tokens for claude-haiku-4-5``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import msgspec

from router.fake.catalogue import CONTEXT_1M_BETA, EFFORT_LEVELS, ModelSpec, find_model
from router.fake.errors import Invalid, invalid_request

__all__ = [
    "SUPPORTED_VERSIONS",
    "V2026",
    "check_body",
    "check_capabilities",
    "check_context",
    "check_credentials",
    "wanted_thinking",
]

SUPPORTED_VERSIONS = frozenset({"2023-06-01", "2026-10-21"})
V2026 = "2026-10-21"
# The 2026-10-21 version removed the sampling knobs; sending any of them is a 400.
_REMOVED_IN_2026 = ("temperature", "top_p", "top_k")
_MIN_BUDGET = 1024


def check_credentials(
    headers: Mapping[str, str], api_keys: Collection[str] | None
) -> tuple[str, str]:
    """Checks auth and version (``x-api-key`` wins over a bearer token).

    Args:
        headers: The request headers (case-insensitive mapping).
        api_keys: Accepted keys; None accepts any non-empty key.

    Returns:
        ``(anthropic-version, API key)``.

    Raises:
        Invalid: 401 for a missing or refused key, 400 for a missing or unknown version.
    """
    key = headers.get("x-api-key", "")
    if not key:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            key = token.strip()
    if not key or (api_keys is not None and key not in api_keys):
        raise Invalid(401, "authentication_error", "invalid x-api-key")
    version = headers.get("anthropic-version")
    if version is None:
        raise invalid_request("anthropic-version: header is required")
    if version not in SUPPORTED_VERSIONS:
        raise invalid_request(
            f"anthropic-version: unsupported version {version!r}; "
            f"expected one of {', '.join(sorted(SUPPORTED_VERSIONS))}"
        )
    return version, key


def _check_2026_blocks(messages: list[Any]) -> None:
    # The two content rules the 2026-10-21 version added (spec §0.3).
    for m_index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            continue
        role = message.get("role")
        for b_index, block in enumerate(message["content"]):
            if not isinstance(block, dict):
                continue
            where = f"messages.{m_index}.content.{b_index}"
            if role == "assistant" and block.get("type") == "document":
                raise invalid_request(
                    f"{where}: document blocks are not permitted in assistant messages"
                )
            if role == "user" and block.get("type") == "text" and block.get("citations"):
                raise invalid_request(
                    f"{where}.citations: citations are not permitted in user messages"
                )


def check_body(
    raw: bytes, version: str, *, needs_max_tokens: bool
) -> tuple[dict[str, Any], ModelSpec]:
    """Decodes and checks a Messages (or count_tokens) body and finds its model.

    Args:
        raw: The request body.
        version: The request's ``anthropic-version``.
        needs_max_tokens: True for Messages, False for count_tokens.

    Returns:
        The decoded body and its model's catalogue entry.

    Raises:
        Invalid: 400 for a malformed body, 404 for an unknown model.
    """
    try:
        body = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise invalid_request("There was an error parsing the body of your request") from None
    if not isinstance(body, dict):
        raise invalid_request("Input should be a valid dictionary")
    required: list[tuple[str, type, str]] = [("model", str, "a valid string")]
    if needs_max_tokens:
        required.append(("max_tokens", int, "a valid integer"))
    required.append(("messages", list, "a valid list"))
    for name, kind, what in required:
        if name not in body:
            raise invalid_request(f"{name}: Field required")
        value = body[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise invalid_request(f"{name}: Input should be {what}")
    if needs_max_tokens and body["max_tokens"] < 0:
        raise invalid_request("max_tokens: Input should be greater than or equal to 0")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid_request("stream: Input should be a valid boolean")
    if not body["messages"]:
        raise invalid_request("messages: at least one message is required")
    if version == V2026:
        for name in _REMOVED_IN_2026:
            if name in body:
                raise invalid_request(f"{name}: Extra inputs are not permitted")
        _check_2026_blocks(body["messages"])
    spec = find_model(body["model"])
    if spec is None:
        raise Invalid(404, "not_found_error", f"model: {body['model']}")
    return body, spec


def _check_thinking(body: Mapping[str, Any], spec: ModelSpec) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, Mapping) else None
    if not isinstance(kind, str):
        raise invalid_request("thinking.type: Field required")
    if kind not in spec.thinking:
        if kind == "adaptive":
            raise invalid_request("adaptive thinking is not supported on this model")
        if kind == "enabled":
            raise invalid_request(
                '"thinking.type.enabled" is not supported for this model. Use '
                '"thinking.type.adaptive" and "output_config.effort" to control thinking '
                "behavior."
            )
        raise invalid_request(f'"thinking.type.{kind}" is not supported for this model.')
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise invalid_request("thinking.enabled.budget_tokens: Field required")
        if budget < _MIN_BUDGET:
            raise invalid_request(
                f"thinking.enabled.budget_tokens: Input should be greater than or equal to "
                f"{_MIN_BUDGET}"
            )
        if budget >= body["max_tokens"]:
            raise invalid_request("`max_tokens` must be greater than `thinking.budget_tokens`")


def _check_effort(body: Mapping[str, Any], spec: ModelSpec) -> None:
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, Mapping) else None
    if effort is None:
        return
    if effort not in EFFORT_LEVELS:
        allowed = ", ".join(repr(level) for level in EFFORT_LEVELS)
        raise invalid_request(f"output_config.effort: Input should be one of {allowed}")
    if not spec.effort:
        raise invalid_request(
            f"output_config.effort: the effort parameter is not supported by {body['model']}"
        )
    if effort not in spec.effort:
        raise invalid_request(
            f"output_config.effort: {effort!r} is not supported by {body['model']}; "
            f"supported levels: {', '.join(spec.effort)}"
        )


def check_capabilities(body: Mapping[str, Any], spec: ModelSpec, betas: Collection[str]) -> None:
    """Refuses what the model cannot serve: output limit, thinking type, effort, betas.

    Args:
        body: The decoded Messages body.
        spec: Its model's catalogue entry.
        betas: The ``anthropic-beta`` values sent.

    Raises:
        Invalid: 400 ``invalid_request_error`` naming the limit.
    """
    if CONTEXT_1M_BETA in betas and spec.context < 1_000_000 and not spec.context_1m_beta:
        raise invalid_request(
            f"anthropic-beta: {CONTEXT_1M_BETA} is not supported for {body['model']}"
        )
    if body["max_tokens"] > spec.max_output:
        raise invalid_request(
            f"max_tokens: {body['max_tokens']} > {spec.max_output}, which is the maximum "
            f"allowed number of output tokens for {body['model']}"
        )
    _check_thinking(body, spec)
    _check_effort(body, spec)


def check_context(input_tokens: int, max_tokens: int, window: int) -> None:
    """Refuses a prompt that, with room for ``max_tokens``, does not fit the context window.

    Raises:
        Invalid: 400 ``prompt is too long`` when the input alone is over the window, else
            the API's ``input length and `max_tokens` exceed context limit`` message.
    """
    if input_tokens > window:
        raise invalid_request(f"prompt is too long: {input_tokens} tokens > {window} maximum")
    if input_tokens + max_tokens > window:
        raise invalid_request(
            f"input length and `max_tokens` exceed context limit: {input_tokens} + "
            f"{max_tokens} > {window}, decrease input length or `max_tokens` and try again"
        )


def wanted_thinking(body: Mapping[str, Any], spec: ModelSpec) -> bool:
    """Whether the answer thinks: thinking enabled or adaptive, or a model that always does."""
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping):
        return thinking.get("type") in ("enabled", "adaptive")
    return "disabled" not in spec.thinking
