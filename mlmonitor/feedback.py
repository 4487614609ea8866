"""Ground truth without shared state: signed prediction ids in, feedback counters out.

A prediction id carries model, version and predicted class under an HMAC
(``mlmonitor.tokens.sign_prediction``), so feedback can land on any worker or
replica that shares ``MLMONITOR_FEEDBACK_SECRET``. Under gunicorn the hooks
set a random per-run secret when none is configured, so every worker of one
master agrees; several replicas need the setting.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from . import guard
from .config import Settings

__all__ = ["FeedbackRecorder"]

log = logging.getLogger("mlmonitor")


class FeedbackRecorder:
    """Signs prediction ids and turns verified feedback into counters."""

    def __init__(self, settings: Settings, metrics: Any, owner: Any = None) -> None:
        """``metrics``: the sink that counts feedback (or None); ``owner``: who counts its faults."""
        self.metrics = metrics
        self.owner = owner if owner is not None else metrics
        self.max_age = settings.feedback_max_age
        secret = settings.feedback_secret
        self.ephemeral = not secret
        self.secret = secret or os.urandom(32).hex()
        self._warned = False
        self._seen: Optional[Any] = None

    def sign(self, model_name: str, model_version: str, predicted: Any) -> str:
        """A prediction id; never raises into the request that asks for it.

        Values that do not fit an id are made to fit (:func:`mlmonitor.tokens.fit_fields`): name
        and version cut to 128 characters, a predicted value longer than 128 bytes as text cut at a
        character boundary (feedback then compares labels cut the same way), a non-finite float
        sent as its text. Should signing still fail, the fault is counted and the id is ``""``,
        which feedback refuses as ``malformed``.
        """
        from .tokens import fit_fields, sign_prediction
        if self.ephemeral and not self._warned:
            self._warned = True
            log.warning("mlmonitor: MLMONITOR_FEEDBACK_SECRET is not set; prediction ids are "
                        "only accepted by this process")
        try:  # once per id of a batch: a try, not guarded()
            if type(predicted).__module__ == "numpy" and getattr(predicted, "size", 0) == 1:
                predicted = predicted.item()  # a numpy scalar signs as the number it holds
            return sign_prediction(self.secret, *fit_fields(model_name, model_version, predicted))
        except Exception as exc:
            guard.report_fault("feedback", exc, self.owner)
            return ""

    def record(self, token: str, label: Any) -> Any:
        """"correct" / "incorrect"; for a model with a regression reference, the absolute error
        (a float, observed in the absolute-error histogram)."""
        from .reference import outcome
        from .tokens import InvalidFeedback, SeenTokens, fit_text, verify_prediction
        if self._seen is None:
            self._seen = SeenTokens()
        try:
            facts = verify_prediction(self.secret, token, self.max_age, seen=self._seen)
        except InvalidFeedback as exc:
            if self.metrics is not None:
                with guard.guarded("feedback", self.owner):
                    self.metrics.count_feedback_rejected(exc.reason)
            raise
        if isinstance(facts.predicted, str) and isinstance(label, str):
            label = fit_text(label)  # compared as the prediction was signed: cut the same way
        reference_for = getattr(self.metrics, "reference_for", None)
        profile = reference_for(facts.model_name) if reference_for is not None else None
        if profile is not None and profile.regression:
            from .reference import absolute_error
            error = absolute_error(facts.predicted, label)  # ValueError for a non-number
            with guard.guarded("feedback", self.owner):
                self.metrics.count_absolute_error(facts.model_name, facts.model_version, error)
            return error
        result = outcome(facts.predicted, label)
        if self.metrics is not None:
            with guard.guarded("feedback", self.owner):
                self.metrics.count_feedback(facts.model_name, facts.model_version, result)
        return result
