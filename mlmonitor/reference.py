"""The reference profile at request time: loading it, and binning live values.

Runs in every worker: :meth:`ReferenceProfile.load` at start-up, :meth:`ReferenceProfile.bin_of` /
:meth:`ReferenceProfile.class_of` in every request that observes features, :func:`outcome` /
:func:`absolute_error` for each feedback. It owns:

* the profile, loaded and checked at start-up (the file format, its validation, the cleaning
  of label text and :class:`~mlmonitor.reference_format.InvalidReference` are
  :mod:`mlmonitor.reference_format`);
* the rows a reference needs for its bins (:func:`min_rows`, :func:`too_few_rows`), warned about
  at start-up and by the offline tools alike;
* the binning of live values (:data:`UNKNOWN_FEATURE`, :func:`as_number`, :func:`as_category`);
* the comparison of a prediction with its ground truth (:func:`outcome`, :func:`absolute_error`).

Building a profile from data is offline work in :mod:`mlmonitor.tools.profiling`
(:func:`~mlmonitor.tools.profiling.build_profile`, :func:`~mlmonitor.tools.profiling.profile_csv`),
which imports this module, never the other way round.

Binning rule (exact, used for the reference shares and live values alike): a numeric feature with
inner edges ``e_0 < e_1 < ... < e_{k-1}`` has ``k + 1`` bins labelled ``"00"``, ``"01"``, ...;
bin ``i`` covers ``(e_{i-1}, e_i]`` ("right-closed"), bin ``0`` is ``(-inf, e_0]`` and bin ``k``
is ``(e_{k-1}, +inf)``. A value equal to an edge goes to the lower bin. Because the reference
shares are counted with the same rule, replaying the reference gives a PSI of exactly 0.

Example::

    profile = ReferenceProfile.load("reference.json")
    profile.bin_of("a", 0.7)          # -> "04"
"""

from __future__ import annotations

import json
import logging
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .contract import OTHER, REGRESSION
from .reference_format import MAX_FILE_BYTES, cleaned, read_profile, validate

__all__ = [
    "UNKNOWN_FEATURE",
    "ReferenceProfile",
    "absolute_error",
    "as_category",
    "as_number",
    "PSI_THRESHOLD",
    "min_rows",
    "outcome",
    "same_value",
    "too_few_rows",
]



