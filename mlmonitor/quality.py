"""Model-quality building blocks: reference profiles, binning, PSI and feedback outcomes.

This module owns what turns observations into bounded label values:

* :class:`ReferenceProfile` is built once from training or validation data, saved to one JSON
  file and loaded by every worker and replica, so all of them bin live values the same way.
  :meth:`ReferenceProfile.bin_of` is the request-time lookup (a ``bisect`` on precomputed edges).
* :func:`psi` is the drift formula the Prometheus recording rules implement, in plain Python.
* :func:`outcome` / :func:`absolute_error` compare a prediction with its ground truth; the signed
  prediction ids that carry it back (:func:`sign_prediction`, :func:`verify_prediction`) live in
  :mod:`mlmonitor.tokens` and are importable from here too.
* :func:`add_cli` registers ``mlmonitor reference build|show``.

Binning rule (exact, used for the reference shares and live values alike): a numeric feature with
inner edges ``e_0 < e_1 < ... < e_{k-1}`` has ``k + 1`` bins labelled ``"00"``, ``"01"``, ...;
bin ``i`` covers ``(e_{i-1}, e_i]`` ("right-closed"), bin ``0`` is ``(-inf, e_0]`` and bin ``k``
is ``(e_{k-1}, +inf)``. A value equal to an edge goes to the lower bin. Edges sit at the reference's
quantiles ``j / bins`` (the smallest reference value with at least that share of the reference at or
below it), duplicates collapsed, so a low-cardinality feature gets fewer bins. Because the reference
shares are counted with the same rule, replaying the reference gives a PSI of exactly 0.

numpy is optional: it only speeds up :meth:`ReferenceProfile.build`; the result is identical
without it. Nothing here imports the rest of mlmonitor but :mod:`mlmonitor.tokens`.

Example::

    profile = ReferenceProfile.build(X_val, feature_names=["a", "b"], predictions=y_hat, labels=y)
    profile.save("reference.json")
    profile = ReferenceProfile.load("reference.json")
    profile.bin_of("a", 0.7)          # -> "04"
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

# signed prediction ids live in tokens.py; their public path here is kept
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
    "add_cli",
]

FORMAT = "mlmonitor.reference"
FORMAT_VERSION = 1
#: bin label for categorical values (and classes) outside the reference's top values
OTHER = "other"
#: shares below this are raised to it in :func:`psi` (and in the recording rules), so empty bins
#: give a large but finite contribution instead of an infinity
PSI_FLOOR = 1e-4
#: upper bounds of the score histogram, as in ``mlmonitor_prediction_score``
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

MAX_BINS = 100  # labels stay two digits, "00".."99"
MAX_TOP_N = 100
MAX_FEATURES = 1000
MAX_VALUE_LEN = 64  # longer categorical values / class names are counted as "other"
MAX_NAME_LEN = 128  # feature names, as every label value
MAX_FILE_BYTES = 64 * 2**20  # 1000 features x 101 bins of 64 escaped characters fit
_MISSING_TEXT = frozenset({"", "na", "nan", "null", "none"})


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


class InvalidReference(ValueError):
    """A reference file or build input that cannot be used; the message says what and where."""


# ---------------------------------------------------------------------------------------------
# values


def _number(value: Any) -> float | int | None:
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


def _category(value: Any) -> str | None:
    """The text a categorical value is compared as, or None when missing (None, NaN, "")."""
    if type(value) is str:
        return value or None
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    text = str(value)
    return text or None


def _numeric_binner(edges: tuple[float, ...], labels: tuple[str, ...]) -> Callable[[Any], str | None]:
    def bin_of(value: Any) -> str | None:
        kind = type(value)
        if kind is float:
            if value != value:
                return None
            return labels[bisect_left(edges, value)]
        if kind is int:
            return labels[bisect_left(edges, value)]
        number = _number(value)
        if number is None:
            return None
        return labels[bisect_left(edges, number)]

    return bin_of


def _categorical_binner(values: frozenset[str]) -> Callable[[Any], str | None]:
    def bin_of(value: Any) -> str | None:
        key = value if type(value) is str and value else _category(value)
        if key is None:
            return None
        return key if key in values else OTHER

    return bin_of


# ---------------------------------------------------------------------------------------------
# building


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _quantile_edges(sorted_values: Sequence[float], bins: int) -> list[float]:
    """Inner edges at quantiles j/bins: the smallest value with at least that share at or below."""
    n = len(sorted_values)
    edges: list[float] = []
    for j in range(1, bins):
        edge = float(sorted_values[(j * n + bins - 1) // bins - 1])
        if math.isfinite(edge) and (not edges or edge > edges[-1]):
            edges.append(edge)
    return edges


def _numeric_profile(values: Any, bins: int, np: Any) -> dict[str, Any] | None:
    """Edges and shares, or None when the values are not all numeric."""
    total = len(values)
    if np is not None and isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        array = values.astype(np.float64)
        ordered = np.sort(array[~np.isnan(array)])
    else:
        numbers = []
        for value in values:
            if _is_missing(value):
                continue
            number = _number(value)
            if number is None:
                return None
            numbers.append(float(number))
        ordered = np.sort(np.asarray(numbers, dtype=np.float64)) if np is not None else sorted(numbers)
    n = len(ordered)
    if n == 0:
        return None
    edges = _quantile_edges(ordered, bins)
    if np is not None:
        at_or_below = [int(c) for c in np.searchsorted(ordered, edges, side="right")] if edges else []
    else:
        at_or_below = [bisect_right(ordered, edge) for edge in edges]
    cumulative = [0] + at_or_below + [n]
    counts = [cumulative[i + 1] - cumulative[i] for i in range(len(edges) + 1)]
    return {
        "type": "numeric",
        "edges": edges,
        "bins": {f"{i:02d}": count / n for i, count in enumerate(counts)},
        "count": n,
        "missing_share": (total - n) / total,
    }


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    if isinstance(value, str) and value.strip().lower() in _MISSING_TEXT:
        return True
    return False


def _top_shares(keys: Iterable[str], top_n: int) -> tuple[dict[str, float], int]:
    counts = Counter(keys)
    n = sum(counts.values())
    eligible = [(k, c) for k, c in counts.items() if k != OTHER and len(k) <= MAX_VALUE_LEN]
    eligible.sort(key=lambda kc: (-kc[1], kc[0]))
    top = eligible[:top_n]
    shares = {k: c / n for k, c in top}
    shares[OTHER] = (n - sum(c for _, c in top)) / n
    return shares, n


def _categorical_profile(values: Iterable[Any], top_n: int) -> dict[str, Any] | None:
    values = list(values)
    keys = [k for k in (_category(v) for v in values) if k is not None]
    if not keys:
        return None
    shares, n = _top_shares(keys, top_n)
    return {"type": "categorical", "bins": shares, "count": n, "missing_share": (len(values) - n) / len(values)}


def _columns(data: Any, feature_names: Sequence[str] | None, np: Any) -> dict[str, Any]:
    """name -> column (a list, or a 1-D numpy array) for the supported input shapes."""
    if isinstance(data, (str, os.PathLike)):
        raise InvalidReference("use ReferenceProfile.from_csv(path, ...) for a CSV file")
    if isinstance(data, Mapping):  # name -> column
        columns = {str(name): values for name, values in data.items()}
        if len({len(values) for values in columns.values()}) > 1:
            raise InvalidReference("columns have different lengths")
        return columns
    if hasattr(data, "columns") and hasattr(data, "to_numpy") and hasattr(data, "__getitem__"):
        names = [str(c) for c in data.columns]  # a pandas DataFrame, duck-typed: pandas stays optional
        return {name: data[col].to_numpy() for name, col in zip(names, data.columns)}
    if np is not None and isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise InvalidReference(f"expected a 2-D array, got {data.ndim}-D")
        names = list(feature_names or [f"f{i}" for i in range(data.shape[1])])
        if len(names) != data.shape[1]:
            raise InvalidReference(f"{len(names)} feature names for {data.shape[1]} columns")
        return {str(name): data[:, i] for i, name in enumerate(names)}
    rows = list(data)
    if not rows:
        raise InvalidReference("no reference rows")
    if isinstance(rows[0], Mapping):
        names = list(feature_names) if feature_names else list(dict.fromkeys(k for row in rows for k in row))
        return {str(name): [row.get(name) for row in rows] for name in names}
    if not feature_names:
        raise InvalidReference("feature_names is required for rows that are sequences")
    width = len(feature_names)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InvalidReference(f"row {i} has {len(row)} values for {width} feature names")
    return {str(name): [row[i] for row in rows] for i, name in enumerate(feature_names)}


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _score_histogram(scores: Sequence[Any]) -> dict[str, Any] | None:
    numbers = [float(n) for n in (_number(s) for s in scores) if n is not None]
    if not numbers:
        return None
    n = len(numbers)
    ordered = sorted(numbers)
    return {
        "buckets": list(SCORE_BUCKETS),
        "cumulative": [bisect_right(ordered, le) / n for le in SCORE_BUCKETS],
        "count": n,
    }


def _same(predicted: Any, true_value: Any) -> bool:
    a, b = _number(predicted), _number(true_value)
    if a is not None and b is not None and type(predicted) is not bool and type(true_value) is not bool:
        return a == b
    return str(predicted) == str(true_value)


def _check_int(name: str, value: int, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidReference(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# the profile


class ReferenceProfile:
    """What the reference data looked like: per-feature bins and shares, classes, scores, accuracy.

    Build with :meth:`build` (array, rows, DataFrame) or :meth:`from_csv`; persist with
    :meth:`save` / :meth:`load`. Read-only after construction, so one instance can serve all
    threads of a worker.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Wrap an already validated profile dict; use :meth:`build`, :meth:`from_csv` or :meth:`load`."""
        data = _cleaned(data)
        _validate(data)
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

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        data: Any,
        *,
        feature_names: Sequence[str] | None = None,
        predictions: Sequence[Any] | None = None,
        labels: Sequence[Any] | None = None,
        scores: Sequence[Any] | None = None,
        bins: int = 10,
        top_n: int = 10,
        categorical: Iterable[str] = (),
        max_classes: int = 50,
    ) -> ReferenceProfile:
        """Profile ``data``: a 2-D numpy array (+ ``feature_names``), rows as dicts or sequences
        (+ ``feature_names``), a dict of name -> column, or a pandas DataFrame.

        A feature is numeric when every non-missing value is a number (bools count as 0/1), else
        categorical; ``categorical`` forces names to categorical (e.g. integer codes). Class shares
        come from ``predictions``, else from ``labels``; ``accuracy`` needs both.
        """
        _check_int("bins", bins, 2, MAX_BINS)
        _check_int("top_n", top_n, 1, MAX_TOP_N)
        _check_int("max_classes", max_classes, 1, MAX_TOP_N)
        np = _numpy()
        columns = _columns(data, feature_names, np)
        if not columns:
            raise InvalidReference("no features in the reference data")
        if len(columns) > MAX_FEATURES:
            raise InvalidReference(f"{len(columns)} features; at most {MAX_FEATURES} are supported")
        forced = set(categorical)
        unknown = forced - set(columns)
        if unknown:
            raise InvalidReference(f"categorical names not in the data: {sorted(unknown)}")
        rows = len(next(iter(columns.values())))
        if rows == 0:
            raise InvalidReference("no reference rows")
        features = []
        for name, values in columns.items():
            profile = None if name in forced else _numeric_profile(values, bins, np)
            if profile is None:
                profile = _categorical_profile(_as_list(values), top_n)
            if profile is None:
                raise InvalidReference(f"feature {name!r} has no values in the reference")
            features.append({"name": name, **profile})
        data_out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rows": rows,
            "bins": bins,
            "features": features,
            "classes": None,
            "scores": None,
            "accuracy": None,
        }
        predictions = None if predictions is None else _as_list(predictions)
        labels = None if labels is None else _as_list(labels)
        for name, seq in (("predictions", predictions), ("labels", labels), ("scores", scores)):
            if seq is not None and len(seq) != rows:
                raise InvalidReference(f"{len(seq)} {name} for {rows} reference rows")
        class_source = predictions if predictions is not None else labels
        if class_source is not None:
            keys = [k for k in (_category(v) for v in class_source) if k is not None]
            if keys:
                shares, count = _top_shares(keys, max_classes)
                source = "predictions" if predictions is not None else "labels"
                data_out["classes"] = {"source": source, "bins": shares, "count": count}
        if scores is not None:
            data_out["scores"] = _score_histogram(_as_list(scores))
        if predictions is not None and labels is not None and rows:
            data_out["accuracy"] = sum(_same(p, y) for p, y in zip(predictions, labels)) / rows
        return cls(data_out)

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike[str],
        *,
        label_column: str | None = None,
        prediction_column: str | None = None,
        score_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        **options: Any,
    ) -> ReferenceProfile:
        """Profile a CSV file with a header row (stdlib ``csv``). Every column other than the
        label, prediction and score columns is a feature unless ``feature_columns`` names them.
        Empty cells and NA/NaN/null/None are missing; a column whose other cells all parse as
        numbers is numeric. ``options`` go to :meth:`build`.
        """
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                try:
                    header = [h.strip() for h in next(reader)]
                except StopIteration:
                    raise InvalidReference(f"{path}: empty CSV file") from None
                if len(set(header)) != len(header):
                    raise InvalidReference(f"{path}: duplicate column names in the header")
                raw: dict[str, list[str | None]] = {name: [] for name in header}
                for line, row in enumerate(reader, start=2):
                    if not row:
                        continue
                    if len(row) != len(header):
                        raise InvalidReference(f"{path}:{line}: {len(row)} cells for {len(header)} columns")
                    for name, cell in zip(header, row):
                        raw[name].append(cell)
        except (csv.Error, UnicodeDecodeError) as exc:  # a NUL byte, an oversized field, not UTF-8
            raise InvalidReference(f"{path}: not a readable UTF-8 CSV file: {exc}") from None
        special = [c for c in (label_column, prediction_column, score_column) if c is not None]
        for column in special + list(feature_columns or []):
            if column not in raw:
                raise InvalidReference(f"{path}: no column {column!r} (columns: {', '.join(header)})")
        names = list(feature_columns) if feature_columns else [h for h in header if h not in special]
        if not raw[header[0]]:
            raise InvalidReference(f"{path}: no data rows")
        forced = set(options.get("categorical", ()))
        columns = {name: _csv_cells(raw[name], numeric=name not in forced) for name in names}
        return cls.build(
            columns,
            labels=_csv_cells(raw[label_column], numeric=False) if label_column else None,
            predictions=_csv_cells(raw[prediction_column], numeric=False) if prediction_column else None,
            scores=_csv_cells(raw[score_column], numeric=True) if score_column else None,
            **options,
        )

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready profile (a deep copy)."""
        return json.loads(json.dumps(self._data))

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
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise InvalidReference(f"{path}: cannot read: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise InvalidReference(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
            return cls(data)
        except InvalidReference as exc:
            raise InvalidReference(f"{path}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise InvalidReference(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except RecursionError:
            raise InvalidReference(f"{path}: JSON nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError; an integer past the digit limit
            raise InvalidReference(f"{path}: not valid JSON: {exc}") from None
        except (TypeError, KeyError, ArithmeticError) as exc:  # a shape _validate let through
            raise InvalidReference(f"{path}: not a usable reference profile: {type(exc).__name__}: {exc}") from None

    # -- request time --------------------------------------------------------------------------

    def bin_of(self, feature: str, value: Any) -> str | None | _UnknownFeature:
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
        key = _category(prediction)
        return key if key is not None and key in self._classes else OTHER

    # -- export --------------------------------------------------------------------------------

    @property
    def features(self) -> tuple[str, ...]:
        """Feature names, in reference order."""
        return tuple(self._binners)

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

    def score_cumulative(self) -> Iterator[tuple[float, float]]:
        """``(le, share of scores <= le)`` of the reference, as the score histogram's buckets."""
        scores = self._data.get("scores")
        if scores:
            yield from zip(scores["buckets"], scores["cumulative"])

    def summary(self) -> str:
        """A short human-readable description (``mlmonitor reference show``)."""
        d = self._data
        lines = [f"reference profile v{d['format_version']}, created {d.get('created', '?')}, {d['rows']} rows"]
        for item in d["features"]:
            missing = f", {item['missing_share']:.1%} missing" if item.get("missing_share") else ""
            if item["type"] == "numeric":
                edges = ", ".join(f"{e:.6g}" for e in item["edges"])
                lines.append(f"  {item['name']}: numeric, {len(item['bins'])} bins, edges [{edges}]{missing}")
            else:
                top = ", ".join(f"{k}={v:.1%}" for k, v in item["bins"].items())
                lines.append(f"  {item['name']}: categorical, {top}{missing}")
        if d.get("classes"):
            top = ", ".join(f"{k}={v:.1%}" for k, v in d["classes"]["bins"].items())
            lines.append(f"classes (from {d['classes'].get('source', '?')}): {top}")
        if d.get("scores"):
            lines.append(f"scores: {d['scores'].get('count', '?')} values")
        if d.get("accuracy") is not None:
            lines.append(f"accuracy: {d['accuracy']:.4f}")
        return "\n".join(lines)


def _csv_cells(cells: list[str], numeric: bool) -> list[Any]:
    """Missing cells -> None; with ``numeric``, numbers when every other cell parses as one.

    Labels, predictions and forced-categorical columns stay text, so "1" matches a live 1.
    """
    values: list[Any] = [None if c.strip().lower() in _MISSING_TEXT else c for c in cells]
    if not numeric:
        return values
    try:
        return [None if v is None else float(v) for v in values]
    except ValueError:
        return values


def _reject_constant(name: str) -> Any:
    raise InvalidReference(f"non-finite number {name} in the reference file")


def _fail(where: str, what: str) -> InvalidReference:
    return InvalidReference(f"{where}: {what}")


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools, text, infinities, a 400-digit integer)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_share(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _clean_label(text: Any) -> Any:
    """A label text from the file, cleaned as every label value is: a lone surrogate ("\\ud800"
    in JSON) cannot be encoded, so as a label it would fail every scrape; it becomes "?"."""
    if isinstance(text, str) and not text.isascii():
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _cleaned_bins(bins: Any) -> Any:
    if not isinstance(bins, dict):
        return bins
    out: dict[Any, Any] = {}
    for label, share in bins.items():
        key = _clean_label(label)
        if key in out:  # two labels that clean to one are one bin
            share = out[key] + share if _is_share(out[key]) and _is_share(share) else None
        out[key] = share
    return out


def _cleaned(data: Any) -> Any:
    """A copy of ``data`` whose feature names, bin labels and classes are clean label text."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if isinstance(data.get("features"), list):
        data["features"] = [
            {**item, "name": _clean_label(item.get("name")), "bins": _cleaned_bins(item.get("bins"))}
            if isinstance(item, dict) else item
            for item in data["features"]
        ]
    if isinstance(data.get("classes"), dict):
        data["classes"] = {**data["classes"], "bins": _cleaned_bins(data["classes"].get("bins"))}
    return data


def _validate_bins(where: str, bins: Any) -> None:
    if not isinstance(bins, dict) or not bins:
        raise _fail(where, "'bins' must be a non-empty object of label -> share")
    if len(bins) > MAX_TOP_N + 1:
        raise _fail(where, f"{len(bins)} bins; at most {MAX_TOP_N + 1} are supported")
    for label, share in bins.items():
        if not _is_share(share):
            raise _fail(where, f"share of bin {label!r:.80} must be a number in [0, 1], got {share!r:.40}")
        if not isinstance(label, str) or len(label) > MAX_VALUE_LEN:
            raise _fail(where, f"bin label {label!r:.80} is not a string of at most {MAX_VALUE_LEN} characters")
    if abs(sum(bins.values()) - 1.0) > 1e-6:
        raise _fail(where, f"shares sum to {sum(bins.values())!r}, not 1")


def _validate(data: Any) -> None:
    """Raise :class:`InvalidReference` unless ``data`` is a profile this version can use."""
    if not isinstance(data, dict):
        raise InvalidReference("a reference profile must be a JSON object")
    if data.get("format") != FORMAT:
        raise InvalidReference(f"not an mlmonitor reference profile ('format' is {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise InvalidReference(
            f"format_version {data.get('format_version')!r} is not supported (this mlmonitor reads {FORMAT_VERSION})"
        )
    if not isinstance(data.get("rows"), int) or data["rows"] < 0:
        raise InvalidReference("'rows' must be a non-negative integer")
    features = data.get("features")
    if not isinstance(features, list) or not features:
        raise InvalidReference("'features' must be a non-empty list")
    if len(features) > MAX_FEATURES:
        raise InvalidReference(f"{len(features)} features; at most {MAX_FEATURES} are supported")
    seen: set[str] = set()
    for i, item in enumerate(features):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidReference(f"features[{i}]: needs a non-empty string 'name'")
        if len(item["name"]) > MAX_NAME_LEN:
            raise InvalidReference(f"features[{i}]: name longer than {MAX_NAME_LEN} characters")
        if item.get("missing_share") is not None and not _is_share(item["missing_share"]):
            raise InvalidReference(f"features[{i}]: 'missing_share' must be a number in [0, 1]")
        where = f"feature {item['name']!r}"
        if item["name"] in seen:
            raise _fail(where, "appears twice")
        seen.add(item["name"])
        _validate_bins(where, item.get("bins"))
        if item.get("type") == "numeric":
            edges = item.get("edges")
            if not isinstance(edges, list) or len(edges) >= MAX_BINS:
                raise _fail(where, f"'edges' must be a list of at most {MAX_BINS - 1} numbers")
            for e in edges:
                if _finite(e) is None:
                    raise _fail(where, f"edge {e!r:.40} is not a finite number")
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise _fail(where, "'edges' must be strictly increasing")
            if list(item["bins"]) != [f"{i:02d}" for i in range(len(edges) + 1)]:
                raise _fail(where, f"bins must be labelled '00'..'{len(edges):02d}' in order (one more than edges)")
        elif item.get("type") == "categorical":
            if OTHER not in item["bins"] or len(item["bins"]) > MAX_TOP_N + 1:
                raise _fail(where, f"categorical bins need '{OTHER}' and at most {MAX_TOP_N} values")
        else:
            raise _fail(where, f"'type' must be 'numeric' or 'categorical', got {item.get('type')!r}")
    classes = data.get("classes")
    if classes is not None:
        if not isinstance(classes, dict):
            raise InvalidReference("'classes' must be an object or null")
        _validate_bins("classes", classes.get("bins"))
        if OTHER not in classes["bins"]:
            raise InvalidReference(f"classes: bins need '{OTHER}'")
    scores = data.get("scores")
    if scores is not None:
        if (
            not isinstance(scores, dict)
            or scores.get("buckets") != list(SCORE_BUCKETS)
            or not isinstance(scores.get("cumulative"), list)
            or len(scores["cumulative"]) != len(SCORE_BUCKETS)
            or not all(_is_share(s) for s in scores["cumulative"])
        ):
            raise InvalidReference("'scores' must have buckets 0.1..1.0 and a cumulative share for each")
    accuracy = data.get("accuracy")
    if accuracy is not None and not _is_share(accuracy):
        raise InvalidReference(f"'accuracy' must be null or a number in [0, 1], got {accuracy!r}")


# ---------------------------------------------------------------------------------------------
# drift


def psi(
    live_counts: Mapping[str, float] | Sequence[float],
    reference_ratio: Mapping[str, float] | Sequence[float],
    floor: float = PSI_FLOOR,
) -> float:
    """Population stability index of live bin counts against the reference shares.

    ``PSI = sum over bins b of (p_b - q_b) * ln(p_b / q_b)`` with ``p_b = max(count_b / total, floor)``
    and ``q_b = max(ratio_b, floor)`` (no renormalisation after the floor), over the union of bins;
    a bin missing on one side has share 0 there. Same formula as the recording rules in ``alerts/``.
    Returns NaN when there are no live counts (as Prometheus does). Rule of thumb: < 0.1 stable,
    0.1-0.2 moderate, > 0.2 drifted.
    """
    if not isinstance(live_counts, Mapping):
        live_counts = dict(enumerate(live_counts))  # type: ignore[arg-type]
    if not isinstance(reference_ratio, Mapping):
        reference_ratio = dict(enumerate(reference_ratio))  # type: ignore[arg-type]
    total = sum(live_counts.values())
    if total <= 0:
        return math.nan
    result = 0.0
    for b in dict.fromkeys([*reference_ratio, *live_counts]):
        p = max(live_counts.get(b, 0) / total, floor)
        q = max(reference_ratio.get(b, 0.0), floor)
        result += (p - q) * math.log(p / q)
    return result


# ---------------------------------------------------------------------------------------------
# feedback outcomes


def outcome(predicted: Any, true_label: Any) -> str:
    """``"correct"`` or ``"incorrect"``. Two numbers compare as numbers (1 == 1.0); otherwise
    both compare as text (1 == "1", "cat" == "cat"; but 1.0 != "1")."""
    return "correct" if _same(predicted, true_label) else "incorrect"


def absolute_error(predicted: Any, true_value: Any) -> float:
    """``|predicted - true_value|`` for regression feedback; ValueError if either is not a number."""

    def number(value: Any) -> float:
        result = float(value) if isinstance(value, str) else _number(value)
        if result is None or isinstance(value, bool) or not math.isfinite(result):
            raise ValueError(f"absolute_error needs finite numbers, got {value!r}")
        return float(result)

    return abs(number(predicted) - number(true_value))


# ---------------------------------------------------------------------------------------------
# command line


def add_cli(subparsers: Any) -> None:
    """Register ``mlmonitor reference build|show``."""
    parser = subparsers.add_parser("reference", help="build or show a reference profile")
    commands = parser.add_subparsers(dest="reference_command", required=True)
    build = commands.add_parser("build", help="profile a CSV file into reference.json")
    build.add_argument("--csv", required=True, help="CSV file with a header row")
    build.add_argument("--label-column", help="true labels (class shares; accuracy with --prediction-column)")
    build.add_argument("--prediction-column", help="model predictions (class shares, accuracy)")
    build.add_argument("--score-column", help="model confidence scores in [0, 1]")
    build.add_argument("--features", type=_names, default=None, help="feature columns (default: all others)")
    build.add_argument("--categorical", type=_names, default=[], help="columns to treat as categorical")
    build.add_argument("--bins", type=int, default=10, help="quantile bins per numeric feature (2..100)")
    build.add_argument("--top-n", type=int, default=10, help="top values kept per categorical feature")
    build.add_argument("--out", required=True, help="where to write the JSON profile")
    build.set_defaults(func=_cli_build)
    show = commands.add_parser("show", help="print a summary of a reference profile")
    show.add_argument("path")
    show.set_defaults(func=_cli_show)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _cli_build(args: argparse.Namespace) -> int:
    profile = ReferenceProfile.from_csv(
        args.csv,
        label_column=args.label_column,
        prediction_column=args.prediction_column,
        score_column=args.score_column,
        feature_columns=args.features,
        categorical=args.categorical,
        bins=args.bins,
        top_n=args.top_n,
    )
    profile.save(args.out)
    print(f"wrote {args.out}: {len(profile.features)} features")
    return 0


def _cli_show(args: argparse.Namespace) -> int:
    print(ReferenceProfile.load(args.path).summary())
    return 0
