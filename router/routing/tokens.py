"""Offline token counting for routing decisions.

The router needs a size estimate before it picks a model, long before the API reports real usage.
It counts with a tiktoken BPE encoding (not Claude's tokenizer, which is not public): the raw counts
are close enough in shape, and the per-model ``token_factor`` in the config (plus the
:class:`~router.routing.factor.FactorLearner`, which learns it from reported usage) scales them to
the real thing.

Which encoding, and the approximation when there is none, is :mod:`router.routing.encoding`.
Images and PDFs are not tokenized: :mod:`router.routing.media` sizes them by Anthropic's rules of
thumb.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec

from router.routing.encoding import approximate_tokens, find_encoding
from router.routing.media import (
    PDF_TOKENS_PER_PAGE,
    UNSEEN_DOCUMENT_PAGES,
    image_tokens,
    pdf_page_count,
)
from router.wire import Block, CountTokensRequest, MessagesRequest

log = logging.getLogger("router.routing.tokens")


TOOLS_PREAMBLE_TOKENS: Final = 346
"""The API's hidden tool-use system prompt, added whenever ``tools`` is non-empty."""
MESSAGE_OVERHEAD_TOKENS: Final = 4
"""Role and turn markers around each message."""

class _Encoder(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """Raw (unscaled) input-token estimate of one request, by part."""

    tokens: int
    """Total: the sum of the parts below plus per-message overhead."""
    system: int
    """The system prompt."""
    messages: int
    """Text, tool calls and tool results in ``messages`` (images and documents excluded)."""
    tools: int
    """Tool definitions as JSON, plus the API's tool-use preamble."""
    images: int
    """Images, by dimensions (or the per-image cap when dimensions are unknown)."""
    documents: int
    """Documents: PDFs by page count, text documents by their text."""
    image_count: int
    """Number of image blocks, including those inside tool results."""
    document_count: int
    """Number of document blocks."""
    uncached_chars: int
    """Characters that had to be tokenized for this estimate (the rest came from the cache)."""
    exact: bool
    """True when a BPE encoding counted all the text, False when any of it was approximated."""
    deferred: tuple[str, ...] = ()
    """New texts approximated now, to count exactly later (:meth:`TokenCounter.learn`)."""


_SYSTEM, _MESSAGES, _TOOLS, _IMAGES, _DOCUMENTS = range(5)


@dataclass(slots=True)
class _Tally:
    """Running state of one ``estimate`` call (local, so threads never share one): the texts
    still to count, which part each belongs to, and the sums known so far."""

    texts: list[str] = field(default_factory=list)
    parts: list[int] = field(default_factory=list)
    sums: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    part: int = _MESSAGES
    image_count: int = 0
    document_count: int = 0
    uncached_chars: int = 0
    defer_up_to: int = 0
    deferred: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text:
            self.texts.append(text)
            self.parts.append(self.part)


_json_encoder = msgspec.json.Encoder(order="deterministic")


def _json_text(value: Any) -> str:
    try:
        return _json_encoder.encode(value).decode("utf-8", "replace")
    except (TypeError, msgspec.EncodeError):
        return str(value)


class TokenCounter:
    """Counts request tokens with a per-block LRU cache, so resent history costs a lookup.

    Create one per worker (in the app lifespan) and share it: ``estimate`` is safe to call from
    several threads at once (cache mutation happens under a lock; counting happens outside it).
    """

    def __init__(
        self,
        encoding: _Encoder | None = None,
        *,
        source: str = "",
        cache_entries: int = 65_536,
        thread_threshold_chars: int = 200_000,
    ) -> None:
        """Create a counter.

        Args:
            encoding: A tiktoken ``Encoding`` (anything with ``encode_ordinary``); None selects the
                byte approximation.
            source: Where the encoding came from, for logs and ``router explain``.
            cache_entries: Most text blocks remembered; each entry is two ints.
            thread_threshold_chars: Uncached characters above which :meth:`needs_thread` says the
                caller should count off the event loop.
        """
        self._encoding = encoding
        self.source = source or ("custom encoding" if encoding is not None else "approximation")
        self._max_entries = max(1, cache_entries)
        self.thread_threshold_chars = thread_threshold_chars
        self._cache: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | None = None, **kwargs: Any) -> TokenCounter:
        """Create a counter with the encoding :func:`find_encoding` finds (never the network).

        Args:
            path: Optional ``.tiktoken`` file (``$ROUTER_TIKTOKEN_FILE``) tried first.
            **kwargs: Passed to the constructor.

        Returns:
            A ready counter; it falls back to the approximation and logs a warning when no verified
            encoding is available.
        """
        encoding, source = find_encoding(path)
        log.info("token counter: %s", source)
        return cls(encoding, source=source, **kwargs)

    @property
    def exact(self) -> bool:
        """Whether a BPE encoding (rather than the approximation) counts text."""
        return self._encoding is not None

    def count_text(self, text: str) -> int:
        """Count one text with the encoding, bypassing the cache.

        Args:
            text: Any text.

        Returns:
            Its token count (approximate when no encoding is loaded).
        """
        if self._encoding is None:
            return approximate_tokens(text)
        return len(self._encoding.encode_ordinary(text))

    def cache_size(self) -> int:
        """Return how many text blocks the cache holds."""
        return len(self._cache)

    # -- estimate ------------------------------------------------------------------------------

    def estimate(
        self, request: MessagesRequest | CountTokensRequest, *, defer_up_to: int = 0
    ) -> TokenEstimate:
        """Estimate the input tokens of a request.

        Synchronous and CPU-bound: a cold 200k-token conversation takes ~50-100 ms, so check
        :meth:`needs_thread` first and run this in ``asyncio.to_thread`` when it says so.

        Args:
            request: A decoded Messages or count_tokens body.
            defer_up_to: When at most this many characters are new (uncached), approximate them
                instead of tokenizing now and return them in ``deferred``, for the caller to
                :meth:`learn` off the request path. A few percent of error on a small request
                moves no routing decision; the exact count is ready for the conversation's
                next turn.

        Returns:
            The raw counts; model-specific scaling is the caller's (config ``token_factor``).
        """
        tally = _Tally(defer_up_to=defer_up_to)
        system = request.system
        tally.part = _SYSTEM
        if isinstance(system, str):
            tally.add(system)
        elif system:
            for block in system:
                text = block.get("text")
                tally.add(text if block.get("type") == "text" and isinstance(text, str)
                          else _json_text(block))
        if request.tools:
            tally.part = _TOOLS
            tally.sums[_TOOLS] = TOOLS_PREAMBLE_TOKENS
            for tool in request.tools:
                tally.add(_json_text(tool))
        tally.part = _MESSAGES
        tally.sums[_MESSAGES] = MESSAGE_OVERHEAD_TOKENS * len(request.messages)
        for message in request.messages:
            content = message.content
            if isinstance(content, str):
                tally.add(content)
            else:
                for block in content:
                    self._block(block, tally)
        for part, count in zip(tally.parts, self._counts(tally.texts, tally), strict=True):
            tally.sums[part] += count
        sums = tally.sums
        return TokenEstimate(
            tokens=sum(sums),
            system=sums[_SYSTEM],
            messages=sums[_MESSAGES],
            tools=sums[_TOOLS],
            images=sums[_IMAGES],
            documents=sums[_DOCUMENTS],
            image_count=tally.image_count,
            document_count=tally.document_count,
            uncached_chars=tally.uncached_chars,
            exact=self.exact and not tally.deferred,
            deferred=tuple(tally.deferred),
        )

    def learn(self, texts: tuple[str, ...]) -> None:
        """Count texts an estimate deferred and cache them (run it in a thread: tiktoken
        releases the GIL while it encodes)."""
        counts = [self.count_text(text) for text in texts]
        with self._lock:
            cache = self._cache
            for text, count in zip(texts, counts, strict=True):
                cache[hash(text)] = count
            while len(cache) > self._max_entries:
                cache.popitem(last=False)

    def pending_chars(self, request: MessagesRequest | CountTokensRequest) -> int:
        """Return how many characters of text :meth:`estimate` would have to tokenize now.

        Only looks up the cache (no counting, no LRU update), so it is cheap; Python caches a
        string's hash, so the lookup work is not repeated by the ``estimate`` that follows.
        """
        texts = list(_texts_of(request))
        with self._lock:
            cache = self._cache
            return sum(len(t) for t in texts if hash(t) not in cache)

    def needs_thread(self, request: MessagesRequest | CountTokensRequest) -> bool:
        """Whether :meth:`estimate` would block the event loop long enough to need a thread.

        Args:
            request: A decoded body.

        Returns:
            True when more than ``thread_threshold_chars`` characters are not cached yet.
        """
        return self.pending_chars(request) > self.thread_threshold_chars

    # -- parts ---------------------------------------------------------------------------------

    def _counts(self, texts: list[str], tally: _Tally) -> list[int]:
        """Token counts of ``texts``: cached ones under one lock, the rest counted outside it."""
        # The key is the string's hash, not the string: the cache must not pin megabytes of
        # history in memory. str hashes are 64-bit SipHash with a per-process key, so a collision
        # (which would only skew one estimate) is neither likely nor constructible by a client.
        keys = [hash(t) for t in texts]
        with self._lock:
            cache = self._cache
            found = [cache.get(k) for k in keys]
            for key, count in zip(keys, found, strict=True):
                if count is not None:
                    cache.move_to_end(key)
        missing = [i for i, count in enumerate(found) if count is None]
        counts = [0 if c is None else c for c in found]
        if not missing:
            return counts
        new_chars = sum(len(texts[i]) for i in missing)
        if self._encoding is not None and new_chars <= tally.defer_up_to:
            for i in missing:
                counts[i] = approximate_tokens(texts[i])
                tally.deferred.append(texts[i])
            tally.uncached_chars += new_chars
            return counts
        for i in missing:  # outside the lock: this is the slow part
            counts[i] = self.count_text(texts[i])
            tally.uncached_chars += len(texts[i])
        with self._lock:
            for i in missing:
                cache[keys[i]] = counts[i]
            while len(cache) > self._max_entries:
                cache.popitem(last=False)
        return counts

    def _block(self, block: Block, tally: _Tally) -> None:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str):
                tally.add(text)
        elif kind == "image":
            tally.image_count += 1
            tally.sums[_IMAGES] += image_tokens(block.get("source"))
        elif kind == "document":
            tally.document_count += 1
            outer, tally.part = tally.part, _DOCUMENTS
            self._document(block, tally)
            tally.part = outer
        elif kind == "tool_use" or kind == "server_tool_use":
            name = block.get("name")
            if isinstance(name, str):
                tally.add(name)
            tally.add(_json_text(block.get("input", {})))
        elif kind == "tool_result":
            self._content(block.get("content"), tally)
        elif kind == "thinking":
            # Counted although the API drops older turns' thinking for some models: erring high
            # keeps context-window rules safe, and the learned factor absorbs the bias.
            thinking = block.get("thinking")
            if isinstance(thinking, str):
                tally.add(thinking)
        elif kind == "redacted_thinking":
            data = block.get("data")
            if isinstance(data, str):
                tally.sums[tally.part] += approximate_tokens(data)
        else:
            tally.add(_json_text(block))

    def _content(self, content: Any, tally: _Tally) -> None:
        """A nested ``content``: a string, or a list of blocks (tool results, documents)."""
        if isinstance(content, str):
            tally.add(content)
        elif isinstance(content, list):
            for inner in content:
                if isinstance(inner, dict):
                    self._block(inner, tally)

    def _document(self, block: Block, tally: _Tally) -> None:
        for key in ("title", "context"):
            value = block.get(key)
            if isinstance(value, str):
                tally.add(value)
        source = block.get("source")
        if not isinstance(source, dict):
            return
        kind = source.get("type")
        data = source.get("data")
        if kind == "text" and isinstance(data, str):
            tally.add(data)
        elif kind == "content":
            self._content(source.get("content"), tally)
        elif kind == "base64" and isinstance(data, str):
            tally.sums[_DOCUMENTS] += PDF_TOKENS_PER_PAGE * self._pdf_pages(data)
        else:
            tally.sums[_DOCUMENTS] += PDF_TOKENS_PER_PAGE * UNSEEN_DOCUMENT_PAGES

    def _pdf_pages(self, data: str) -> int:
        # Hashing a 30 MB base64 string every turn would defeat the cache; its length plus both
        # ends identify an upload well enough for an estimate.
        key = hash(("pdf", len(data), data[:4096], data[-4096:]))
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        pages = pdf_page_count(data)
        with self._lock:
            self._cache[key] = pages
            if len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return pages


def _texts_of(request: MessagesRequest | CountTokensRequest) -> Iterable[str]:
    """Yield the texts :meth:`TokenCounter.estimate` would tokenize (for the cheap pre-check)."""
    system = request.system
    if isinstance(system, str):
        yield system
    elif system:
        yield from (b["text"] for b in system if isinstance(b.get("text"), str))
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            yield content
            continue
        for block in content:
            yield from _block_texts(block)


def _block_texts(block: Block) -> Iterable[str]:
    kind = block.get("type")
    if kind in ("text", "thinking"):
        text = block.get(kind)
        if isinstance(text, str):
            yield text
    elif kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for inner in content:
                if isinstance(inner, dict):
                    yield from _block_texts(inner)
    elif kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            data = source.get("data")
            if isinstance(data, str):
                yield data
