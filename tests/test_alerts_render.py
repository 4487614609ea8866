"""``mlmonitor alerts render`` (issue 17): thresholds on bucket bounds, selectors, runbooks, output.

Rules are checked the way Prometheus reads them: ``promtool test rules`` on rendered files, amtool on
the rendered Alertmanager config, and promql-parser for what every expression selects and divides.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.promql_lint import instant_raw_selectors, unguarded_divisions
from helpers.promstack import promtool_test, require_binary
from mlmonitor import cli, contract, rules

REPO = Path(__file__).resolve().parents[1]


def mlmonitor(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlmonitor.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def exprs(thresholds: rules.Thresholds):
    recording, alerting = rules.render_groups(thresholds)
    for group in recording + alerting:
        for rule in group["rules"]:
            yield rule.get("record") or rule["alert"], rule["expr"]


# -- latency thresholds must be bucket bounds --------------------------------------------------------

@pytest.mark.parametrize("option", ["--latency-p99", "--latency-slo-threshold"])
def test_a_latency_threshold_between_bounds_is_refused_naming_the_nearest_bounds(tmp_path, option):
    proc = mlmonitor("alerts", "render", option, "0.3", "--out-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{option} 0.3 is not a bucket bound" in proc.stderr
    assert "nearest bounds: 0.25 and 0.5" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bounds_beyond_the_ends_name_the_one_nearest():
    with pytest.raises(ValueError, match=r"nearest bounds: 30\."):
        rules.Thresholds(latency_p99=60)
    with pytest.raises(ValueError, match=r"nearest bounds: 0\.001\."):
        rules.Thresholds(latency_p99=0.0005)


def test_the_shipped_threshold_is_a_default_bucket_bound():
    assert contract.LATENCY_THRESHOLD in contract.DEFAULT_BUCKETS
    assert rules.Thresholds().latency_p99 == contract.LATENCY_THRESHOLD


CUSTOM_BUCKETS_TEST = """
rule_files: [{recording}, {alerts}]
evaluation_interval: 1m
tests:
  # every prediction takes between 0.3 s and 0.5 s: p99 ~0.5 s > 0.3 s, and all are slower than the
  # 0.3 s latency SLO bound (the bucket le="0.3" exists because the app's buckets include 0.3)
  - interval: 1m
    input_series:
{series}
    promql_expr_test:
      - expr: 'model_version:mlmonitor_prediction_slow:ratio_rate5m'
        eval_time: 10m
        exp_samples:
          - labels: 'model_version:mlmonitor_prediction_slow:ratio_rate5m{{job="mlmonitor", model_name="iris", model_version="v1"}}'
            value: 1
      - expr: 'ALERTS{{alertstate="firing", alertname=~"MLModelLatency.*"}}'
        eval_time: 10m
        exp_samples:
          - labels: 'ALERTS{{alertname="MLModelLatencyP99High", alertstate="firing", family="latency", job="mlmonitor", model_name="iris", model_version="v1", severity="warning"}}'
            value: 1
          - labels: 'ALERTS{{alertname="MLModelLatencyBudgetBurn", alertstate="firing", family="latency", job="mlmonitor", model_name="iris", model_version="v1", severity="critical", slo="latency"}}'
            value: 1
