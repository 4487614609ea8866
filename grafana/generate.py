"""Builds mlmonitor's three Grafana dashboards (grafana/dashboards/*.json) from plain dicts.

    python grafana/generate.py           # write the JSON files
    python grafana/generate.py --check   # exit 1 if a committed file differs from the output

Plain dicts rather than grafana-foundation-sdk: three dashboards need a dozen small helpers,
and no extra dependency pinned to one Grafana line. Target: Grafana 10.4 and later (schema 39).
Every query selects through the ``datasource`` variable (no datasource uid and no ``__inputs``
placeholder, which file provisioning would leave unresolved), uses ``$__rate_interval`` in every
range, and reads the recording rules of ``alerts/`` where one exists (PSI, class shares,
accuracy from feedback) and raw metrics otherwise, so panels follow the dashboard's time range.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

OUT = Path(__file__).resolve().parent / "dashboards"
GRAFANA_VERSION = "10.4.0"
SCHEMA_VERSION = 39
TAGS = ["mlmonitor"]
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "[$__rate_interval]"
BY = "job, model_name, model_version"
JOB = 'job=~"$job"'
JOB_SEL = "{" + JOB + "}"
MODEL = f'{JOB}, model_name=~"$model_name"'
SEL = f'{{{MODEL}, model_version=~"$model_version"}}'
VERSION_A = f'{{{MODEL}, model_version="$version_a"}}'
VERSION_B = f'{{{MODEL}, model_version="$version_b"}}'
PSI_STEPS = [(None, "green"), (0.1, "yellow"), (0.2, "red")]

Panel = Dict[str, Any]


# ---------------------------------------------------------------- PromQL pieces

def rate(metric: str, sel: str, fn: str = "rate") -> str:
    return f"{fn}({metric}{sel}{RI})"


def with_label(sel: str, matcher: str) -> str:
    """``sel`` with one more matcher."""
    return sel[:-1] + f", {matcher}}}"


def quantile(q: float, metric: str, sel: str, by: str = BY) -> str:
    """The q-quantile of a histogram: buckets summed by ``le`` first, never averaged."""
    return f"histogram_quantile({q}, sum by (le, {by}) ({rate(metric + '_bucket', sel)}))"


def error_ratio(sel: str, matcher: str, by: str = BY) -> str:
    """Share of predictions with errors matching ``matcher``; 0 (not a gap) when there were none."""
    total = f"sum by ({by}) ({rate('mlmonitor_predictions_total', sel)})"
    errors = f"sum by ({by}) ({rate('mlmonitor_prediction_errors_total', with_label(sel, matcher))})"
    return f"({errors} or 0 * {total}) / {total}"


SERVER_ERRORS = 'error_type!="invalid_input"'
INVALID_INPUT = 'error_type="invalid_input"'


# ---------------------------------------------------------------- panels

def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
           fmt: str = "time_series", exemplar: bool = False) -> Dict[str, Any]:
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
            "range": not instant, "instant": instant, "format": fmt, "exemplar": exemplar,
            "editorMode": "code"}


def thresholds(steps: Sequence[tuple] = ((None, "green"),)) -> Dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def panel(kind: str, title: str, description: str, unit: str, targets: List[Dict[str, Any]],
          w: int, h: int = 8, steps: Sequence[tuple] = ((None, "green"),),
          options: Optional[Dict[str, Any]] = None, custom: Optional[Dict[str, Any]] = None,
          **extra: Any) -> Panel:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    defaults: Dict[str, Any] = {"unit": unit, "thresholds": thresholds(steps),
                                "color": {"mode": "palette-classic" if kind == "timeseries" else "thresholds"}}
    if custom:
        defaults["custom"] = custom
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": 0, "y": 0}, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options or {}, **extra}


def timeseries(title: str, description: str, unit: str, targets: List[Dict[str, Any]], w: int = 12,
               stack: bool = False, steps: Sequence[tuple] = ((None, "green"),),
               threshold_lines: bool = False) -> Panel:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 30 if stack else 10,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"},
              "thresholdsStyle": {"mode": "line+area" if threshold_lines else "off"}}
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return panel("timeseries", title, description, unit, targets, w, steps=steps, options=options,
                 custom=custom)


def stat(title: str, description: str, unit: str, expr: str, legend: str = "",
         steps: Sequence[tuple] = ((None, "green"),), w: int = 4) -> Panel:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
               "orientation": "auto"}
    return panel("stat", title, description, unit, [target(expr, legend)], w, h=4, steps=steps,
                 options=options)


def table(title: str, description: str, unit: str, expr: str, w: int, h: int = 8,
          steps: Sequence[tuple] = ((None, "green"),), color_cells: bool = False,
          rename_value: str = "Value") -> Panel:
    custom = {"align": "auto", "cellOptions": {"type": "color-background" if color_cells else "auto"}}
    organize = {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True},
                                              "renameByName": {"Value": rename_value}}}
    return panel("table", title, description, unit, [target(expr, instant=True, fmt="table")], w, h,
                 steps=steps, custom=custom, options={"showHeader": True, "cellHeight": "sm"},
                 transformations=[organize])


def bargauge(title: str, description: str, unit: str, targets: List[Dict[str, Any]], w: int = 12,
             h: int = 8) -> Panel:
    for t in targets:
        t.update(instant=True, range=False)
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
               "valueMode": "color", "namePlacement": "auto", "sizing": "auto"}
    result = panel("bargauge", title, description, unit, targets, w, h, options=options)
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


def layout(panels: List[Panel]) -> List[Panel]:
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

def datasource_var() -> Dict[str, Any]:
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "multi": False, "includeAll": False,
            "options": []}


def query_var(name: str, label: str, query: str, multi: bool = True, sort: int = 1) -> Dict[str, Any]:
    return {"type": "query", "name": name, "label": label, "datasource": DS, "definition": query,
            "query": {"query": query, "refId": f"PrometheusVariableQueryEditor-{name}"},
            "current": {}, "hide": 0, "refresh": 2, "regex": "", "sort": sort, "multi": multi,
            "includeAll": multi, "allValue": ".+" if multi else None, "options": []}


def variables(canary: bool = False) -> List[Dict[str, Any]]:
    info = "mlmonitor_model_info"
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


def dashboard(uid: str, title: str, description: str, panels: List[Panel], canary: bool = False) -> Dict[str, Any]:
    kinds = sorted({p["type"] for p in panels if p["type"] != "row"})
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

def overview() -> Dict[str, Any]:
    pred = rate("mlmonitor_predictions_total", SEL)
    by_version = "{{model_name}} {{model_version}}"
    latency = "mlmonitor_prediction_duration_seconds"
    panels = [
        row("At a glance"),
        stat("Predictions / s", "Calls of prediction endpoints per second, failed ones included, summed over the"
             " selected jobs, models and versions.", "reqps", f"sum({pred})"),
        stat("Server error ratio", "Share of predictions that failed with a server error (every error_type but"
             " invalid_input). Invalid input is the client's fault and is shown apart.", "percentunit",
             f"(sum({rate('mlmonitor_prediction_errors_total', with_label(SEL, SERVER_ERRORS))}) or 0 * sum({pred}))"
             f" / sum({pred})",
             steps=[(None, "green"), (0.01, "red")]),
        stat("Invalid input ratio", "Share of predictions refused as invalid input (4xx, error_type"
             " invalid_input): a client or schema problem, not a server fault.", "percentunit",
             f"(sum({rate('mlmonitor_prediction_errors_total', with_label(SEL, INVALID_INPUT))}) or 0 * sum({pred}))"
             f" / sum({pred})", steps=[(None, "green"), (0.05, "orange")]),
        stat("p99 prediction latency", "99th percentile of the prediction handler's time over all selected"
             " versions, from the summed histogram buckets.", "s",
             f"histogram_quantile(0.99, sum by (le) ({rate(latency + '_bucket', SEL)}))",
             steps=[(None, "green"), (0.5, "red")]),
        stat("Versions served", "Number of model versions that the selected processes serve now"
             " (mlmonitor_model_info).", "none", f"count(max by ({BY}) (mlmonitor_model_info{SEL}))"),
        stat("Firing alerts", "Alerts firing in Prometheus now for the selected jobs (ALERTS series; load the"
             " rules in alerts/).", "none", f'count(ALERTS{{alertstate="firing", {JOB}}}) or vector(0)',
             steps=[(None, "green"), (1, "red")]),
        row("Traffic and errors"),
        timeseries("Requests by route", "Every HTTP request the middleware saw, per route template"
                   " (unmatched paths are <unmatched>).", "reqps",
                   [target(f"sum by (job, route) ({rate('mlmonitor_http_requests_total', JOB_SEL)})",
                           "{{route}}")]),
        timeseries("Responses by status code", "HTTP responses per second by status code, all routes.", "reqps",
                   [target(f"sum by (job, status) ({rate('mlmonitor_http_requests_total', JOB_SEL)})",
                           "{{status}}")], stack=True),
        timeseries("Predictions by version", "Predictions per second per model version: the traffic split of"
                   " a canary or A/B rollout.", "reqps",
                   [target(f"sum by ({BY}) ({pred})", by_version)], w=8),
        timeseries("Error ratio: server errors vs invalid input", "Per version: share of predictions with a"
                   " server error (exception or 5xx) and, apart, share refused as invalid input (4xx). Not"
                   " 'status != 200'.", "percentunit",
                   [target(error_ratio(SEL, SERVER_ERRORS), by_version + " server errors"),
                    target(error_ratio(SEL, INVALID_INPUT), by_version + " invalid input")], w=8),
        timeseries("Errors by type", "Failed predictions per second by error_type: the exception class,"
                   " http_5xx, or invalid_input.", "reqps",
                   [target(f"sum by ({BY}, error_type) ({rate('mlmonitor_prediction_errors_total', SEL)})",
                           by_version + " {{error_type}}")], w=8, stack=True),
        row("Latency"),
        timeseries("Prediction latency p50 / p95 / p99", "Quantiles of the prediction handler's time per"
                   " version, from histogram buckets summed by le (never an average of percentiles)."
                   " Exemplars link to traces in single-process mode.", "s",
                   [target(quantile(q, latency, SEL), f"{by_version} p{int(q * 100)}", exemplar=True)
                    for q in (0.5, 0.95, 0.99)]),
        timeseries("HTTP latency p50 / p99 by route", "Wall time until the response body was closed, per"
                   " route, from the HTTP histogram.", "s",
                   [target(quantile(q, "mlmonitor_http_request_duration_seconds", JOB_SEL, by="job, route"),
                           f"{{{{route}}}} p{int(q * 100)}", exemplar=True) for q in (0.5, 0.99)]),
        timeseries("Stage breakdown (mean time per stage)", "Mean time spent in each monitor.stage() block per"
                   " request, stacked: where a prediction's time goes.", "s",
                   [target(f"sum by ({BY}, stage) ({rate('mlmonitor_stage_duration_seconds_sum', SEL)})"
                           f" / sum by ({BY}, stage) ({rate('mlmonitor_stage_duration_seconds_count', SEL)})",
                           by_version + " {{stage}}")], stack=True),
        timeseries("Stage p95", "95th percentile of each stage's time per version.", "s",
                   [target(quantile(0.95, "mlmonitor_stage_duration_seconds", SEL, by=BY + ", stage"),
                           by_version + " {{stage}}", exemplar=True)]),
        row("Processes, versions and alerts"),
        timeseries("Requests in progress", "Requests being served now, per route, summed over workers.",
                   "short", [target(f"sum by (job, route) (mlmonitor_http_requests_in_progress{JOB_SEL})",
                                    "{{route}}")], w=8),
        timeseries("Process CPU per worker", "CPU time per second of each worker slot (1 = one core).",
                   "percentunit",
                   [target(f"sum by (job, instance, worker) ({rate('mlmonitor_process_cpu_seconds_total', JOB_SEL)})",
                           "{{instance}} worker {{worker}}")], w=8),
        timeseries("Process memory per worker", "Resident memory of each worker slot.", "bytes",
                   [target(f"max by (job, instance, worker) (mlmonitor_process_resident_memory_bytes{JOB_SEL})",
                           "{{instance}} worker {{worker}}")], w=8),
        table("Model versions served", "Which model versions each scrape target serves now"
              " (mlmonitor_model_info = 1).", "none",
              f"max by (job, instance, model_name, model_version) (mlmonitor_model_info{SEL})", w=8),
        table("Firing alerts", "Alerts firing in Prometheus now for the selected jobs, from the ALERTS series"
              " (the rules in alerts/).", "none", f'ALERTS{{alertstate="firing", {JOB}}}', w=16,
              rename_value="Firing"),
        timeseries("mlmonitor internal errors and dropped telemetry", "mlmonitor's own faults per component"
                   " (should stay 0) and spans or log lines dropped per signal, per rate interval.", "short",
                   [target(f"sum by (job, component) ({rate('mlmonitor_internal_errors_total', JOB_SEL, 'increase')})",
                           "internal errors {{component}}"),
                    target(f"sum by (job, signal) ({rate('mlmonitor_telemetry_dropped_total', JOB_SEL, 'increase')})",
                           "dropped {{signal}}")], w=8),
        timeseries("GPU utilization", "Busy share of each GPU (NVML). Empty without a GPU or nvidia-ml-py.",
                   "percentunit", [target(f"max by (job, instance, gpu) (mlmonitor_gpu_utilization_ratio{JOB_SEL})",
                                          "{{instance}} gpu {{gpu}}")], w=8),
        timeseries("GPU memory used", "GPU memory in use and total per GPU (NVML). Empty without a GPU or"
                   " nvidia-ml-py.", "bytes",
                   [target(f"max by (job, instance, gpu) (mlmonitor_gpu_memory_used_bytes{JOB_SEL})",
                           "{{instance}} gpu {{gpu}} used"),
                    target(f"max by (job, instance, gpu) (mlmonitor_gpu_memory_total_bytes{JOB_SEL})",
                           "{{instance}} gpu {{gpu}} total")], w=8),
    ]
    return dashboard("mlmonitor-overview", "mlmonitor / Model serving overview",
                     "Traffic, errors, latency, stages, processes and firing alerts per model version.", panels)


def quality() -> Dict[str, Any]:
    by_version = "{{model_name}} {{model_version}}"
    classes = rate("mlmonitor_predicted_class_total", SEL)
    missing = f"sum by ({BY}, feature) ({rate('mlmonitor_feature_missing_total', SEL)})"
    binned = f"sum by ({BY}, feature) ({rate('mlmonitor_feature_bin_total', SEL)})"
    psi = f"model_version_feature:mlmonitor_feature_bin:psi1h{SEL}"
    score = "mlmonitor_prediction_score"
    panels = [
        row("Drift"),
        table("Feature drift (PSI, last hour)", "Population stability index of each feature against the"
              " reference profile, from the recording rule model_version_feature:mlmonitor_feature_bin:psi1h."
              " Below 0.1: stable; 0.1-0.2: moderate shift; above 0.2: drifted.", "none", psi, w=10,
              steps=PSI_STEPS, color_cells=True, rename_value="PSI"),
        timeseries("Feature drift (PSI) over time", "PSI per feature and version (1h window, recording rule);"
                   " the lines mark 0.1 and 0.2.", "none", [target(psi, by_version + " {{feature}}")], w=14,
                   steps=PSI_STEPS, threshold_lines=True),
        timeseries("Prediction drift (PSI of predicted classes)", "PSI of the predicted-class shares against"
                   " the reference's class shares (1h window, recording rule"
                   " model_version:mlmonitor_predicted_class:psi1h).", "none",
                   [target(f"model_version:mlmonitor_predicted_class:psi1h{SEL}", by_version)],
                   steps=PSI_STEPS, threshold_lines=True),
        timeseries("Missing values share per feature", "Share of observed values of each feature that were"
                   " missing or non-numeric; 0 while the feature has traffic and nothing is missing.",
                   "percentunit",
                   [target(f"({missing} or 0 * {binned}) / (({missing} or 0 * {binned}) + ({binned} or 0 * {missing}))",
                           by_version + " {{feature}}")]),
        row("Predictions"),
        bargauge("Predicted class shares vs reference (last hour)", "Live share of each predicted class"
                 " (recording rule, 1h) next to the reference profile's share of that class.", "percentunit",
                 [target(f"model_version_class:mlmonitor_predicted_class:ratio_rate1h{SEL}",
                         by_version + " {{class}} live"),
                  target(f"model_version_class:mlmonitor_reference_class_ratio:max{SEL}",
                         by_version + " {{class}} reference")]),
        timeseries("Predicted class shares over time", "Share of each predicted class per version over the"
                   " rate interval.", "percentunit",
                   [target(f"sum by ({BY}, class) ({classes}) / on ({BY}) group_left () sum by ({BY}) ({classes})",
                           by_version + " {{class}}")], stack=True),
        heatmap("Score distribution", "Predictions per confidence-score bucket (0.1 wide) over time, all"
                " selected versions.", f"sum by (le) ({rate(score + '_bucket', SEL, 'increase')})"),
        timeseries("Score p10 / median", "Median and 10th percentile of the confidence score per version: a"
                   " falling score often comes before falling accuracy.", "percentunit",
                   [target(quantile(q, score, SEL), f"{by_version} p{int(q * 100)}") for q in (0.1, 0.5)]),
        row("Accuracy from feedback"),
        timeseries("Live accuracy vs baseline", "Share of feedback marked correct (1h window, recording rule"
                   " model_version:mlmonitor_feedback_correct:ratio_rate1h) against the reference accuracy.",
                   "percentunit",
                   [target(f"model_version:mlmonitor_feedback_correct:ratio_rate1h{SEL}", by_version + " live"),
                    target(f"model_version:mlmonitor_reference_accuracy:max{SEL}", by_version + " baseline")]),
        timeseries("Feedback by outcome", "Ground-truth feedback per second by outcome (correct / incorrect).",
                   "reqps", [target(f"sum by ({BY}, outcome) ({rate('mlmonitor_feedback_total', SEL)})",
                                    by_version + " {{outcome}}")], stack=True),
        row("LLM usage"),
        timeseries("LLM tokens", "Tokens per second by direction (input / output), from monitor.observe(tokens_in=,"
                   " tokens_out=). Empty for models that report no tokens.", "short",
                   [target(f"sum by ({BY}, direction) ({rate('mlmonitor_tokens_total', SEL)})",
                           by_version + " {{direction}}")]),
        timeseries("LLM cost per hour", "Cost per hour in the currency the app reports (monitor.observe(cost=))."
                   " Empty for models that report no cost.", "short",
                   [target(f"sum by ({BY}) ({rate('mlmonitor_cost_total', SEL)}) * 3600", by_version)]),
    ]
    return dashboard("mlmonitor-quality", "mlmonitor / Model quality and drift",
                     "Feature and prediction drift (PSI), class shares, scores, accuracy from feedback,"
                     " missing values, LLM tokens and cost.", panels)


def canary() -> Dict[str, Any]:
    by = "job, model_name"
    a_b = (("A", VERSION_A), ("B", VERSION_B))
    latency = "mlmonitor_prediction_duration_seconds"
    pred = {v: f"sum by ({by}) ({rate('mlmonitor_predictions_total', s)})" for v, s in a_b}
    p99 = {v: quantile(0.99, latency, s, by=by) for v, s in a_b}
    errors = {v: error_ratio(s, SERVER_ERRORS, by=by) for v, s in a_b}
    accuracy = {v: f"model_version:mlmonitor_feedback_correct:ratio_rate1h{s}" for v, s in a_b}
    shares = {v: f"model_version_class:mlmonitor_predicted_class:ratio_rate1h{s}" for v, s in a_b}
    name = {"A": "A $version_a", "B": "B $version_b"}
    panels = [
        row("B minus A"),
        stat("Traffic share of B", "Share of the two versions' predictions served by version B.",
             "percentunit", f"{pred['B']} / on ({by}) ({pred['A']} + on ({by}) {pred['B']})", w=6),
        stat("p99 latency delta (B - A)", "p99 prediction latency of B minus that of A; above 0: B is slower.",
             "s", f"{p99['B']} - on ({by}) {p99['A']}", w=6),
        stat("Server error ratio delta (B - A)", "Server error ratio of B minus that of A (invalid input"
             " excluded); above 0: B fails more.", "percentunit", f"({errors['B']}) - on ({by}) ({errors['A']})",
             steps=[(None, "green"), (0.01, "red")], w=6),
        stat("Accuracy delta (B - A)", "Accuracy from feedback (1h window) of B minus that of A; below 0: B is"
             " less accurate.", "percentunit", f"{accuracy['B']} - on ({by}) {accuracy['A']}",
             steps=[(None, "red"), (-0.02, "green")], w=6),
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
                   "percentunit", [target(error_ratio(s, INVALID_INPUT, by=by), name[v]) for v, s in a_b]),
        bargauge("Predicted class shares, A vs B (last hour)", "Live share of each predicted class per version"
                 " (recording rule, 1h).", "percentunit",
                 [target(shares[v], name[v] + " {{class}}") for v, _ in a_b]),
        bargauge("Predicted class share delta (B - A, last hour)", "Share of each class under B minus under A;"
                 " large bars: the versions disagree on the class mix.", "percentunit",
                 [target(f"{shares['B']} - on ({by}, class) {shares['A']}", "{{class}}")]),
        timeseries("Accuracy from feedback, A vs B", "Share of feedback marked correct per version (1h window)"
                   " with each version's reference accuracy.", "percentunit",
                   [target(accuracy[v], name[v]) for v, _ in a_b]
                   + [target(f"model_version:mlmonitor_reference_accuracy:max{s}", name[v] + " baseline")
                      for v, s in a_b]),
        timeseries("Score median, A vs B", "Median confidence score per version.", "percentunit",
                   [target(quantile(0.5, "mlmonitor_prediction_score", s, by=by), name[v]) for v, s in a_b]),
    ]
    return dashboard("mlmonitor-canary", "mlmonitor / Version comparison (canary)",
                     "Two model versions side by side: traffic, latency, errors, class mix and accuracy, with"
                     " B - A deltas.", panels, canary=True)


DASHBOARDS = {"mlmonitor-overview.json": overview, "mlmonitor-quality.json": quality,
              "mlmonitor-canary.json": canary}


def render() -> Dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
