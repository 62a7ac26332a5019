"""``isol8 image build|list|rm|import|export`` (helper H2 fills this in)."""

from __future__ import annotations

import argparse


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    image = sub.add_parser("image", help="build, import, list, export and remove root "
                                         "filesystem images")
    image.add_subparsers(dest="image_command", required=True)


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError
