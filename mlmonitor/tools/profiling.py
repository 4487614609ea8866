"""Building a reference profile from data: offline, once per model version.

Runs in a training or release job (or ``mlmonitor reference build``), never in a request. It owns
turning a 2-D array, rows, a dict of columns, a pandas DataFrame (:func:`build_profile`) or a CSV
file (:func:`profile_csv`) into the :class:`~mlmonitor.reference.ReferenceProfile` that
:mod:`mlmonitor.reference` saves, loads and bins with; the request-time side never imports this.

Edges sit at the reference's quantiles ``j / bins`` (the smallest reference value with at least
that share of the reference at or below it), duplicates collapsed, so a low-cardinality feature
gets fewer bins; the shares are counted with the binning rule of :mod:`mlmonitor.reference`.

numpy is optional: it only speeds up :func:`build_profile`; the result is identical without it.
pandas is never imported (a DataFrame is recognised by its attributes).

Example::

    profile = build_profile(X_val, feature_names=["a", "b"], predictions=y_hat, labels=y)
    profile.save("reference.json")
"""

from __future__ import annotations

import csv
import math
import os
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlmonitor.contract import CLASSIFICATION, OTHER, REGRESSION, SCORE_BUCKETS
from mlmonitor.reference import ReferenceProfile, as_category, as_number, same_value
from mlmonitor.reference_format import (FORMAT, FORMAT_VERSION, MAX_BINS, MAX_FEATURES, MAX_TOP_N, MAX_VALUE_LEN,
                                        InvalidReference)

__all__ = ["build_profile", "profile_csv", "summarize"]

_MISSING_TEXT = frozenset({"", "na", "nan", "null", "none"})


def _numpy() -> Any:
    try:
        import numpy as np  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return None
    return np


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
            number = as_number(value)
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
    return isinstance(value, str) and value.strip().lower() in _MISSING_TEXT


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
    keys = [k for k in (as_category(v) for v in values) if k is not None]
    if not keys:
        return None
    shares, n = _top_shares(keys, top_n)
    return {"type": "categorical", "bins": shares, "count": n, "missing_share": (len(values) - n) / len(values)}


def _columns(data: Any, feature_names: Sequence[str] | None, np: Any) -> dict[str, Any]:
    """The columns by name (a list, or a 1-D numpy array each) of the supported input shapes."""
    if isinstance(data, (str, os.PathLike)):
        raise InvalidReference("use profile_csv(path, ...) for a CSV file")
    if isinstance(data, Mapping):  # name -> column
        columns = {str(name): values for name, values in data.items()}
        if len({len(values) for values in columns.values()}) > 1:
            raise InvalidReference("columns have different lengths")
        return columns
    if hasattr(data, "columns") and hasattr(data, "to_numpy") and hasattr(data, "__getitem__"):
        names = [str(c) for c in data.columns]  # a pandas DataFrame, duck-typed: pandas stays optional
        return {name: data[col].to_numpy() for name, col in zip(names, data.columns, strict=False)}
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
    numbers = [float(n) for n in (as_number(s) for s in scores) if n is not None]
    if not numbers:
        return None
    n = len(numbers)
    ordered = sorted(numbers)
    return {
        "buckets": list(SCORE_BUCKETS),
        "cumulative": [bisect_right(ordered, le) / n for le in SCORE_BUCKETS],
        "count": n,
    }


def _numbers(values: Sequence[Any]) -> list[float | None] | None:
    """Every value as a float (missing ones None), or None when one is not a number."""
    out: list[float | None] = []
    for value in values:
        if _is_missing(value):
            out.append(None)
            continue
        try:
            number = float(value) if isinstance(value, str) else as_number(value)
        except ValueError:
            return None
        if number is None or isinstance(value, bool) or not math.isfinite(number):
            return None
        out.append(float(number))
    return out if any(n is not None for n in out) else None


def _looks_continuous(numbers: Sequence[float | None], max_classes: int) -> bool:
    present = [n for n in numbers if n is not None]
    return any(n != int(n) for n in present) or len(set(present)) > max_classes


