"""Ground truth without shared state: signed prediction ids in, feedback counters out.

A prediction id carries model, version and predicted class under an HMAC
(``mlmonitor.tokens.sign_prediction``), so feedback can land on any worker or
replica that shares ``MLMONITOR_FEEDBACK_SECRET``. When none is set, the
processes of one server still agree: gunicorn's hooks set a random per-run
secret, and processes sharing ``PROMETHEUS_MULTIPROC_DIR`` (``uvicorn
--workers``) read one secret file that the first of them creates there
(:func:`shared_secret`). Several replicas need the setting.

A regression label is a true value: a finite number within ``MAX_OBSERVED``,
or the feedback is refused as ``bad_label``; one label cannot then push the
absolute error's sum out of reach of every later error.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from typing import Any

from . import assessments, guard
from .config import MAX_OBSERVED, Settings
from .mlflow import assessment_server
from .multiprocess import UnsafeDirectory, check_directory, multiprocess_dir
from .redact import redactor
from .reference import as_number, outcome
from .tokens import (InvalidFeedback, PredictionFacts, SeenTokens, fit_fields, fit_text, sign_prediction,
                     verify_prediction)

__all__ = ["FeedbackRecorder", "SECRET_FILE", "shared_secret"]

log = logging.getLogger("mlmonitor")

#: the shared secret's file in the multiprocess directory (not a ``.db``: no scrape reads it)
SECRET_FILE = ".feedback_secret"  # noqa: S105 (a file's name, not a secret)


class FeedbackRecorder:
    """Signs prediction ids and turns verified feedback into counters."""

    def __init__(self, settings: Settings, metrics: Any, owner: Any = None) -> None:
        """``metrics``: the sink that counts feedback (or None); ``owner``: who counts its faults."""
        self.metrics = metrics
        self.owner = owner if owner is not None else metrics
        self.max_age = settings.feedback_max_age
        secret = settings.feedback_secret
        directory = multiprocess_dir()
        if not secret and directory:
            secret = shared_secret(directory)
        self.ephemeral = not secret
        self.secret = secret or os.urandom(32).hex()
        self._warned = False
        self._seen: Any | None = None
        self.redact = redactor(settings.redact_set)
        #: where assessments go (see :func:`mlmonitor.mlflow.assessment_server`), asked at the first
        #: feedback that has a trace: the connected mode is set up after the app (gunicorn's post_fork)
        self._mlflow: Any = _NOT_ASKED

    def sign(self, model_name: str, model_version: str, predicted: Any,
             trace_context: tuple[str, str] | None = None) -> str:
        """A prediction id; never raises into the request that asks for it.

        Values that do not fit an id are made to fit (:func:`mlmonitor.tokens.fit_fields`): name
        and version cut to 128 characters, a predicted value longer than 128 bytes as text cut at a
        character boundary (feedback then compares labels cut the same way), a non-finite float
        sent as its text. Should signing still fail, the fault is counted and the id is ``""``,
        which feedback refuses as ``malformed``. ``trace_context``: the trace and span ids (hex)
        of a sampled prediction's span, for feedback to link to.
        """
        if self.ephemeral and not self._warned:
            self._warned = True
            log.warning("mlmonitor: prediction ids are only accepted by this process: set "
                        "MLMONITOR_FEEDBACK_SECRET (32 random bytes, the same for every worker and "
                        "replica)%s", "" if multiprocess_dir() else
                        ", or PROMETHEUS_MULTIPROC_DIR for the workers of one server")
        try:  # once per id of a batch: a try, not guarded()
            if type(predicted).__module__ == "numpy" and getattr(predicted, "size", 0) == 1:
                predicted = predicted.item()  # a numpy scalar signs as the number it holds
            return sign_prediction(self.secret, *fit_fields(model_name, model_version, predicted),
                                   trace_context=trace_context)
        except Exception as exc:
            guard.report_fault("feedback", exc, self.owner)
            return ""

    def record(self, token: str, label: Any) -> str | float:
        """"correct" / "incorrect"; for a model with a regression reference, the absolute error
        (a float, observed in the absolute-error histogram, at most ``MAX_OBSERVED``).

        Raises :class:`mlmonitor.tokens.InvalidFeedback` (a ValueError), after counting it, for
        an id that is not good and for a label that cannot be counted (``bad_label``: for a
        regression, anything but a finite number within ``MAX_OBSERVED``). A refused label does
        not use the id up: it can be sent again with a good one.
        """
        return self.check(token, label)[1]

    def check(self, token: str, label: Any) -> tuple[PredictionFacts, str | float]:
        """:meth:`record`, also returning the verified id's facts (its trace context): they
        exist only once the signature, age, label and duplicate checks have passed."""
        if self._seen is None:
            self._seen = SeenTokens()
        try:
            facts = verify_prediction(self.secret, token, self.max_age)
            reference_for = getattr(self.metrics, "reference_for", None)
            profile = reference_for(facts.model_name) if reference_for is not None else None
            regression = profile is not None and profile.regression
            result: str | float = _error(facts.predicted, label) if regression else _outcome(facts.predicted, label)
            if not self._seen.add(facts.token_id):  # counted below, as every refusal:
                raise InvalidFeedback("duplicate", "this prediction id was already counted here")  # noqa: TRY301
        except InvalidFeedback as exc:
            if self.metrics is not None:
                with guard.guarded("feedback", self.owner):
                    self.metrics.count_feedback_rejected(exc.reason)
            raise
        if self.metrics is not None:
            with guard.guarded("feedback", self.owner):
                if regression:
                    self.metrics.count_absolute_error(facts.model_name, facts.model_version, float(result))
                else:
                    self.metrics.count_feedback(facts.model_name, facts.model_version, str(result))
        if facts.trace_id:
            self._assess(facts, _bounded(label) if regression else label, result)
        return facts, result

    def _assess(self, facts: PredictionFacts, label: Any, result: str | float) -> None:
        """Queue the assessments of a verified feedback for its prediction's trace in MLflow."""
        try:
            if self._mlflow is _NOT_ASKED:
                self._mlflow = assessment_server()
            if self._mlflow is not None:
                parts = assessments.assessments_for(facts.model_name, facts.model_version, label, result,
                                                    self.redact)
                assessments.submit(self._mlflow, facts.trace_id, facts.token_id, parts,
                                   getattr(self.owner, "count_dropped", None), self.owner)
        except Exception as exc:
            guard.report_fault("feedback", exc, self.owner)


