"""gunicorn hooks: correct metrics from every worker, fork-safe tracing, a bounded directory.

Use it as it is::

    gunicorn -c python:mlmonitor.gunicorn app:app

or take the hooks into your own ``gunicorn.conf.py`` with one line::

    from mlmonitor.gunicorn import *  # noqa: F401,F403

What the hooks do:

* importing this module (gunicorn loads its config before anything else) sets
  ``PROMETHEUS_MULTIPROC_DIR`` (a new private temp dir unless you set one),
  checks the directory is safe (ours, not a symlink, not group/world-writable) and
  removes a previous run's metric files (only those), so old counts never leak into a new run;
* ``pre_fork``/``post_fork`` give each worker a stable slot (``worker`` label of
  the per-worker process metrics) and let tracing start afresh in the worker;
* ``child_exit`` merges the dead worker's counter, histogram and summary files into one
  accumulated file per type under a lock and drops its gauge files, so counts are kept
  and the directory stays bounded: (live workers, +1 with --preload) x file types + the
  merged files (+1, the master's fault count, without --preload). On a full disk the
  merge is skipped and retried later; the master never dies of it (``multiprocess``);
* ``on_starting`` also has the master write its merged files again, within a second,
  if they are deleted (``rm -rf`` of the directory), so counts never go backwards;
* ``worker_exit`` flushes the worker's spans on a graceful exit;
* importing it, and ``post_worker_init`` once the app is loaded, put mlmonitor's redaction
  on the server's and framework's own loggers (:func:`mlmonitor.redact_server_logs`), so
  an unhandled exception's message and traceback reach stderr with their secrets hidden.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from . import multiprocess
from .multiprocess import (ENV, UnsafeDirectory, merge_dead_worker,
                           prepare_multiprocess_dir)

__all__ = ["on_starting", "pre_fork", "post_fork", "post_worker_init", "child_exit", "worker_exit",
           "on_exit"]


# -- the hooks -------------------------------------------------------------------------

def on_starting(server: Any) -> None:
    """Master start: say where the directory is, count the master's own faults, and
    check once a master loop (about a second) that the merged files are still there."""
    server.log.info("mlmonitor: multiprocess metrics in %s", os.environ.get(ENV))
    multiprocess.master_started()
    manage = getattr(server, "manage_workers", None)
    if callable(manage) and not getattr(manage, "mlmonitor", False):
        def manage_workers() -> Any:
            multiprocess.keep_merged()
            return manage()
        manage_workers.mlmonitor = True  # type: ignore[attr-defined]
        server.manage_workers = manage_workers


def pre_fork(server: Any, worker: Any) -> None:
    """Give the new worker the lowest free slot (a stable ``worker`` label, not a pid)."""
    used = {getattr(w, "mlmonitor_slot", None) for w in server.WORKERS.values()}
    slot = 0
    while slot in used:
        slot += 1
    worker.mlmonitor_slot = slot


def post_fork(server: Any, worker: Any) -> None:
    """In the worker: its slot, tracing that starts afresh in this process, and MLflow's
    connected mode again when the master enabled it before forking (``--preload``)."""
    os.environ["MLMONITOR_WORKER_SLOT"] = str(getattr(worker, "mlmonitor_slot", 0))
    traces = sys.modules.get("mlmonitor.traces")
    if traces is not None:
        traces.reset_after_fork()
    connected = sys.modules.get("mlmonitor.mlflow")
    if connected is not None and connected.enabled_before_fork():
        try:
            connected.enable()
        except Exception as exc:  # the worker serves untraced rather than not at all
            server.log.warning("mlmonitor: MLflow's connected mode failed in the worker: %s", exc)


def post_worker_init(worker: Any) -> None:
    """In the worker, the app loaded: redaction again, now on Flask's default handler too
    (Flask is imported with the app)."""
    redact_server_logs()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after a worker died (gracefully or killed): keep its counts, drop its
    files. Never raises; a merge that cannot be written keeps the files (one line logged)."""
    multiprocess.keep_merged()
    merge_dead_worker(worker.pid)


def on_exit(server: Any) -> None:
    """Master exit: remove the private temporary directory mlmonitor made (a directory
    you named is left alone), so runs leave no ``/tmp/mlmonitor-metrics-*`` behind."""
    multiprocess.remove_created_dir()


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
# gunicorn's and uvicorn's "Error handling request" / "Exception in ASGI application" lines
# print the exception's text: hidden as in mlmonitor's own lines (after the directory is set)
from .app_logging import redact_server_logs  # noqa: E402
redact_server_logs()
# one feedback secret for all workers of this master when none is configured
os.environ.setdefault("MLMONITOR_FEEDBACK_SECRET", os.urandom(32).hex())
