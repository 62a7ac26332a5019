"""Config files: defaults for engine options, the server's policy and the MCP server's
limits, from ``~/.isol8/config.{toml,json}``, ``ISOL8_CONFIG`` and (only keys that cannot
weaken isolation) ``./isol8.config.json``.

The library never reads them on its own (an embedding host's behaviour must not change with
a file in the user's home); the ``isol8`` command does, and a host opts in with
``Isol8(**load_config().engine_options())``."""

from .model import Config, load_config

__all__ = ["Config", "load_config"]
