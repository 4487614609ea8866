"""Mlmonitor's three Grafana dashboards, built from the metric contract as plain dicts.

Offline: runs when the dashboards are rendered (``mlmonitor dashboards render``,
at release or when a user re-renders them), never in a request. Owns the panels,
their queries and the dashboard JSON; every metric and recording-rule name comes
from :mod:`mlmonitor.contract`, and the command line lives in :mod:`mlmonitor.tools.cli`::

    mlmonitor dashboards render --out-dir grafana/dashboards   # write the three JSON files
    mlmonitor dashboards render --check grafana/dashboards     # exit 1 naming a stale file

``grafana/dashboards/*.json`` in the repository is this module's output; a test keeps
it in sync (``python grafana/generate.py [--check]`` does the same for that folder).

Plain dicts rather than grafana-foundation-sdk: three dashboards need a dozen small helpers,
and no extra dependency pinned to one Grafana line. Target: Grafana 10.4 and later (schema 39).
Every query selects through the ``datasource`` variable (no datasource uid and no ``__inputs``
placeholder, which file provisioning would leave unresolved), uses ``$__rate_interval`` in every
range, and reads the recording rules of ``alerts/`` where one exists (PSI, class shares,
accuracy from feedback) and raw metrics otherwise, so panels follow the dashboard's time range.
Every ratio divides by a total filtered ``> 0`` and every quantile is filtered ``>= 0`` ("No data",
never NaN, without traffic: :func:`positive`, :func:`quantile`); every panel's description ends
with a sentence saying what filters it (:func:`scope`); the canary comparisons stay empty, with a
hint, unless two different versions are chosen.
"""
from __future__ import annotations

import json
import re
from typing import Any
from collections.abc import Callable, Sequence

from mlmonitor.contract import (
    ACCURACY, ACCURACY_WINDOW, CLASS_DRIFT, COST_TOTAL, DRIFT_WINDOW, ERROR_TYPE, FEATURE_BIN_TOTAL,
    FEATURE_DRIFT, FEATURE_MISSING_TOTAL, FEEDBACK_TOTAL, GPU_MEMORY_TOTAL, GPU_MEMORY_USED,
    GPU_UTILIZATION, HTTP_REQUEST_DURATION_BUCKET, HTTP_REQUESTS_IN_PROGRESS, HTTP_REQUESTS_TOTAL,
    INTERNAL_ERRORS_TOTAL, INVALID_INPUT, JOB, MODEL_INFO, MODEL_NAME, MODEL_VERSION, PREDICTED_CLASS_TOTAL,
    PREDICTION_DURATION_BUCKET, PREDICTION_ERRORS_TOTAL, PREDICTION_SCORE_BUCKET, PREDICTIONS_TOTAL,
    PROCESS_CPU_TOTAL, PROCESS_MEMORY, REFERENCE_ACCURACY_MAX, STAGE_DURATION_BUCKET,
    STAGE_DURATION_COUNT, STAGE_DURATION_SUM, TELEMETRY_DROPPED_TOTAL, TIME_TO_FIRST_CHUNK_BUCKET, TOKENS_TOTAL,
    VERSION_LABELS)
from mlmonitor.contract import (ABSOLUTE_ERROR_MEAN, FEATURE_UNKNOWN_TOTAL, FEEDBACK_ABSOLUTE_ERROR_BUCKET,
                              OUTPUT_DRIFT, PREDICTION_BIN_TOTAL, REFERENCE_ABSOLUTE_ERROR_MAX)
from . import outputs
from .selectors import parse_selector

__all__ = ["DASHBOARDS", "render", "select", "write", "stale"]

GRAFANA_VERSION = "10.4.0"
SCHEMA_VERSION = 39
TAGS = ["mlmonitor"]
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "[$__rate_interval]"
BY = ", ".join(VERSION_LABELS)
JOB_MATCH = f'{JOB}=~"$job"'
JOB_SEL = "{" + JOB_MATCH + "}"
MODEL = f'{JOB_MATCH}, {MODEL_NAME}=~"$model_name"'
SEL = f'{{{MODEL}, model_version=~"$model_version"}}'
VERSION_A = f'{{{MODEL}, model_version="$version_a"}}'
VERSION_B = f'{{{MODEL}, model_version="$version_b"}}'
PSI_STEPS = [(None, "green"), (0.1, "yellow"), (0.2, "red")]

Panel = dict[str, Any]
#: a threshold step: (the value it starts at, None for the base step; its colour)
Step = tuple[float | None, str]


# ---------------------------------------------------------------- PromQL pieces

def _span(window: str) -> str:
    """A window in panel titles: ``1h`` reads "hour", ``1d`` "day", others as written."""
    return {"1h": "hour", "1d": "day"}.get(window, window)


def rate(metric: str, sel: str, fn: str = "rate") -> str:
    return f"{fn}({metric}{sel}{RI})"


def with_label(sel: str, matcher: str) -> str:
    """``sel`` with one more matcher."""
    return sel[:-1] + f", {matcher}}}"


