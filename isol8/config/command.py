"""``isol8 config``: the effective configuration and where each value came from (filled in
by the config work)."""

from __future__ import annotations

import argparse


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sub.add_parser("config", help="print the effective configuration and its sources")


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("isol8 config")
