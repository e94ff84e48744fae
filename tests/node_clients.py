"""The real JavaScript clients for the tests: the TypeScript SDK and the Claude Code CLI, from npm.

Not a test module: ``tests/test_typescript_sdk.py`` and ``tests/test_claude_code.py`` use it.
``tests/clients/package.json`` pins the versions and ``package-lock.json`` the whole tree. The
first test that needs them runs ``npm ci`` into a cache directory outside the repository,
``$XDG_CACHE_HOME/claude-router/node-clients/<hash of the lock and the platform>/`` (override
the parent with ``ROUTER_NODE_CLIENTS_CACHE``); later runs, other worktrees and other pytest
processes reuse it while the lock is unchanged. Claude Code's native binary comes from the
registry too, as the optional dependency package for this platform
(``@anthropic-ai/claude-code-linux-x64`` and the like).

CI starts from a clean clone with node and npm present, and reaches the npm registry. Without
them the tests that need these clients fail, saying why; ``ROUTER_SKIP_NODE_CLIENTS=1`` skips
them instead on a machine that has no node.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SKIP_ENV = "ROUTER_SKIP_NODE_CLIENTS"
CACHE_ENV = "ROUTER_NODE_CLIENTS_CACHE"
PACKAGE_DIR = Path(__file__).parent / "clients"
SDK_SCRIPT = PACKAGE_DIR / "sdk.mjs"
CLAUDE_OFFLINE_ENV: Mapping[str, str] = {
    # Turns off telemetry, error reporting, the update check, the `HEAD /api/hello` probe and
    # the DNS look-ups that come with them: with it, the only connection is to the base URL.
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


@dataclass(frozen=True)
class NodeClients:
    """The installed clients.

    Attributes:
        root: The directory holding ``node_modules``.
        node: The ``node`` executable.
        claude: Claude Code's native executable.
        install_seconds: How long this session's ``npm ci`` took (0 when it was cached).
    """

    root: Path
    node: str
    claude: Path
    install_seconds: float

    def version(self, package: str) -> str:
        """Return the installed version of an npm package, e.g. ``@anthropic-ai/sdk``."""
        manifest = self.root / "node_modules" / package / "package.json"
        version: str = json.loads(manifest.read_text())["version"]
        return version


_installed: NodeClients | None = None
_problem: str | None = None


def _cache_key() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((PACKAGE_DIR / name).read_bytes())
    # npm installs only the optional native package that matches this machine.
    digest.update(f"{platform.system()}-{platform.machine()}".encode())
    return digest.hexdigest()[:16]


def _cache_parent() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "claude-router" / "node-clients"


def _claude_binary(root: Path) -> Path | None:
    # The package's postinstall only copies this same file over its bin/claude.exe
    # placeholder; running it from the platform package keeps the install free of package
    # scripts (npm ci --ignore-scripts) and independent of npm's script-approval policy.
    found = sorted(root.glob("node_modules/@anthropic-ai/claude-code-*/claude"))
    return found[0] if len(found) == 1 else None


def _npm_ci(target: Path) -> str | None:
    """Install the pinned packages into ``target``; return why it failed, or None."""
    for name in ("package.json", "package-lock.json"):
        shutil.copy(PACKAGE_DIR / name, target / name)
    command = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        done = subprocess.run(command, cwd=target, capture_output=True, text=True,
                              timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{' '.join(command)}: {err}"
    if done.returncode != 0:
        return f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}"
    if _claude_binary(target) is None:
        return ("npm ci installed no Claude Code native package for "
                f"{platform.system()}-{platform.machine()}")
    return None


def _install() -> NodeClients:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("node and npm are needed to run the real JavaScript clients")
    parent = _cache_parent()
    parent.mkdir(parents=True, exist_ok=True)
    root = parent / _cache_key()
    seconds = 0.0
    # One installer at a time across pytest processes and worktrees; the finished tree is
    # renamed into place, so a directory that exists is complete.
    with open(parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.is_dir():
            started = time.monotonic()
            staging = Path(tempfile.mkdtemp(prefix=f"{root.name}.", dir=parent))
            why = _npm_ci(staging)
            if why is not None:
                shutil.rmtree(staging, ignore_errors=True)
                raise RuntimeError(why)
            staging.rename(root)
            seconds = time.monotonic() - started
    claude = _claude_binary(root)
    if claude is None:
        raise RuntimeError(f"no Claude Code native binary under {root}; delete it to reinstall")
    return NodeClients(root, node, claude, seconds)


def ensure_clients() -> NodeClients:
    """Return the installed clients, running ``npm ci`` first if this lock was never installed.

    Fails the calling test when they cannot be had (skips it instead when
    ``ROUTER_SKIP_NODE_CLIENTS=1``); the outcome is remembered for the session.
    """
    global _installed, _problem
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1")
    if _installed is None and _problem is None:
        try:
            _installed = _install()
        except RuntimeError as err:
            _problem = str(err)
    if _installed is None:
        pytest.fail(f"the real JavaScript clients are not available: {_problem}", pytrace=False)
    return _installed


def base_env(home: Path) -> dict[str, str]:
    """Return a minimal environment for a client process whose home is ``home``.

    Nothing of the caller's environment leaks in (no real API key, proxy or config).
    """
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }


def run_sdk(clients: NodeClients, base_url: str, scenarios: Sequence[str], api_key: str,
            home: Path) -> list[Any]:
    """Run scenarios of ``tests/clients/sdk.mjs`` in order against ``base_url``, in one node
    process; return their results."""
    env = {**base_env(home), "ROUTER_TEST_NODE_MODULES": str(clients.root),
           "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": api_key}
    done = subprocess.run([clients.node, str(SDK_SCRIPT), *scenarios], env=env, cwd=home,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"sdk.mjs exited {done.returncode}: {done.stderr}"
    results: list[Any] = json.loads(done.stdout)
    return results


@dataclass(frozen=True)
class ClaudeRun:
    """One finished ``claude -p`` run.

    Attributes:
        returncode: The exit status.
        stdout: What it printed (JSON with ``--output-format json``).
        stderr: Its diagnostics.
        seconds: Wall time of the run.
    """

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def result(self) -> dict[str, Any]:
        """The ``--output-format json`` result object."""
        assert self.returncode == 0, f"claude exited {self.returncode}: {self.stderr[-2000:]}"
        parsed: dict[str, Any] = json.loads(self.stdout)
        return parsed


def run_claude(clients: NodeClients, base_url: str, api_key: str, home: Path, *args: str,
               env: Mapping[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 60) -> ClaudeRun:
    """Run ``claude`` non-interactively against ``base_url`` in the home ``home``.

    Args:
        clients: The installed clients.
        base_url: ``ANTHROPIC_BASE_URL``: the proxy or the fake.
        api_key: ``ANTHROPIC_API_KEY``.
        home: Its ``HOME``; its config directory is ``home/.claude``.
        *args: The command line after ``claude``, e.g. ``"-p", "Say hello"``.
        env: More environment variables, e.g. ``CLAUDE_CODE_GATEWAY_HINT_HEADERS``.
        cwd: The working directory; ``home/work`` by default.
        timeout: Seconds before the run is killed.
    """
    # Claude Code keeps settings, transcripts and credentials in its config directory: a
    # fresh one per home, so nothing touches the real one.
    full = {**base_env(home), **CLAUDE_OFFLINE_ENV, "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": api_key, **(env or {})}
    started = time.monotonic()
    done = subprocess.run([str(clients.claude), *args], env=full, cwd=cwd or home / "work",
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return ClaudeRun(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
