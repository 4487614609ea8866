"""Settings: keyword arguments > Flask config > ``MLMONITOR_*`` environment > defaults.

Every value is parsed and checked once, at start-up; a bad one raises
:class:`ConfigError` with one line naming the setting, never an error at request time.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Mapping

from .contract import DEFAULT_BUCKETS
from .lineage import LINEAGE_OK, apply_model_uri, register_lineage
from .routes import RouteTemplate, is_template

__all__ = ["ConfigError", "Settings", "resolve", "excluded_urls_pattern", "parse_list", "DEFAULT_BUCKETS",
           "DEFAULT_REDACT", "ENV_PREFIX", "LOG_FIELDS"]

ENV_PREFIX = "MLMONITOR_"

#: names of body fields, headers, query parameters and cookies whose values never reach logs or
#: spans; each also matches as the last part of a longer name (``db_password``,
#: ``aws_secret_access_key``, ``Ocp-Apim-Subscription-Key``). The families of sentry-python's
#: scrubber and of common secret scanners. Not bare ``session`` or ``key``: as name suffixes
#: they would hide ordinary fields (``inference_session``, ``monkey``) and error text.
DEFAULT_REDACT: tuple[str, ...] = (
    # passwords
    "password", "passwd", "pwd", "passphrase",
    # secrets, tokens, API keys
    "secret", "client_secret", "token", "access_token", "refresh_token", "jwt",
    "api_key", "apikey", "x-api-key", "subscription_key",
    # HTTP authentication and credentials
    "authorization", "proxy-authorization", "auth", "credential", "credentials",
    # cookies, session ids, CSRF tokens
    "cookie", "set-cookie", "session_id", "sessid", "session_key", "connect.sid", "csrf", "xsrf",
    # private, signing and cloud keys (AWS secret access keys, GCP service-account private keys,
    # Azure account keys)
    "private_key", "secret_key", "access_key", "signing_key", "ssh_key", "account_key",
    # payment cards
    "card_number", "cvv", "cvc")


class ConfigError(ValueError):
    """A setting that does not parse; the message names it."""


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false")


def parse_list(text: str) -> tuple[str, ...]:
    """Comma-separated entries, stripped, empty ones dropped (an empty regex would match all)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in parse_list(text))


