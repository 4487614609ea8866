"""gunicorn hooks: correct metrics from every worker, fork-safe tracing, a bounded directory.

Use it as it is::

    gunicorn -c python:mlmonitor.gunicorn app:app

or take the hooks into your own ``gunicorn.conf.py`` with one line::

    from mlmonitor.gunicorn import *  # noqa: F401,F403

What the hooks do:

* importing this module (gunicorn loads its config before anything else) sets
  ``PROMETHEUS_MULTIPROC_DIR`` (a new private temp dir unless you set one),
  checks the directory is safe (ours, not group/world-writable) and removes a
  previous run's files, so old counts never leak into a new run;
* ``pre_fork``/``post_fork`` give each worker a stable slot (``worker`` label of
  the per-worker process metrics) and let tracing start afresh in the worker;
* ``child_exit`` marks the dead worker for live gauges and merges its counter and
  histogram files into one accumulated file per type under a lock, so counts
  are kept and the directory stays bounded: (live workers, +1 with --preload) x file types + 2.
* ``worker_exit`` flushes the worker's spans on a graceful exit.
"""
from __future__ import annotations

import fcntl
import glob
import os
import stat
import sys
import tempfile
from typing import Any

__all__ = ["on_starting", "pre_fork", "post_fork", "child_exit", "worker_exit"]

ENV = "PROMETHEUS_MULTIPROC_DIR"


class UnsafeDirectory(RuntimeError):
    """The multiprocess directory cannot be used safely."""


def prepare_multiprocess_dir(path: str | None = None, clean: bool = True) -> str:
    """Create or check the directory and (at master start) empty it of old ``*.db`` files."""
    path = path or os.environ.get(ENV) or os.environ.get("prometheus_multiproc_dir")
    if not path:
        path = tempfile.mkdtemp(prefix="mlmonitor-metrics-")  # mode 0700
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as exc:
        raise UnsafeDirectory(f"mlmonitor: {ENV}={path}: cannot create it: {exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"mlmonitor: {ENV}={path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeDirectory(f"mlmonitor: {ENV}={path} is owned by uid {info.st_uid}, "
                              f"not by this user ({os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(f"mlmonitor: {ENV}={path} is group- or world-writable; "
                              f"use a private directory (chmod 700)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnsafeDirectory(f"mlmonitor: {ENV}={path} is not writable")
    if clean and _first_user(path):
        for leftover in glob.glob(os.path.join(path, "*.db")):
            os.remove(leftover)
    os.environ[ENV] = path
    _use_multiprocess_values()
    return path


_users: dict = {}  # directory -> fd holding a shared flock for this master's lifetime


def _first_user(path: str) -> bool:
    """True unless another live master uses the directory (a USR2 upgrade, a second start):
    its workers' files are live counts and must not be cleaned away."""
    if path in _users:
        return True
    fd = os.open(os.path.join(path, ".users"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first = True
    except OSError:
        first = False
    fcntl.flock(fd, fcntl.LOCK_SH)  # held (and inherited by workers) while we serve
    _users[path] = fd
    return first


def _use_multiprocess_values() -> None:
    """If prometheus-client was imported before the directory was set, switch its storage."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "__name__", "") == "MmapedValue":
        values.ValueClass = values.get_value_class()


def merge_dead_worker(pid: int, path: str | None = None) -> int:
    """Fold a dead worker's counters and histograms into ``<type>_merged.db``; returns files removed.

    Runs under the directory's exclusive lock; scrapes take the shared lock, so
    a scrape never sees a value twice or not at all.
    """
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    from . import guard
    from .metrics import _check_db_file, directory_lock

    path = path or os.environ[ENV]
    multiprocess.mark_process_dead(pid, path)
    removed = 0
    with directory_lock(path, exclusive=True):
        for dead in glob.glob(os.path.join(path, f"*_{pid}.db")):
            kind = os.path.basename(dead).split("_")[0]
            problem = _check_db_file(dead, set()) if kind in ("counter", "histogram") else None
            if problem is not None:  # the scrape leaves such a file out; the master must not hang
                guard.report_fault("merge", ValueError(f"{os.path.basename(dead)}: {problem}"))
            elif kind in ("counter", "histogram"):
                merged = MmapedDict(os.path.join(path, f"{kind}_merged.db"))
                try:
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                        old, _ts = merged.read_value(key)
                        merged.write_value(key, old + value, timestamp)
                finally:
                    merged.close()
            os.remove(dead)  # gauges of a dead worker carry nothing the live ones lack
            removed += 1
    return removed


# -- the hooks -------------------------------------------------------------------------

def on_starting(server: Any) -> None:
    """Master start: the directory was prepared on import; say where it is."""
    server.log.info("mlmonitor: multiprocess metrics in %s", os.environ.get(ENV))


def pre_fork(server: Any, worker: Any) -> None:
    """Give the new worker the lowest free slot (a stable ``worker`` label, not a pid)."""
    used = {getattr(w, "mlmonitor_slot", None) for w in server.WORKERS.values()}
    slot = 0
    while slot in used:
        slot += 1
    worker.mlmonitor_slot = slot


def post_fork(server: Any, worker: Any) -> None:
    """In the worker: its slot, and tracing that starts afresh in this process."""
    os.environ["MLMONITOR_WORKER_SLOT"] = str(getattr(worker, "mlmonitor_slot", 0))
    traces = sys.modules.get("mlmonitor.traces")
    if traces is not None:
        traces.reset_after_fork()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after a worker died (gracefully or killed): keep its counts, drop its files."""
    try:
        merge_dead_worker(worker.pid)
    except Exception as exc:  # never take the master down
        server.log.warning("mlmonitor: could not merge files of worker %s: %s", worker.pid, exc)


def worker_exit(server: Any, worker: Any) -> None:
    """Graceful worker exit: flush the spans it still holds."""
    traces = sys.modules.get("mlmonitor.traces")
    if traces is not None:
        try:
            traces.shutdown()
        except Exception as exc:
            server.log.warning("mlmonitor: flushing spans failed: %s", exc)


try:
    prepare_multiprocess_dir()
except UnsafeDirectory as exc:
    # one clear line and exit 1, also from a user's gunicorn.conf.py (where gunicorn
    # would print a traceback for an ordinary exception)
    raise SystemExit(str(exc)) from None
# one feedback secret for all workers of this master when none is configured
os.environ.setdefault("MLMONITOR_FEEDBACK_SECRET", os.urandom(32).hex())
