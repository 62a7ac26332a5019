"""``isol8 mcp``: an MCP server (the official ``mcp`` SDK, the ``isol8[mcp]`` extra)."""
