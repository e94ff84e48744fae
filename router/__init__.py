"""A cost-aware model-routing proxy for the Anthropic Messages API.

Importing the package is cheap: the web stack (Litestar, aiohttp, uvicorn) loads only when
:func:`create_app` is first used, so ``router check`` and ``router explain`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from router.config import Config
from router.config_file import ConfigError, LoadedConfig, load_config

if TYPE_CHECKING:
    from router.app import create_app

__all__ = ["Config", "ConfigError", "LoadedConfig", "create_app", "load_config"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from router.app import create_app

        return create_app
    raise AttributeError(f"module 'router' has no attribute {name!r}")
