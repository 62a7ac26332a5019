"""Config files: defaults for engine options, the server's policy and the MCP server's
limits, from ``~/.isol8/config.{toml,json}``, ``ISOL8_CONFIG`` and (only keys that cannot
weaken isolation) ``./isol8.config.json``."""
