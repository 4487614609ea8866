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

from .config import Settings

log = logging.getLogger("mlmonitor")


class FeedbackRecorder:
    """Signs prediction ids and turns verified feedback into counters."""

    def __init__(self, settings: Settings, metrics: Any) -> None:
        self.metrics = metrics
        self.max_age = settings.feedback_max_age
        secret = settings.feedback_secret
        self.ephemeral = not secret
        self.secret = secret or os.urandom(32).hex()
        self._warned = False
        self._seen: Optional[Any] = None

    def sign(self, model_name: str, model_version: str, predicted: Any) -> str:
        from .tokens import sign_prediction
        if self.ephemeral and not self._warned:
            self._warned = True
            log.warning("mlmonitor: MLMONITOR_FEEDBACK_SECRET is not set; prediction ids are "
                        "only accepted by this process")
        if hasattr(predicted, "item") and type(predicted).__module__ == "numpy":
            predicted = predicted.item()
        return sign_prediction(self.secret, model_name, model_version, predicted)

    def record(self, token: str, label: Any) -> str:
        from .quality import outcome
        from .tokens import InvalidFeedback, SeenTokens, verify_prediction
        if self._seen is None:
            self._seen = SeenTokens()
        try:
            facts = verify_prediction(self.secret, token, self.max_age, seen=self._seen)
        except InvalidFeedback as exc:
            if self.metrics is not None:
                self.metrics.count_feedback_rejected(exc.reason)
            raise
        result = outcome(facts.predicted, label)
        if self.metrics is not None:
            self.metrics.count_feedback(facts.model_name, facts.model_version, result)
        return result