def quantile(q: float, bucket: str, sel: str, by: str = BY) -> str:
    """The q-quantile of a histogram's ``bucket`` series: summed by ``le`` first, never averaged.

    A series without observations in the interval (an idle route, a version without feedback)
    has a NaN quantile, which Grafana draws as a "NaN" series: ``>= 0`` drops it (NaN compares
    false; every mlmonitor histogram holds values >= 0), so it shows nothing instead.
    """
    labels = f"le, {by}" if by else "le"
    return f"(histogram_quantile({q}, sum by ({labels}) ({rate(bucket, sel)})) >= 0)"


def positive(expr: str) -> str:
    """A divisor: ``expr`` where above 0, so a ratio without traffic has no value ("No data"), not NaN."""
    return f"({expr} > 0)"


def error_ratio(sel: str, matcher: str, by: str = BY) -> str:
    """Share of predictions with errors matching ``matcher``; 0 (not a gap) when there were none."""
    total = f"sum by ({by}) ({rate(PREDICTIONS_TOTAL, sel)})"
    errors = f"sum by ({by}) ({rate(PREDICTION_ERRORS_TOTAL, with_label(sel, matcher))})"
    return f"({errors} or 0 * {total}) / {positive(total)}"


SERVER_ERRORS = f'{ERROR_TYPE}!="{INVALID_INPUT}"'
INVALID = f'{ERROR_TYPE}="{INVALID_INPUT}"'
#: the end of the description of a panel that only classifiers fill
FOR_CLASSIFIERS = " Empty for regression models, which have no classes: see the output distribution panels."
#: the end of the description of a panel that only regression models fill
FOR_REGRESSORS = (" Regression models only (a reference built with task regression): empty for"
                  " classifiers.")


def mismatches(sel: str, legend: str, by: str = BY) -> list[dict[str, Any]]:
    """Feature values missing per feature, and feature names the reference does not know (item 3 of
    issue 16): 0, not a gap, while features are observed and nothing is missing or unknown."""
    binned = f"sum by ({by}, feature) ({rate(FEATURE_BIN_TOTAL, sel, 'increase')})"
    observed = f"sum by ({by}) ({rate(FEATURE_BIN_TOTAL, sel, 'increase')})"
    return [target(f"sum by ({by}, feature) ({rate(FEATURE_MISSING_TOTAL, sel, 'increase')})"
                   f" or 0 * {binned}", legend + " missing {{feature}}"),
            target(f"sum by ({by}) ({rate(FEATURE_UNKNOWN_TOTAL, sel, 'increase')}) or 0 * {observed}",
                   legend + " unknown feature names")]


MISMATCH_TEXT = ("Per rate interval: values of reference features that were absent or not numbers"
                 f" ({FEATURE_MISSING_TOTAL}, per feature), and observed feature names the reference does not"
                 f" know ({FEATURE_UNKNOWN_TOTAL}; no name label, the app logs each name once as a warning):"
                 " a renamed or dropped input column shows here. 0 while features are observed and match.")


# ---------------------------------------------------------------- panels

def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
           fmt: str = "time_series", exemplar: bool = False) -> dict[str, Any]:
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
            "range": not instant, "instant": instant, "format": fmt, "exemplar": exemplar,
            "editorMode": "code"}


def thresholds(steps: Sequence[Step] = ((None, "green"),)) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def panel(kind: str, title: str, description: str, unit: str, targets: list[dict[str, Any]],
          w: int, h: int = 8, steps: Sequence[Step] = ((None, "green"),),
          options: dict[str, Any] | None = None, custom: dict[str, Any] | None = None,
          no_value: str = "", **extra: Any) -> Panel:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    defaults: dict[str, Any] = {"unit": unit, "thresholds": thresholds(steps),
                                "color": {"mode": "palette-classic" if kind == "timeseries" else "thresholds"}}
    if custom:
        defaults["custom"] = custom
    if no_value:  # shown instead of "No data"
        defaults["noValue"] = no_value
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": 0, "y": 0}, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options or {}, **extra}


def timeseries(title: str, description: str, unit: str, targets: list[dict[str, Any]], w: int = 12,
               stack: bool = False, steps: Sequence[Step] = ((None, "green"),),
               threshold_lines: bool = False, no_value: str = "") -> Panel:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 30 if stack else 10,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"},
              "thresholdsStyle": {"mode": "line+area" if threshold_lines else "off"}}
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return panel("timeseries", title, description, unit, targets, w, steps=steps, options=options,
                 custom=custom, no_value=no_value)


def stat(title: str, description: str, unit: str, expr: str, legend: str = "",
         steps: Sequence[Step] = ((None, "green"),), w: int = 4, no_value: str = "") -> Panel:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
               "orientation": "auto"}
    return panel("stat", title, description, unit, [target(expr, legend)], w, h=4, steps=steps,
                 options=options, no_value=no_value)


def table(title: str, description: str, unit: str, expr: str, w: int, h: int = 8,
          steps: Sequence[Step] = ((None, "green"),), color_cells: bool = False,
          rename_value: str = "Value") -> Panel:
    custom = {"align": "auto", "cellOptions": {"type": "color-background" if color_cells else "auto"}}
    organize = {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True},
                                              "renameByName": {"Value": rename_value}}}
    return panel("table", title, description, unit, [target(expr, instant=True, fmt="table")], w, h,
                 steps=steps, custom=custom, options={"showHeader": True, "cellHeight": "sm"},
                 transformations=[organize])