class _UnknownFeature:
    """Type of :data:`UNKNOWN_FEATURE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN_FEATURE"

    def __bool__(self) -> bool:
        return False


#: returned by :meth:`ReferenceProfile.bin_of` for a feature the reference does not know; the
#: caller decides (count it once, drop it). It is falsy and not a string, so it never becomes a label.
UNKNOWN_FEATURE = _UnknownFeature()


# ---------------------------------------------------------------------------------------------
# values


def as_number(value: Any) -> float | int | None:
    """The numeric value of ``value`` for binning, or None when missing or non-numeric.

    int, float, bool (as 0/1), numpy scalars, Decimal and anything else ``float()`` accepts count;
    strings and bytes never do (send numbers as numbers), NaN and None are missing.
    """
    kind = type(value)
    if kind is float:
        return None if value != value else value
    if kind is int or kind is bool:
        return int(value)
    if value is None or isinstance(value, (str, bytes, bytearray)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if number != number else number


def as_category(value: Any) -> str | None:
    """The text a categorical value is compared as, or None when missing (None, NaN, "")."""
    if type(value) is str:
        return value or None
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    text = str(value)
    return text or None


def same_value(predicted: Any, true_value: Any) -> bool:
    """Whether a prediction equals a ground truth, as :func:`outcome` and the reference accuracy count."""
    a, b = as_number(predicted), as_number(true_value)
    if a is not None and b is not None and type(predicted) is not bool and type(true_value) is not bool:
        return a == b
    return str(predicted) == str(true_value)


def _numeric_binner(edges: tuple[float, ...], labels: tuple[str, ...]) -> Callable[[Any], str | None]:
    def bin_of(value: Any) -> str | None:
        kind = type(value)
        if kind is float:
            if value != value:
                return None
            return labels[bisect_left(edges, value)]
        if kind is int:
            return labels[bisect_left(edges, value)]
        number = as_number(value)
        if number is None:
            return None
        return labels[bisect_left(edges, number)]

    return bin_of


def _categorical_binner(values: frozenset[str]) -> Callable[[Any], str | None]:
    def bin_of(value: Any) -> str | None:
        key = value if type(value) is str and value else as_category(value)
        if key is None:
            return None
        return key if key in values else OTHER

    return bin_of


# ---------------------------------------------------------------------------------------------
# the profile


class ReferenceProfile:
    """What the reference data looked like: per-feature bins and shares, classes, scores, accuracy.

    Build with :func:`mlmonitor.tools.profiling.build_profile` (array, rows, DataFrame) or
    :func:`~mlmonitor.tools.profiling.profile_csv` (offline); persist with :meth:`save` /
    :meth:`load`. Read-only after construction, so one instance can serve all threads of a worker.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Wrap a profile dict (cleaned and validated here); :meth:`load` reads one from a file."""
        data = cleaned(data)
        validate(data)
        self._data = data
        self._binners: dict[str, Callable[[Any], str | None]] = {}
        for feature in data["features"]:
            if feature["type"] == "numeric":
                edges = tuple(float(e) for e in feature["edges"])
                labels = tuple(f"{i:02d}" for i in range(len(edges) + 1))
                self._binners[feature["name"]] = _numeric_binner(edges, labels)
            else:
                self._binners[feature["name"]] = _categorical_binner(frozenset(feature["bins"]) - {OTHER})
        classes = data.get("classes")
        self._classes = frozenset(classes["bins"]) - {OTHER} if classes else frozenset()
        #: accuracy of the reference predictions against its labels, or None without both
        self.accuracy: float | None = data.get("accuracy")
        #: "regression" or "classification" ("classification" for profiles without a task)
        self.task: str = data.get("task") or "classification"
        #: mean absolute error of the reference predictions (regression), or None
        self.mae: float | None = data.get("mae")
        outputs = data.get("outputs")
        self._output_binner = None
        if outputs:
            edges = tuple(float(e) for e in outputs["edges"])
            self._output_binner = _numeric_binner(edges, tuple(f"{i:02d}" for i in range(len(edges) + 1)))
        #: whether live predictions are numbers binned by the reference's output edges
        self.regression = self.task == REGRESSION and self._output_binner is not None

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready profile (a deep copy)."""
        copy: dict[str, Any] = json.loads(json.dumps(self._data))
        return copy

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the profile to one JSON file (atomically: a temp file then a rename)."""
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self._data, handle, indent=1, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceProfile:
        """Read and strictly validate a file written by :meth:`save`.

        Any file that cannot be used (unreadable, over 64 MiB, not UTF-8, not JSON, nested too
        deep, invalid) raises :class:`InvalidReference` with one line, so start-up stops with that
        line, not a traceback.
        """
        profile = read_profile(path, cls, MAX_FILE_BYTES)
        warning = too_few_rows(profile._data)  # noqa: SLF001 (the profile this class just read)
        if warning:
            logging.getLogger("mlmonitor").warning("reference %s: %s", os.fspath(path), warning)
        return profile

    # -- request time --------------------------------------------------------------------------

    def bin_of(self, feature: str, value: Any) -> str | _UnknownFeature | None:
        """The bin label of ``value`` for ``feature``.

        Numeric features: ``"00"``, ``"01"``, ... by the right-closed rule in the module docstring;
        None for None, NaN, strings and other non-numbers (count them as missing). Categorical:
        the value's text if it is one of the reference's top values, else ``"other"``; None for
        None, NaN and "". :data:`UNKNOWN_FEATURE` when the reference has no such feature.
        """
        binner = self._binners.get(feature)
        if binner is None:
            return UNKNOWN_FEATURE
        return binner(value)

    def class_of(self, prediction: Any) -> str:
        """The class label for ``prediction``: its text if the reference has it, else ``"other"``."""
        key = as_category(prediction)
        return key if key is not None and key in self._classes else OTHER

    def output_bin_of(self, prediction: Any) -> str | None:
        """The output bin of a numeric (regression) prediction, None if not a number or no edges."""
        binner = self._output_binner
        return binner(prediction) if binner is not None else None

    # -- export --------------------------------------------------------------------------------

    @property
    def features(self) -> tuple[str, ...]:
        """Feature names, in reference order."""
        names = self.__dict__.get("_feature_names")
        if names is None:
            names = self._feature_names = tuple(self._binners)
        return names

    def bins(self, feature: str) -> tuple[str, ...]:
        """All bin labels of ``feature`` (KeyError if unknown)."""
        for item in self._data["features"]:
            if item["name"] == feature:
                return tuple(item["bins"])
        raise KeyError(feature)

    def reference_ratios(self) -> Iterator[tuple[str, str, float]]:
        """``(feature, bin, share)`` for every bin of every feature, zero shares included, for
        ``mlmonitor_feature_reference_ratio``."""
        for item in self._data["features"]:
            for label, share in item["bins"].items():
                yield item["name"], label, share

    def class_ratios(self) -> Iterator[tuple[str, float]]:
        """``(class, share)`` of the reference predictions (or labels), ``"other"`` included."""
        classes = self._data.get("classes")
        if classes:
            yield from classes["bins"].items()

    def output_ratios(self) -> Iterator[tuple[str, float]]:
        """``(bin, share)`` of the reference's numeric predictions (regression), zero shares included."""
        outputs = self._data.get("outputs")
        if outputs:
            yield from outputs["bins"].items()

    def score_cumulative(self) -> Iterator[tuple[float, float]]:
        """``(le, share of scores <= le)`` of the reference, as the score histogram's buckets."""
        scores = self._data.get("scores")
        if scores:
            yield from zip(scores["buckets"], scores["cumulative"], strict=False)


