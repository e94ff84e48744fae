"""A real Redis for the tests: Debian's ``redis-server`` on a free loopback port, no persistence.

Not a test module: ``tests/test_state.py`` uses it. Installed on first use when not on PATH;
set ``ROUTER_SKIP_REDIS=1`` to skip the Redis tests instead.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests import procs
from tests.debian import ensure_package
from tests.procs import free_port

SKIP_ENV = "ROUTER_SKIP_REDIS"


class RedisServer:
    """One ``redis-server`` process that a test can kill and start again on the same port."""

    def __init__(self, binary: str, directory: Path, password: str | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.running: procs.Running | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running ``redis-server`` process (for a test to pause it), if started."""
        return self.running.process if self.running is not None else None

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
        self.running = procs.spawn(args, ready=lambda _: self._answers(),
                                   log=self.directory / "redis.log", timeout=20)

    def _answers(self) -> bool:
        with self.client() as client:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.running is not None:
            self.running.kill()


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
