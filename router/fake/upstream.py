"""The fake's former single module, kept as an alias of ``router.fake`` so code written
against ``router.fake.upstream`` (and ``python -m router.fake.upstream``) keeps working.
New code imports from ``router.fake``."""

from router.fake import (
    Behaviour,
    Drop,
    Fail,
    FakeUpstream,
    Malformed,
    Received,
    Reply,
    Stall,
    StreamError,
    estimate_input_tokens,
    main,
    running_fake,
)

__all__ = [
    "Behaviour",
    "Drop",
    "Fail",
    "FakeUpstream",
    "Malformed",
    "Received",
    "Reply",
    "Stall",
    "StreamError",
    "estimate_input_tokens",
    "main",
    "running_fake",
]

if __name__ == "__main__":
    main()
