"""``isol8 mcp``: the command line of the MCP server (filled in by the MCP work)."""

from __future__ import annotations

import argparse


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sub.add_parser("mcp", help="serve isol8's tools over MCP (needs isol8[mcp])")


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("isol8 mcp")
