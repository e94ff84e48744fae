"""Sizes of images and PDFs in tokens, read from their headers without decoding them whole.

Images and PDFs are not tokenized; they are estimated by Anthropic's published rules of thumb
(vision and PDF support pages): an image by its pixel count after the API's downscaling, a PDF by
its pages.
"""

from __future__ import annotations

import binascii
import math
import re
import struct
from typing import Any, Final

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
_PDF_SCAN_BYTES: Final = 2 * 1024 * 1024
"""Decoded PDF prefix scanned for page objects; bounds the work on a 32 MB upload."""
_JPEG_MAX_SEGMENTS: Final = 64

_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_PDF_COUNT = re.compile(rb"/Count\s+(\d{1,6})")


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
