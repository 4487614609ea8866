"""gunicorn settings for the example app: ``gunicorn -c example_app/gunicorn.conf.py example_app.app:app``.

mlmonitor's hooks (multiprocess metrics directory, post-fork re-initialisation, dead-worker
clean-up) come from the star import; the rest are ordinary gunicorn settings, each
overridable from the environment: ``BIND`` (or ``PORT``), ``WORKERS``, ``TIMEOUT``.
"""
from __future__ import annotations

import os

# The hooks also give all workers one MLMONITOR_FEEDBACK_SECRET when none is set (so feedback
# can land on any worker); set your own to share it across replicas and restarts.
from mlmonitor.gunicorn import *  # noqa: F401,F403

bind = os.environ.get("BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WORKERS", "4"))
worker_class = "sync"
# X-Slow sleeps at most 2 s, so a request past 30 s means a stuck worker
timeout = int(os.environ.get("TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "10"))
keepalive = 2
# the app's own JSON lines go to stdout; gunicorn's access log would only repeat them
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# gunicorn >= 25 opens a control socket at a fixed path in $HOME; two servers would share it
control_socket_disable = True