"""


def test_custom_buckets_render_latency_rules_that_fire_in_promtool(tmp_path):
    require_binary("promtool")
    out = tmp_path / "rules"
    assert cli.main(["alerts", "render", "--buckets", "0.1,0.3,0.5,1", "--latency-p99", "0.3",
                     "--out-dir", str(out)]) == 0
    recording = (out / rules.RECORDING_FILE).read_text()
    assert 'le="0.3"' in recording and 'le="0.5"' not in recording
    assert "--buckets '0.1,0.3,0.5,1'" in recording.splitlines()[0]
    labels = 'job="mlmonitor", instance="a:8000", model_name="iris", model_version="v1"'
    counts = {"0.1": "0+0x20", "0.3": "0+0x20", "0.5": "0+100x20", "1.0": "0+100x20", "+Inf": "0+100x20"}
    lines = [f"      - series: 'mlmonitor_prediction_duration_seconds_bucket{{{labels}, le=\"{le}\"}}'\n"
             f"        values: '{values}'" for le, values in counts.items()]
    lines.append(f"      - series: 'mlmonitor_prediction_duration_seconds_count{{{labels}}}'\n"
                 "        values: '0+100x20'")
    test = tmp_path / "latency.yml"
    test.write_text(CUSTOM_BUCKETS_TEST.format(recording=out / rules.RECORDING_FILE,
                                               alerts=out / rules.ALERTS_FILE, series="\n".join(lines)))
    promtool_test(test)


# -- selectors and runbooks -----------------------------------------------------------------------

def selectors(expr: str):
    """(metric, matchers) of every raw selector in ``expr`` (recording rules excluded)."""
    for metric, matchers in re.findall(r"\b([a-z_]+)(\{[^}]*\})?(?=\s*[\[)\s]|$)", expr):
        if metric.startswith("mlmonitor_") or metric == "up":
            yield metric, matchers


@pytest.mark.parametrize("given, matcher", [
    (None, 'job="mlmonitor"'),
    ('{job="my-model"}', 'job="my-model"'),
    ('job=~"model-.*", env="prod"', 'job=~"model-.*", env="prod"'),
])
def test_the_selector_reaches_every_raw_selector_up_included(given, matcher):
    t = rules.Thresholds() if given is None else rules.Thresholds(selector=given)
    seen = set()
    for name, expr in exprs(t):
        for metric, matchers in selectors(expr):
            seen.add(metric)
            assert matchers.startswith("{" + matcher), f"{name}: {metric}{matchers}"
    assert "up" in seen and contract.PREDICTIONS_TOTAL in seen and contract.FEATURE_REFERENCE_RATIO in seen


def test_target_down_fires_for_mlmonitor_targets_only_by_default():
    alerting = rules.render_groups()[1]
    (expr,) = [r["expr"] for g in alerting for r in g["rules"] if r["alert"] == "MLModelTargetDown"]
    assert expr == f'up{{job="{contract.DEFAULT_JOB}"}} == 0'
    everything = rules.render_groups(rules.Thresholds(selector="{}"))[1]
    assert [r["expr"] for g in everything for r in g["rules"] if r["alert"] == "MLModelTargetDown"] == ["up == 0"]


@pytest.mark.parametrize("bad", ['job=my-model', '{job="a"', 'job="a",', "up"])
def test_a_malformed_selector_is_refused(bad):
    with pytest.raises(ValueError, match="--selector"):
        rules.Thresholds(selector=bad)


@pytest.mark.parametrize("base, expected", [
    ("https://wiki.example.com/ml/runbooks", "https://wiki.example.com/ml/runbooks#mlmodelfeaturedrift"),
    ("https://runbooks.example.com/mlmonitor/{alert}.html",
     "https://runbooks.example.com/mlmonitor/mlmodelfeaturedrift.html"),
])
def test_runbook_base_url_reaches_every_alert(tmp_path, base, expected):
    assert cli.main(["alerts", "render", "--runbook-base-url", base, "--out-dir", str(tmp_path)]) == 0
    alerts = [r for g in yaml.safe_load((tmp_path / rules.ALERTS_FILE).read_text())["groups"] for r in g["rules"]]
    for rule in alerts:
        assert rule["annotations"]["runbook_url"] == expected.replace("mlmodelfeaturedrift", rule["alert"].lower())
    assert f"--runbook-base-url '{base}'" in (tmp_path / rules.ALERTS_FILE).read_text().splitlines()[0]
    assert cli.main(["alerts", "render", "--runbook-base-url", "wiki/runbooks", "--out-dir", str(tmp_path)]) == 2


# -- what every expression reads -------------------------------------------------------------------

def test_no_rule_reads_a_raw_series_as_an_instant_vector():
    """Counters through rate()/increase(), gauges through last_over_time(): a missed scrape changes nothing."""
    for name, expr in exprs(rules.Thresholds()):
        assert instant_raw_selectors(expr) == [], name


def test_no_rule_divides_without_guarding_zero():
    for name, expr in exprs(rules.Thresholds()):
        assert unguarded_divisions(expr) == [], name


# -- the command line -----------------------------------------------------------------------------

def test_without_out_dir_the_rules_go_to_stdout_and_nothing_is_written(tmp_path):
    promtool = require_binary("promtool")
    proc = mlmonitor("alerts", "render", "--error-ratio", "0.02", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []
    recording, alerting = rules.render_groups(rules.Thresholds(error_ratio=0.02))
    assert yaml.safe_load(proc.stdout) == {"groups": recording + alerting}
    (tmp_path / "all.rules.yml").write_text(proc.stdout)
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "all.rules.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = mlmonitor("alerts", "render", "--prometheus-operator", cwd=tmp_path)
    assert yaml.safe_load(manifest.stdout)["kind"] == "PrometheusRule"
    assert list(tmp_path.iterdir()) == [tmp_path / "all.rules.yml"]


def test_dashboards_render_needs_out_dir_or_check(tmp_path):
    proc = mlmonitor("dashboards", "render", cwd=tmp_path)
    assert proc.returncode == 2 and "--out-dir" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_states_each_default_once():
    proc = mlmonitor("alerts", "render", "--help")
    assert proc.returncode == 0
    options = re.split(r"\n  (?=-)", proc.stdout.split("options:", 1)[1])
    for text in options:
        assert text.count("(default") <= 1, text
    (threshold,) = [t for t in options if t.startswith("--latency-slo-threshold")]
    assert "0.0" not in threshold and "--latency-p99" in threshold
    for option in ("--selector", "--runbook-base-url", "--buckets", "--out-dir"):
        assert option in proc.stdout


def test_time_scale_scales_every_time_of_the_alertmanager_config(tmp_path):
    amtool = require_binary("amtool")
    rules.render_files(rules.Thresholds(time_scale=60), str(tmp_path))
    config = yaml.safe_load((tmp_path / rules.ALERTMANAGER_FILE).read_text())
    assert config["global"]["resolve_timeout"] == "5s"
    route = config["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("1s", "5s", "4m")
    assert [r.get("repeat_interval") for r in route["routes"]] == ["1m", None, "24m"]
    proc = subprocess.run([amtool, "check-config", str(tmp_path / rules.ALERTMANAGER_FILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shipped = yaml.safe_load((REPO / "alerts" / rules.ALERTMANAGER_FILE).read_text())
    assert json.dumps(shipped["route"]["group_wait"]) == '"30s"'
