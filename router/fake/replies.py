"""Building an answer: content blocks and usage, the same whether streamed or not.

A scripted ``Reply`` sets what it names; the rest comes from the request: the ``[[reply:...]]``
directives of its latest user turn, its ``thinking`` setting (thinking is signed for the model
answering), its tools (a tool call's input is made up from the tool's ``input_schema``) and
the prompt cache (the input side of the usage).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgspec

from router.fake.behaviours import Reply
from router.fake.cache import CacheUse
from router.fake.directives import (
    Directives,
    latest_user_text,
    read_directives,
    without_directives,
)
from router.fake.ids import random_id, stable_id
from router.fake.signatures import Signer

__all__ = ["Answer", "build_answer", "merge_usage", "tool_input"]

# What a redacted_thinking block costs in output tokens; its content is hidden anyway.
_REDACTED_TOKENS = 24
_MAX_DEPTH = 4
_VOCABULARY = (
    "the", "change", "keeps", "each", "request", "on", "one", "model", "so", "its", "cached",
    "prefix", "warm", "while", "tests", "check", "answer", "against", "what", "user", "asked",
    "and", "report", "any", "failure", "with", "cause",
)
# Plausible values for common tool parameters, by name.
_SAMPLES: Mapping[str, str] = MappingProxyType({
    "command": "ls -la",
    "cmd": "ls -la",
    "file_path": "/repo/src/app.py",
    "path": "/repo/src",
    "pattern": "TODO",
    "query": "how to fix this",
    "url": "https://example.com/",
    "old_string": "count = 0",
    "new_string": "count = 1",
    "content": "print('hello')",
    "description": "List the files",
})


@dataclass(frozen=True)
class Answer:
    """A fully computed answer, rendered either as JSON or as an SSE event list."""

    message: dict[str, Any]
    usage: dict[str, Any]


def merge_usage(defaults: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Returns ``defaults`` with a scripted usage override merged in (see ``Reply.usage``)."""
    usage = copy.deepcopy(defaults)
    for key, value in override.items():
        if value is None:
            usage.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(usage.get(key), dict):
            usage[key] = {**usage[key], **value}
        else:
            usage[key] = copy.deepcopy(value)
    # Keep the cache total and its per-TTL split consistent when only one side was given.
    total = override.get("cache_creation_input_tokens")
    split = override.get("cache_creation")
    if isinstance(total, int) and split is None and "cache_creation" in usage:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": total,
            "ephemeral_1h_input_tokens": 0,
        }
    elif isinstance(split, Mapping) and "cache_creation_input_tokens" not in override:
        parts = usage["cache_creation"].values()
        usage["cache_creation_input_tokens"] = sum(v for v in parts if isinstance(v, int))
    return usage


def _sample_string(name: str, schema: Mapping[str, Any]) -> str:
    if name in _SAMPLES:
        return _SAMPLES[name]
    if schema.get("format") == "uri":
        return "https://example.com/"
    return f"example {name}" if name else "example"


def _value(schema: Any, name: str, depth: int) -> Any:
    if not isinstance(schema, Mapping):
        return _sample_string(name, {})
    for key in ("const", "default"):
        if key in schema:
            return copy.deepcopy(schema[key])
    for key in ("enum", "examples", "anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            first = options[0]
            return _value(first, name, depth) if key in ("anyOf", "oneOf") else first
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        if depth >= _MAX_DEPTH:
            return {}
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = schema.get("required")
        names = required if isinstance(required, list) else list(properties)
        return {n: _value(properties.get(n), n, depth + 1) for n in names if isinstance(n, str)}
    if kind == "array":
        return [] if depth >= _MAX_DEPTH else [_value(schema.get("items"), name, depth + 1)]
    if kind in ("integer", "number"):
        minimum = schema.get("minimum")
        return minimum if isinstance(minimum, int | float) else 1
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _sample_string(name, schema)


def tool_input(tools: Any, name: str) -> dict[str, Any]:
    """Returns a plausible input for the named tool, made up from its ``input_schema``.

    Args:
        tools: The request's ``tools``.
        name: The tool to call; an unknown tool gets ``{}``.
    """
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, Mapping) and tool.get("name") == name:
            made = _value(tool.get("input_schema"), "", 0)
            return made if isinstance(made, dict) else {}
    return {}


