"""The rendered files of the offline commands (dashboards, mixin, kubernetes): written into a
folder, or checked against one, so a committed copy can be proven current in one place."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping


def write_texts(texts: Mapping[str, str], out_dir: str) -> list[str]:
    """Write each ``name -> text`` into ``out_dir``; return the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, text in texts.items():
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(path)
    return written


def stale_texts(texts: Mapping[str, str], out_dir: str) -> list[str]:
    """Names whose file in ``out_dir`` is missing or differs from its text."""
    found = []
    for name, text in texts.items():
        try:
            with open(os.path.join(out_dir, name), encoding="utf-8") as fh:
                current: str | None = fh.read()
        except FileNotFoundError:
            current = None
        if current != text:
            found.append(name)
    return found


def write_or_check(render: Callable[[], Mapping[str, str]], args: argparse.Namespace, command: str) -> int:
    """``--check DIR``: exit 1 naming each stale file; ``--out-dir DIR``: write and print the paths."""
    if args.check is not None:
        found = stale_texts(render(), args.check)
        if found:
            sys.stderr.write(f"mlmonitor: stale in {args.check}: {', '.join(found)};"
                             f" run `mlmonitor {command} --out-dir {args.check}`\n")
            return 1
        return 0
    sys.stdout.writelines(path + "\n" for path in write_texts(render(), args.out_dir))
    return 0
