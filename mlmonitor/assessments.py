"""Ground truth on the prediction's trace in MLflow: assessments, written off the request path.

A verified, first-seen feedback whose prediction was traced and sampled becomes two assessments
on that prediction's trace: the expectation ``ground_truth`` (the label, redacted and capped as
previews are) and a feedback judging the prediction, ``correct`` (true or false) for a
classifier, ``absolute_error`` for a regressor; their source is ``CODE`` / ``mlmonitor``. MLflow
names a trace it got from OpenTelemetry ``tr-`` and the trace id's 32 hex digits (its
``generate_mlflow_trace_id_from_otel_trace_id``, the same in 3.7 and 3.17, over OTLP and in the
connected mode). They go to MLflow's REST API
(``POST /api/3.0/mlflow/traces/<id>/assessments``), so the OTLP path needs no MLflow installed.

The request only puts them in a bounded queue; one daemon thread per process sends them, started
with the first (a forked worker starts its own: the master's thread does not live in it). A
trace MLflow does not hold yet (it ingests asynchronously) or a server that does not answer is
tried again for about 30 s; what is never written, or finds the queue full, is counted in
``mlmonitor_telemetry_dropped_total{signal="assessments"}`` and its reason logged once per
process. After writing it reads the trace again: an id replayed to two workers at once
passed both first reads, and the later writer deletes its own. Each call is cut after
:data:`CALL_S` in all, so a server that trickles bytes cannot hold the thread. A worker that
exits loses what it has not sent yet, as it does its spans.
"""
from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import json
import logging
import math
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import guard
from .contract import ASSESSMENTS, CORRECT, TELEMETRY_DROPPED_TOTAL
from .previews import preview
from .config import DEFAULT_REDACT
from .redact import Redactor, redactor

__all__ = ["GROUND_TRUTH", "ABSOLUTE_ERROR", "SOURCE", "MAX_QUEUED", "RETRY_DELAYS_S",
           "assessments_for", "submit"]

log = logging.getLogger("mlmonitor")

#: the assessments' names: what a query filters on (``feedback.correct = 'false'``; the
#: classifier's judgement is named as its outcome, :data:`mlmonitor.contract.CORRECT`)
GROUND_TRUTH = "ground_truth"
ABSOLUTE_ERROR = "absolute_error"
SOURCE = {"source_type": "CODE", "source_id": "mlmonitor"}
#: feedback waiting to be sent, and again waiting to be retried, per process
MAX_QUEUED = 1000
#: the waits before each retry: about 30 s in all
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
#: one HTTP read's limit, and one whole call's (the sending thread's, never a request's)
TIMEOUT_S = 5.0
CALL_S = 10.0
#: the most of a trace's answer read (its assessments come before its spans' tags)
MAX_ANSWER_BYTES = 1 << 22
#: the metadata key holding the prediction id's nonce (its own part, not the signed id)
NONCE_KEY = "mlmonitor.prediction_nonce"


def assessments_for(model_name: str, model_version: str, label: Any, result: str | float,
                    redact: Redactor) -> list[dict[str, Any]]:
    """The assessments of one feedback: the expectation (left out when the label cannot be
    shown redacted) and the judgement; ``result`` is "correct" / "incorrect" or the absolute error."""
    metadata = {"model_name": model_name, "model_version": model_version}
    judged = ({"assessment_name": CORRECT, "feedback": {"value": result == CORRECT}}
              if isinstance(result, str) else
              {"assessment_name": ABSOLUTE_ERROR, "feedback": {"value": float(result)}})
    parts = [{**judged, "source": SOURCE, "metadata": metadata}]
    expected = _expected(label, redact)
    if expected is not None:
        parts.insert(0, {"assessment_name": GROUND_TRUTH, "expectation": expected,
                         "source": SOURCE, "metadata": metadata})
    return parts


def _expected(label: Any, redact: Redactor) -> dict[str, Any] | None:
    """The expectation's value: the label's preview as a JSON value (a text, number or bool), or
    serialized when it is a list or an object, as MLflow's client sends those."""
    text = preview(redact, label)
    if text is None:
        return None
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate (valid JSON): MLflow refuses it
    value = json.loads(text)
    if isinstance(value, (dict, list)):
        return {"serialized_value": {"serialization_format": "JSON_FORMAT", "value": text}}
    if isinstance(value, float) and not math.isfinite(value):
        value = text
    return {"value": value}


