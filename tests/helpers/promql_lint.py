"""PromQL lints shared by the rule and dashboard tests (promql-parser's AST, no server)."""
from __future__ import annotations

from collections import Counter
from typing import List

import promql_parser as pp

__all__ = ["unguarded_divisions", "instant_raw_selectors"]


def _unparen(node):
    while isinstance(node, pp.ParenExpr):
        node = node.expr
    return node


def _guarded(divisor) -> bool:
    """A divisor that cannot be 0: a number, ``clamp_min(...)``, or a ``> 0`` filter (not ``> bool``)."""
    divisor = _unparen(divisor)
    if isinstance(divisor, pp.NumberLiteral):
        return float(str(divisor)) != 0
    if isinstance(divisor, pp.Call) and divisor.func.name == "clamp_min":
        return True
    return (isinstance(divisor, pp.BinaryExpr) and str(divisor.op) == ">"
            and not (divisor.modifier and divisor.modifier.return_bool)
            and isinstance(_unparen(divisor.rhs), pp.NumberLiteral) and float(str(_unparen(divisor.rhs))) >= 0)


def unguarded_divisions(expr: str) -> List[str]:
    """Each ``/`` in ``expr`` whose divisor can be 0 (0/0 is NaN, not "No data")."""
    found: List[str] = []

    def visit(node) -> None:
        if isinstance(node, pp.BinaryExpr) and str(node.op) == "/" and not _guarded(node.rhs):
            found.append(f"... / {node.rhs}")

    pp.walk(pp.parse(expr), visit)
    return found


def instant_raw_selectors(expr: str, prefix: str = "mlmonitor_") -> List[str]:
    """Raw series (``prefix``..., no recording rule) read as an instant vector: gone at a missed scrape."""
    every: Counter = Counter()
    ranged: Counter = Counter()

    def visit(node) -> None:
        if isinstance(node, pp.VectorSelector):
            every[str(node)] += 1
        elif isinstance(node, pp.MatrixSelector):
            ranged[str(node.vector_selector)] += 1

    pp.walk(pp.parse(expr), visit)
    return sorted(s for s in (every - ranged) if s.startswith(prefix) and ":" not in s.split("{")[0])
