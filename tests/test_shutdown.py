"""Graceful shutdown of a real ``router serve`` process on SIGTERM.

In-flight streams finish (within ``server.grace_seconds``), new connections are turned away, and
the process exits 0; a stream longer than the grace is cut and the process still exits promptly.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from router.fake import FakeUpstream, Reply
from tests import procs
from tests.conftest import API_KEY, config_text

BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
                   "messages": [{"role": "user", "content": "count to eight"}]}).encode()
TEXT = "one two three four five six seven eight"


@contextmanager
def router_serve(tmp_path: Path, fake: FakeUpstream, grace: float | None = None
                 ) -> Iterator[procs.Running]:
    """Run ``python -m router serve`` on a free port against the fake; stop it if still up."""
    text = config_text(fake.url, "default: requested\n")
    if grace is not None:
        assert "grace_seconds: 30" in text
        text = text.replace("grace_seconds: 30", f"grace_seconds: {grace}")
    config = tmp_path / "router.yaml"
    config.write_text(text)
    with procs.router("serve", "--config", str(config), "--log-level", "warning",
                      env={"ROUTER_UPSTREAM_URL": fake.url}, log=tmp_path / "server.log",
                      timeout=20) as server:
        yield server


@dataclass
class StreamRead:
    """A streamed request read in a background thread."""

    port: int
    first_event: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    data: bytes = b""
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> StreamRead:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", "/v1/messages", body=BODY,
                         headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01",
                                  "content-type": "application/json"})
            response = conn.getresponse()
            self.status = response.status
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    break
                self.data += chunk
                if b"\n\n" in self.data:
                    self.first_event.set()
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc
        finally:
            self.first_event.set()
            conn.close()

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream never ended"

    @property
    def events(self) -> list[bytes]:
        return [e for e in self.data.split(b"\n\n") if e.strip()]


def new_connection_turned_away(port: int) -> str:
    """Try a fresh connection: return how it was turned away, or fail if it was served."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
        except (ConnectionError, http.client.RemoteDisconnected, TimeoutError):
            return "closed"
        assert response.status == 503, f"a new request was served during shutdown: " \
                                        f"{response.status}"
        return "503"


def test_sigterm_lets_the_stream_finish_and_turns_new_connections_away(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.script(Reply(text=TEXT, event_delay=0.3))
    with router_serve(tmp_path, fake) as server:
        stream = StreamRead(server.port).start()
        assert stream.first_event.wait(10), "no first event"
        assert stream.error is None and stream.status == 200, (stream.status, stream.error)
        server.signal(signal.SIGTERM)
        sent_at = time.monotonic()
        time.sleep(0.5)
        turned_away = new_connection_turned_away(server.port)
        assert server.process.poll() is None, "exited with a stream still in flight"
        stream.join(timeout=30)
        code = server.wait(timeout=30)  # grace_seconds: 30 in the default config
        exited_after = time.monotonic() - sent_at
        output = server.output()
    assert stream.error is None, stream.error
    events = stream.events
    assert events[0].startswith(b"event: message_start")
    assert events[-1] == b'event: message_stop\ndata: {"type":"message_stop"}', events[-1]
    assert not any(e.startswith(b"event: error") for e in events)
    assert b"eight" in stream.data
    assert turned_away in ("refused", "closed", "503")
    assert code == 0, output
    # It waited for the stream, not for the whole grace.
    assert exited_after < 15, exited_after
    assert "Traceback" not in output, output


def test_stream_longer_than_the_grace_is_cut_and_the_process_exits_promptly(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.script(Reply(text=" ".join(["word"] * 40), event_delay=0.3))  # ~15 s of stream
    with router_serve(tmp_path, fake, grace=1) as server:
        stream = StreamRead(server.port).start()
        assert stream.first_event.wait(10), "no first event"
        assert stream.status == 200, (stream.status, stream.error)
        server.signal(signal.SIGTERM)
        sent_at = time.monotonic()
        code = server.wait(timeout=15)
        exited_after = time.monotonic() - sent_at
        stream.join(timeout=10)
        output = server.output()
    assert exited_after < 5, f"took {exited_after:.1f} s to exit with grace_seconds: 1"
    assert code == 0, output
    # The stream was cut short: never a clean end of a message that was not finished.
    assert not stream.data.rstrip().endswith(b'data: {"type":"message_stop"}')
    assert len(stream.events) < 40
    # ... and the client can tell: the body breaks off mid-chunk, or ends with an error event.
    assert stream.error is not None or stream.events[-1].startswith(b"event: error"), (
        stream.events[-1])


def test_exit_status_after_sigterm_is_zero(fake: FakeUpstream, tmp_path: Path) -> None:
    with router_serve(tmp_path, fake) as server:
        server.signal(signal.SIGTERM)
        code = server.wait(timeout=15)
    assert code == 0, code