# ---------------------------------------------------------------------------------------------
# reference size: enough rows for the drift alerts' threshold

#: the PSI above which the shipped drift alerts fire (``mlmonitor alerts render --psi-threshold``)
PSI_THRESHOLD = 0.2
#: the standard normal's 95th percentile
_Z95 = 1.6448536269514722


def min_rows(bins: int, threshold: float = PSI_THRESHOLD) -> int:
    """Reference rows that ``bins`` bins need before a PSI above ``threshold`` means drift.

    A reference of ``n`` rows and a live window of ``m`` values, both drawn from one population
    with bin shares ``pi``, differ by sampling alone. To second order PSI = sum (p - q) ln(p / q)
    is sum (p - q)^2 / pi, and p - q = (p - pi) - (q - pi) with independent multinomial errors,
    so n*m/(n+m) * PSI follows Pearson's chi-square with ``bins - 1`` degrees of freedom:
    E[PSI] ~ (bins - 1) * (1/n + 1/m), the reference's own share of it (bins - 1)/n. (Quantile
    bins put 1/bins of the reference in each bin; the noise moves to the edges, whose population
    shares vary as uniform spacings do, to first order the same.) A reference of 54 rows with 10
    bins gives 0.17 on average by itself, and with 100 live values unshifted traffic passes 0.2
    in about 2 draws of 3: the report's 8 drifted features of 13.

    The rule: the reference's own noise stays under half the threshold in 95% of draws, leaving
    the other half to the live window, n >= 2 * chi2_{0.95}(bins - 1) / threshold, the quantile
    by Wilson and Hilferty's approximation (within 3% from one degree of freedom up). 10 bins
    and 0.2: 170 rows; 5 bins: 95; 2 bins: 38. The live window needs as many values for the
    same guarantee (``--drift-min-count``). ``tests/test_cli_reference.py`` checks it by
    simulation.
    """
    df = bins - 1
    if df < 1:
        return 0
    h = 2 / (9 * df)
    return math.ceil(2 * df * (1 - h + _Z95 * math.sqrt(h)) ** 3 / threshold)


def too_few_rows(data: Mapping[str, Any], threshold: float = PSI_THRESHOLD) -> str | None:
    """One line naming the binned distributions of a profile dict with fewer rows than
    :func:`min_rows` asks for their bins, or None when every one has enough."""
    parts = [("feature " + repr(f["name"]), f.get("count", data["rows"]), f["bins"])
             for f in data["features"]]
    parts += [(name, data[name].get("count", data["rows"]), data[name]["bins"])
              for name in ("classes", "outputs") if data.get(name)]
    short = []
    for what, rows, shares in parts:
        bins = sum(1 for share in shares.values() if share > 0)
        if rows < min_rows(bins, threshold):
            short.append(f"{what}: {rows} rows for {bins} bins, needs {min_rows(bins, threshold)}")
    if not short:
        return None
    listed = "; ".join(short[:4]) + (f"; and {len(short) - 4} more" if len(short) > 4 else "")
    return (f"too few rows for its bins, so unshifted traffic can pass the drift alerts' PSI threshold"
            f" {threshold:g} by chance ({listed}): build it from more rows, or with fewer bins")


# ---------------------------------------------------------------------------------------------
# feedback outcomes


def outcome(predicted: Any, true_label: Any) -> str:
    """``"correct"`` or ``"incorrect"``. Two numbers compare as numbers (1 == 1.0); otherwise
    both compare as text (1 == "1", "cat" == "cat"; but 1.0 != "1")."""
    return "correct" if same_value(predicted, true_label) else "incorrect"


def absolute_error(predicted: Any, true_value: Any) -> float:
    """``|predicted - true_value|`` for regression feedback; ValueError if either is not a number."""

    def number(value: Any) -> float:
        result = float(value) if isinstance(value, str) else as_number(value)
        if result is None or isinstance(value, bool) or not math.isfinite(result):
            raise ValueError(f"absolute_error needs finite numbers, got {value!r}")
        return float(result)

    return abs(number(predicted) - number(true_value))