def _words_text(count: int, seed: bytes) -> str:
    start = int.from_bytes(hashlib.sha256(seed).digest()[:4], "big")
    words = [_VOCABULARY[(start + i) % len(_VOCABULARY)] for i in range(count)]
    if not words:
        return ""
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def _default_thinking(messages: Sequence[Any], directives: Directives) -> str:
    asked = " ".join(without_directives(latest_user_text(messages)).split()[:12])
    plan = f"call {directives.tool}" if directives.tool else "answer"
    return f"The user wrote: {asked or '(nothing)'}. I will {plan}."


def _thinking_block(
    body: Mapping[str, Any],
    reply: Reply,
    directives: Directives,
    thinks: bool,
    signer: Signer,
    model_id: str,
    seed: bytes,
) -> dict[str, Any] | None:
    text = reply.thinking
    if text is None:
        text = _default_thinking(body["messages"], directives) if thinks else ""
    if not text:
        return None
    if directives.redacted:
        return {"type": "redacted_thinking", "data": signer.redacted_data(model_id, seed)}
    setting = body.get("thinking")
    if isinstance(setting, Mapping) and setting.get("display") == "omitted":
        # The model still thought; the client asked not to see it, only the signature.
        text = ""
    return {
        "type": "thinking",
        "thinking": text,
        "signature": signer.thinking_signature(model_id, text, seed),
    }


def build_answer(
    body: Mapping[str, Any],
    reply: Reply,
    *,
    model_id: str,
    thinks: bool,
    signer: Signer,
    cache: CacheUse,
) -> Answer:
    """Returns the answer to a validated request.

    Args:
        body: The decoded request.
        reply: The scripted reply (``Reply()`` when nothing was scripted).
        model_id: The catalogue id of the model answering (it signs the thinking).
        thinks: Whether the request asks for thinking (enabled, adaptive, or always on).
        signer: Signs thinking blocks.
        cache: How the prompt cache split the input tokens.
    """
    model: str = body["model"]
    # Derived from the request minus `stream`, so both modes give the same blocks.
    seed = msgspec.json.encode({k: v for k, v in body.items() if k != "stream"})
    directives = read_directives(body["messages"])
    content: list[dict[str, Any]] = []
    thinking = _thinking_block(body, reply, directives, thinks, signer, model_id, seed)
    if thinking is not None:
        content.append(thinking)
    text = reply.text
    if text is None:
        text = f"Hello from {model}." if directives.words is None else _words_text(
            directives.words, seed
        )
    if text:
        content.append({"type": "text", "text": text})
    call = reply.tool_use
    if call is None and directives.tool is not None:
        call = {"name": directives.tool, "input": tool_input(body.get("tools"), directives.tool)}
    tool_tokens = 0
    if call is not None:
        name = str(call.get("name", "tool"))
        arguments = call.get("input", {})
        tool_seed = seed + b"\0" + name.encode() + b"\0" + msgspec.json.encode(arguments)
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or stable_id("toolu_01", tool_seed, 22)),
                "name": name,
                "input": arguments,
                "caller": {"type": "direct"},
            }
        )
        tool_tokens = len(msgspec.json.encode(arguments)) // 4 + 8
    if thinking is None:
        thinking_tokens = 0
    elif thinking["type"] == "redacted_thinking":
        thinking_tokens = _REDACTED_TOKENS
    else:
        thinking_tokens = max(1, len(thinking["thinking"].split()))
    output_tokens = len(text.split()) + thinking_tokens + tool_tokens + 3

    geo = body.get("inference_geo")
    defaults: dict[str, Any] = {
        "input_tokens": cache.uncached,
        "cache_creation_input_tokens": cache.written,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.written_5m,
            "ephemeral_1h_input_tokens": cache.written_1h,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"thinking_tokens": thinking_tokens},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "standard",
        "inference_geo": geo if isinstance(geo, str) else "global",
    }
    if body.get("speed") in ("standard", "fast"):
        defaults["speed"] = body["speed"]
    usage = merge_usage(defaults, reply.usage or {})

    stop_reason = reply.stop_reason or ("tool_use" if call is not None else "end_turn")
    stop_sequence = None
    sequences = body.get("stop_sequences")
    if stop_reason == "stop_sequence" and isinstance(sequences, list) and sequences:
        stop_sequence = sequences[0]
    message = {
        "id": random_id("msg_01"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "stop_details": None,
        "container": None,
        "usage": usage,
    }
    return Answer(message=message, usage=usage)
