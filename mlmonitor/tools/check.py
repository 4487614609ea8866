"""``mlmonitor check``: what would make the shipped alerts and dashboards silently wrong for one app.

Offline: a person or a deploy pipeline runs it against a live app; nothing on the
request path imports it. It reads the app's ``/metrics`` (text format; with
``--prometheus`` once more in OpenMetrics, for exemplars), the rendered rule files
(default: the rules rendered with default thresholds) and, when given, the Prometheus
that scrapes the app. Each check is a small function that returns findings, one line each:

- ``error``: the rules or dashboards give a wrong or no answer (exit status 1);
- ``warning``: a part of the rules stays idle for this app (exit status 1 with ``--strict``);
- ``note``: a check that could not run, and what it needs.

The exposition is parsed with prometheus-client's parsers; the rule files are read as
``alerts render`` writes them (recording rules named ``level:metric:operations``, as the
contract says); HTTP is stdlib ``urllib``.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from mlmonitor import contract as c
from mlmonitor.reference import ReferenceProfile, min_rows
from . import rules as rendering

__all__ = ["Finding", "Scrape", "Rules", "run", "add_cli",
           "check_buckets", "check_job", "check_references", "check_reference_rows",
           "check_feedback_secret", "check_internal_errors", "check_exemplars"]

ERROR, WARNING, NOTE = "error", "warning", "note"
#: reference sources: a model version has a reference when any of these has a series for it
_REFERENCE_FAMILIES = (c.FEATURE_REFERENCE_RATIO, c.REFERENCE_CLASS_RATIO, c.PREDICTION_REFERENCE_RATIO)
_OPENMETRICS = "application/openmetrics-text; version=1.0.0"
#: the latency histograms: one set of buckets (MLMONITOR_BUCKETS) for all, so any one with series
#: shows the bounds of another that has none yet
_LATENCY = (c.PREDICTION_DURATION, c.HTTP_REQUEST_DURATION, c.STAGE_DURATION, c.TIME_TO_FIRST_CHUNK)


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``level: check: message``."""

    level: str
    check: str
    message: str

    def line(self) -> str:
        return f"{self.level}: {self.check}: {self.message}"


# -- what the app exposes ------------------------------------------------------------------------

@dataclass
class Scrape:
    """The samples of one scrape, by sample name (``..._bucket``, ``..._total``): label dicts and values."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    exemplars: int = 0

    @classmethod
    def from_text(cls, text: str, openmetrics: str = "") -> Scrape:
        scrape = cls()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                scrape.samples.setdefault(s.name, []).append((dict(s.labels), s.value))
        if openmetrics:
            scrape.exemplars = sum(s.exemplar is not None for f in om_families(openmetrics) for s in f.samples)
        return scrape

    def get(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.samples.get(name, [])

    def bounds(self, histogram: str) -> set[str]:
        """The ``le`` values of a histogram's buckets, as the app writes them."""
        return {labels.get("le", "") for labels, _ in self.get(histogram + "_bucket")}

    def total(self, name: str, **labels: str) -> float:
        return sum(v for got, v in self.get(name) if all(got.get(k) == w for k, w in labels.items()))

    def versions(self, *names: str) -> set[tuple[str, str]]:
        """(model_name, model_version) pairs with a series in any of ``names``, ``other`` left out."""
        return {(labels[c.MODEL_NAME], labels[c.MODEL_VERSION]) for name in names for labels, _ in self.get(name)
                if c.MODEL_NAME in labels and c.OTHER not in (labels[c.MODEL_NAME], labels.get(c.MODEL_VERSION))}


def _auth_header(token: str | None, basic: str | None) -> dict[str, str]:
    if token:
        return {"Authorization": f"Bearer {token}"}
    if basic:
        return {"Authorization": "Basic " + base64.b64encode(basic.encode()).decode("ascii")}
    return {}