@dataclass
class _Pending:
    """One feedback's assessments not written yet, and where they go."""

    url: str  # the trace's URL in MLflow's REST API
    headers: dict[str, str]
    parts: list[dict[str, Any]]
    nonce: str
    dropped: Callable[[str, int], None] | None
    owner: Any
    checked: bool = False  # the trace is there, and holds no assessment of this prediction id
    written: list[str] = field(default_factory=list)  # the ids MLflow gave what was written
    attempt: int = 0
    order: int = field(default_factory=itertools.count().__next__)


def submit(server: tuple[str, dict[str, str]], trace_id: str, nonce: str, parts: list[dict[str, Any]],
           dropped: Callable[[str, int], None] | None, owner: Any = None) -> None:
    """Queue ``parts`` for the trace whose OpenTelemetry id is ``trace_id`` (hex); never blocks.

    ``nonce``: the prediction id's own, kept in the assessments' metadata: an id replayed to
    another worker (whose duplicate check never saw it) finds its assessments there and writes
    none again, while each prediction of a batch (one trace) gets its own. ``dropped(signal,
    count)`` counts what is not written; ``owner`` counts mlmonitor's faults.
    """
    mlflow_id = f"tr-{trace_id}"
    parts = [{**part, "trace_id": mlflow_id, "metadata": {**part["metadata"], NONCE_KEY: nonce}}
             for part in parts]
    pending = _Pending(f"{server[0]}/api/3.0/mlflow/traces/{mlflow_id}", server[1], parts, nonce,
                       dropped, owner)
    try:
        _sender().items.put_nowait(pending)
    except queue.Full:
        _drop(pending, "the queue is full")


class _Sender:
    """The process's queue and its thread, which sends each pending feedback when it is due."""

    def __init__(self) -> None:
        self.items: queue.Queue[_Pending] = queue.Queue(MAX_QUEUED)
        self.waiting: list[tuple[float, int, _Pending]] = []  # (due, order, pending): retries
        self.thread = threading.Thread(target=self.run, name="mlmonitor-assessments", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                self.step()
            except Exception as exc:  # never let the thread die: the next feedback would wait forever
                guard.report_fault(ASSESSMENTS, exc)

    def step(self) -> None:
        timeout = max(0.0, self.waiting[0][0] - time.monotonic()) if self.waiting else None
        with contextlib.suppress(queue.Empty):
            self.send(self.items.get(timeout=timeout))
        while self.waiting and self.waiting[0][0] <= time.monotonic():
            self.send(heapq.heappop(self.waiting)[2])

    def send(self, pending: _Pending) -> None:
        """Check the trace, then write what is left of ``pending``; when a call fails, wait
        and try again from there, or drop the rest."""
        while pending.parts:
            why = _step(pending)
            if why is None:
                continue
            retry, reason = why
            if not retry or pending.attempt >= len(RETRY_DELAYS_S) or len(self.waiting) >= MAX_QUEUED:
                _drop(pending, reason)
                return
            due = time.monotonic() + RETRY_DELAYS_S[pending.attempt]
            pending.attempt += 1
            heapq.heappush(self.waiting, (due, pending.order, pending))
            return
        if pending.written:
            _settle(pending)


def _step(pending: _Pending) -> tuple[bool, str] | None:
    """One call: read the trace (first), or write the next assessment. None when it went
    through; else whether to try again, and why not now."""
    if pending.checked:
        body: bytes | None = json.dumps({"assessment": pending.parts[0]}, allow_nan=False).encode("utf-8")
        url = pending.url + "/assessments"
    else:
        body, url = None, pending.url
    try:
        answer = _call(pending, "POST" if body else "GET", url, body)
    except urllib.error.HTTPError as exc:
        try:
            text = exc.read(2048).decode("utf-8", "replace")
        except OSError:
            text = ""
        if exc.code == 404 and "RESOURCE_DOES_NOT_EXIST" in text:
            return True, "the trace is not in MLflow (yet)"
        return exc.code == 429 or exc.code >= 500, f"HTTP {exc.code}"
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, reset, timed out, garbled
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return True, f"{type(cause).__name__}: {cause}"
    if pending.checked:
        pending.parts.pop(0)
        with contextlib.suppress(ValueError, LookupError, TypeError):
            pending.written.append(str(json.loads(answer)["assessment"]["assessment_id"]))
        return None
    pending.checked = True
    try:
        held = json.loads(answer)["trace"]["trace_info"].get("assessments") or []
    except (ValueError, LookupError, TypeError, AttributeError):
        return False, "not an MLflow trace in the answer"
    if any(isinstance(a, dict) and (a.get("metadata") or {}).get(NONCE_KEY) == pending.nonce for a in held):
        pending.parts.clear()  # a replayed prediction id: its assessments are there already
    return None


def _settle(pending: _Pending) -> None:
    """Read the trace again and delete what this process wrote when the same prediction id's
    assessment of the same name was written first: an id replayed to two workers at once passes
    both duplicate checks and both reads before either writes. Both readers agree on the first
    (its time, then its id), so one of each name stays; a failure leaves the duplicate."""
    try:
        held = json.loads(_call(pending, "GET", pending.url, None))["trace"]["trace_info"].get("assessments") or []
        first: dict[str, tuple[str, str]] = {}
        for item in held:
            if (item.get("metadata") or {}).get(NONCE_KEY) == pending.nonce:
                key = (str(item.get("create_time", "")), str(item.get("assessment_id", "")))
                first[item["assessment_name"]] = min(first.get(item["assessment_name"], key), key)
        firsts = {assessment_id for _, assessment_id in first.values()}
        for item in held:
            if item.get("assessment_id") in pending.written and item["assessment_id"] not in firsts:
                _call(pending, "DELETE", f"{pending.url}/assessments/{item['assessment_id']}", None)
    except (OSError, ValueError, LookupError, TypeError, AttributeError, http.client.HTTPException):
        pass  # the assessments are written; at worst a replay's stay twice


class _Connection(http.client.HTTPConnection):
    """A connection cut at the call's deadline: a server that trickles bytes never lets a read
    time out, and would hold the thread (and every later feedback) for good."""

    def connect(self) -> None:
        super().connect()
        _deadline(self)


class _SecureConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _deadline(self)


class _Handler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_Connection, req)


