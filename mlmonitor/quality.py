"""Model-quality names at their old address: a re-export module, no code of its own.

What lived here moved by when it runs (``from mlmonitor.quality import ...`` keeps working):

* :mod:`mlmonitor.reference` (request time): the reference file format, :class:`ReferenceProfile`
  (load, validate, bin live values), :class:`InvalidReference`, :data:`UNKNOWN_FEATURE`,
  :func:`outcome`, :func:`absolute_error`;
* :mod:`mlmonitor.profiling` (offline): building a profile from data
  (:meth:`ReferenceProfile.build`, :meth:`ReferenceProfile.from_csv` call it);
* :mod:`mlmonitor.drift` (offline): :func:`psi`;
* :mod:`mlmonitor.cli`: ``mlmonitor reference build|show`` (``add_cli`` here is its registrar,
  imported on first use so that importing this module does not import argparse);
* :mod:`mlmonitor.contract`: :data:`OTHER`, :data:`PSI_FLOOR`, :data:`SCORE_BUCKETS`;
* :mod:`mlmonitor.tokens`: signed prediction ids.

New code imports from those modules; request-time code must not import this one.
"""

from __future__ import annotations

from typing import Any

from .contract import OTHER, PSI_FLOOR, SCORE_BUCKETS
from .drift import psi
# every name the old module had stays importable here, in __all__ or not
from .reference import (  # noqa: F401
    FORMAT,
    FORMAT_VERSION,
    MAX_BINS,
    MAX_FEATURES,
    MAX_FILE_BYTES,
    MAX_NAME_LEN,
    MAX_TOP_N,
    MAX_VALUE_LEN,
    UNKNOWN_FEATURE,
    InvalidReference,
    ReferenceProfile,
    absolute_error,
    outcome,
)
from .tokens import (  # noqa: F401
    FEEDBACK_REASONS,
    MAX_CLOCK_SKEW_S,
    MAX_TOKEN_LEN,
    InvalidFeedback,
    PredictionFacts,
    SeenTokens,
    sign_prediction,
    verify_prediction,
)

__all__ = [
    "FORMAT_VERSION",
    "OTHER",
    "UNKNOWN_FEATURE",
    "InvalidReference",
    "ReferenceProfile",
    "psi",
    "PSI_FLOOR",
    "SCORE_BUCKETS",
    "InvalidFeedback",
    "PredictionFacts",
    "SeenTokens",
    "sign_prediction",
    "verify_prediction",
    "outcome",
    "absolute_error",
    "add_cli",  # noqa: F822 (module __getattr__)
]

def __getattr__(name: str) -> Any:
    if name == "add_cli":  # the argparse code lives in cli.py; import it only when asked
        from .cli import _add_reference

        return _add_reference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
