"""The monitoring mixin (issue 28, item 4): ``mixin/`` evaluated with gojsonnet equals what the CLI renders.

The mixin is generated from the same Python as ``alerts render`` and ``dashboards render``
(:mod:`mlmonitor.tools.mixin`); these tests evaluate the committed jsonnet with the options a user
would set in ``_config`` and compare it with the CLI's rule files and dashboard JSON.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import _gojsonnet
import promql_parser as pp
import pytest
import yaml

from mlmonitor.tools import cli, mixin, rules
from test_dashboards import LINT_VALUES, substitute

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


def cli_dashboards(tmp_path: Path) -> dict:
    """The dashboards as `mlmonitor dashboards render` writes them."""
    assert cli.main(["dashboards", "render", "--out-dir", str(tmp_path)]) == 0
    return {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}


def queries(dashboards: dict) -> list[str]:
    """Every PromQL text of the dashboards: panel targets and variable queries."""
    found: list[str] = []

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif key in ("expr", "query", "definition") and isinstance(node, str) and node != "prometheus":
            found.append(node)

    walk(dashboards)
    return found


def reads(query: str) -> list[set[tuple[str, str, str]]]:
    """The label matchers (name, op, value) of every series read of a query (promql-parser's AST,
    Grafana's variables substituted as the dashboard lint does)."""
    variable = re.fullmatch(r"label_values\((.+), \w+\)", query)
    found: list[set[tuple[str, str, str]]] = []

    def visit(node: object) -> None:
        if isinstance(node, pp.VectorSelector):
            found.append({(m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers})

    pp.walk(pp.parse(substitute(variable[1] if variable else query, LINT_VALUES)), visit)
    return found


def test_with_an_empty_selector_the_mixins_dashboards_are_what_dashboards_render_writes(tmp_path):
    rendered = cli_dashboards(tmp_path)
    shipped = {p.name: json.loads(p.read_text()) for p in (REPO / "grafana" / "dashboards").glob("*.json")}
    assert evaluate("{ selector: '' }")["dashboards"] == rendered == shipped
    assert len(shipped) == 3


def test_the_mixins_default_dashboards_read_through_the_default_selector(tmp_path):
    """The rendered JSON, with the default ``job="mlmonitor"`` first in every read and nothing else changed."""
    default = evaluate()["dashboards"]
    text = json.dumps(default)
    assert json.loads(text.replace('job=\\"mlmonitor\\", ', "").replace('{job=\\"mlmonitor\\"}', "")) \
        == cli_dashboards(tmp_path)
    every = [read for query in queries(default) for read in reads(query)]
    assert len(every) > 100
    assert all(("job", "Equal", "mlmonitor") in read for read in every)


def test_a_selector_override_reaches_every_read_of_every_dashboard_query(tmp_path):
    rendered = cli_dashboards(tmp_path)
    custom = evaluate("{ selector: '{namespace=\"override-probe\", job=~\"app-.*\"}' }")["dashboards"]
    texts = queries(custom)
    assert len(texts) == len(queries(rendered)) > 100
    variables = [t for t in texts if t.startswith("label_values(")]
    assert len(variables) >= 9  # job, model and version(s) of each dashboard
    every = [read for query in texts for read in reads(query)]
    assert len(every) > len(texts)
    for read in every:
        assert {("namespace", "Equal", "override-probe"), ("job", "Re", "app-.*")} <= read
    # the job variable offers only the jobs the selector takes; the rest is the rendered JSON
    assert {t for t in variables if t.endswith(", job)")} == {
        'label_values(mlmonitor_model_info{namespace="override-probe", job=~"app-.*"}, job)'}
    assert set(custom) == set(rendered)


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


def test_the_readmes_mixin_example_renders_the_rules_and_dashboards_with_its_config(tmp_path):
    """The jsonnet block of the README, evaluated as written (the repository as the vendor folder)."""
    readme = (REPO / "README.md").read_text()
    block, = re.findall(r"```jsonnet\n(// my-mixin.jsonnet\n.*?)```", readme, flags=re.DOTALL)
    files = json.loads(_gojsonnet.evaluate_snippet("my-mixin.jsonnet", block, jpathdir=[str(REPO)]))
    boards = [p.name for p in (REPO / "grafana" / "dashboards").glob("*.json")]
    assert sorted(files) == sorted(["alerts.yml", "rules.yml", *boards])
    config = re.search(r"selector: '([^']*)'", block)[1]
    alerting, recording = cli_rules(tmp_path, "--selector", config, "--error-ratio", "0.02")
    assert yaml.safe_load(files["alerts.yml"]) == alerting
    assert yaml.safe_load(files["rules.yml"]) == recording
    every = [read for name in boards for query in queries(json.loads(files[name])) for read in reads(query)]
    assert every and all(("job", "Equal", "my-model") in read for read in every)


@pytest.mark.parametrize("selector", ['job="app-b"', '{namespace="prod", job=~"app-.*"}'])
def test_dashboards_render_with_a_selector_is_the_mixins_dashboards_with_that_selector(tmp_path, selector):
    assert cli.main(["dashboards", "render", "--selector", selector, "--out-dir", str(tmp_path)]) == 0
    rendered = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert rendered == evaluate(f"{{ selector: {json.dumps(selector)} }}")["dashboards"]
    assert rendered != {p.name: json.loads(p.read_text()) for p in (REPO / "grafana" / "dashboards").glob("*.json")}
    assert cli.main(["dashboards", "render", "--selector", selector, "--check", str(tmp_path)]) == 0
    assert cli.main(["dashboards", "render", "--check", str(tmp_path)]) == 1


def test_dashboards_render_refuses_a_selector_in_one_line(tmp_path, capsys):
    assert cli.main(["dashboards", "render", "--selector", 'job="unterminated', "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not list(tmp_path.iterdir())
