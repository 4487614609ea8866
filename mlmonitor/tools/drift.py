"""Drift arithmetic: the population stability index, in plain Python.

Offline: notebooks, tests and reports call :func:`psi` to check what the Prometheus recording
rules compute from the live bin counters (the same formula, the same floor,
:data:`mlmonitor.contract.PSI_FLOOR`). Nothing in a request runs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mlmonitor.contract import PSI_FLOOR

__all__ = ["PSI_FLOOR", "psi"]


def psi(
    live_counts: Mapping[str, float] | Sequence[float],
    reference_ratio: Mapping[str, float] | Sequence[float],
    floor: float = PSI_FLOOR,
) -> float:
    """Population stability index of live bin counts against the reference shares.

    ``PSI = sum over bins b of (p_b - q_b) * ln(p_b / q_b)`` with ``p_b = max(count_b / total, floor)``
    and ``q_b = max(ratio_b, floor)`` (no renormalisation after the floor), over the union of bins;
    a bin missing on one side has share 0 there. Same formula as the recording rules in ``alerts/``.
    Returns NaN when there are no live counts (as Prometheus does). Rule of thumb: < 0.1 stable,
    0.1-0.2 moderate, > 0.2 drifted.
    """
    if not isinstance(live_counts, Mapping):
        live_counts = dict(enumerate(live_counts))  # type: ignore[arg-type]
    if not isinstance(reference_ratio, Mapping):
        reference_ratio = dict(enumerate(reference_ratio))  # type: ignore[arg-type]
    total = sum(live_counts.values())
    if total <= 0:
        return math.nan
    result = 0.0
    for b in dict.fromkeys([*reference_ratio, *live_counts]):
        p = max(live_counts.get(b, 0) / total, floor)
        q = max(reference_ratio.get(b, 0.0), floor)
        result += (p - q) * math.log(p / q)
    return result

