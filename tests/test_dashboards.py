"""Grafana dashboards (grafana/): lint of the committed JSON, and every panel proven on a real Prometheus.

There is no Grafana server here. What Grafana would do with a query is reproduced instead: its
variables are substituted the way Grafana formats them (multi-value -> ``(a|b)``), and the query runs
through Prometheus's HTTP API as an instant query at "now" (range panels included: a range query
is the same expression at many instants).
"""
from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import promql_parser
import pytest
import yaml

from conftest import require_binary
from helpers.gunicorn_proc import REPO, GunicornProcess
from helpers.promql_lint import unguarded_divisions
from helpers.promstack import Prometheus, query, wait_for
from mlmonitor.contract import (HTTP_REQUEST_DURATION_BUCKET, PREDICTION_DURATION_BUCKET, STAGE_DURATION_BUCKET,
                                TIME_TO_FIRST_CHUNK_BUCKET)
from mlmonitor.tools import cli, dashboards
from mlmonitor.tools.rules import Thresholds, render_files

DASHBOARD_DIR = REPO / "grafana" / "dashboards"
FILES = sorted(DASHBOARD_DIR.glob("*.json"))
DS = {"type": "prometheus", "uid": "${datasource}"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
#: the latency histograms that carry exemplars (trace ids): their time series panels ask for them
LATENCY_BUCKETS = (HTTP_REQUEST_DURATION_BUCKET, PREDICTION_DURATION_BUCKET, STAGE_DURATION_BUCKET,
                   TIME_TO_FIRST_CHUNK_BUCKET)
JOB = "mlmonitor_dashboards"
#: values as Grafana would substitute them (multi-value variables become a regex group)
LINT_VALUES = {"job": JOB, "model_name": "(iris)", "model_version": "(v1|v2)", "version_a": "v1",
               "version_b": "v2", "__rate_interval": "1m"}
#: the only panels allowed to return no series: the example app has no GPU (its textgen model, streamed
#: by the load generator, fills the LLM and time-to-first-chunk panels)
ALLOWED_EMPTY = {("mlmonitor-overview", "GPU utilization"), ("mlmonitor-overview", "GPU memory used")}
#: the example's streamed text model (POST /generate)
TEXTGEN = "textgen"
DRIFTED = "petal_length_cm"
#: the example's regressor: its feature drifted, one column renamed in 10% of its requests
REGRESSOR, REGRESSOR_DRIFTED = "diabetes", "bmi"


def load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def panels(dash: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def exprs(dash: Dict[str, Any]) -> Iterator[Tuple[Dict[str, Any], Dict[str, Any]]]:
    for p in panels(dash):
        for t in p["targets"]:
            yield p, t


def substitute(text: str, values: Dict[str, str]) -> str:
    """Grafana's ``$name`` and ``${name}``; an unknown variable is an error, not left in."""
    def repl(match: "re.Match[str]") -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown variable ${name} in {text!r}")
        return values[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


def variable_query(var: Dict[str, Any]) -> Tuple[str, str]:
    """``label_values(selector, label)`` -> (selector, label)."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
    assert match, f"variable {var['name']}: not a label_values(selector, label) query"
    assert var["definition"] == var["query"]["query"]
    return match.group(1), match.group(2)


def test_generator_output_is_committed():
    rendered = dashboards.render()
    assert sorted(rendered) == [f.name for f in FILES]
    for path in FILES:
        assert path.read_text() == rendered[path.name], (
            f"{path.name} is stale: run mlmonitor dashboards render --out-dir grafana/dashboards")
    assert cli.main(["dashboards", "render", "--check", str(DASHBOARD_DIR)]) == 0
    check = subprocess.run([sys.executable, str(REPO / "grafana" / "generate.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_render_writes_the_three_files_and_check_names_a_stale_one(tmp_path, capsys):
    assert cli.main(["dashboards", "render", "--out-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f.name for f in FILES]
    assert cli.main(["dashboards", "render", "--check", str(tmp_path)]) == 0
    (tmp_path / "mlmonitor-quality.json").write_text("{}\n")
    capsys.readouterr()
    assert cli.main(["dashboards", "render", "--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "mlmonitor-quality.json" in err and "mlmonitor-overview.json" not in err


def test_three_dashboards_with_stable_uids_linked_by_tag():
    dashes = {d["uid"]: d for d in map(load, FILES)}
    assert set(dashes) == {"mlmonitor-overview", "mlmonitor-quality", "mlmonitor-canary"}
    for dash in dashes.values():
        assert "mlmonitor" in dash["tags"]
        assert dash["title"] and dash["description"]
        (link,) = dash["links"]
        assert link["type"] == "dashboards" and link["tags"] == ["mlmonitor"]
        assert link["includeVars"] and link["keepTime"]
        assert dash["__inputs"] == []  # an unresolved ${DS_...} would break file provisioning
        required = {(r["type"], r["id"]) for r in dash["__requires"]}
        assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
        assert {("panel", p["type"]) for p in panels(dash)} <= required


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_variables(path):
    dash = load(path)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus" and ds["current"] == {}
    versions = ["version_a", "version_b"] if dash["uid"] == "mlmonitor-canary" else ["model_version"]
    assert list(variables) == ["datasource", "job", "model_name", *versions]
    for name in ["job", "model_name", *versions]:
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DS
        selector, label = variable_query(var)
        assert label == name.replace("version_a", "model_version").replace("version_b", "model_version")
        promql_parser.parse(substitute(selector, LINT_VALUES))
    if dash["uid"] == "mlmonitor-canary":  # two different versions selected by default
        assert (variables["version_a"]["sort"], variables["version_b"]["sort"]) == (1, 2)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_panel_has_ids_units_descriptions_and_the_datasource_variable(path):
    dash = load(path)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert p["description"].strip(), p["title"]
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]
        assert p["datasource"] == DS, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS, p["title"]
    text = path.read_text()
    assert "${DS_" not in text
    uids = set(re.findall(r'"uid": "([^"]*)"', text)) - {dash["uid"], "-- Grafana --"}
    assert uids == {"${datasource}"}, "a datasource uid is hard-coded"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_grid_positions_fit_24_columns_without_overlap(path):
    taken: Dict[Tuple[int, int], str] = {}
    for p in load(path)["panels"]:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = p["title"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_promql_parses_and_rates_only_counters_over_the_rate_interval(path):
    for p, t in exprs(load(path)):
        expr = t["expr"]
        where = f"{p['title']!r}: {expr}"
        ranges = re.findall(r"\[([^\]]*)\]", expr)
        assert all(r == "$__rate_interval" for r in ranges), f"range other than $__rate_interval in {where}"
        ast = promql_parser.parse(substitute(expr, LINT_VALUES))
        problems: List[str] = []

        def visit(node: Any) -> None:
            if isinstance(node, promql_parser.Call):
                name = node.func.name
                if name in ("rate", "increase", "irate"):
                    metric = node.args[0].vector_selector.name or ""
                    if not metric.endswith(COUNTER_SUFFIXES):
                        problems.append(f"{name}() on {metric!r}, not a counter")
                if name == "histogram_quantile":
                    inner = node.args[1]
                    if not (isinstance(inner, promql_parser.AggregateExpr) and str(inner.op) == "sum"
                            and inner.modifier.type == promql_parser.AggModifierType.By
                            and "le" in inner.modifier.labels):
                        problems.append("histogram_quantile() not over sum by (le, ...)")
            if isinstance(node, promql_parser.SubqueryExpr):
                problems.append("subquery")

        promql_parser.walk(ast, visit)
        assert not problems, f"{problems} in {where}"
        if any(name in expr for name in LATENCY_BUCKETS) and p["type"] == "timeseries":  # stats draw none
            assert t["exemplar"] is True, f"exemplars off on latency target of {p['title']!r}"


def test_error_ratios_split_server_errors_from_invalid_input():
    for dash in map(load, FILES):
        for p, t in exprs(dash):
            assert "status!=" not in t["expr"].replace(" ", ""), p["title"]
            if "mlmonitor_prediction_errors_total" in t["expr"] and "ratio" in p["title"].lower():
                assert 'error_type!="invalid_input"' in t["expr"] or 'error_type="invalid_input"' in t["expr"]


def test_no_panel_divides_without_guarding_zero():
    """0/0 is NaN, which Grafana draws as "NaN"; a divisor filtered ``> 0`` gives "No data" instead."""
    for dash in map(load, FILES):
        for p, t in exprs(dash):
            found = unguarded_divisions(substitute(t["expr"], LINT_VALUES))
            assert found == [], f"{dash['uid']} / {p['title']}: {found}"


def unfiltered_quantiles(expr: str) -> List[str]:
    """Each ``histogram_quantile`` in ``expr`` not filtered by a comparison (NaN compares false)."""
    filtered, every = set(), []

    def visit(node) -> None:
        if isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile":
            every.append(str(node))
        elif (isinstance(node, promql_parser.BinaryExpr) and str(node.op) in (">", ">=")
              and not (node.modifier and node.modifier.return_bool)):
            lhs = node.lhs
            while isinstance(lhs, promql_parser.ParenExpr):
                lhs = lhs.expr
            filtered.add(str(lhs))  # the parser's nodes are fresh objects: compare their text

    promql_parser.walk(promql_parser.parse(expr), visit)
    return [node for node in every if node not in filtered]


def test_every_quantile_is_filtered_so_an_idle_series_shows_nothing_not_nan():
    """histogram_quantile of an interval without observations is NaN, which Grafana draws as a series."""
    found = 0
    for dash in map(load, FILES):
        for p, t in exprs(dash):
            expr = substitute(t["expr"], LINT_VALUES)
            found += expr.count("histogram_quantile")
            assert unfiltered_quantiles(expr) == [], f"{dash['uid']} / {p['title']}"
    assert found >= 10


def test_descriptions_say_what_filters_each_panel():
    """HTTP panels are per route and ignore the model selection; the description says so."""
    for dash in map(load, FILES):
        for p in panels(dash):
            text = " ".join(t["expr"] for t in p["targets"])
            if "$version_a" in text:
                assert p["description"].endswith(dashboards.SCOPE_CANARY), p["title"]
            elif "$model_name" in text:
                assert p["description"].endswith(dashboards.SCOPE_MODEL), p["title"]
            elif "route" in text:
                assert p["description"].endswith(dashboards.SCOPE_ROUTE), p["title"]
            else:
                assert p["description"].endswith(dashboards.SCOPE_JOB), p["title"]
    overview = load(DASHBOARD_DIR / "mlmonitor-overview.json")
    routes = [p for p in panels(overview) if p["description"].endswith(dashboards.SCOPE_ROUTE)]
    assert {"Requests by route", "HTTP latency p50 / p99 by route", "Requests in progress"} <= {
        p["title"] for p in routes}


#: canary panels that compare B with A: empty (with a hint) unless two different versions are chosen
COMPARED = {"Traffic share of B", "p99 latency delta (B - A)", "Server error ratio delta (B - A)",
            "Accuracy delta (B - A)", "Predicted class share delta (B - A, last hour)"}


def test_canary_comparisons_explain_when_fewer_than_two_versions_are_chosen():
    canary = load(DASHBOARD_DIR / "mlmonitor-canary.json")
    by_title = {p["title"]: p for p in panels(canary)}
    assert COMPARED <= set(by_title)
    for title in COMPARED:
        p = by_title[title]
        assert p["fieldConfig"]["defaults"]["noValue"], title
        assert '=~"$version_a|$version_b"})) > 1' in p["targets"][0]["expr"], title
    for dash in map(load, FILES):
        for p in panels(dash):
            if "accuracy" in p["title"].lower() and p["type"] == "timeseries":
                assert p["fieldConfig"]["defaults"]["noValue"] == "No feedback in the window", p["title"]


def test_allowed_empty_panels_exist():
    titles = {(d["uid"], p["title"]) for d in map(load, FILES) for p in panels(d)}
    assert ALLOWED_EMPTY <= titles


# ---------------------------------------------------------------- every panel proven

def loadgen(url: str, *args: str) -> List[str]:
    return [sys.executable, "-m", "example_app.loadgen", "--url", url, "--invalid-fraction", "0.1",
            "--error-fraction", "0.1", "--drift", f"{DRIFTED}:3", "--feedback-accuracy", "0.8",
            "--concurrency", "2", "--json", *args]


def regression_loadgen(url: str, *args: str) -> List[str]:
    return [sys.executable, "-m", "example_app.loadgen", "--url", url, "--model", REGRESSOR,
            "--invalid-fraction", "0.05", "--mismatch-fraction", "0.1", "--drift", f"{REGRESSOR_DRIFTED}:3",
            "--feedback-accuracy", "0.5", "--concurrency", "2", "--json", *args]


def run_query(promurl: str, expr: str) -> Tuple[List[Dict[str, Any]], str]:
    """(series, error text); the error is Prometheus's own message when it refused the query."""
    try:
        return query(promurl, expr), ""
    except urllib.error.HTTPError as err:
        return [], f"HTTP {err.code}: {err.read().decode(errors='replace')[:300]}"
    except (OSError, ValueError) as err:
        return [], repr(err)


#: the example as served: the Flask app on gunicorn's sync workers, the FastAPI app on uvicorn workers
EXAMPLES = {"flask": {}, "asgi": {"app": "example_app.asgi:app", "args": ("-k", "uvicorn.workers.UvicornWorker")}}


def scaled_rules_and_app_env(tmp_path: Path) -> Tuple[List[str], Dict[str, str]]:
    """The shipped rules with windows divided by 60 (names keep their nominal windows), so drift and
    accuracy rules have values and an alert fires within seconds; and the example app's environment."""
    rules = render_files(Thresholds(time_scale=60, selector=f'job="{JOB}"'), str(tmp_path / "rules"))
    (tmp_path / "multiproc").mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc"), "MLMONITOR_TRACES": "false",
           "MLMONITOR_FEEDBACK_SECRET": "dashboards-test-secret-0123456789abcdef", "CANARY_FRACTION": "0.5"}
    return [r for r in rules if r.endswith(".rules.yml")], env


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_panel_returns_data_from_a_real_prometheus(tmp_path, example):
    """The same dashboards, unchanged, for the Flask example and the FastAPI one."""
    require_binary("prometheus")
    rules, env = scaled_rules_and_app_env(tmp_path)
    with GunicornProcess(workers=2, env=env, **EXAMPLES[example]) as app, \
            Prometheus(tmp_path, {JOB: [f"127.0.0.1:{app.port}"]}, rules) as prom:
        wait_for(lambda: query(prom.url, f'up{{job="{JOB}"}} == 1'), 30, what="first scrape")
        # a known mix first: both versions, 200s, 400s and 500s, feedback accepted
        first = subprocess.run(loadgen(app.url, "--requests", "100", "--rate", "50"), cwd=REPO,
                               capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        summary = json.loads(first.stdout.strip().splitlines()[-1])
        assert set(summary["by_version"]) == {"v1", "v2"}
        assert {"200", "400", "500"} <= set(summary["by_status"])
        assert summary["feedback_status"] == {"200": summary["predictions"]}
        # then steady traffic while the rules fill, an alert fires and every panel is queried
        steady = subprocess.Popen(loadgen(app.url, "--requests", "2000", "--rate", "25"), cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # and the regressor beside it: output bins, absolute errors, missing and unknown features
        regression = subprocess.Popen(regression_loadgen(app.url, "--requests", "1200", "--rate", "15"),
                                      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: query(prom.url, f'ALERTS{{alertstate="firing", job="{JOB}"}}'), 45,
                     what="an alert firing")
            wait_for(lambda: query(prom.url, f'model_version_feature:mlmonitor_feature_bin:psi1h'
                                             f'{{feature="{DRIFTED}"}} > 0.2'), 30, what="PSI of the drifted feature")
            wait_for(lambda: query(prom.url, f'model_version:mlmonitor_prediction_bin:psi1h'
                                             f'{{model_name="{REGRESSOR}"}} > 0.2'), 30, what="output drift")
            wait_for(lambda: query(prom.url, f'model_version:mlmonitor_feedback_absolute_error:mean1h'
                                             f'{{model_name="{REGRESSOR}"}}'), 30, what="live MAE")
            values = {**LINT_VALUES, "model_name": "iris", "__rate_interval": "15s"}
            failures, checked = prove(prom.url, values)
            deadline = time.monotonic() + 60
            while failures and time.monotonic() < deadline:  # a version's rates start with its
                time.sleep(2)                                  # first scrapes: poll, then judge
                failures, checked = prove(prom.url, values)
            # the regressor's renamed column is counted where the mismatch panel reads it
            for metric in ("mlmonitor_feature_unknown_total", "mlmonitor_feature_missing_total"):
                if not query(prom.url, f'sum({metric}{{job="{JOB}", model_name="{REGRESSOR}"}}) > 0'):
                    failures.append(f"{metric} of {REGRESSOR}: nothing counted")
            # one version chosen as both A and B: the comparisons are empty, not share 0.5 / delta 0
            same = {**values, "version_a": "v1", "version_b": "v1"}
            for p in panels(load(DASHBOARD_DIR / "mlmonitor-canary.json")):
                if p["title"] in COMPARED:
                    result, error = run_query(prom.url, substitute(p["targets"][0]["expr"], same))
                    if error or result:
                        failures.append(f"canary / {p['title']} with A = B: {error or result}")
        finally:
            for child in (steady, regression):
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(5)
    assert not failures, "\n".join(failures)
    assert checked == sum(len(d["templating"]["list"]) - 1 + sum(len(p["targets"]) for p in panels(d))
                          for d in map(load, FILES))


def prove(promurl: str, values: Dict[str, str]) -> Tuple[List[str], int]:
    """Run every variable query and every panel target; what failed, and how many targets ran.

    A target must return data with the classifier or the regressor chosen: all models at once
    (the streamed text model too) where Model is multi-value, each in turn on the canary dashboard (one model at a time), so
    class panels are proven by iris and the regression panels by diabetes."""
    failures: List[str] = []
    checked = 0
    expected = {"job": {JOB}, "model_name": {"iris", REGRESSOR}, "model_version": {"v1", "v2"},
                "version_a": {"v1", "v2"}, "version_b": {"v1", "v2"}}
    for dash in map(load, FILES):
        single = not next(v for v in dash["templating"]["list"] if v["name"] == "model_name")["multi"]
        choices = [{**values, "model_name": m} for m in ("iris", REGRESSOR)] if single else [
            {**values, "model_name": f"(iris|{REGRESSOR}|{TEXTGEN})"}]
        for var in dash["templating"]["list"][1:]:
            selector, label = variable_query(var)
            found = set()
            for chosen in choices:
                result, error = run_query(promurl, f"group by ({label}) ({substitute(selector, chosen)})")
                found |= {r["metric"].get(label) for r in result}
                if error:
                    failures.append(f"{dash['uid']} variable {var['name']}: {error}")
            checked += 1
            if not expected[var["name"]] <= found:
                failures.append(f"{dash['uid']} variable {var['name']}: {found}")
        for p, t in exprs(dash):
            checked += 1
            results = []
            for chosen in choices:
                result, error = run_query(promurl, substitute(t["expr"], chosen))
                if error:
                    failures.append(f"{dash['uid']} / {p['title']} / {t['refId']}: {error}")
                results += result
            empty_ok = (dash["uid"], p["title"]) in ALLOWED_EMPTY
            if not results and not empty_ok:
                failures.append(f"{dash['uid']} / {p['title']} / {t['refId']}: no data for any model"
                                f"\n    {t['expr']}")
    return failures, checked


def nan_samples(promurl: str, values: Dict[str, str]) -> Tuple[List[str], Dict[str, List[Dict[str, Any]]]]:
    """Every panel target's NaN samples (with the models chosen as :func:`prove` does), and the
    results by ``uid / title / refId``."""
    nans: List[str] = []
    results: Dict[str, List[Dict[str, Any]]] = {}
    for dash in map(load, FILES):
        single = not next(v for v in dash["templating"]["list"] if v["name"] == "model_name")["multi"]
        choices = [{**values, "model_name": m} for m in ("iris", REGRESSOR, TEXTGEN)] if single else [
            {**values, "model_name": f"(iris|{REGRESSOR}|{TEXTGEN})"}]
        for p, t in exprs(dash):
            key = f"{dash['uid']} / {p['title']} / {t['refId']}"
            for chosen in choices:
                result, error = run_query(promurl, substitute(t["expr"], chosen))
                assert not error, f"{key}: {error}"
                results.setdefault(key, []).extend(result)
                nans += [f"{key}: {r['metric']}" for r in result if math.isnan(r["value"])]
    return nans, results


@pytest.mark.slow
def test_idle_routes_and_versions_without_feedback_show_no_nan_in_any_panel(tmp_path):
    """Issue 25, item 6c: after a burst on every model, route and version (with feedback), only
    iris v1 keeps traffic and feedback; the idle ones show nothing in every panel, never NaN."""
    require_binary("prometheus")
    rules, env = scaled_rules_and_app_env(tmp_path)
    window = "5s"
    values = {**LINT_VALUES, "__rate_interval": window}
    by_version = f"sum by (le, model_name, model_version) (rate({{0}}{{{{job=\"{JOB}\"}}}}[{window}]))"
    with GunicornProcess(workers=1, env=env) as app, \
            Prometheus(tmp_path, {JOB: [f"127.0.0.1:{app.port}"]}, rules) as prom:
        wait_for(lambda: query(prom.url, f'up{{job="{JOB}"}} == 1'), 30, what="first scrape")
        for command in (loadgen(app.url, "--requests", "40", "--rate", "40", "--generate-fraction", "0.25"),
                        regression_loadgen(app.url, "--requests", "30", "--rate", "40")):
            burst = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
            assert burst.returncode == 0, burst.stderr
        steady = subprocess.Popen(loadgen(app.url, "--version", "v1", "--requests", "600", "--rate", "6"),
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def idle_but_not_v1() -> bool:
                """The raw quantiles are NaN for what went idle, and a number for iris v1."""
                latency = query(prom.url, "histogram_quantile(0.5, "
                                + by_version.format("mlmonitor_prediction_duration_seconds_bucket") + ")")
                errors = query(prom.url, "histogram_quantile(0.5, "
                               + by_version.format("mlmonitor_feedback_absolute_error_bucket") + ")")
                live = {(r["metric"]["model_name"], r["metric"]["model_version"]): math.isnan(r["value"])
                        for r in latency}
                idle = {key for key, nan in live.items() if nan}
                return (live.get(("iris", "v1")) is False and idle == set(live) - {("iris", "v1")}
                        and {("iris", "v2"), (TEXTGEN, "v1")} <= idle
                        and any(r["metric"]["model_name"] == REGRESSOR for r in latency)
                        and any(math.isnan(r["value"]) for r in errors))
            wait_for(idle_but_not_v1, 60, interval=1, what="every version but iris v1 idle (the regressor too), iris v1 busy")
            nans, results = nan_samples(prom.url, values)
        finally:
            steady.send_signal(signal.SIGTERM)
            try:
                steady.wait(10)
            except subprocess.TimeoutExpired:
                steady.kill()
                steady.wait(5)
    assert nans == [], "\n".join(nans)
    # the busy version and route still show their quantiles; the idle ones show none
    latency = results["mlmonitor-overview / Prediction latency p50 / p95 / p99 / A"]
    assert {(r["metric"]["model_name"], r["metric"]["model_version"]) for r in latency} == {("iris", "v1")}
    routes = {r["metric"]["route"] for r in results["mlmonitor-overview / HTTP latency p50 / p99 by route / A"]}
    assert "/predict" in routes and "/generate" not in routes


def test_provisioning_files():
    prov = REPO / "grafana" / "provisioning"
    (source,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    (provider,) = yaml.safe_load((prov / "dashboards" / "mlmonitor.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards/mlmonitor"
