"""Settings: keyword arguments > Flask config > ``MLMONITOR_*`` environment > defaults.

Every value is parsed and checked once, at start-up; a bad one raises
:class:`ConfigError` with one line naming the setting, never an error at request time.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

ENV_PREFIX = "MLMONITOR_"

#: inference-friendly latency buckets, 1 ms .. 30 s
DEFAULT_BUCKETS: Tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: names of body fields, headers and query parameters never written to logs or spans
DEFAULT_REDACT: Tuple[str, ...] = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "password", "passwd",
    "token", "access_token", "refresh_token", "api_key", "apikey", "x-api-key", "secret",
    "client_secret")


class ConfigError(ValueError):
    """A setting that does not parse; the message names it."""


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false")


def _parse_list(text: str) -> Tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_floats(text: str) -> Tuple[float, ...]:
    return tuple(float(part) for part in _parse_list(text))


def _parse_tags(text: str) -> dict:
    tags = {}
    for part in _parse_list(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError("expected key=value pairs separated by commas")
        tags[key.strip()] = value.strip()
    return tags


@dataclass(frozen=True)
class Settings:
    """All options of mlmonitor. See the README's configuration table."""

    model_name: str = "model"
    model_version: str = "unknown"
    metrics: bool = True
    logs: bool = True
    traces: bool = True
    metrics_path: Optional[str] = "/metrics"
    metrics_token: Optional[str] = field(default=None, repr=False)
    metrics_basic_auth: Optional[str] = field(default=None, repr=False)
    buckets: Tuple[float, ...] = DEFAULT_BUCKETS
    log_sample_rate: float = 1.0
    log_max_bytes: int = 16384
    max_label_values: int = 20
    tags: Mapping[str, str] = field(default_factory=dict)
    redact: Tuple[str, ...] = DEFAULT_REDACT
    request_id_header: str = "X-Request-ID"
    prediction_paths: Tuple[str, ...] = ()
    routes: Tuple[str, ...] = ()
    reference: Any = None  # a path to a reference JSON, or a ReferenceProfile
    feedback_secret: Optional[str] = field(default=None, repr=False)
    feedback_max_age: float = 7 * 24 * 3600.0
    exemplars: bool = True

    def __post_init__(self) -> None:
        _check(self.log_sample_rate, 0.0 <= self.log_sample_rate <= 1.0, "log_sample_rate",
               "must be between 0 and 1")
        _check(self.max_label_values, self.max_label_values >= 1, "max_label_values",
               "must be at least 1")
        _check(self.log_max_bytes, self.log_max_bytes >= 1024, "log_max_bytes",
               "must be at least 1024")
        buckets = tuple(self.buckets)
        _check(buckets, bool(buckets) and all(math.isfinite(b) and b > 0 for b in buckets)
               and list(buckets) == sorted(set(buckets)), "buckets",
               "must be positive, finite and strictly increasing")
        for name in ("model_name", "model_version"):
            value = getattr(self, name)
            _check(value, isinstance(value, str) and 0 < len(value) <= 128, name,
                   "must be a non-empty string of at most 128 characters")
        path = self.metrics_path
        _check(path, path is None or (isinstance(path, str) and path.startswith("/")),
               "metrics_path", "must start with '/' (or be empty to turn /metrics off)")
        auth = self.metrics_basic_auth
        _check("<hidden>", auth is None or ":" in auth, "metrics_basic_auth",
               "must be 'user:password'")
        _check(self.request_id_header, bool(self.request_id_header), "request_id_header",
               "must not be empty")
        object.__setattr__(self, "buckets", buckets)
        # a user's list adds to the defaults: a secret field is never un-redacted by accident
        names = dict.fromkeys(DEFAULT_REDACT + tuple(n.lower() for n in self.redact))
        object.__setattr__(self, "redact", tuple(names))

    @property
    def redact_set(self) -> frozenset:
        return frozenset(self.redact)


def _check(value: Any, ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"mlmonitor setting {name}={value!r}: {why}")


_PARSERS: dict = {
    bool: _parse_bool, int: int, float: float, str: str,
    Tuple[float, ...]: _parse_floats, Tuple[str, ...]: _parse_list,
    Mapping[str, str]: _parse_tags,
}
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
#: each setting's type, resolved once; it picks the parser of a text value
_TYPES = typing.get_type_hints(Settings)
_TUPLES = (Tuple[float, ...], Tuple[str, ...])


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a text value (environment, Flask config string) into the field's type."""
    if not isinstance(value, str):
        if _TYPES[name] in _TUPLES and value is not None:
            return tuple(value)
        return value
    if name in ("metrics_path",) and value.strip() == "":
        return None
    try:
        return _PARSERS.get(_TYPES[name], str)(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"mlmonitor setting {source}={value!r}: {exc}") from None


def resolve(kwargs: Mapping[str, Any], app_config: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> Settings:
    """Merge the three sources and validate; raises ConfigError naming the bad setting."""
    environ = os.environ if environ is None else environ
    unknown = set(kwargs) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown mlmonitor setting(s): {', '.join(sorted(unknown))}")
    values = {}
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if name in kwargs:
            values[name] = _coerce(name, kwargs[name], name)
        elif app_config is not None and key in app_config:
            values[name] = _coerce(name, app_config[key], key)
        elif key in environ:
            values[name] = _coerce(name, environ[key], key)
    try:
        return Settings(**values)
    except TypeError as exc:
        raise ConfigError(f"mlmonitor settings: {exc}") from None