_NOT_ASKED = object()


def _outcome(predicted: Any, label: Any) -> str:
    """"correct" / "incorrect"; a label that cannot even be compared (text past Python's digit
    limit, a failing ``__str__``) is ``bad_label``."""
    try:
        if isinstance(predicted, str) and isinstance(label, str):
            label = fit_text(label)  # compared as the prediction was signed: cut the same way
        return outcome(predicted, label)
    except Exception:
        raise InvalidFeedback("bad_label", f"cannot compare a {type(label).__name__} label") from None


def _error(predicted: Any, label: Any) -> float:
    """``|predicted - label|``, at most ``MAX_OBSERVED``; ``bad_label`` unless the label is a
    finite number (or numeric text) within ``MAX_OBSERVED``. A signed prediction that is not
    such a number is the model's fault, not the client's: it counts as the largest error."""
    truth = _bounded(label)
    if truth is None:
        raise InvalidFeedback("bad_label", f"the label must be a finite number within ±{MAX_OBSERVED:g} "
                              f"(the true value), got {_shown(label)}")
    predicted_value = _bounded(predicted, float("inf"))
    if predicted_value is None:
        return MAX_OBSERVED
    return min(abs(predicted_value - truth), MAX_OBSERVED)


def _bounded(value: Any, bound: float = MAX_OBSERVED) -> float | None:
    """``value`` as a float within ``±bound``, or None: bools, None, NaN, infinities, text that is
    not a number, and any value whose conversion fails (an int too large for a float, a failing
    ``__float__``) are not numbers here."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = as_number(value) if not isinstance(value, str) else float(value)
        number = None if number is None else float(number)
    except Exception:
        return None
    return number if number is not None and -bound <= number <= bound else None  # NaN: None


def _shown(value: Any) -> str:
    """A short, safe text of a refused label for its error message."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def shared_secret(directory: str) -> str | None:
    """The feedback secret of every process on ``directory``: read, or created there once.

    Created as a private temporary file (mode 0600), written whole, then hard-linked to
    :data:`SECRET_FILE`: a reader never sees it half-written, and of several processes racing
    the first link wins and all read that one. A directory or file that another user could
    read or replace (see :func:`mlmonitor.multiprocess.check_directory`; a file not ours, not a
    regular file, or readable by group or others) is not used: None, with one log line.
    """
    path = os.path.join(directory, SECRET_FILE)
    try:
        check_directory(directory, clean=False)
        try:
            return _read_secret(path)
        except FileNotFoundError:
            pass
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                os.write(fd, secrets.token_hex(32).encode("ascii"))
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process was first: use its secret
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        return _read_secret(path)
    except (OSError, UnsafeDirectory, _Unusable) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning("mlmonitor: the shared feedback secret %s is not used (%s); set "
                    "MLMONITOR_FEEDBACK_SECRET for all workers", path, why)
        return None


class _Unusable(Exception):
    """A secret file that must not be trusted."""


def _read_secret(path: str) -> str:
    try:  # O_NONBLOCK: a FIFO planted there cannot hold start-up
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unusable("a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Unusable("not a regular file")
        if info.st_uid != os.geteuid():
            raise _Unusable(f"owned by uid {info.st_uid}, not by this user ({os.geteuid()})")
        if info.st_mode & 0o077:
            raise _Unusable("group or others may read or write it; remove it, or chmod 600")
        data = os.read(fd, 257)
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    if not 32 <= len(text) <= 256 or not (text.isascii() and text.isprintable()):
        raise _Unusable("it does not hold a secret")
    return text
