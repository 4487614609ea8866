"""The reference file's format: its limits, strict validation, cleaning of label text, reading it.

Runs at start-up in every worker (``ReferenceProfile.load``) and when a profile is
built offline; never per request. Any file that cannot be used is one
:class:`InvalidReference` line naming what and where, so start-up stops with that
line, not a traceback.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from .config import finite_float
from .contract import CLASSIFICATION, OTHER, REGRESSION, SCORE_BUCKETS

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_BINS", "MAX_FEATURES", "MAX_FILE_BYTES", "MAX_NAME_LEN",
           "MAX_TOP_N", "MAX_VALUE_LEN", "InvalidReference", "cleaned", "validate", "read_profile",
           "reject_constant"]

FORMAT = "mlmonitor.reference"
FORMAT_VERSION = 1
MAX_BINS = 100  # labels stay two digits, "00".."99"
MAX_TOP_N = 100
MAX_FEATURES = 1000
MAX_VALUE_LEN = 64  # longer categorical values / class names are counted as "other"
MAX_NAME_LEN = 128  # feature names, as every label value
MAX_FILE_BYTES = 64 * 2**20  # 1000 features x 101 bins of 64 escaped characters fit


class InvalidReference(ValueError):
    """A reference file or build input that cannot be used; the message says what and where."""


Profile = TypeVar("Profile")


def read_profile(path: str | os.PathLike[str], make: Callable[[Any], Profile], max_bytes: int) -> Profile:
    """``make(data)`` of the JSON in ``path``; any failure is one :class:`InvalidReference` line."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidReference(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise InvalidReference(f"{path}: larger than {max_bytes // 2**20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
        return make(data)
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


def reject_constant(name: str) -> NoReturn:
    """``json.loads``' ``parse_constant``: NaN and infinities are refused."""
    raise InvalidReference(f"non-finite number {name} in the reference file")


def _fail(where: str, what: str) -> InvalidReference:
    return InvalidReference(f"{where}: {what}")


def _is_share(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _clean_label(text: Any) -> Any:
    r"""A label text from the file, cleaned as every label value is: a lone surrogate ("\ud800"
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
            out[key] = out[key] + share if _is_share(out[key]) and _is_share(share) else None
        else:
            out[key] = share
    return out


def cleaned(data: Any) -> Any:
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


def _validate_edges(where: str, item: dict[str, Any]) -> None:
    """Numeric bins: strictly increasing finite edges, bins "00".."kk" (one more than edges)."""
    _validate_bins(where, item.get("bins"))
    edges = item.get("edges")
    if not isinstance(edges, list) or len(edges) >= MAX_BINS:
        raise _fail(where, f"'edges' must be a list of at most {MAX_BINS - 1} numbers")
    for e in edges:
        if finite_float(e) is None:
            raise _fail(where, f"edge {e!r:.40} is not a finite number")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise _fail(where, "'edges' must be strictly increasing")
    if list(item["bins"]) != [f"{i:02d}" for i in range(len(edges) + 1)]:
        raise _fail(where, f"bins must be labelled '00'..'{len(edges):02d}' in order (one more than edges)")


def validate(data: Any) -> None:
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
            _validate_edges(where, item)
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
    if scores is not None and (
            not isinstance(scores, dict)
            or scores.get("buckets") != list(SCORE_BUCKETS)
            or not isinstance(scores.get("cumulative"), list)
            or len(scores["cumulative"]) != len(SCORE_BUCKETS)
            or not all(_is_share(s) for s in scores["cumulative"])):
        raise InvalidReference("'scores' must have buckets 0.1..1.0 and a cumulative share for each")
    if data.get("task") not in (None, CLASSIFICATION, REGRESSION):
        raise InvalidReference(f"'task' must be {CLASSIFICATION!r} or {REGRESSION!r}, got {data.get('task')!r:.40}")
    outputs = data.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise InvalidReference("'outputs' must be an object or null")
        _validate_edges("outputs", outputs)
    mae = data.get("mae")
    if mae is not None and (finite_float(mae) is None or mae < 0):
        raise InvalidReference(f"'mae' must be null or a finite number >= 0, got {mae!r:.40}")
    accuracy = data.get("accuracy")
    if accuracy is not None and not _is_share(accuracy):
        raise InvalidReference(f"'accuracy' must be null or a number in [0, 1], got {accuracy!r}")