def _parse_tags(text: str) -> dict[str, str]:
    tags = {}
    for part in parse_list(text):
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
    metrics_path: str | None = "/metrics"
    metrics_token: str | None = field(default=None, repr=False)
    metrics_basic_auth: str | None = field(default=None, repr=False)
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    log_sample_rate: float = 1.0
    log_max_bytes: int = 16384
    max_label_values: int = 20
    tags: Mapping[str, str] = field(default_factory=dict)
    redact: tuple[str, ...] = DEFAULT_REDACT
    request_id_header: str = "X-Request-ID"
    prediction_paths: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    reference: Any = None  # a path to a reference JSON, or a ReferenceProfile
    #: model name -> reference (path or ReferenceProfile), for servers of several models
    references: Mapping[str, Any] = field(default_factory=dict)
    feedback_secret: str | None = field(default=None, repr=False)
    feedback_max_age: float = 7 * 24 * 3600.0
    #: the trace and span id of sampled requests as exemplars on the latency histograms, served to
    #: OpenMetrics scrapes, in multiprocess mode too (``MLMONITOR_EXEMPLARS=false`` turns them off)
    exemplars: bool = True
    #: stages as child spans of the server span, or as events on it (one span per request)
    stage_spans: str = "children"
    #: an MLflow model URI (``models:/name/version``, ``models:/name@alias``, ``runs:/id/model``):
    #: model name, version and lineage from it, resolved once at start-up (mlmonitor.lineage)
    model_uri: str | None = None
    #: lineage of the default model: a label of mlmonitor_model_info, a span attribute, a log field
    model_run_id: str | None = None
    model_id: str | None = None
    #: spans shaped for MLflow (trace name, tags, span type); on by itself when the OTLP headers
    #: carry x-mlflow-experiment-id
    mlflow: bool = False
    #: request/response previews on the server span (redacted, capped); never by default
    capture_io: bool = False
    #: MLflow backend: a request with an incoming traceparent starts a new root linked to it
    mlflow_new_root: bool = False
    #: regexes searched in the request path (``/healthz``, ``^/ready$``): a matching request
    #: writes no log line and opens no span (probes); the format of ``OTEL_PYTHON_EXCLUDED_URLS``
    excluded_urls: tuple[str, ...] = ()
    #: excluded requests are left out of the metrics too (default: probes are still counted)
    exclude_from_metrics: bool = False

    def __post_init__(self) -> None:
        """Check every value now: one that passed here must never fail inside a request."""
        for f in dataclasses.fields(self):
            value = _checked_type(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        _check(self.log_sample_rate, 0.0 <= self.log_sample_rate <= 1.0, "log_sample_rate",
               "must be between 0 and 1")
        _check(self.max_label_values, self.max_label_values >= 1, "max_label_values",
               "must be at least 1")
        _check(self.log_max_bytes, self.log_max_bytes >= 1024, "log_max_bytes",
               "must be at least 1024")
        buckets = self.buckets
        _check(buckets, bool(buckets) and all(b > 0 for b in buckets)
               and list(buckets) == sorted(set(buckets)), "buckets",
               "must be positive, finite and strictly increasing")
        for name in ("model_name", "model_version"):
            value = getattr(self, name)
            _check(value, 0 < len(value) <= 128, name,
                   "must be a non-empty string of at most 128 characters")
        path = self.metrics_path
        _check(path, path is None or _PATH_OK(path), "metrics_path",
               "must be a path of visible ASCII characters starting with '/' (or be empty to turn /metrics off)")
        for name in ("prediction_paths", "routes"):
            paths = getattr(self, name)
            _check(paths, all(_PATH_OK(p) for p in paths), name,
                   "each must be a path of visible ASCII characters starting with '/'")
            for path in paths:
                _check_template(path, name)
        _check(self.references, all(0 < len(k) <= 128 for k in self.references), "references",
               "model names must be non-empty strings of at most 128 characters")
        # an empty secret would silently turn protection off (e.g. an unset ${VAR} in a template)
        _check(HIDDEN, self.metrics_token is None or _TOKEN_OK(self.metrics_token), "metrics_token",
               "must be visible ASCII characters without spaces (unset it for no token)")
        auth = self.metrics_basic_auth
        _check(HIDDEN, auth is None or ":" in auth, "metrics_basic_auth", "must be 'user:password'")
        secret = self.feedback_secret
        key = secret.encode("utf-8") if isinstance(secret, str) else secret
        _check(HIDDEN, key is None or len(key) >= 16, "feedback_secret",
               "must be at least 16 bytes, 32 random bytes recommended (unset it for a per-run secret)")
        _check(self.feedback_max_age, self.feedback_max_age > 0, "feedback_max_age",
               "must be a finite number of seconds above 0")
        _check(self.stage_spans, self.stage_spans in ("children", "events"), "stage_spans",
               "must be 'children' or 'events'")
        _check(self.request_id_header, _HEADER_OK(self.request_id_header), "request_id_header",
               "must be an HTTP header name of at most 64 characters")
        tags = self.tags
        _check(tags, len(tags) <= 64 and all(
            0 < len(k) <= 64 and k not in LOG_FIELDS and len(v) <= 1024 for k, v in tags.items()),
            "tags", "at most 64; keys of 1..64 characters that are not log line fields "
            "(status, level, ...); values of at most 1024 characters")
        for name in ("model_run_id", "model_id"):
            value = getattr(self, name)
            _check(value, value is None or LINEAGE_OK(value), name,
                   "must be 1..64 characters of letters, digits, '-', '_' or '.'")
        if self.model_uri is not None:
            try:
                apply_model_uri(self)
            except ValueError as exc:  # it does not parse or cannot be resolved
                raise ConfigError(str(exc)) from None
        if self.model_run_id or self.model_id:  # given, or found from model_uri above
            register_lineage(self.model_name, self.model_version, self.model_run_id, self.model_id)
        excluded_urls_pattern(self.excluded_urls, "excluded_urls")  # ConfigError now, not per request
        redact = self.redact
        _check(redact, len(redact) <= 100 and all(0 < len(n) <= 64 for n in redact), "redact",
               "at most 100 names of 1..64 characters")
        # a user's list adds to the defaults: a secret field is never un-redacted by accident
        names = dict.fromkeys(DEFAULT_REDACT + tuple(n.lower() for n in redact))
        object.__setattr__(self, "redact", tuple(names))

    @property
    def redact_set(self) -> frozenset[str]:
        return frozenset(self.redact)


#: shown instead of a secret setting's value in an error
HIDDEN = "<hidden>"
_SECRETS = frozenset({"metrics_token", "metrics_basic_auth", "feedback_secret"})
#: fields of mlmonitor's log line: a static tag of the same name would overwrite them
LOG_FIELDS = ("timestamp", "level", "event", "method", "route", "status", "duration_ms",
              "request_id", "trace_id", "span_id", "model_name", "model_version", "stages_ms",
              "stage_counts", "tags", "error_type", "error", "stack", "truncated", "model_run_id",
              "model_id", "prediction_trace_id")
_PATH_OK = re.compile(r"/[!-~]{0,1023}").fullmatch  # PATH_INFO is latin-1 of raw bytes: ASCII only
_TOKEN_OK = re.compile(r"[!-~]{1,4096}").fullmatch
_HEADER_OK = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}").fullmatch  # RFC 9110 token


