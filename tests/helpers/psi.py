"""Reference population stability index, the one the recording rules must match.

Same convention as ``model_version_feature:mlmonitor_feature_bin:psi1h`` in
``alerts/``: the bins are the reference's; live shares are counts over the
total of all live counts; both shares are floored at ``floor`` (1e-4) so empty
bins give no infinities; live bins the reference does not know are ignored.
"""
from __future__ import annotations

from typing import Dict, Hashable

import numpy as np

__all__ = ["psi"]


def psi(live_counts: Dict[Hashable, float], reference_ratio: Dict[Hashable, float],
        floor: float = 1e-4) -> float:
    """PSI = sum over reference bins of (p - q) * ln(p / q)."""
    total = float(sum(live_counts.values()))
    if total <= 0:
        raise ValueError("no live counts: PSI is undefined (the rule gives no series)")
    bins = list(reference_ratio)
    p = np.array([live_counts.get(b, 0.0) for b in bins], dtype=float) / total
    q = np.array([reference_ratio[b] for b in bins], dtype=float)
    p, q = np.maximum(p, floor), np.maximum(q, floor)
    return float(np.sum((p - q) * np.log(p / q)))
