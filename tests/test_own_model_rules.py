"""Regression recording rules (issue 16): output drift and live MAE beside the reference's,
checked with ``promtool test rules`` on the shipped recording rules."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers.promstack import promtool_test, require_binary
from mlmonitor.tools import cli, rules

RULES = Path(__file__).resolve().parents[1] / "alerts" / "mlmonitor-recording.rules.yml"
S = 'job="mlmonitor", model_name="glucose"'

CASES = f"""
rule_files:
  - {RULES}
evaluation_interval: 1m
tests:
  # v1: every prediction in output bin 00, the reference 0.5 / 0.5: PSI 4.6043 (drift).
  # v2: live shares equal the reference's over two replicas: PSI 0. v3: no traffic: no PSI.
  # feedback on v1: 30 units of absolute error per minute over 10 answers: MAE 3.
  - interval: 1m
    input_series:
      - series: 'mlmonitor_prediction_bin_total{{{S}, instance="a", model_version="v1", bin="00"}}'
        values: '0+60x60'
      - series: 'mlmonitor_prediction_bin_total{{{S}, instance="a", model_version="v1", bin="01"}}'
        values: '0x60'
      - series: 'mlmonitor_prediction_bin_total{{{S}, instance="a", model_version="v2", bin="00"}}'
        values: '0+30x60'
      - series: 'mlmonitor_prediction_bin_total{{{S}, instance="b", model_version="v2", bin="01"}}'
        values: '0+30x60'
      - series: 'mlmonitor_prediction_bin_total{{{S}, instance="a", model_version="v3", bin="00"}}'
        values: '0x60'
      - series: 'mlmonitor_prediction_reference_ratio{{{S}, instance="a", model_version="v1", bin="00"}}'
        values: '0.5x60'
      - series: 'mlmonitor_prediction_reference_ratio{{{S}, instance="a", model_version="v1", bin="01"}}'
        values: '0.5x60'
      - series: 'mlmonitor_prediction_reference_ratio{{{S}, instance="a", model_version="v2", bin="00"}}'
        values: '0.5x60'
      - series: 'mlmonitor_prediction_reference_ratio{{{S}, instance="b", model_version="v2", bin="01"}}'
        values: '0.5x60'
      - series: 'mlmonitor_prediction_reference_ratio{{{S}, instance="a", model_version="v3", bin="00"}}'
        values: '1x60'
      - series: 'mlmonitor_feedback_absolute_error_sum{{{S}, instance="a", model_version="v1"}}'
        values: '0+30x60'
      - series: 'mlmonitor_feedback_absolute_error_count{{{S}, instance="a", model_version="v1"}}'
        values: '0+10x60'
      - series: 'mlmonitor_reference_absolute_error{{{S}, instance="a", model_version="v1"}}'
        values: '2.5x60'
    promql_expr_test:
      - expr: model_version:mlmonitor_prediction_bin:psi1h
        eval_time: 60m
        exp_samples:
          - labels: 'model_version:mlmonitor_prediction_bin:psi1h{{{S}, model_version="v1"}}'
            value: 4.60431846666895
          - labels: 'model_version:mlmonitor_prediction_bin:psi1h{{{S}, model_version="v2"}}'
            value: 0
      - expr: model_version:mlmonitor_feedback_absolute_error:mean1h
        eval_time: 60m
        exp_samples:
          - labels: 'model_version:mlmonitor_feedback_absolute_error:mean1h{{{S}, model_version="v1"}}'
            value: 3
      - expr: model_version:mlmonitor_reference_absolute_error:max
        eval_time: 60m
        exp_samples:
          - labels: 'model_version:mlmonitor_reference_absolute_error:max{{{S}, model_version="v1"}}'
            value: 2.5
"""


def test_output_drift_and_live_mae_rules_give_exact_values(tmp_path):
    path = tmp_path / "regression.yml"
    path.write_text(CASES)
    promtool_test(path)


MAE_CASE = """
rule_files: [{recording}, {alerts}]
evaluation_interval: 1m
tests:
  # MAE 3 from feedback for both versions; reference MAE 1.5 (v1) and 2.5 (v2)
  - interval: 1m
    input_series:
{series}
    promql_expr_test:
      - expr: 'ALERTS{{alertname="MLModelAbsoluteErrorHigh", alertstate="firing"}}'
        eval_time: 30m
        exp_samples:{expected}
"""


def _mae_case(recording: Path, alerts: Path, firing: list) -> str:
    series = []
    for version, reference in (("v1", 1.5), ("v2", 2.5)):
        labels = f'{S}, instance="a", model_version="{version}"'
        series += [f"      - series: 'mlmonitor_feedback_absolute_error_sum{{{labels}}}'\n        values: '0+30x40'",
                   f"      - series: 'mlmonitor_feedback_absolute_error_count{{{labels}}}'\n        values: '0+10x40'",
                   f"      - series: 'mlmonitor_reference_absolute_error{{{labels}}}'\n        values: '{reference}x40'"]
    expected = "".join(
        f"\n          - labels: 'ALERTS{{alertname=\"MLModelAbsoluteErrorHigh\", alertstate=\"firing\","
        f" family=\"quality\", severity=\"warning\", {S}, model_version=\"{v}\"}}'\n            value: 1"
        for v in firing) or " []"
    return MAE_CASE.format(recording=recording, alerts=alerts, series="\n".join(series), expected=expected)


@pytest.mark.parametrize("factor, firing", [(None, ["v1"]), ("1.1", ["v1", "v2"]), ("2.5", [])])
def test_mae_factor_option_decides_which_versions_fire(tmp_path, factor, firing):
    """``alerts render --mae-factor``: live MAE 3 against references 1.5 and 2.5 (default factor 1.5)."""
    require_binary("promtool")
    args = ["alerts", "render", "--out-dir", str(tmp_path)] + (["--mae-factor", factor] if factor else [])
    assert cli.main(args) == 0
    alerts = tmp_path / rules.ALERTS_FILE
    if factor:
        assert f"> on (job, model_name, model_version) ({factor} *" in alerts.read_text()
        assert f"--mae-factor {factor}" in alerts.read_text().splitlines()[0]
    case = tmp_path / "mae.yml"
    case.write_text(_mae_case(tmp_path / rules.RECORDING_FILE, alerts, firing))
    promtool_test(case, case.read_text())


def test_mae_factor_must_be_positive():
    with pytest.raises(ValueError, match="--mae-factor must be positive"):
        rules.Thresholds(mae_factor=0)


def test_shipped_regression_alert_tests_cover_firing_and_silence():
    """alerts/tests/regression.yml: each regression alert fires for one version and stays silent for
    the others (no drift, too few values, MAE within the factor, no reference MAE)."""
    path = RULES.parent / "tests" / "regression.yml"
    promtool_test(path)
    fired = {}
    for case in yaml.safe_load(path.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            fired.setdefault(check["alertname"], []).append(
                sorted(a["exp_labels"]["model_version"] for a in check["exp_alerts"]))
    assert fired == {"MLModelOutputDrift": [[], ["v1"]], "MLModelAbsoluteErrorHigh": [[], ["v1"]]}