@functools.lru_cache(maxsize=16)
def excluded_urls_pattern(entries: tuple[str, ...], name: str) -> re.Pattern[str] | None:
    """One compiled regex for a list of excluded-URL regexes (any of them searched in the path),
    or None for none; ConfigError naming the setting (and the bad entry) for a bad list. Cached:
    the settings check it and the engine uses it, compiled once."""
    _check(entries, len(entries) <= 100 and all(0 < len(e) <= 1024 for e in entries), name,
           "at most 100 regexes of 1..1024 characters")
    if not entries:
        return None
    joined = "|".join(entries)  # as OpenTelemetry's ExcludeList joins them
    try:
        return re.compile(joined)
    except (re.error, RecursionError, OverflowError) as exc:
        for entry in entries:  # name the entry at fault, if one is wrong alone
            try:
                re.compile(entry)
            except (re.error, RecursionError, OverflowError) as bad:
                raise _error(entry, name, f"not a regular expression: {bad}") from None
        raise _error(joined, name, f"not a regular expression: {exc}") from None


def _check_template(path: str, name: str) -> None:
    """A route template (``/v1/models/<name>:predict``, ``/items/{id}``) must parse now."""
    if is_template(path):
        try:
            RouteTemplate(path)
        except ValueError as exc:
            raise _error(path, name, f"not a route template: {exc}") from None


def _check(value: Any, ok: object, name: str, why: str) -> None:
    """ConfigError naming the setting unless ``ok`` is truthy (a bool, or a regex match)."""
    if not ok:
        raise _error(value, name, why)


def _error(value: Any, name: str, why: str) -> ConfigError:
    """One line naming the setting; a long value is cut (pass HIDDEN for a secret)."""
    try:
        shown = repr(value)
    except Exception:  # e.g. an int beyond the digit limit of str()
        shown = f"<{type(value).__name__}>"
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ConfigError(f"mlmonitor setting {name}={shown}: {why}")


#: the largest token count or cost one observation may add (larger ones are ignored, not counted)
MAX_OBSERVED = 1e9


def number_in(value: Any, low: float, high: float) -> bool:
    """Whether ``value`` (a number or numeric text, not a bool) lies in ``[low, high]``;
    NaN does not."""
    if value is None or isinstance(value, bool):
        return False
    try:
        number = float(value)
    except Exception:  # any failed conversion: TypeError, ValueError, OverflowError (10**400), ...
        return False
    return low <= number <= high  # NaN compares false


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools, text, NaN, infinities, ints too large)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _text_ok(value: Any) -> bool:
    """A str that encodes as UTF-8: a lone surrogate (from a non-UTF-8 environment) breaks a scrape."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked_type(name: str, value: Any) -> Any:
    """``value`` in its field's type (ints for floats, 0/1 for bools, lists for tuples), or ConfigError."""
    kind = _TYPES[name]
    shown = HIDDEN if name in _SECRETS else value
    if kind is bool:
        ok = type(value) is bool or (type(value) is int and value in (0, 1))
        _check(shown, ok, name, "must be true or false")
        return bool(value)
    if kind is int:
        _check(shown, isinstance(value, int) and not isinstance(value, bool), name, "must be an integer")
        return int(value)
    if kind is float:
        number = finite_float(value)
        _check(shown, number is not None, name, "must be a finite number")
        return number
    if kind in _TUPLES:
        if isinstance(value, str):
            value = parse_list(value)
        try:
            value = tuple(value)
        except TypeError:
            raise _error(shown, name, "must be a list") from None
        if kind == tuple[float, ...]:
            numbers = tuple(finite_float(v) for v in value)
            _check(shown, None not in numbers, name, "must be a list of finite numbers")
            return numbers
        _check(shown, all(_text_ok(v) for v in value), name, "must be a list of strings of valid UTF-8 text")
        return value
    if kind == Mapping[str, str]:
        ok = isinstance(value, Mapping) and all(_text_ok(k) and _text_ok(v) for k, v in value.items())
        _check(shown, ok, name, "must map strings to strings")
        return dict(value)
    if kind == Mapping[str, Any]:
        ok = isinstance(value, Mapping) and all(_text_ok(k) for k in value)
        _check(shown, ok, name, "must map model names to reference paths or profiles")
        return dict(value)
    if kind in (str, str | None):
        ok = (value is None and kind is not str) or _text_ok(value) or (
            name == "feedback_secret" and isinstance(value, bytes))  # an HMAC key may be raw bytes
        _check(shown, ok, name, "must be a string of valid UTF-8 text")
    return value


_PARSERS: dict[Any, Callable[[str], Any]] = {
    bool: _parse_bool, int: int, float: float, str: str,
    tuple[float, ...]: _parse_floats, tuple[str, ...]: parse_list,
    Mapping[str, str]: _parse_tags, Mapping[str, Any]: _parse_tags,
}
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
#: each setting's type, resolved once; it picks the parser of a text value
_TYPES = typing.get_type_hints(Settings)
_TUPLES = (tuple[float, ...], tuple[str, ...])


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a text value (environment, Flask config string) into the field's type."""
    if not isinstance(value, str):
        return value  # Settings checks its type
    if name == "metrics_path" and value.strip() == "":
        return None
    try:
        return _PARSERS.get(_TYPES[name], str)(value)
    except (TypeError, ValueError) as exc:
        raise _error(HIDDEN if name in _SECRETS else value, source, str(exc)) from None


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