def _check_int(name: str, value: int, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidReference(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def build_profile(
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
    task: str | None = None,
) -> ReferenceProfile:
    """Profile ``data``: a 2-D numpy array (+ ``feature_names``), rows as dicts or sequences
    (+ ``feature_names``), a dict of name -> column, or a pandas DataFrame.

    A feature is numeric when every non-missing value is a number (bools count as 0/1), else
    categorical; ``categorical`` forces names to categorical (e.g. integer codes). Class shares
    come from ``predictions``, else from ``labels``; ``accuracy`` needs both.

    ``task`` is ``"classification"`` or ``"regression"``; by default it is detected from the
    predictions (else the labels): numbers with a fractional part, or more distinct numbers
    than ``max_classes``, are a regression. A regression profile records output bin edges
    (quantiles of the predictions, else the labels) and, with both, the mean absolute error;
    a classification whose classes are fractional numbers is refused.
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
    if task not in (None, CLASSIFICATION, REGRESSION):
        raise InvalidReference(f"task must be {CLASSIFICATION!r} or {REGRESSION!r}, got {task!r}")
    numbers = _numbers(class_source) if class_source is not None else None
    if task is None and class_source is not None:
        task = REGRESSION if numbers is not None and _looks_continuous(numbers, max_classes) else CLASSIFICATION
    data_out["task"] = task
    if task == REGRESSION:
        if numbers is None:
            raise InvalidReference("a regression reference needs numeric predictions or labels")
        outputs = _numeric_profile(numbers, bins, None)
        if outputs is None:
            raise InvalidReference("no numeric predictions or labels in the reference")
        data_out["outputs"] = {"edges": outputs["edges"], "bins": outputs["bins"], "count": outputs["count"]}
        truth = _numbers(labels) if labels is not None and predictions is not None else None
        if truth is not None:
            pairs = [(p, y) for p, y in zip(numbers, truth, strict=False) if p is not None and y is not None]
            if pairs:
                data_out["mae"] = sum(abs(p - y) for p, y in pairs) / len(pairs)
        class_source = None
    elif numbers is not None and any(n is not None and n != int(n) for n in numbers):
        raise InvalidReference("the classes are fractional numbers: a regression model? "
                               "build with task='regression' (--task regression)")
    if class_source is not None:
        keys = [k for k in (as_category(v) for v in class_source) if k is not None]
        if keys:
            shares, count = _top_shares(keys, max_classes)
            source = "predictions" if predictions is not None else "labels"
            data_out["classes"] = {"source": source, "bins": shares, "count": count}
    if scores is not None:
        data_out["scores"] = _score_histogram(_as_list(scores))
    if predictions is not None and labels is not None and rows and task != REGRESSION:
        data_out["accuracy"] = sum(same_value(p, y) for p, y in zip(predictions, labels, strict=False)) / rows
    return ReferenceProfile(data_out)


def profile_csv(
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
    numbers is numeric. ``options`` go to :func:`build_profile`.
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
            raw: dict[str, list[str]] = {name: [] for name in header}
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise InvalidReference(f"{path}:{line}: {len(row)} cells for {len(header)} columns")
                for name, cell in zip(header, row, strict=False):
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
    return build_profile(
        columns,
        labels=_csv_cells(raw[label_column], numeric=False) if label_column else None,
        predictions=_csv_cells(raw[prediction_column], numeric=False) if prediction_column else None,
        scores=_csv_cells(raw[score_column], numeric=True) if score_column else None,
        **options,
    )


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


def summarize(profile: ReferenceProfile) -> str:
    """A short human-readable description of a profile (``mlmonitor reference show``)."""
    d = profile.to_dict()
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
    if d.get("task"):
        lines.append(f"task: {d['task']}")
    if d.get("outputs"):
        edges = ", ".join(f"{e:.6g}" for e in d["outputs"]["edges"])
        lines.append(f"outputs: {len(d['outputs']['bins'])} bins, edges [{edges}]")
    if d.get("mae") is not None:
        lines.append(f"mean absolute error: {d['mae']:.6g}")
    if d.get("accuracy") is not None:
        lines.append(f"accuracy: {d['accuracy']:.4f}")
    return "\n".join(lines)