def bargauge(title: str, description: str, unit: str, targets: list[dict[str, Any]], w: int = 12,
             h: int = 8, no_value: str = "") -> Panel:
    for t in targets:
        t.update(instant=True, range=False)
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
               "valueMode": "color", "namePlacement": "auto", "sizing": "auto"}
    result = panel("bargauge", title, description, unit, targets, w, h, options=options, no_value=no_value)
    result["fieldConfig"]["defaults"]["min"] = 0
    return result


def heatmap(title: str, description: str, expr: str, w: int = 12) -> Panel:
    options = {"calculate": False, "cellGap": 1, "yAxis": {"axisPlacement": "left", "unit": "percentunit"},
               "rowsFrame": {"layout": "le"}, "color": {"mode": "scheme", "scheme": "Oranges",
                                                        "steps": 64, "fill": "dark", "exponent": 0.5},
               "cellValues": {"unit": "short"}, "tooltip": {"mode": "single", "yHistogram": True},
               "legend": {"show": True}, "exemplars": {"color": "rgba(255,0,255,0.7)"}}
    return panel("heatmap", title, description, "short",
                 [target(expr, "{{le}}", fmt="heatmap")], w, options=options)


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}}


def layout(panels: list[Panel]) -> list[Panel]:
    """Ids in order; panels placed left to right, a new line when 24 columns are full, rows full width."""
    x = y = bottom = 0
    for pid, p in enumerate(panels, start=1):
        grid = p["gridPos"]
        if p["type"] == "row" or x + grid["w"] > 24:
            x, y = 0, bottom
        grid.update(x=x, y=y)
        p["id"] = pid
        x += grid["w"]
        bottom = max(bottom, y + grid["h"])
        if p["type"] == "row":
            x = 24
    return panels


# ---------------------------------------------------------------- variables

def datasource_var() -> dict[str, Any]:
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "multi": False, "includeAll": False,
            "options": []}


def query_var(name: str, label: str, query: str, multi: bool = True, sort: int = 1) -> dict[str, Any]:
    return {"type": "query", "name": name, "label": label, "datasource": DS, "definition": query,
            "query": {"query": query, "refId": f"PrometheusVariableQueryEditor-{name}"},
            "current": {}, "hide": 0, "refresh": 2, "regex": "", "sort": sort, "multi": multi,
            "includeAll": multi, "allValue": ".+" if multi else None, "options": []}


def variables(canary: bool = False) -> list[dict[str, Any]]:
    info = MODEL_INFO
    out = [datasource_var(),
           query_var("job", "Job", f"label_values({info}, job)"),
           query_var("model_name", "Model", f"label_values({info}{JOB_SEL}, model_name)", multi=not canary)]
    versions = f"label_values({info}{{{MODEL}}}, model_version)"
    if canary:  # A sorts ascending, B descending: two different versions by default
        out += [query_var("version_a", "Version A (baseline)", versions, multi=False, sort=1),
                query_var("version_b", "Version B (canary)", versions, multi=False, sort=2)]
    else:
        out.append(query_var("model_version", "Version", versions))
    return out


#: the last sentence of every panel's description: what the panel is per, and what filters it
SCOPE_MODEL = "Follows the Job, Model and Version selection."
SCOPE_CANARY = "Follows the Job, Model, Version A and Version B selection."
SCOPE_ROUTE = ("Per HTTP route, for the selected jobs only: HTTP metrics carry no model labels, so Model"
               " and Version do not filter this panel.")
SCOPE_JOB = "For the selected jobs only: Model and Version do not filter this panel."


def scope(p: Panel) -> str:
    """The scope sentence of a panel, from the selectors its queries use."""
    exprs = " ".join(t["expr"] for t in p["targets"])
    if "$version_a" in exprs:
        return SCOPE_CANARY
    if "$model_name" in exprs:
        return SCOPE_MODEL
    return SCOPE_ROUTE if "route" in exprs else SCOPE_JOB


def dashboard(uid: str, title: str, description: str, panels: list[Panel], canary: bool = False) -> dict[str, Any]:
    kinds = sorted({p["type"] for p in panels if p["type"] != "row"})
    for p in panels:
        if p["type"] != "row":
            p["description"] = f"{p['description']} {scope(p)}"
    return {
        "__inputs": [],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}]
                      + [{"type": "panel", "id": k, "name": k, "version": ""} for k in kinds],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"title": "mlmonitor dashboards", "type": "dashboards", "tags": TAGS, "asDropdown": False,
                   "includeVars": True, "keepTime": True, "targetBlank": False, "icon": "external link",
                   "tooltip": "", "url": ""}],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS + (["canary"] if canary else []),
        "templating": {"list": variables(canary)},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ---------------------------------------------------------------- the dashboards

