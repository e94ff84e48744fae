"""A real Redis for the tests: Debian's ``redis-server`` on a free loopback port, no persistence.

Not a test module: ``tests/test_state.py`` uses it. Installed on first use when not on PATH;
set ``ROUTER_SKIP_REDIS=1`` to skip the Redis tests instead.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.debian import ensure_package
from tests.prometheus import free_port

SKIP_ENV = "ROUTER_SKIP_REDIS"


class RedisServer:
    """One ``redis-server`` process that a test can kill and start again on the same port."""

    def __init__(self, binary: str, directory: Path, password: str | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL a client connects with (password included)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """Return a plain synchronous client, for a test to look at the server directly."""
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> None:
        """Start the server (again) on its port; return once it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise AssertionError(f"redis-server exited: {tail}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        raise AssertionError("redis-server did not answer PING within 20 s")

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def running_redis(password: str | None = None) -> Iterator[RedisServer]:
    """Run a Redis server for the duration of the block; yield it (already answering)."""
    binary = ensure_package("redis-server", ("redis-server",), SKIP_ENV,
                            "to test the Redis state store")[0]
    with tempfile.TemporaryDirectory(prefix="router-redis-") as tmp:
        server = RedisServer(binary, Path(tmp), password)
        server.start()
        try:
            yield server
        finally:
            server.kill()
