"""The reference profile at request time: its file format, loading it, and binning live values.

Runs in every worker: :meth:`ReferenceProfile.load` at start-up, :meth:`ReferenceProfile.bin_of` /
:meth:`ReferenceProfile.class_of` in every request that observes features, :func:`outcome` /
:func:`absolute_error` for each feedback. It owns:

* the file format (:data:`FORMAT`, :data:`FORMAT_VERSION`, the size limits), strict validation
  (any unusable file is one :class:`InvalidReference` line) and the cleaning of label text read
  from a file;
* the binning of live values (:data:`UNKNOWN_FEATURE`, :func:`as_number`, :func:`as_category`);
* the comparison of a prediction with its ground truth (:func:`outcome`, :func:`absolute_error`).

Building a profile from data is offline work in :mod:`mlmonitor.profiling`;
:meth:`ReferenceProfile.build` and :meth:`ReferenceProfile.from_csv` import it when called, so
nothing here imports numpy, csv or argparse.

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
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .contract import OTHER, SCORE_BUCKETS

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_BINS",
    "MAX_FEATURES",
    "MAX_FILE_BYTES",
    "MAX_NAME_LEN",
    "MAX_TOP_N",
    "MAX_VALUE_LEN",
    "UNKNOWN_FEATURE",
    "InvalidReference",
    "ReferenceProfile",
    "absolute_error",
    "as_category",
    "as_number",
    "outcome",
    "same_value",
]

FORMAT = "mlmonitor.reference"
FORMAT_VERSION = 1
MAX_BINS = 100  # labels stay two digits, "00".."99"
MAX_TOP_N = 100
MAX_FEATURES = 1000
MAX_VALUE_LEN = 64  # longer categorical values / class names are counted as "other"
MAX_NAME_LEN = 128  # feature names, as every label value
MAX_FILE_BYTES = 64 * 2**20  # 1000 features x 101 bins of 64 escaped characters fit


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

    # -- building (offline: imports mlmonitor.profiling when called) --------------------------

    @classmethod
    def build(cls, data: Any, **options: Any) -> ReferenceProfile:
        """Profile ``data`` (an array, rows, a dict of columns or a DataFrame); the arguments are
        those of :func:`mlmonitor.profiling.build_profile`."""
        from .profiling import build_profile

        return build_profile(data, cls=cls, **options)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], **options: Any) -> ReferenceProfile:
        """Profile a CSV file with a header row; the arguments are those of
        :func:`mlmonitor.profiling.profile_csv`."""
        from .profiling import profile_csv

        return profile_csv(path, cls=cls, **options)

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
        key = as_category(prediction)
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


# ---------------------------------------------------------------------------------------------
# the file format: cleaning and validation


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