def overview() -> dict[str, Any]:
    pred = rate(PREDICTIONS_TOTAL, SEL)
    by_version = "{{model_name}} {{model_version}}"
    latency = PREDICTION_DURATION_BUCKET
    panels = [
        row("At a glance"),
        stat("Predictions / s", "Calls of prediction endpoints per second, failed ones included, summed over the"
             " selected jobs, models and versions.", "reqps", f"sum({pred})"),
        stat("Server error ratio", "Share of predictions that failed with a server error (every error_type but"
             " invalid_input). Invalid input is the client's fault and is shown apart.", "percentunit",
             f"(sum({rate(PREDICTION_ERRORS_TOTAL, with_label(SEL, SERVER_ERRORS))}) or 0 * sum({pred}))"
             f" / {positive(f'sum({pred})')}",
             steps=[(None, "green"), (0.01, "red")]),
        stat("Invalid input ratio", "Share of predictions refused as invalid input (4xx, error_type"
             " invalid_input): a client or schema problem, not a server fault.", "percentunit",
             f"(sum({rate(PREDICTION_ERRORS_TOTAL, with_label(SEL, INVALID))}) or 0 * sum({pred}))"
             f" / {positive(f'sum({pred})')}", steps=[(None, "green"), (0.05, "orange")]),
        stat("p99 prediction latency", "99th percentile of the prediction handler's time over all selected"
             " versions, from the summed histogram buckets.", "s",
             quantile(0.99, latency, SEL, by=""),
             steps=[(None, "green"), (0.5, "red")]),
        stat("Versions served", "Number of model versions that the selected processes serve now"
             f" ({MODEL_INFO}).", "none", f"count(max by ({BY}) ({MODEL_INFO}{SEL}))"),
        stat("Firing alerts", "Alerts firing in Prometheus now for the selected jobs (ALERTS series; load the"
             " rules in alerts/).", "none", f'count(ALERTS{{alertstate="firing", {JOB_MATCH}}}) or vector(0)',
             steps=[(None, "green"), (1, "red")]),
        row("Traffic and errors"),
        timeseries("Requests by route", "Every HTTP request the middleware saw, per route template"
                   " (unmatched paths are <unmatched>).", "reqps",
                   [target(f"sum by (job, route) ({rate(HTTP_REQUESTS_TOTAL, JOB_SEL)})",
                           "{{route}}")]),
        timeseries("Responses by status code", "HTTP responses per second by status code, all routes.", "reqps",
                   [target(f"sum by (job, status) ({rate(HTTP_REQUESTS_TOTAL, JOB_SEL)})",
                           "{{status}}")], stack=True),
        timeseries("Predictions by version", "Predictions per second per model version: the traffic split of"
                   " a canary or A/B rollout.", "reqps",
                   [target(f"sum by ({BY}) ({pred})", by_version)], w=8),
        timeseries("Error ratio: server errors vs invalid input", "Per version: share of predictions with a"
                   " server error (exception or 5xx) and, apart, share refused as invalid input (4xx). Not"
                   " 'status != 200'.", "percentunit",
                   [target(error_ratio(SEL, SERVER_ERRORS), by_version + " server errors"),
                    target(error_ratio(SEL, INVALID), by_version + " invalid input")], w=8),
        timeseries("Errors by type", "Failed predictions per second by error_type: the exception class,"
                   " http_5xx, or invalid_input.", "reqps",
                   [target(f"sum by ({BY}, error_type) ({rate(PREDICTION_ERRORS_TOTAL, SEL)})",
                           by_version + " {{error_type}}")], w=8, stack=True),
        row("Latency"),
        timeseries("Prediction latency p50 / p95 / p99", "Quantiles of the prediction handler's time per"
                   " version, from histogram buckets summed by le (never an average of percentiles)."
                   " Exemplars (the dots) open the trace of one request in a bucket: docs/exemplars.md.", "s",
                   [target(quantile(q, latency, SEL), f"{by_version} p{int(q * 100)}", exemplar=True)
                    for q in (0.5, 0.95, 0.99)]),
        timeseries("HTTP latency p50 / p99 by route", "Wall time until the response body was closed, per"
                   " route, from the HTTP histogram.", "s",
                   [target(quantile(q, HTTP_REQUEST_DURATION_BUCKET, JOB_SEL, by="job, route"),
                           f"{{{{route}}}} p{int(q * 100)}", exemplar=True) for q in (0.5, 0.99)]),
        timeseries("Stage breakdown (mean time per stage)", "Mean time spent in each monitor.stage() block per"
                   " request, stacked: where a prediction's time goes.", "s",
                   [target(f"sum by ({BY}, stage) ({rate(STAGE_DURATION_SUM, SEL)})"
                           f" / {positive(f'sum by ({BY}, stage) ({rate(STAGE_DURATION_COUNT, SEL)})')}",
                           by_version + " {{stage}}")], stack=True),
        timeseries("Stage p95", "95th percentile of each stage's time per version.", "s",
                   [target(quantile(0.95, STAGE_DURATION_BUCKET, SEL, by=BY + ", stage"),
                           by_version + " {{stage}}", exemplar=True)]),
        row("Processes, versions and alerts"),
        timeseries("Requests in progress", "Requests being served now, per route, summed over workers.",
                   "short", [target(f"sum by (job, route) ({HTTP_REQUESTS_IN_PROGRESS}{JOB_SEL})",
                                    "{{route}}")], w=8),
        timeseries("Process CPU per worker", "CPU time per second of each worker slot (1 = one core).",
                   "percentunit",
                   [target(f"sum by (job, instance, worker) ({rate(PROCESS_CPU_TOTAL, JOB_SEL)})",
                           "{{instance}} worker {{worker}}")], w=8),
        timeseries("Process memory per worker", "Resident memory of each worker slot.", "bytes",
                   [target(f"max by (job, instance, worker) ({PROCESS_MEMORY}{JOB_SEL})",
                           "{{instance}} worker {{worker}}")], w=8),
        table("Model versions served", "Which model versions each scrape target serves now"
              f" ({MODEL_INFO} = 1), with their lineage: the MLflow run id and model id (empty when"
              " unknown; set by model_uri=).", "none",
              f"max by (job, instance, model_name, model_version, run_id, model_id) ({MODEL_INFO}{SEL})",
              w=8),
        table("Firing alerts", "Alerts firing in Prometheus now for the selected jobs, from the ALERTS series"
              " (the rules in alerts/).", "none", f'ALERTS{{alertstate="firing", {JOB_MATCH}}}', w=16,
              rename_value="Firing"),
        timeseries("mlmonitor internal errors and dropped telemetry", "mlmonitor's own faults per component"
                   " (should stay 0) and spans or log lines dropped per signal, per rate interval.", "short",
                   [target(f"sum by (job, component) ({rate(INTERNAL_ERRORS_TOTAL, JOB_SEL, 'increase')})",
                           "internal errors {{component}}"),
                    target(f"sum by (job, signal) ({rate(TELEMETRY_DROPPED_TOTAL, JOB_SEL, 'increase')})",
                           "dropped {{signal}}")], w=8),
        timeseries("GPU utilization", "Busy share of each GPU (NVML). Empty without a GPU or nvidia-ml-py.",
                   "percentunit", [target(f"max by (job, instance, gpu) ({GPU_UTILIZATION}{JOB_SEL})",
                                          "{{instance}} gpu {{gpu}}")], w=8),
        timeseries("GPU memory used", "GPU memory in use and total per GPU (NVML). Empty without a GPU or"
                   " nvidia-ml-py.", "bytes",
                   [target(f"max by (job, instance, gpu) ({GPU_MEMORY_USED}{JOB_SEL})",
                           "{{instance}} gpu {{gpu}} used"),
                    target(f"max by (job, instance, gpu) ({GPU_MEMORY_TOTAL}{JOB_SEL})",
                           "{{instance}} gpu {{gpu}} total")], w=8),
    ]
    return dashboard("mlmonitor-overview", "mlmonitor / Model serving overview",
                     "Traffic, errors, latency, stages, processes and firing alerts per model version.", panels)