def _get(url: str, headers: dict[str, str], timeout: float) -> str:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip", **headers})  # noqa: S310 (as below)
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (the user's own URL)
        body: bytes = resp.read()
        if resp.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
    return body.decode("utf-8")


def _get_json(url: str, timeout: float) -> Any:
    body = json.loads(_get(url, {}, timeout))
    if body.get("status") != "success":
        raise ValueError(f"{url}: {body.get('error', body)}")
    return body["data"]


# -- what the rules read -------------------------------------------------------------------------

_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^{}]*)\}")
_BUCKET = re.compile(r"(?<![\w:])([A-Za-z_][A-Za-z0-9_]*_bucket)(?![\w:])")
_NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
_ABOVE = re.compile(r"\s*>=?\s*" + _NUMBER)
#: ``level:metric:ops{...} > N``: a recording rule (the contract's naming) compared with a number
_RECORD_ABOVE = re.compile(r"(?<![\w:])[A-Za-z_]+:([A-Za-z_][A-Za-z0-9_]*):([a-z]+)[0-9_smhdw]*(?![\w:])"
                           r"(?:\{[^{}]*\})?\s*>=?\s*" + _NUMBER)

Matcher = tuple[str, str, str]


def _matchers(text: str) -> tuple[Matcher, ...]:
    return tuple((m.group(1), m.group(2), _unquote(m.group(3))) for m in _MATCHER.finditer(text))


def _unquote(text: str) -> str:
    try:
        return str(json.loads(f'"{text}"'))
    except ValueError:  # an escape JSON lacks: keep it as written
        return text


def _rule_exprs(text: str) -> list[str]:
    """Every ``expr`` of a rule file or PrometheusRule manifest as ``alerts render`` writes them:
    quoted on its line, or a ``|-`` block below it."""
    out: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        key, _, value = line.strip().lstrip("- ").partition(":")
        value = value.strip()
        if key == "expr":
            if value.startswith(("|", ">")):
                indent = len(line) - len(line.lstrip())
                block = []
                for more in lines[i + 1:]:
                    if more.strip() and len(more) - len(more.lstrip()) <= indent:
                        break
                    block.append(more.strip())
                value = "\n".join(block)
            elif value.startswith("'"):
                value = value[1:-1].replace("''", "'")
            elif value.startswith('"'):
                value = json.loads(value)
            out.append(value)
    return out


