"""The shipped alert rules and Alertmanager routing: valid, unit-tested, in sync, complete.

promtool and amtool come from Debian's ``prometheus`` and ``prometheus-alertmanager``
packages; without them these tests skip on a developer's machine and fail under CI.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.promstack import require_binary
from helpers.psi import psi
from mlmonitor.tools import cli, rules

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "alerts"
RULE_FILES = [ALERTS / rules.RECORDING_FILE, ALERTS / rules.ALERTS_FILE]
AM_CONFIG = ALERTS / "alertmanager.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
VERSION_LABELS = {"job", "model_name", "model_version"}
#: raw model-level metrics: a rule reading one of these must keep the version labels
MODEL_METRIC = re.compile(r"\bmlmonitor_(predictions|prediction_|predicted_class|feature_|feedback|reference_)")
#: rules that compare a version with the other versions of its model on purpose
CROSS_VERSION = {"MLModelCanaryErrorsWorse", "MLModelCanaryLatencyWorse"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules():
    for group in load(ALERTS / rules.ALERTS_FILE)["groups"]:
        yield from group["rules"]


def test_promtool_check_rules_accepts_the_shipped_rules():
    promtool = require_binary("promtool")
    proc = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass():
    promtool = require_binary("promtool")
    tests = sorted((ALERTS / "tests").glob("*.yml"))
    assert tests
    proc = run(promtool, "test", "rules", *map(str, tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_case_in_the_unit_tests():
    tested = set()
    for path in (ALERTS / "tests").glob("*.yml"):
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert {rule["alert"] for rule in alert_rules()} <= tested


def test_shipped_files_are_the_renderer_output_with_defaults(tmp_path):
    assert cli.main(["alerts", "render", "--prometheus-operator", "--out-dir", str(tmp_path)]) == 0
    for name in (rules.RECORDING_FILE, rules.ALERTS_FILE, rules.OPERATOR_FILE, rules.ALERTMANAGER_FILE):
        assert (tmp_path / name).read_text() == (ALERTS / name).read_text(), (
            f"alerts/{name} is stale: run `mlmonitor alerts render --prometheus-operator --out-dir alerts`")


def test_rendered_yaml_parses_back_to_the_rule_dicts():
    recording, alerts_ = rules.render_groups()
    assert load(ALERTS / rules.RECORDING_FILE) == {"groups": recording}
    assert load(ALERTS / rules.ALERTS_FILE) == {"groups": alerts_}
    manifest = load(ALERTS / rules.OPERATOR_FILE)
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["spec"]["groups"] == recording + alerts_


def test_thresholds_reach_the_expressions(tmp_path):
    assert cli.main(["alerts", "render", "--out-dir", str(tmp_path), "--error-ratio", "0.02",
                     "--latency-p99", "1", "--availability-slo", "0.995", "--psi-threshold", "0.3",
                     "--latency-slo-threshold", "2.5"]) == 0
    exprs = {r.get("alert", "") + str(r.get("labels", {}).get("severity")): r["expr"]
             for g in load(tmp_path / rules.ALERTS_FILE)["groups"] for r in g["rules"]}
    assert exprs["MLModelServerErrorRatioHighcritical"].endswith("> 0.02")
    assert exprs["MLModelLatencyP99Highwarning"].endswith("> 1")
    assert "psi1h{job=\"mlmonitor\"} > 0.3\n" in exprs["MLModelFeatureDriftwarning"]
    # 14.4 x (1 - 0.995)
    assert "ratio_rate1h{job=\"mlmonitor\"} > 0.072" in exprs["MLModelAvailabilityBudgetBurncritical"]
    assert 'le="2.5"' in (tmp_path / rules.RECORDING_FILE).read_text()
    assert "--error-ratio 0.02" in (tmp_path / rules.ALERTS_FILE).read_text().splitlines()[0]


def test_time_scale_shortens_windows_but_keeps_rule_names(tmp_path):
    rules.render_files(rules.Thresholds(time_scale=60), str(tmp_path))
    text = (tmp_path / rules.RECORDING_FILE).read_text()
    assert "[5s]" in text and "[1h12m]" in text and "[5m]" not in text
    assert "model_version:mlmonitor_predictions:rate5m" in text
    promtool = require_binary("promtool")
    proc = run(promtool, "check", "rules", str(tmp_path / rules.RECORDING_FILE),
               str(tmp_path / rules.ALERTS_FILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError):
        rules.Thresholds(error_ratio=1.5)
    assert cli.main(["alerts", "render", "--availability-slo", "1", "--out-dir", "/nonexistent"]) == 2


def markdown_anchors(path: Path) -> set:
    """The anchors a Markdown renderer (GitHub's rule) gives the headings of ``path``."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in path.read_text().splitlines() if line.startswith("#")}


def test_every_alert_has_severity_and_annotations():
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["labels"]["family"], name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name


def test_every_shipped_runbook_url_resolves_to_a_section_of_the_shipped_runbooks():
    """The default runbook_url is a path in this repository (issue 25): the file and its anchor exist."""
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (REPO / path).resolve() == RUNBOOKS, rule["annotations"]["runbook_url"]
        assert anchor == rule["alert"].lower()
        assert anchor in markdown_anchors(RUNBOOKS), f"docs/runbooks.md has no section '## {rule['alert']}'"


def test_per_version_rules_keep_job_model_name_and_model_version():
    groups = load(ALERTS / rules.RECORDING_FILE)["groups"] + load(ALERTS / rules.ALERTS_FILE)["groups"]
    checked = 0
    for group in groups:
        for rule in group["rules"]:
            expr = rule["expr"]
            per_version = MODEL_METRIC.search(expr) or re.search(r"\bmodel_version[a-z_]*:", expr)
            if not per_version:
                continue
            for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
                kept = {label.strip() for label in clause.split(",")}
                needed = VERSION_LABELS - ({"model_version"} if rule.get("alert") in CROSS_VERSION else set())
                assert needed <= kept, f"{rule.get('record') or rule.get('alert')}: by/on ({clause})"
                checked += 1
            if "record" in rule:
                assert rule["record"].split(":")[0].startswith("model_version"), rule["record"]
    assert checked > 30


def test_recording_rule_names_are_level_metric_operations():
    for group in load(ALERTS / rules.RECORDING_FILE)["groups"]:
        for rule in group["rules"]:
            assert re.fullmatch(r"[a-z_]+:mlmonitor_[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_recording_rule_names_are_documented_in_the_alerts_readme():
    readme = (ALERTS / "README.md").read_text()
    for group in load(ALERTS / rules.RECORDING_FILE)["groups"]:
        for rule in group["rules"]:
            assert f"`{rule['record']}`" in readme, rule["record"]


def test_unit_test_psi_values_equal_the_numpy_reference():
    # the same counts as in alerts/tests/quality.yml (rates per minute, summed over replicas)
    assert psi({"0": 60, "1": 10}, {"0": 0.4, "1": 0.4, "2": 0.2}) == pytest.approx(2.1325865613019133, abs=1e-9)
    assert psi({"0": 35, "1": 35}, {"0": 0.5, "1": 0.5}) == 0
    assert psi({"0": 1}, {"0": 0.1, "1": 0.9}) == pytest.approx(10.26589795639553, abs=1e-9)
    assert psi({"setosa": 50, "versicolor": 10},
               {"setosa": 0.5, "versicolor": 0.3, "virginica": 0.2}) == pytest.approx(1.768067164904742, abs=1e-9)
    text = (ALERTS / "tests" / "quality.yml").read_text()
    for value in ("2.1325865613019133", "10.26589795639553", "1.768067164904742"):
        assert f"value: {value}" in text


def test_amtool_check_config_accepts_the_routing():
    amtool = require_binary("amtool")
    proc = run(amtool, "check-config", str(AM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("labels, receiver", [
    (["severity=critical", "alertname=MLModelServerErrorRatioHigh", "model_name=iris", "model_version=v2"], "critical"),
    (["severity=warning", "alertname=MLModelFeatureDrift", "model_name=iris", "model_version=v1"], "warning"),
    (["severity=info", "alertname=MLMonitorTelemetryDropped"], "info"),
    (["alertname=SomethingElse"], "default"),
])
def test_amtool_routes_each_severity_to_its_receiver(labels, receiver):
    amtool = require_binary("amtool")
    proc = run(amtool, "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receiver


def test_routing_groups_by_version_and_inhibits_warnings_of_the_same_family():
    config = load(AM_CONFIG)
    assert config["route"]["group_by"] == ["alertname", "job", "model_name", "model_version"]
    (rule,) = config["inhibit_rules"]
    assert rule["source_matchers"] == ['severity="critical"']
    assert rule["target_matchers"] == ['severity="warning"']
    assert set(rule["equal"]) == {"job", "model_name", "model_version", "family"}
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["send_resolved"] is True
    # every family that has a warning also has the label on its critical alerts
    families = {r["labels"]["family"] for r in alert_rules()}
    assert {"availability", "latency"} <= families


def test_yaml_emitter_quotes_what_yaml_would_misread():
    tricky = {"a": ["yes", "no", "1e3", "0x10", "null", "5m", "x: y", "#c", "{{ $value }}", "it's", "é\n b"],
              "b": {}, "c": [], "d": 0.5, "e": True, "f": "line1\n\nline3"}
    assert yaml.safe_load(rules.to_yaml(tricky)) == tricky


def test_cli_help_lists_the_render_options():
    proc = subprocess.run([sys.executable, "-m", "mlmonitor.tools.cli", "alerts", "render", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0
    for option in ("--error-ratio", "--latency-p99", "--availability-slo", "--latency-slo",
                   "--psi-threshold", "--accuracy-drop", "--mae-factor", "--mae-min-feedback", "--time-scale",
                   "--prometheus-operator"):
        assert option in proc.stdout


def test_ttfc_threshold_reaches_its_alert_and_must_be_a_bucket_bound(tmp_path):
    assert cli.main(["alerts", "render", "--out-dir", str(tmp_path), "--ttfc-p95", "2.5"]) == 0
    (expr,) = [r["expr"] for g in load(tmp_path / rules.ALERTS_FILE)["groups"] for r in g["rules"]
               if r["alert"] == "MLModelTimeToFirstChunkHigh"]
    assert expr.startswith("histogram_quantile(0.95, ") and "mlmonitor_time_to_first_chunk_seconds_bucket" in expr
    assert expr.endswith("> 2.5")
    with pytest.raises(ValueError, match="nearest bounds: 1 and 2.5"):
        rules.Thresholds(ttfc_p95=2.0)
