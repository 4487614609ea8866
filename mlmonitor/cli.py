"""The ``mlmonitor`` command: each concern adds its own subcommand.

Subcommands are registered by the module that owns the work (``quality`` for
``reference``, ``alerting`` for ``alerts``), so this file stays a dispatcher.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: modules that expose ``add_cli(subparsers)``; each registers one subcommand
#: whose parser sets ``func`` to a callable taking the parsed namespace.
SUBCOMMAND_MODULES = ("mlmonitor.quality", "mlmonitor.alerting")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmonitor", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a concern not built yet
            continue
        module.add_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"mlmonitor: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