def _quantiles_above(expr: str) -> Iterator[tuple[str, float]]:
    """(histogram, N) of every ``histogram_quantile(q, ... metric_bucket ...) > N`` in ``expr``."""
    start = expr.find("histogram_quantile(")
    while start >= 0:
        depth, first = 0, start + len("histogram_quantile")
        end = first
        for end in range(first, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            if depth == 0:
                break
        inner, above = expr[start:end], _ABOVE.match(expr, end + 1)
        buckets = _BUCKET.findall(inner)
        if above and len(buckets) == 1:
            yield buckets[0][:-len("_bucket")], float(above.group(1))
        start = expr.find("histogram_quantile(", end)


@dataclass
class Rules:
    """What one rendered rule file asks of the app: its selector, bucket bounds and quantile thresholds."""

    source: str
    selector: tuple[Matcher, ...] = ()
    #: (histogram, le exactly as written) of every ``le="..."`` matcher
    bounds: set[tuple[str, str]] = field(default_factory=set)
    #: (histogram, threshold) compared with a quantile of that histogram
    quantiles: set[tuple[str, float]] = field(default_factory=set)
    #: thresholds compared with a PSI recording rule
    psi: set[float] = field(default_factory=set)

    @classmethod
    def from_text(cls, text: str, source: str) -> Rules:
        rules = cls(source)
        common: set[Matcher] | None = None
        for expr in _rule_exprs(text):
            for metric, op, number in _RECORD_ABOVE.findall(expr):
                if op == "p":  # level:metric:p99_5m, a quantile
                    rules.quantiles.add((metric, float(number)))
                elif op == "psi":
                    rules.psi.add(float(number))
            for histogram, number in _quantiles_above(expr):
                rules.quantiles.add((histogram, number))
            for metric, inner in _SELECTOR.findall(expr):
                if ":" in metric:
                    continue  # a recording rule, not a raw series
                matchers = _matchers(inner)
                common = set(matchers) if common is None else common & set(matchers)
                if metric.endswith("_bucket"):
                    rules.bounds |= {(metric[:-len("_bucket")], v) for k, op, v in matchers
                                     if k == "le" and op == "="}
        rules.selector = tuple(sorted(m for m in (common or ()) if m[0] != "le"))
        return rules

    def selector_text(self) -> str:
        return "{" + ", ".join(f"{k}{op}{json.dumps(v)}" for k, op, v in self.selector) + "}"

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a series with ``labels`` passes every matcher (regexes anchored, as in PromQL);
        with ``job`` alone known, only the matchers on ``job``."""
        only_job = set(labels) == {c.JOB}
        for key, op, value in self.selector:
            if only_job and key != c.JOB:
                continue
            got = labels.get(key, "")
            ok = got == value if op in ("=", "!=") else re.fullmatch(value, got) is not None
            if ok == (op in ("!=", "!~")):
                return False
        return True


def default_rules() -> Rules:
    return Rules.from_text(rendering.render_text(rendering.Thresholds()), "the default rules")


# -- the checks ----------------------------------------------------------------------------------

def check_buckets(scrape: Scrape, rules: Rules) -> list[Finding]:
    """Every ``le`` the rules select must be one of the app's bucket bounds, spelt the same: a
    matcher on a bound the app lacks selects nothing, so the slow-ratio rules give no series and
    the latency SLO alerts never fire. A quantile threshold off the bounds is interpolated. A
    latency histogram without series yet (no prediction, nothing streamed) is judged by the
    bounds of one that has series: they share MLMONITOR_BUCKETS."""
    found = []
    shared = next((les for les in map(scrape.bounds, _LATENCY) if les), set())
    for histogram in sorted({h for h, _ in rules.bounds} | {h for h, _ in rules.quantiles}):
        have = scrape.bounds(histogram) or (shared if histogram in _LATENCY else set())
        if not have:
            if any(b[0] == histogram for b in rules.bounds):
                found.append(Finding(NOTE, "buckets", f"{histogram} has no series yet (nothing observed):"
                                                      " its buckets are not checked"))
            continue
        bounds = sorted(float(b) for b in have if b != "+Inf")
        shown = ",".join(_num(b) for b in bounds)
        for _, le in sorted(b for b in rules.bounds if b[0] == histogram):
            if le in have:
                continue
            same = [b for b in have if b != "+Inf" and _same_number(b, le)]
            fix = (f'the app writes it le="{same[0]}" and Prometheus compares le as text; render the'
                   " rules with mlmonitor alerts render" if same else
                   f"render with --buckets {shown} and a threshold among them, or add {le} to MLMONITOR_BUCKETS")
            found.append(Finding(ERROR, "buckets", f'{rules.source} select {histogram}_bucket{{le="{le}"}},'
                                 f" which the app does not have (its bounds: {shown}): the latency SLO rules"
                                 f" give no series and never fire; {fix}"))
        for _, threshold in sorted(q for q in rules.quantiles if q[0] == histogram):
            if not any(math.isclose(threshold, b, rel_tol=1e-9) for b in bounds):
                found.append(Finding(WARNING, "buckets", f"{rules.source} compare a quantile of {histogram}"
                                     f" with {_num(threshold)}, not one of the app's bounds ({shown}):"
                                     " the quantile is interpolated between bounds, so the alert fires early"
                                     " or late"))
    return found


def check_job(rules: Sequence[Rules], target: dict[str, str] | None, where: str) -> list[Finding]:
    """The rules judge only series their selector matches: a job name it does not match leaves
    every alert of this app silent (the dashboards' job variable still shows it).

    ``target``: the labels Prometheus gives the app's series (``--prometheus``), or only ``job``
    (``--job``), when the matchers on other labels are not judged."""
    if target is None:
        return [Finding(NOTE, "job", "not checked: pass --prometheus URL (or --job NAME)")]
    if any(r.matches(target) for r in rules):
        return []
    carried = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(target.items()))
    selectors = "; ".join(f"{r.source}: {r.selector_text()}" for r in rules)
    job = json.dumps(target.get(c.JOB, ""))
    return [Finding(ERROR, "job", f"the app's series carry {{{carried}}} ({where}), which the rules' selector"
                                  f" does not match ({selectors}): no alert can fire for this app; render"
                                  f" with --selector '{{job={job}}}'")]


def check_references(scrape: Scrape) -> list[Finding]:
    """A model version served without a reference has no drift panels and no drift alerts."""
    served = scrape.versions(c.MODEL_INFO, c.PREDICTIONS_TOTAL)
    referenced = scrape.versions(*_REFERENCE_FAMILIES)
    return [Finding(WARNING, "reference", f"model {name} {version} has no reference"
                                         f" (no {c.FEATURE_REFERENCE_RATIO} series): the drift rules and"
                                         " panels stay empty for it; set MLMONITOR_REFERENCE(S)")
            for name, version in sorted(served - referenced)]


def _rows_at_least(shares: Iterable[float]) -> int:
    """The fewest rows that give these shares exactly (each share is count / rows): a lower bound,
    since rows that are a multiple give the same shares."""
    rows = 1
    for share in shares:
        if share > 0:
            denominator = Fraction(share).limit_denominator(10**9).denominator
            rows = rows * denominator // math.gcd(rows, denominator)
    return rows


def _binned_parts(profile: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(what, part) of every part of a reference that PSI compares: features, classes, outputs."""
    d = profile.to_dict()
    for item in d["features"]:
        yield f"feature {item['name']}", item
    for name in ("classes", "outputs"):
        if d.get(name):
            yield name, d[name]


def check_reference_rows(scrape: Scrape, profiles: dict[str, Any], psi_threshold: float) -> list[Finding]:
    """A reference of too few rows per bin makes PSI of unshifted traffic cross the threshold.

    The rows needed are :func:`mlmonitor.reference.min_rows` of the bins that hold reference
    values, as ``reference build`` warns. ``profiles`` (path -> ``ReferenceProfile``) give the
    rows behind each part. /metrics carries the shares only, which prove a lower bound (their
    denominators): enough when it already reaches the need, else a note that asks for the file."""
    found = []
    for path, profile in sorted(profiles.items()):
        for what, part in _binned_parts(profile):
            bins = sum(1 for share in part["bins"].values() if share > 0)
            rows = part.get("count", profile.to_dict()["rows"])
            need = min_rows(bins, psi_threshold)
            if rows < need:
                found.append(Finding(ERROR, "reference", f"{path}: {what} has {rows} rows for {bins} bins;"
                                     f" PSI {_num(psi_threshold)} needs {need} or more, else unshifted"
                                     " traffic fires the drift alerts"))
    if profiles:
        return found
    shares: dict[tuple[str, ...], list[float]] = {}
    for family, group in ((c.FEATURE_REFERENCE_RATIO, c.FEATURE), (c.REFERENCE_CLASS_RATIO, ""),
                          (c.PREDICTION_REFERENCE_RATIO, "")):
        for labels, value in scrape.get(family):
            key = (labels.get(c.MODEL_NAME, ""), labels.get(c.MODEL_VERSION, ""), family, labels.get(group, ""))
            shares.setdefault(key, []).append(value)
    unproven = [key for key, values in shares.items()
                if _rows_at_least(values) < min_rows(sum(1 for v in values if v > 0), psi_threshold)]
    models = sorted({f"{name} {version}" for name, version, *_ in unproven})
    if models:
        found.append(Finding(NOTE, "reference", f"the shares on /metrics do not prove enough reference rows"
                             f" for {', '.join(models)} ({len(unproven)} of {len(shares)} binned parts):"
                             " pass the reference file with --reference to count them"))
    return found


def check_feedback_secret(scrape: Scrape) -> list[Finding]:
    """Feedback refused as ``bad_signature`` means the worker or replica that answered did not
    know the secret that signed the id: accuracy counts only the feedback that happened to land
    where its prediction was made."""
    refused = scrape.total(c.FEEDBACK_REJECTED_TOTAL, **{c.REASON: "bad_signature"})
    if refused <= 0:
        return []
    accepted = scrape.total(c.FEEDBACK_TOTAL)
    return [Finding(ERROR, "feedback", f"{_num(refused)} feedback ids refused as bad_signature"
                                       f" ({_num(accepted)} accepted): the workers or replicas do not share one"
                                       " MLMONITOR_FEEDBACK_SECRET, so the accuracy rules see part of the"
                                       " feedback; set the same secret on every replica")]


def check_internal_errors(scrape: Scrape) -> list[Finding]:
    """The faults of mlmonitor itself and dropped telemetry: every panel may be missing what they lost."""
    found = []
    for name, label, what in ((c.INTERNAL_ERRORS_TOTAL, c.COMPONENT, "internal errors"),
                              (c.TELEMETRY_DROPPED_TOTAL, c.SIGNAL, "telemetry dropped")):
        by: dict[str, float] = {}
        for labels, value in scrape.get(name):
            by[labels.get(label, "")] = by.get(labels.get(label, ""), 0.0) + value
        parts = [f"{key} {_num(value)}" for key, value in sorted(by.items()) if value > 0]
        if parts:
            found.append(Finding(ERROR, what.split()[0], f"{name}: {', '.join(parts)}: {what}; the app's"
                                 " log says which (logger mlmonitor)"))
    return found


def check_exemplars(scrape: Scrape, features: Sequence[str] | None) -> list[Finding]:
    """The latency panels ask for exemplars; Prometheus keeps those the app serves only with
    ``--enable-feature=exemplar-storage``. Said only when the app serves exemplars."""
    if not scrape.exemplars or features is None:
        return []
    if "exemplar-storage" in features:
        return []
    return [Finding(WARNING, "exemplars", f"the app serves exemplars ({scrape.exemplars} in one scrape) but"
                                         " Prometheus runs without --enable-feature=exemplar-storage: the"
                                         " dashboards' trace links stay empty")]


def _num(value: float) -> str:
    return f"{value:.10g}"


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


# -- Prometheus ----------------------------------------------------------------------------------

def _same_endpoint(a: str, b: str) -> bool:
    def key(url: str) -> tuple[str, str, int, str]:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        host = "127.0.0.1" if host in ("localhost", "::1") else host
        return parts.scheme, host, parts.port or (443 if parts.scheme == "https" else 80), parts.path or "/"
    return key(a) == key(b)


def find_target(prometheus: str, url: str, timeout: float) -> tuple[dict[str, str] | None, list[Finding]]:
    """The labels of the target Prometheus scrapes at ``url`` (its series carry them), or a finding."""
    data = _get_json(prometheus.rstrip("/") + "/api/v1/targets?state=active", timeout)
    for target in data.get("activeTargets", []):
        if _same_endpoint(target.get("scrapeUrl", ""), url):
            found = []
            if target.get("health") == "down":
                found.append(Finding(ERROR, "scrape", f"Prometheus fails to scrape {url}:"
                                                      f" {target.get('lastError', '')}"))
            return dict(target.get("labels", {})), found
    return None, [Finding(ERROR, "scrape", f"{prometheus} has no target at {url}: no rule or dashboard sees"
                                           " this app; add it to a scrape config (or give the URL as"
                                           " Prometheus scrapes it: its targets page shows it)")]


def prometheus_features(prometheus: str, timeout: float) -> list[str]:
    flags = _get_json(prometheus.rstrip("/") + "/api/v1/status/flags", timeout)
    return [f.strip() for f in str(flags.get("enable-feature", "")).split(",") if f.strip()]


# -- the command ---------------------------------------------------------------------------------

def run(args: argparse.Namespace, out: Any = None) -> int:
    """Run every check; print one line per finding and a summary; 1 when something is wrong."""
    out = out if out is not None else sys.stdout
    headers = _auth_header(args.token, args.basic_auth)
    try:
        text = _get(args.url, headers, args.timeout)
        # OpenMetrics only for the exemplar check, which needs Prometheus' flags as well
        om = _get(args.url, {**headers, "Accept": _OPENMETRICS}, args.timeout) if args.prometheus else ""
        scrape = Scrape.from_text(text, om)
    except (OSError, ValueError) as exc:
        detail = f"{exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else str(exc)
        print(f"{ERROR}: metrics: cannot read {args.url}: {detail}", file=out)
        return 1
    rule_sets = [Rules.from_text(_read(path), path) for path in args.rules] or [default_rules()]
    profiles = {path: _load_reference(path) for path in args.reference}
    findings: list[Finding] = []
    target: dict[str, str] | None = None
    features: list[str] | None = None
    where = "--job"
    if args.prometheus:
        try:
            target, findings = find_target(args.prometheus, args.url, args.timeout)
            features = prometheus_features(args.prometheus, args.timeout)
        except (OSError, ValueError) as exc:
            findings = [Finding(ERROR, "prometheus", f"cannot read {args.prometheus}: {exc}")]
        where = f"as {args.prometheus} scrapes it"
    if args.job is not None:
        target, where = {**(target or {}), c.JOB: args.job}, "--job"
    for rules in rule_sets:
        findings += check_buckets(scrape, rules)
    if target is not None or not args.prometheus:  # an unscraped app or an unread Prometheus: said above
        findings += check_job(rule_sets, target, where)
    findings += check_references(scrape)
    psi = args.psi_threshold or min((p for r in rule_sets for p in r.psi),
                                    default=rendering.Thresholds.psi_threshold)
    findings += check_reference_rows(scrape, profiles, psi)
    findings += check_feedback_secret(scrape)
    findings += check_internal_errors(scrape)
    findings += check_exemplars(scrape, features)
    for finding in findings:
        print(finding.line(), file=out)
    failing = {ERROR, WARNING} if args.strict else {ERROR}
    counts = {level: sum(f.level == level for f in findings) for level in (ERROR, WARNING, NOTE)}
    summary = ", ".join(f"{n} {level}{'s' if n != 1 else ''}" for level, n in counts.items() if n)
    bad = any(f.level in failing for f in findings)
    print(f"{'FAILED' if bad else 'ok'}: {args.url}" + (f" ({summary})" if summary else ""), file=out)
    return 1 if bad else 0


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _load_reference(path: str) -> Any:
    return ReferenceProfile.load(path)


def add_cli(subparsers: Any) -> None:
    """Register ``mlmonitor check``."""
    parser = subparsers.add_parser(
        "check", help="say what would make the alerts and dashboards silently wrong for a live app",
        description="Read a live app's /metrics (and the rendered rules and the Prometheus that scrapes"
                    " it) and print one line per problem: error (exit status 1), warning (exit status 1"
                    " with --strict), note (a check that could not run). The last line is the summary.")
    parser.add_argument("url", help="the app's metrics URL, e.g. http://127.0.0.1:8000/metrics")
    parser.add_argument("--token", default=os.environ.get("MLMONITOR_METRICS_TOKEN"),
                        help="bearer token of /metrics (default: $MLMONITOR_METRICS_TOKEN)")
    parser.add_argument("--basic-auth", default=os.environ.get("MLMONITOR_METRICS_BASIC_AUTH"),
                        metavar="USER:PASSWORD",
                        help="basic auth of /metrics (default: $MLMONITOR_METRICS_BASIC_AUTH)")
    parser.add_argument("--rules", action="append", default=[], metavar="FILE",
                        help="a rule file (or PrometheusRule) from `mlmonitor alerts render`; repeat for"
                             " several (default: the rules rendered with default thresholds)")
    parser.add_argument("--prometheus", metavar="URL",
                        help="the Prometheus that scrapes the app: its job label and exemplar storage")
    parser.add_argument("--job", help="the job label Prometheus gives the app (without --prometheus)")
    parser.add_argument("--reference", action="append", default=[], metavar="FILE",
                        help="a reference JSON the app loads: its rows per bin are counted")
    parser.add_argument("--psi-threshold", type=float, default=None,
                        help="PSI threshold of the drift alerts (default: read from the rules, else"
                             f" {rendering.Thresholds.psi_threshold})")
    parser.add_argument("--strict", action="store_true", help="warnings also give exit status 1")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
    parser.set_defaults(func=run)