def quality() -> dict[str, Any]:
    by_version = "{{model_name}} {{model_version}}"
    drift = _span(DRIFT_WINDOW)
    classes = rate(PREDICTED_CLASS_TOTAL, SEL)
    missing = f"sum by ({BY}, feature) ({rate(FEATURE_MISSING_TOTAL, SEL)})"
    binned = f"sum by ({BY}, feature) ({rate(FEATURE_BIN_TOTAL, SEL)})"
    psi = f"{FEATURE_DRIFT.psi}{SEL}"
    score = PREDICTION_SCORE_BUCKET
    outputs = rate(PREDICTION_BIN_TOTAL, SEL)
    panels = [
        row("Drift"),
        table(f"Feature drift (PSI, last {drift})", "Population stability index of each feature against the"
              f" reference profile, from the recording rule {FEATURE_DRIFT.psi}."
              " Below 0.1: stable; 0.1-0.2: moderate shift; above 0.2: drifted.", "none", psi, w=10,
              steps=PSI_STEPS, color_cells=True, rename_value="PSI"),
        timeseries("Feature drift (PSI) over time",
                   f"PSI per feature and version ({DRIFT_WINDOW} window, recording rule);"
                   " the lines mark 0.1 and 0.2.", "none", [target(psi, by_version + " {{feature}}")], w=14,
                   steps=PSI_STEPS, threshold_lines=True),
        timeseries("Prediction drift (PSI of predicted classes)", "PSI of the predicted-class shares against"
                   f" the reference's class shares ({DRIFT_WINDOW} window, recording rule"
                   f" {CLASS_DRIFT.psi})." + FOR_CLASSIFIERS, "none",
                   [target(f"{CLASS_DRIFT.psi}{SEL}", by_version)],
                   steps=PSI_STEPS, threshold_lines=True),
        timeseries("Missing values share per feature", "Share of observed values of each feature that were"
                   " missing or non-numeric; 0 while the feature has traffic and nothing is missing.",
                   "percentunit",
                   [target(f"({missing} or 0 * {binned})"
                           f" / {positive(f'({missing} or 0 * {binned}) + ({binned} or 0 * {missing})')}",
                           by_version + " {{feature}}")]),
        timeseries("Output drift (PSI of predicted values)", "PSI of the shares of numeric predictions in the"
                   " reference's output bins (quantiles of its predictions) against the reference's shares"
                   f" ({DRIFT_WINDOW} window, recording rule {OUTPUT_DRIFT.psi}); the lines mark 0.1 and 0.2."
                   + FOR_REGRESSORS, "none", [target(f"{OUTPUT_DRIFT.psi}{SEL}", by_version)],
                   steps=PSI_STEPS, threshold_lines=True),
        timeseries("Feature mismatches: missing and unknown features", MISMATCH_TEXT, "short",
                   mismatches(SEL, by_version)),
        row("Predictions"),
        bargauge(f"Predicted class shares vs reference (last {drift})", "Live share of each predicted class"
                 f" (recording rule, {DRIFT_WINDOW}) next to the reference profile's share of that class."
                 + FOR_CLASSIFIERS, "percentunit",
                 [target(f"{CLASS_DRIFT.share}{SEL}",
                         by_version + " {{class}} live"),
                  target(f"{CLASS_DRIFT.reference_max}{SEL}",
                         by_version + " {{class}} reference")]),
        timeseries("Predicted class shares over time", "Share of each predicted class per version over the"
                   " rate interval." + FOR_CLASSIFIERS, "percentunit",
                   [target(f"sum by ({BY}, class) ({classes})"
                           f" / on ({BY}) group_left () {positive(f'sum by ({BY}) ({classes})')}",
                           by_version + " {{class}}")], stack=True),
        bargauge(f"Output distribution vs reference (last {drift})", "Live share of numeric predictions in each"
                 f" output bin of the reference (recording rule, {DRIFT_WINDOW}) next to the reference's share"
                 " of that bin; bins are labelled 00, 01, ... from the lowest predicted values." + FOR_REGRESSORS,
                 "percentunit",
                 [target(f"{OUTPUT_DRIFT.share}{SEL}", by_version + " bin {{bin}} live"),
                  target(f"{OUTPUT_DRIFT.reference_max}{SEL}", by_version + " bin {{bin}} reference")]),
        timeseries("Output bin shares over time", "Share of numeric predictions in each output bin per version"
                   " over the rate interval." + FOR_REGRESSORS, "percentunit",
                   [target(f"sum by ({BY}, bin) ({outputs})"
                           f" / on ({BY}) group_left () {positive(f'sum by ({BY}) ({outputs})')}",
                           by_version + " bin {{bin}}")], stack=True),
        heatmap("Score distribution", "Predictions per confidence-score bucket (0.1 wide) over time, all"
                " selected versions. Empty for models that report no scores (regression models).",
                f"sum by (le) ({rate(score, SEL, 'increase')})"),
        timeseries("Score p10 / median", "Median and 10th percentile of the confidence score per version: a"
                   " falling score often comes before falling accuracy. Empty for models that report no scores"
                   " (regression models).", "percentunit",
                   [target(quantile(q, score, SEL), f"{by_version} p{int(q * 100)}") for q in (0.1, 0.5)]),
        row("Accuracy from feedback"),
        timeseries("Live accuracy vs baseline",
                   f"Share of feedback marked correct ({ACCURACY_WINDOW} window, recording rule"
                   f" {ACCURACY}) against the reference accuracy; no line (not NaN) for a version"
                   " without feedback in the window. Regression models: see Live MAE vs reference.",
                   "percentunit",
                   [target(f"{ACCURACY}{SEL}", by_version + " live"),
                    target(f"{REFERENCE_ACCURACY_MAX}{SEL}", by_version + " baseline")],
                   no_value="No feedback in the window"),
        timeseries("Feedback by outcome", "Ground-truth feedback per second by outcome (correct / incorrect)."
                   " Regression feedback is an absolute error, not an outcome: see Live MAE vs reference.",
                   "reqps", [target(f"sum by ({BY}, outcome) ({rate(FEEDBACK_TOTAL, SEL)})",
                                    by_version + " {{outcome}}")], stack=True),
        timeseries("Live MAE vs reference", f"Mean absolute error from feedback ({ACCURACY_WINDOW} window,"
                   f" recording rule {ABSOLUTE_ERROR_MEAN}) against the reference's mean absolute error;"
                   " no line for a version without feedback in the window." + FOR_REGRESSORS, "short",
                   [target(f"{ABSOLUTE_ERROR_MEAN}{SEL}", by_version + " live"),
                    target(f"{REFERENCE_ABSOLUTE_ERROR_MAX}{SEL}", by_version + " reference")],
                   no_value="No feedback in the window"),
        timeseries("Absolute error p50 / p90", "Median and 90th percentile of the absolute error of each"
                   f" feedback ({FEEDBACK_ABSOLUTE_ERROR_BUCKET}, 1-2-5 buckets) per version." + FOR_REGRESSORS,
                   "short", [target(quantile(q, FEEDBACK_ABSOLUTE_ERROR_BUCKET, SEL), f"{by_version} p{int(q * 100)}")
                             for q in (0.5, 0.9)]),
        row("LLM usage and streaming"),
        timeseries("Time to first chunk p50 / p95", "Streamed predictions (GenAI answers sent chunk by chunk):"
                   " time from the request's start to its first non-empty body chunk, per version, from"
                   f" {TIME_TO_FIRST_CHUNK_BUCKET} summed by le; the full duration is the prediction latency."
                   " Empty for models that do not stream.", "s",
                   [target(quantile(q, TIME_TO_FIRST_CHUNK_BUCKET, SEL), f"{by_version} p{int(q * 100)}",
                           exemplar=True) for q in (0.5, 0.95)], w=8),
        timeseries("LLM tokens / s", "Tokens per second per version by direction (input / output), from"
                   " monitor.observe(tokens_in=, tokens_out=), inside a stream too. Empty for models that report"
                   " no tokens.", "short",
                   [target(f"sum by ({BY}, direction) ({rate(TOKENS_TOTAL, SEL)})",
                           by_version + " {{direction}}")], w=8),
        timeseries("LLM cost per hour", "Cost per hour in the currency the app reports (monitor.observe(cost=))."
                   " Empty for models that report no cost.", "short",
                   [target(f"sum by ({BY}) ({rate(COST_TOTAL, SEL)}) * 3600", by_version)], w=8),
    ]
    return dashboard("mlmonitor-quality", "mlmonitor / Model quality and drift",
                     "Feature and prediction drift (PSI), class shares or the output distribution (regression),"
                     " scores, accuracy or mean absolute error from feedback, missing and unknown features, LLM"
                     " tokens and cost, time to first chunk of streamed answers.", panels)


