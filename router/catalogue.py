"""The proxy's own answer to ``GET /v1/models``, from ``router.yaml``, for when the upstream is
slow or down.

Claude Code asks ``GET /v1/models?limit=1000`` at start with a 3 s timeout and gives up on the
gateway if it gets nothing: a slow upstream must not make the proxy look broken. The upstream's
own list is always preferred; this one names every model the config routes to or describes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import msgspec

from router.config import Config, ModelConfig

_EFFORTS = ("low", "medium", "high", "xhigh", "max")


def model_ids(config: Config) -> list[str]:
    """Every model id the config knows: tier models first, then the capability table."""
    ids = [tier.model for tier in config.tiers.values()]
    ids += [m for m in config.models if m not in ids]
    return ids


def model_info(model: str, caps: ModelConfig | None) -> dict[str, Any]:
    """One ``ModelInfo`` entry in the API's shape."""
    info: dict[str, Any] = {"type": "model", "id": model, "display_name": model,
                            "created_at": "1970-01-01T00:00:00Z"}
    if caps is not None:
        info["max_input_tokens"] = caps.context_window
        info["max_tokens"] = caps.max_output_tokens
        info["capabilities"] = {
            "thinking": {"supported": bool(caps.thinking), "types": {
                t: {"supported": t in caps.thinking} for t in ("enabled", "adaptive")}},
            "effort": {"supported": bool(caps.effort),
                       **{e: {"supported": e in caps.effort} for e in _EFFORTS}},
        }
    return info


def models_page(config: Config, query: str) -> bytes:
    """The JSON body of ``GET /v1/models`` (``limit``, ``after_id``, ``before_id`` honoured)."""
    params = parse_qs(query)
    ids = model_ids(config)
    limit = _int(params.get("limit", ["20"])[0], 20)
    start, end = 0, len(ids)
    if "after_id" in params and params["after_id"][0] in ids:
        start = ids.index(params["after_id"][0]) + 1
    if "before_id" in params and params["before_id"][0] in ids:
        end = ids.index(params["before_id"][0])
        start = max(start, end - limit)
    page = ids[start:min(end, start + limit)]
    return msgspec.json.encode({
        "data": [model_info(m, config.models.get(m)) for m in page],
        "has_more": start + len(page) < end,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    })


def _int(text: str, default: int) -> int:
    try:
        return max(1, min(int(text), 1000))
    except ValueError:
        return default
