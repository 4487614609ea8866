"""The monitoring mixin (issue 28, item 4): ``mixin/`` evaluated with gojsonnet equals what the CLI renders.

The mixin is generated from the same Python as ``alerts render`` and ``dashboards render``
(:mod:`mlmonitor.tools.mixin`); these tests evaluate the committed jsonnet with the options a user
would set in ``_config`` and compare it with the CLI's rule files and dashboard JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import _gojsonnet
import pytest
import yaml

from mlmonitor.tools import cli, mixin, rules

REPO = Path(__file__).resolve().parents[1]
MIXIN = REPO / "mixin"


def evaluate(config: str = "{}") -> dict:
    """The mixin's three hidden fields, with ``config`` merged into ``_config``."""
    snippet = (f"local m = (import 'mixin.libsonnet') + {{ _config+:: {config} }};\n"
               "{ alerts: m.prometheusAlerts, rules: m.prometheusRules, dashboards: m.grafanaDashboards }")
    return json.loads(_gojsonnet.evaluate_snippet("test.jsonnet", snippet, jpathdir=[str(MIXIN)]))


def cli_rules(tmp_path: Path, *options: str) -> tuple[dict, dict]:
    """(alerting, recording) rule files as `mlmonitor alerts render` writes them."""
    assert cli.main(["alerts", "render", *options, "--out-dir", str(tmp_path)]) == 0
    return (yaml.safe_load((tmp_path / rules.ALERTS_FILE).read_text()),
            yaml.safe_load((tmp_path / rules.RECORDING_FILE).read_text()))


def test_the_committed_mixin_is_what_the_command_renders(tmp_path, capsys):
    assert cli.main(["mixin", "render", "--out-dir", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(mixin.FILES)
    for name in written:
        assert (MIXIN / name).read_text() == (tmp_path / name).read_text(), name
    assert cli.main(["mixin", "render", "--check", str(MIXIN)]) == 0
    (tmp_path / "alerts.libsonnet").write_text("{}\n")
    capsys.readouterr()
    assert cli.main(["mixin", "render", "--check", str(tmp_path)]) == 1
    assert "alerts.libsonnet" in capsys.readouterr().err


# (CLI options, the same as a _config override)
CASES = {
    "defaults": ((), "{}"),
    "another job and threshold": (
        ("--selector", '{job="app-b"}', "--error-ratio", "0.02"),
        "{ selector: 'job=\"app-b\"', thresholds+: { errorRatio: 0.02 } }"),
    "every knob": (
        ("--selector", 'namespace="prod", job=~"app-.*"', "--error-ratio", "0.03", "--invalid-input-ratio", "0.1",
         "--latency-p99", "1", "--latency-slo-threshold", "2.5", "--availability-slo", "0.995",
         "--latency-slo", "0.95", "--ttfc-p95", "2.5", "--psi-threshold", "0.3", "--drift-min-count", "50",
         "--accuracy-drop", "0.1", "--accuracy-min-feedback", "30", "--mae-factor", "2",
         "--mae-min-feedback", "40", "--canary-error-delta", "0.02", "--canary-latency-factor", "1.25",
         "--memory-bytes", "8589934592", "--gpu-memory-ratio", "0.8",
         "--runbook-base-url", "https://wiki.example.com/runbooks/{alert}"),
        "{ selector: '{ namespace=\"prod\", job=~\"app-.*\" }',"
        " runbookURLPattern: 'https://wiki.example.com/runbooks/{alert}',"
        " thresholds+: { errorRatio: 0.03, invalidInputRatio: 0.1, latencyP99: 1, latencySloThreshold: 2.5,"
        " availabilitySlo: 0.995, latencySlo: 0.95, ttfcP95: 2.5, psiThreshold: 0.3, driftMinCount: 50,"
        " accuracyDrop: 0.1, accuracyMinFeedback: 30, maeFactor: 2, maeMinFeedback: 40, canaryErrorDelta: 0.02,"
        " canaryLatencyFactor: 1.25, memoryBytes: 8589934592, gpuMemoryRatio: 0.8 } }"),
    "every target": (("--selector", "{}", "--runbook-base-url", "https://wiki.example.com/rb"),
                     "{ selector: '', runbookURLPattern: 'https://wiki.example.com/rb' }"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_mixins_rules_equal_what_alerts_render_writes_with_the_same_options(tmp_path, case):
    options, config = CASES[case]
    alerting, recording = cli_rules(tmp_path, *options)
    out = evaluate(config)
    assert out["alerts"] == alerting
    assert out["rules"] == recording


def test_every_threshold_of_the_cli_is_a_mixin_knob():
    """A new Thresholds field either gets a _config key or is named as left out on purpose."""
    out = json.loads(_gojsonnet.evaluate_snippet(
        "t.jsonnet", "(import 'mixin.libsonnet')._config.thresholds", jpathdir=[str(MIXIN)]))
    knobs = {mixin.camel(name) for name in vars(rules.Thresholds()) if name not in mixin._NOT_KNOBS}
    assert set(out) == knobs


def test_the_mixins_dashboards_equal_the_shipped_json():
    shipped = {p.name: json.loads(p.read_text()) for p in (REPO / "grafana" / "dashboards").glob("*.json")}
    assert evaluate()["dashboards"] == shipped
    assert len(shipped) == 3


def test_a_selector_override_reaches_every_read_of_every_rule():
    default, custom = evaluate(), evaluate("{ selector: 'job=\"override-probe\"' }")
    for field in ("alerts", "rules"):
        exprs = [r["expr"] for g in custom[field]["groups"] for r in g["rules"]]
        assert all('job="override-probe"' in e for e in exprs)
        assert not any('job="mlmonitor"' in e for e in exprs)
        # every read the default render makes carries the override instead, nothing else changed
        before = json.dumps(default[field]).replace('job=\\"mlmonitor\\"', 'job=\\"override-probe\\"')
        assert json.loads(before) == custom[field]


def test_a_latency_threshold_off_the_buckets_is_refused():
    with pytest.raises(RuntimeError, match="latencyP99 is not a bucket bound"):
        evaluate("{ thresholds+: { latencyP99: 0.3 } }")
