"""Writes grafana/dashboards/*.json: a wrapper around ``mlmonitor dashboards render``.

    python grafana/generate.py           # write the JSON files
    python grafana/generate.py --check   # exit 1 if a committed file differs from the output

The dashboards are built by :mod:`mlmonitor.tools.dashboards`; edit them there.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
sys.path.insert(0, str(HERE.parent))  # the repository's mlmonitor, installed or not

from mlmonitor.tools import cli  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    return cli.main(["dashboards", "render", *(args or ["--out-dir"]), str(OUT)])


if __name__ == "__main__":
    sys.exit(main())
