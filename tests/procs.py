"""Start and stop the processes that tests and benches run, one way for all of them.

A process writes stdout and stderr into a log file (never a pipe nobody reads, which would stall
it), is waited for until it is ready, and is always stopped and reaped: SIGTERM, then SIGKILL if it
lingers. Standard library only, so ``bench/`` imports it as well as ``tests/``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL = 3000
"""Characters of a failed process's log quoted in the error."""


class ProcessFailed(RuntimeError):
    """A process exited, or was not ready in time; the message ends with its log."""


@dataclass
class Running:
    """A process started by :func:`started`."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    """The base URL it serves on, when it is a server."""
    _kept: str | None = None

    @property
    def port(self) -> int:
        """The port of :attr:`url`."""
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far (all of it, once stopped)."""
        if self._kept is not None:
            return self._kept
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send ``signum`` (SIGHUP, SIGTERM, ...) to the process."""
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its status."""
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], seconds: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``check`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether a GET of ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def url_answers(url: str) -> Callable[[Running], bool]:
    """Readiness: a GET of ``url`` answers 200."""
    return lambda _: http_ok(url)


def log_matches(pattern: str) -> Callable[[Running], bool]:
    """Readiness: the process's output contains a match of the regex ``pattern``."""
    compiled = re.compile(pattern)
    return lambda running: compiled.search(running.output()) is not None


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def spawn(args: list[str], *, ready: Callable[[Running], bool], log: Path,
          env: Mapping[str, str] | None = None, inherit_env: bool = True,
          cwd: str | Path | None = None, timeout: float = 30.0) -> Running:
    """Start ``args`` and return it once ``ready`` holds; the caller stops it.

    Prefer :func:`started`, which stops it too; this is for a process a test kills and starts
    again (a server crash).

    Args:
        args: the command line.
        ready: tells when the process is ready (:func:`url_answers`, :func:`log_matches`).
        log: the file stdout and stderr are appended to.
        env: variables set for the process, over this process's environment.
        inherit_env: False starts from an empty environment instead.
        cwd: the working directory.
        timeout: seconds to wait for ``ready``.

    Raises:
        ProcessFailed: the process exited before it was ready, or was not ready in time (it is
            stopped first).
    """
    base = dict(os.environ) if inherit_env else {}
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env={**base, **(env or {})},
                                   cwd=cwd)
    running = Running(process, log)
    try:
        if not wait_for(lambda: process.poll() is not None or ready(running), timeout):
            raise ProcessFailed(f"{args[0]} not ready after {timeout:g} s:\n"
                                f"{running.output()[-LOG_TAIL:]}")
        if process.poll() is not None:
            raise ProcessFailed(f"{args[0]} exited with {process.returncode} at start:\n"
                                f"{running.output()[-LOG_TAIL:]}")
    except BaseException:
        running.stop()
        raise
    return running


@contextmanager
def started(args: list[str], *, ready: Callable[[Running], bool], log: Path | None = None,
            env: Mapping[str, str] | None = None, inherit_env: bool = True,
            cwd: str | Path | None = None, timeout: float = 30.0) -> Iterator[Running]:
    """Run ``args`` until the block ends; yield it once ``ready`` holds.

    The arguments are :func:`spawn`'s; without ``log``, output goes to a temporary file that
    :meth:`Running.output` still reads after the block.

    Raises:
        ProcessFailed: the process exited before it was ready, or was not ready in time.
    """
    temporary = log is None
    if log is None:
        handle, name = tempfile.mkstemp(prefix="proc-", suffix=".log")
        os.close(handle)
        log = Path(name)
    try:
        running = spawn(args, ready=ready, log=log, env=env, inherit_env=inherit_env, cwd=cwd,
                        timeout=timeout)
        try:
            yield running
        finally:
            running.stop()
            if temporary:
                running._kept = running.output()
    finally:
        if temporary:
            log.unlink(missing_ok=True)


@contextmanager
def router(command: str, *flags: str, env: Mapping[str, str] | None = None,
           log: Path | None = None, timeout: float = 30.0) -> Iterator[Running]:
    """Run ``python -m router COMMAND --port PORT FLAGS`` on a free port until the block ends.

    Yields it once ``/readyz`` answers 200, with :attr:`Running.url` set.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = python_module("router", command, "--port", str(port), *flags)
    with started(args, ready=url_answers(url + "/readyz"), env=env, log=log,
                 timeout=timeout) as running:
        running.url = url
        yield running
