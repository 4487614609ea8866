"""The fail-open guard: mlmonitor's own faults are counted and logged, never raised.

Every sink call and every helper that runs inside a user's request goes through
:func:`guarded` or :func:`report_fault`. The app's own exceptions never pass here.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, List

log = logging.getLogger("mlmonitor")

#: faults seen in this process, by component; tests read it to prove no hidden faults.
fault_counts: dict = {}
_listeners: List[Callable[[str], None]] = []
_lock = threading.Lock()


def add_fault_listener(listener: Callable[[str], None]) -> None:
    """Call ``listener(component)`` on every fault (the metrics sink counts them)."""
    _listeners.append(listener)


def remove_fault_listener(listener: Callable[[str], None]) -> None:
    try:
        _listeners.remove(listener)
    except ValueError:
        pass


def total_faults() -> int:
    return sum(fault_counts.values())


def report_fault(component: str, exc: BaseException | None = None) -> None:
    """Record one internal fault; never raises."""
    try:
        with _lock:
            fault_counts[component] = fault_counts.get(component, 0) + 1
        log.warning("mlmonitor internal error in %s: %s: %s", component,
                    type(exc).__name__ if exc else "fault", _safe_str(exc),
                    exc_info=exc if exc is not None and log.isEnabledFor(logging.DEBUG) else None)
        for listener in list(_listeners):
            try:
                listener(component)
            except Exception:  # a broken listener must not hide the fault
                pass
    except Exception:
        pass


def _safe_str(exc: BaseException | None) -> str:
    try:
        return str(exc)[:300]
    except Exception:
        return "<unprintable>"
