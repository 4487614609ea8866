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

import promql_parser as pp
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.promql_lint import instant_raw_selectors, unguarded_divisions
from helpers.promstack import promtool_test, require_binary
from mlmonitor import contract
from mlmonitor.tools import cli, rules

REPO = Path(__file__).resolve().parents[1]


def mlmonitor(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlmonitor.tools.cli", *args], capture_output=True, text=True,
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
    ("../ops/runbooks.md", "../ops/runbooks.md#mlmodelfeaturedrift"),
])
def test_runbook_base_url_reaches_every_alert(tmp_path, base, expected):
    assert cli.main(["alerts", "render", "--runbook-base-url", base, "--out-dir", str(tmp_path)]) == 0
    alerts = [r for g in yaml.safe_load((tmp_path / rules.ALERTS_FILE).read_text())["groups"] for r in g["rules"]]
    for rule in alerts:
        assert rule["annotations"]["runbook_url"] == expected.replace("mlmodelfeaturedrift", rule["alert"].lower())
    assert f"--runbook-base-url '{base}'" in (tmp_path / rules.ALERTS_FILE).read_text().splitlines()[0]
    for bad in ("javascript:alert(1)", "ftp://example.com/runbooks", "wiki runbooks", "wiki/run\nbooks"):
        assert cli.main(["alerts", "render", "--runbook-base-url", bad, "--out-dir", str(tmp_path)]) == 2, bad


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


# -- several renders side by side in one Prometheus (issue 25) -----------------------------------------

#: (selector of render A, of render B, the labels that tell their targets apart)
SIDE_BY_SIDE = [
    ('{job="app-a"}', '{job="app-b"}', ({"job": "app-a"}, {"job": "app-b"})),
    ('{namespace="a", job="model"}', '{namespace="b", job="model"}',
     ({"namespace": "a", "job": "model"}, {"namespace": "b", "job": "model"})),
]


def _series(target: dict, metric: str, values: str, **labels: str) -> dict:
    every = {**target, "instance": "h:8000", "model_name": "iris", "model_version": "v1", **labels}
    return {"series": metric + "{" + ", ".join(f'{k}="{v}"' for k, v in every.items()) + "}", "values": values}


def _labels(metric: str, target: dict, **more: str) -> str:
    every = {**target, "model_name": "iris", "model_version": "v1", **more}
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(every.items())) + "}"


@pytest.mark.parametrize("selector_a, selector_b, targets", SIDE_BY_SIDE)
def test_two_renders_with_disjoint_selectors_each_judge_their_own_series_only(tmp_path, selector_a, selector_b,
                                                                              targets):
    """Two apps, the same model name and version, one Prometheus: app A fails half its predictions and
    every feedback is wrong; app B is healthy. Each render's rules and alerts see their own app only."""
    a, b = targets
    files = []
    for name, selector in (("a", selector_a), ("b", selector_b)):
        files += rules.render_files(rules.Thresholds(selector=selector), str(tmp_path / name))[:2]
    per_min = "0+60x70"
    series = [
        _series(a, contract.PREDICTIONS_TOTAL, per_min),
        _series(a, contract.PREDICTION_ERRORS_TOTAL, "0+30x70", error_type="ValueError"),
        _series(a, contract.FEEDBACK_TOTAL, "0+10x70", outcome="incorrect"),
        _series(a, contract.REFERENCE_ACCURACY, "0.9x70"),
        _series(b, contract.PREDICTIONS_TOTAL, per_min),
        _series(b, contract.FEEDBACK_TOTAL, "0+10x70", outcome="correct"),
        _series(b, contract.REFERENCE_ACCURACY, "0.9x70"),
    ]

    def samples(metric: str, value_a: float, value_b: float) -> dict:
        return {"expr": metric, "eval_time": "60m",
                "exp_samples": [{"labels": _labels(metric, a), "value": value_a},
                                {"labels": _labels(metric, b), "value": value_b}]}

    firing = "count by (job, namespace, alertname, severity) (ALERTS{alertstate=\"firing\"})"
    fired = [("MLModelAccuracyDrop", "warning"), ("MLModelAvailabilityBudgetBurn", "critical"),
             ("MLModelAvailabilityBudgetBurn", "warning"), ("MLModelServerErrorRatioHigh", "critical")]
    test = {
        "rule_files": [str(f) for f in files],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                samples(contract.ACCURACY, 0, 1),
                samples(contract.FEEDBACK_RATE, 1 / 6, 1 / 6),
                samples(contract.ERROR_RATIO, 0.5, 0),
                samples(contract.INVALID_INPUT_RATIO, 0, 0),
                samples(contract.error_ratio("3d"), 0.5, 0),
                {"expr": firing, "eval_time": "60m",
                 "exp_samples": [{"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(
                     {**a, "alertname": alert, "severity": severity}.items())) + "}", "value": 1}
                     for alert, severity in fired]},
            ],
        }],
    }
    path = tmp_path / "side_by_side.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    promtool_test(path, f"\nrule files: {files}")


def _reads(expr: str):
    """Every vector selector of ``expr``: (name, {label: (op, value)})."""
    found = []

    def visit(node) -> None:
        if isinstance(node, pp.VectorSelector):
            found.append((node.name, {m.name: (str(m.op), m.value) for m in node.matchers.matchers}))

    pp.walk(pp.parse(expr), visit)
    return found


@pytest.mark.parametrize("selector, wanted", [
    (None, {"job": ("MatchOp.Equal", "mlmonitor")}),
    ('{namespace="prod", job=~"model-.*"}',
     {"namespace": ("MatchOp.Equal", "prod"), "job": ("MatchOp.Re", "model-.*")}),
])
def test_every_read_of_a_recording_rule_and_of_a_raw_series_carries_the_selector(selector, wanted):
    t = rules.Thresholds() if selector is None else rules.Thresholds(selector=selector)
    recorded = 0
    for name, expr in exprs(t):
        for metric, matchers in _reads(expr):
            assert {k: matchers.get(k) for k in wanted} == wanted, f"{name}: reads {metric} {matchers}"
            recorded += ":" in metric
        for clause in re.findall(r"\b(by|on)\s*\(([^)]*)\)", expr):
            kept = {label.strip() for label in clause[1].split(",")}
            assert set(wanted) <= kept, f"{name}: {clause[0]} ({clause[1]}) drops a label of the selector"
    assert recorded > 50


# -- selectors promtool would refuse are refused at render time (issue 24) ----------------------------

@pytest.mark.parametrize("bad, why", [
    ('{job="a\nb"}', "a raw control character"),
    ('{job="a\\qb"}', "the escape \\q is not one of PromQL's"),
    ('{job="\\xff"}', "not valid UTF-8"),
    ('{job="\\ud800"}', "not valid UTF-8"),
    ('{job=~"model-(a"}', "an unclosed '('"),
    ('{job=~"a**"}', "a repetition of a repetition"),
    ('{job=~"*a"}', "nothing before '*' to repeat"),
    ('{job=~"(?=a)b"}', "a group other than"),
    ('{job=~"a{1001}"}', "the repeat count {1001}"),
    ('{job=~"[z-a]"}', "not low-high"),
    ('{job=~"\\\\1"}', "the escape \\1"),
    ('{__name__="up"}', "__name__ is not a target label"),
    ('{model_name="iris"}', "model_name is not a target label"),
    ('{le="0.5"}', "le is not a target label"),
    ('{job="a"} or vector(1)', "not label matchers"),
])
def test_a_selector_promtool_would_refuse_is_refused_in_one_line(tmp_path, bad, why):
    proc = mlmonitor("alerts", "render", "--selector", bad, "--out-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stdout
    assert why in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("good", [
    '{job=~"(?i)model-[a-z0-9-]+\\\\.prod|canary.*"}',
    '{job="say \\"hi\\"\\n", namespace!~"dev|test", cluster="\\u00e9u-west"}',
    '{job=~"a{2,3}b+?c*(?:d|e)?$"}',
])
def test_promtool_accepts_what_the_render_accepts(tmp_path, good):
    promtool = require_binary("promtool")
    written = rules.render_files(rules.Thresholds(selector=good), str(tmp_path))[:2]
    proc = subprocess.run([promtool, "check", "rules", *written], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_time_scale_zero_names_the_one_option_given(tmp_path):
    proc = mlmonitor("alerts", "render", "--time-scale", "0", "--out-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mlmonitor: error: --time-scale must be positive, got 0.0"
    for option in ("--psi-threshold", "--mae-factor", "--ttfc-p95"):
        proc = mlmonitor("alerts", "render", option, "-1")
        assert proc.returncode == 2 and f"{option} must be positive" in proc.stderr
        assert "--time-scale" not in proc.stderr


_VALUE_CHARS = st.sampled_from(list('ab-._*+?()[]{}|^$\\"\n,=~!:0179xuU ée') + ["\\\\", '\\"', "\\n", "\\u00e9",
                                                                             "\\x41", "\\101", "(?i)", "(?:"])


@st.composite
def selector_texts(draw):
    """Selectors as a user might type them: mostly matcher-shaped, values from a hostile alphabet."""
    matchers = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(["job", "namespace", "env", "_x", "__name__", "le", "9a", "a b"]))
        op = draw(st.sampled_from(["=", "!=", "=~", "!~", "==", "~"]))
        value = "".join(draw(st.lists(_VALUE_CHARS, max_size=8)))
        matchers.append(f'{name}{op}"{value}"')
    return "{" + draw(st.sampled_from([",", ", ", " , "])).join(matchers) + "}"


def test_promtool_accepts_every_render_the_cli_accepts(tmp_path):
    """Hypothesis draws selectors; whatever the render accepts, one promtool run over all of them accepts."""
    promtool = require_binary("promtool")
    accepted, refused = [], []

    @settings(max_examples=600, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(selector_texts())
    def draw(text):
        try:
            thresholds = rules.Thresholds(selector=text)
        except ValueError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("--selector ")
            refused.append(text)
            return
        accepted.append(thresholds)

    draw()
    print(len(accepted), len(refused))
    assert len(accepted) >= 50 and len(refused) >= 50, (len(accepted), len(refused))
    files = []
    for i, thresholds in enumerate(accepted):
        (tmp_path / str(i)).mkdir()
        path = tmp_path / str(i) / "all.rules.yml"
        path.write_text(rules.render_text(thresholds))
        files.append(str(path))
    proc = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True, timeout=300)
    failed = [line for line in (proc.stdout + proc.stderr).splitlines() if "FAILED" in line or "error" in line]
    assert proc.returncode == 0, "\n".join(failed[:10]) + "\n" + "\n".join(
        repr(accepted[int(Path(f).parent.name)].selector) for f in files if any(f in line for line in failed))
