"""A spec-faithful fake of the Messages API: a real HTTP server used by the tests, the benches,
``router demo`` and ``../shared/routing-eval/replay.py``.

It follows the wire contract of ``shared/anthropic-wire-spec.md`` (sections 1-5 and 8) and
the conversation rules of section 6.3: a prompt cache per API key and model, thinking
signatures bound to the model that wrote them, and each model's limits and capabilities from
one catalogue. Tests queue behaviours with ``FakeUpstream.script`` (or ``script_for`` the
requests carrying an ``x-fake-key``) and read ``received``/``billed``/``sent``; scripts steer
answers with ``[[reply:...]]`` directives.
docs/fake-upstream.md has the whole picture.

Modules, one idea each:

* ``behaviours``: what a test can script (Reply, Fail, Stall, Drop, StreamError, Malformed)
  and the record of a received request;
* ``catalogue``: the models, their limits and capabilities (``CATALOGUE``);
* ``checks``: request validation, capabilities included; ``errors``: the ``Invalid`` it raises;
* ``prompt``: a request's blocks in cache order, their tokens and breakpoints;
* ``cache``: the prompt-cache simulation and its movable clock;
* ``signatures`` and ``history``: signed thinking and the rules a history must follow;
* ``directives`` and ``replies``: building the answer; ``sse``: writing it as events;
* ``ledger``: what was received, sent and billed; ``server``: the aiohttp app;
  ``runner``: ``running_fake``, in a thread of its own; ``cli``: ``python -m router.fake``.

Three ways to run it:

* ``await FakeUpstream().start()`` inside an event loop;
* ``with running_fake() as fake:`` from synchronous tests (own thread and loop);
* ``python -m router.fake --port 0`` for benchmarks, demos and replays.
"""

from router.fake.behaviours import (
    KEY_HEADER,
    Behaviour,
    Drop,
    Fail,
    Malformed,
    Received,
    Reply,
    Stall,
    StreamError,
)
from router.fake.catalogue import CATALOGUE, ModelSpec, find_model
from router.fake.cli import main
from router.fake.prompt import estimate_input_tokens
from router.fake.runner import running_fake
from router.fake.server import FakeUpstream

__all__ = [
    "CATALOGUE",
    "KEY_HEADER",
    "Behaviour",
    "Drop",
    "Fail",
    "FakeUpstream",
    "Malformed",
    "ModelSpec",
    "Received",
    "Reply",
    "Stall",
    "StreamError",
    "estimate_input_tokens",
    "find_model",
    "main",
    "running_fake",
]
