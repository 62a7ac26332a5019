"""``isol8 config``: the effective configuration and where each value came from, so an
operator can see what a run will get before it runs (and which keys a file had ignored)."""

from __future__ import annotations

import argparse
import json
import sys

from .model import Config, load_config


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser("config", help="print the effective configuration and its sources")
    parser.add_argument("--json", action="store_true",
                        help="print {files, values, sources, warnings} as JSON")


def main(args: argparse.Namespace) -> int:
    config = load_config()
    validate_server(config)
    for line in config.warnings:
        print(f"isol8: warning: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    print(f"# files: {', '.join(config.files) or 'none (defaults only)'}")
    for key, source in sorted(config.sources.items()):
        print(f"{key} = {json.dumps(_value(config, key))}  # {source}")
    return 0


def validate_server(config: Config) -> None:
    """The ``server`` section is checked by the server's own code, which needs its extra
    (load_config leaves it to isol8 serve): checked here when installed, so a mistake
    shows before a server starts."""
    if config.section("server") is not None or config.values.get("maxConcurrent"):
        try:
            config.server_policy()
        except ImportError:
            config.warnings.append("server: not checked (needs isol8[server])")


def _value(config: Config, key: str) -> object:
    top, _, name = key.partition(".")
    value = config.values[top]
    return value[name] if name and isinstance(value, dict) else value
