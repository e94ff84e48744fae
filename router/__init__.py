"""A cost-aware model-routing proxy for the Anthropic Messages API."""

from router.app import create_app
from router.config import Config, ConfigError, LoadedConfig, load_config

__all__ = ["Config", "ConfigError", "LoadedConfig", "create_app", "load_config"]
__version__ = "0.1.0"
