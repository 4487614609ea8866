"""Writing a benchmark's JSON report: one format for every script under benchmarks/."""
from __future__ import annotations

import json
import operator
import time
from pathlib import Path
from typing import Any, Dict, Optional

_COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


def target(value: Optional[float], bound: float, op: str, **extra: Any) -> Dict[str, Any]:
    """One target of issue 8 as every report writes it; ``met`` is None when there is no value."""
    met = None if value is None else _COMPARE[op](value, bound)
    return {"value": value, "target": bound, "op": op, "met": met, **extra}


def verdict(row: Dict[str, Any]) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[row["met"]]


def write_report(report: Dict[str, Any], out: str, started: float) -> None:
    """Stamp ``report`` with its wall time and UTC time, write it to ``out``, say where."""
    report["wall_s"] = round(time.time() - started, 1)
    report["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
