"""The fail-open guard: mlmonitor's own faults are counted and logged, never raised.

Code that runs inside a user's request wraps its work in ``with guarded("component"):``,
except on mlmonitor's own path through every request and in loops (middleware, Flask
hooks, sinks, the streamed body, stages, each id of a batch): there a plain ``try`` calling
:func:`report_fault` costs nothing until it fails, where a ``with`` costs ~2-4k
instructions each time (measured under callgrind). The app's own exceptions never pass here.

Who counts a fault: the ``owner`` given (a recorder or a metrics sink: anything
with ``count_fault(component)``), else the recorder of the request being served in
this context, else the newest live owner added with :func:`add_owner` (a process that
serves one app: that app). So two monitored apps in one process count one fault once.
Owners are held weakly: an app that goes away takes its counting with it.
"""
from __future__ import annotations

import logging
import threading
import weakref
from types import TracebackType
from typing import Protocol, Self

from .record import RECORD_VAR

__all__ = ["guarded", "report_fault", "add_owner", "has_owners", "total_faults", "fault_counts"]

log = logging.getLogger("mlmonitor")


class FaultCounter(Protocol):
    """Who counts a fault in its metrics: a recorder, a metrics sink, a WSGI middleware."""

    def count_fault(self, component: str) -> None: ...


#: faults seen in this process, by component; tests read it to prove no hidden faults.
fault_counts: dict[str, int] = {}
_owners: list[weakref.ref[FaultCounter]] = []
_lock = threading.Lock()


class guarded:  # noqa: N801 (used as a function: `with guarded("metrics", owner):`)
    """``with guarded("traces"):`` swallows an ``Exception`` of the block and reports it.

    ``BaseException`` (KeyboardInterrupt, SystemExit, GeneratorExit) passes through.
    A small class rather than ``contextlib.contextmanager``: no generator per use.
    """

    __slots__ = ("component", "owner")

    def __init__(self, component: str, owner: FaultCounter | None = None) -> None:
        self.component = component
        self.owner = owner

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if kind is None or not issubclass(kind, Exception):
            return False
        report_fault(self.component, exc, self.owner)
        return True


def add_owner(owner: FaultCounter) -> None:
    """``owner.count_fault(component)`` counts faults outside any request while it is the newest."""
    with _lock:
        _owners[:] = [ref for ref in _owners if ref() is not None]
        _owners.append(weakref.ref(owner))


def has_owners() -> bool:
    """Whether a live owner counts faults in this process."""
    return any(ref() is not None for ref in _owners)


def _default_owner() -> FaultCounter | None:
    rec = RECORD_VAR.get()
    if rec is not None and rec.recorder is not None:
        return rec.recorder
    for ref in reversed(_owners):
        owner = ref()
        if owner is not None:
            return owner
    return None


def total_faults() -> int:
    """Faults counted in this process so far, every component together."""
    return sum(fault_counts.values())


def report_fault(component: str, exc: BaseException | None = None,
                 owner: FaultCounter | None = None) -> None:
    """Record one internal fault; never raises."""
    try:
        with _lock:
            fault_counts[component] = fault_counts.get(component, 0) + 1
        log.warning("mlmonitor internal error in %s: %s: %s", component,
                    type(exc).__name__ if exc else "fault", _safe_str(exc),
                    exc_info=exc if exc is not None and log.isEnabledFor(logging.DEBUG) else None)
        if owner is None:
            owner = _default_owner()
        if owner is not None:
            owner.count_fault(component)
    except Exception:  # a broken counter must not hide the fault, nor raise
        pass


def _safe_str(exc: BaseException | None) -> str:
    try:
        return str(exc)[:300]
    except Exception:
        return "<unprintable>"
