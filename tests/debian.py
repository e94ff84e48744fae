"""Servers the tests need, from Debian's packages: found where Debian puts them, or installed
with apt-get on first use (CI runs as root).

Not a test module: ``tests/prometheus.py`` and ``tests/redis_server.py`` use it. Each server
has an environment variable that, set to 1, skips its tests on a machine without it instead
of installing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import pytest

_found: dict[str, tuple[str, ...]] = {}
_problems: dict[str, str] = {}


def install_command(package: str) -> str:
    """Return the shell command that installs ``package``."""
    return ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
            f"apt-get install -y -qq --no-install-recommends {package}")


def _locate(binaries: Sequence[str]) -> tuple[str, ...] | None:
    paths = []
    for name in binaries:
        path = shutil.which(name) or f"/usr/bin/{name}"
        if not os.access(path, os.X_OK):
            return None
        paths.append(path)
    return tuple(paths)


def _install(package: str) -> str | None:
    """Install a Debian package; return why it failed, or None."""
    command = install_command(package)
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return "not root and no sudo"
        command = f"sudo -n sh -c '{command}'"
    try:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if done.returncode != 0:
        return f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}"
    return None


def ensure_package(package: str, binaries: Sequence[str], skip_env: str,
                   needed_for: str) -> tuple[str, ...]:
    """Return the paths of ``binaries``, installing Debian's ``package`` if they are missing.

    Fails the calling test when they cannot be had (skips it instead when ``skip_env`` is
    ``1``); the outcome is remembered for the session.
    """
    if package not in _found and package not in _problems:
        found = _locate(binaries)
        if found is None and os.environ.get(skip_env) != "1":
            why = _install(package)
            found = _locate(binaries)
            if found is None:
                _problems[package] = (
                    f"{package} is needed {needed_for}, and installing it failed "
                    f"({why or 'binaries still missing after install'}). Install it with "
                    f"`{install_command(package)}` (as root), or set {skip_env}=1 to skip "
                    "these tests.")
        if found is not None:
            _found[package] = found
    if package in _found:
        return _found[package]
    if package in _problems:
        pytest.fail(_problems[package], pytrace=False)
    pytest.skip(f"{skip_env}=1 and {package} is not installed")