class _SecureHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_SecureConnection, req, context=getattr(self, "_context", None))


_opener = urllib.request.build_opener(_Handler(), _SecureHandler())  # proxies as urlopen's
#: the call's deadlines and whether they passed (one call at a time: the sending thread's)
_timers: list[tuple[threading.Timer, list[bool]]] = []


def _deadline(connection: http.client.HTTPConnection) -> None:
    passed: list[bool] = []
    timer = threading.Timer(CALL_S, _cut, (connection.sock, passed))
    timer.daemon = True
    timer.start()
    _timers.append((timer, passed))


def _cut(sock: Any, passed: list[bool]) -> None:
    passed.append(True)  # before the read it frees returns
    with contextlib.suppress(OSError):
        sock.shutdown(2)  # socket.SHUT_RDWR: the blocked read returns at once


def _call(pending: _Pending, method: str, url: str, body: bytes | None) -> bytes:
    """One HTTP call to MLflow, whole within :data:`CALL_S`; its answer's first bytes."""
    # an http(s) URL: mlflow.assessment_server() gives no other
    request = urllib.request.Request(url, body, method=method,  # noqa: S310
                                     headers={**pending.headers, "Content-Type": "application/json"})
    try:
        with _opener.open(request, timeout=TIMEOUT_S) as response:
            answer: bytes = response.read(MAX_ANSWER_BYTES)
    finally:
        cut = any(passed for _, passed in _timers)
        while _timers:
            _timers.pop()[0].cancel()
    if cut:  # what was read may be a cut answer
        raise TimeoutError(f"the call outlasted {CALL_S:.0f} s")
    return answer


_warned: list[bool] = [False]


def _drop(pending: _Pending, reason: str) -> None:
    """Count ``pending``'s unwritten assessments and log why, the first time in this process."""
    if not _warned[0]:
        _warned[0] = True
        where = redactor(DEFAULT_REDACT).text(pending.url.split("/api/", 1)[0])
        log.warning("mlmonitor: feedback could not be written to MLflow at %s as assessments (%s); "
                    "counted in %s{signal=%r}, not logged again",
                    where, reason, TELEMETRY_DROPPED_TOTAL, ASSESSMENTS)
    if pending.dropped is not None:
        try:
            pending.dropped(ASSESSMENTS, len(pending.parts))
        except Exception as exc:
            guard.report_fault(ASSESSMENTS, exc, pending.owner)


class _Process:
    """The process's sender, made by the first feedback, and the lock that makes it once."""

    sender: _Sender | None = None
    lock = threading.Lock()


def _sender() -> _Sender:
    sender = _Process.sender
    if sender is None:
        with _Process.lock:
            sender = _Process.sender
            if sender is None:
                sender = _Process.sender = _Sender()
    return sender


def _after_fork() -> None:
    """A forked child has no sending thread, and maybe a lock held by one of its parent's."""
    _Process.sender = None
    _Process.lock = threading.Lock()
    _warned[0] = False
    _timers.clear()  # a deadline of the parent's call, cancelled there


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