def canary() -> dict[str, Any]:
    by = f"{JOB}, {MODEL_NAME}"
    drift = _span(DRIFT_WINDOW)
    a_b = (("A", VERSION_A), ("B", VERSION_B))
    latency = PREDICTION_DURATION_BUCKET
    pred = {v: f"sum by ({by}) ({rate(PREDICTIONS_TOTAL, s)})" for v, s in a_b}
    p99 = {v: quantile(0.99, latency, s, by=by) for v, s in a_b}
    errors = {v: error_ratio(s, SERVER_ERRORS, by=by) for v, s in a_b}
    accuracy = {v: f"{ACCURACY}{s}" for v, s in a_b}
    shares = {v: f"{CLASS_DRIFT.share}{s}" for v, s in a_b}
    name = {"A": "A $version_a", "B": "B $version_b"}
    # the comparisons need two different versions: with A = B (a model with one version) they would
    # show share 0.5 and deltas 0; the guard leaves them empty and noValue says why
    two = (f'count(count by ({MODEL_VERSION}) ({MODEL_INFO}{{{MODEL},'
           f' {MODEL_VERSION}=~"$version_a|$version_b"}})) > 1')

    def compared(expr: str) -> str:
        return f"({expr}) and on () ({two})"

    both = f"{pred['A']} + on ({by}) {pred['B']}"
    pick = "Pick two different versions (A, B)"
    why = " Empty unless A and B are two different versions served now."
    panels = [
        row("B minus A"),
        stat("Traffic share of B", "Share of the two versions' predictions served by version B." + why,
             "percentunit",
             compared(f"{pred['B']} / on ({by}) {positive(both)}"),
             w=6, no_value=pick),
        stat("p99 latency delta (B - A)", "p99 prediction latency of B minus that of A; above 0: B is slower."
             + why, "s", compared(f"{p99['B']} - on ({by}) {p99['A']}"), w=6, no_value=pick),
        stat("Server error ratio delta (B - A)", "Server error ratio of B minus that of A (invalid input"
             " excluded); above 0: B fails more." + why, "percentunit",
             compared(f"({errors['B']}) - on ({by}) ({errors['A']})"),
             steps=[(None, "green"), (0.01, "red")], w=6, no_value=pick),
        stat("Accuracy delta (B - A)",
             f"Accuracy from feedback ({ACCURACY_WINDOW} window) of B minus that of A; below 0: B is"
             " less accurate. Empty unless A and B are two different versions, both with feedback in the"
             " window.", "percentunit", compared(f"{accuracy['B']} - on ({by}) {accuracy['A']}"),
             steps=[(None, "red"), (-0.02, "green")], w=6, no_value="Needs two versions with feedback"),
        row("Side by side"),
        timeseries("Predictions / s, A vs B", "Predictions per second of each version.", "reqps",
                   [target(pred[v], name[v]) for v, _ in a_b]),
        timeseries("Prediction latency p50 / p99, A vs B", "Quantiles of the prediction handler's time per"
                   " version from histogram buckets summed by le.", "s",
                   [target(quantile(q, latency, s, by=by), f"{name[v]} p{int(q * 100)}", exemplar=True)
                    for v, s in a_b for q in (0.5, 0.99)]),
        timeseries("Server error ratio, A vs B", "Share of predictions with a server error per version"
                   " (invalid input excluded).", "percentunit", [target(errors[v], name[v]) for v, _ in a_b]),
        timeseries("Invalid input ratio, A vs B", "Share of predictions refused as invalid input per version.",
                   "percentunit", [target(error_ratio(s, INVALID, by=by), name[v]) for v, s in a_b]),
        bargauge(f"Predicted class shares, A vs B (last {drift})", "Live share of each predicted class per version"
                 f" (recording rule, {DRIFT_WINDOW})." + FOR_CLASSIFIERS, "percentunit",
                 [target(shares[v], name[v] + " {{class}}") for v, _ in a_b]),
        bargauge(f"Predicted class share delta (B - A, last {drift})", "Share of each class under B minus under A;"
                 " large bars: the versions disagree on the class mix." + why + FOR_CLASSIFIERS, "percentunit",
                 [target(compared(f"{shares['B']} - on ({by}, class) {shares['A']}"), "{{class}}")],
                 no_value=pick),
        timeseries("Accuracy from feedback, A vs B",
                   f"Share of feedback marked correct per version ({ACCURACY_WINDOW} window)"
                   " with each version's reference accuracy; no line for a version without feedback."
                   " Regression models: see Live MAE, A vs B.",
                   "percentunit",
                   [target(accuracy[v], name[v]) for v, _ in a_b]
                   + [target(f"{REFERENCE_ACCURACY_MAX}{s}", name[v] + " baseline")
                      for v, s in a_b], no_value="No feedback in the window"),
        timeseries("Score median, A vs B", "Median confidence score per version. Empty for models that report"
                   " no scores (regression models).", "percentunit",
                   [target(quantile(0.5, PREDICTION_SCORE_BUCKET, s, by=by), name[v]) for v, s in a_b]),
        row("Regression outputs and errors"),
        bargauge(f"Output distribution, A vs B (last {drift})", "Live share of numeric predictions in each output"
                 f" bin of the reference per version (recording rule, {DRIFT_WINDOW}), with the reference's"
                 " shares." + FOR_REGRESSORS, "percentunit",
                 [target(f"{OUTPUT_DRIFT.share}{s}", name[v] + " bin {{bin}}") for v, s in a_b]
                 + [target(f"{OUTPUT_DRIFT.reference_max}{VERSION_A}", "reference bin {{bin}}")]),
        timeseries("Output drift (PSI), A vs B", "PSI of each version's output bin shares against the reference"
                   f" ({DRIFT_WINDOW} window, recording rule {OUTPUT_DRIFT.psi}); the lines mark 0.1 and 0.2."
                   + FOR_REGRESSORS, "none", [target(f"{OUTPUT_DRIFT.psi}{s}", name[v]) for v, s in a_b],
                   steps=PSI_STEPS, threshold_lines=True),
        timeseries("Live MAE, A vs B", f"Mean absolute error from feedback per version ({ACCURACY_WINDOW}"
                   " window) with each version's reference mean absolute error; no line for a version without"
                   " feedback." + FOR_REGRESSORS, "short",
                   [target(f"{ABSOLUTE_ERROR_MEAN}{s}", name[v]) for v, s in a_b]
                   + [target(f"{REFERENCE_ABSOLUTE_ERROR_MAX}{s}", name[v] + " reference") for v, s in a_b],
                   no_value="No feedback in the window"),
        timeseries("Feature mismatches, A vs B", MISMATCH_TEXT, "short",
                   [t for v, s in a_b for t in mismatches(s, name[v], by=by)]),
    ]
    return dashboard("mlmonitor-canary", "mlmonitor / Version comparison (canary)",
                     "Two model versions side by side: traffic, latency, errors, class mix and accuracy (or output"
                     " distribution and mean absolute error for regression models), with B - A deltas.", panels,
                     canary=True)


DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "mlmonitor-overview.json": overview, "mlmonitor-quality.json": quality,
    "mlmonitor-canary.json": canary}


#: where a dashboard query reads series: each label-matcher list, and label_values() of a bare metric
_READS = re.compile(r"\{|(?<=label_values\()([A-Za-z_:][A-Za-z0-9_:]*)(?=, )")
#: the dashboard fields that hold PromQL (panel targets, variable queries)
_QUERY_KEYS = {"expr", "query", "definition"}


def select(dashboard: Any, selector: str) -> Any:
    """``dashboard`` (JSON data) with ``selector``'s matchers first in every read of a series of its
    queries, as ``alerts render --selector`` puts them in every read of the rules."""
    def read(found: re.Match[str]) -> str:
        return f"{found[1]}{{{selector}}}" if found[1] else f"{{{selector}, "

    if isinstance(dashboard, dict):
        return {k: _READS.sub(read, v) if k in _QUERY_KEYS and isinstance(v, str) else select(v, selector)
                for k, v in dashboard.items()}
    if isinstance(dashboard, list):
        return [select(item, selector) for item in dashboard]
    return dashboard


def render(selector: str = "") -> dict[str, str]:
    """File name -> JSON text, exactly as committed; with ``selector`` (``alerts render``'s
    ``--selector``, braces optional) first in every read of a series, as the mixin's ``_config``."""
    selector = selector.strip()
    if selector.startswith("{") and selector.endswith("}"):
        selector = selector[1:-1].strip()
    parse_selector(selector)  # ValueError in one line, as alerts render says it
    return {name: json.dumps(select(build(), selector) if selector else build(), indent=2) + "\n"
            for name, build in DASHBOARDS.items()}


def write(out_dir: str, selector: str = "") -> list[str]:
    """Write the three JSON files into ``out_dir``; return their paths."""
    return outputs.write_texts(render(selector), out_dir)


def stale(out_dir: str, selector: str = "") -> list[str]:
    """Names of the files in ``out_dir`` that are missing or differ from :func:`render`."""
    return outputs.stale_texts(render(selector), out_dir)
