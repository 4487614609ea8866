"""Former home of the rule renderer; kept so ``mlmonitor.alerting`` imports keep working.

The rules live in :mod:`mlmonitor.rules` (offline), their names in
:mod:`mlmonitor.contract`, the ``mlmonitor alerts render`` command in
:mod:`mlmonitor.cli`. New code imports from those.
"""
from __future__ import annotations

from .rules import (ALERTS_FILE, OPERATOR_FILE, RECORDING_FILE, Thresholds, render_files,
                    render_groups, to_yaml)

__all__ = ["Thresholds", "render_groups", "render_files", "to_yaml", "RECORDING_FILE", "ALERTS_FILE",
           "OPERATOR_FILE"]
