"""Regression and feature-mismatch panels (issue 16, items 2, 3 and 6) on the quality and canary dashboards.

What each new panel reads is checked on the committed JSON, and its queries are evaluated by
Prometheus's own engine (``promtool test rules``) on known series, with the dashboard variables
substituted as Grafana would; the slow every-panel test (tests/test_dashboards.py) proves them on the
example app's diabetes regressor.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict

import pytest

from helpers.promstack import promtool_test, require_binary
from mlmonitor import contract
from test_dashboards import ALLOWED_EMPTY, DASHBOARD_DIR, panels, substitute

RULES = Path(__file__).resolve().parents[1] / "alerts" / "mlmonitor-recording.rules.yml"
QUALITY, CANARY = "mlmonitor-quality", "mlmonitor-canary"
#: (dashboard, title) -> names every one of its queries together must read
REGRESSION_PANELS = {
    (QUALITY, "Output drift (PSI of predicted values)"): {contract.OUTPUT_DRIFT.psi},
    (QUALITY, "Output distribution vs reference (last hour)"): {contract.OUTPUT_DRIFT.share,
                                                                contract.OUTPUT_DRIFT.reference_max},
    (QUALITY, "Output bin shares over time"): {contract.PREDICTION_BIN_TOTAL},
    (QUALITY, "Live MAE vs reference"): {contract.ABSOLUTE_ERROR_MEAN, contract.REFERENCE_ABSOLUTE_ERROR_MAX},
    (QUALITY, "Absolute error p50 / p90"): {contract.FEEDBACK_ABSOLUTE_ERROR_BUCKET},
    (QUALITY, "Feature mismatches: missing and unknown features"): {contract.FEATURE_MISSING_TOTAL,
                                                                     contract.FEATURE_UNKNOWN_TOTAL},
    (CANARY, "Output distribution, A vs B (last hour)"): {contract.OUTPUT_DRIFT.share,
                                                          contract.OUTPUT_DRIFT.reference_max},
    (CANARY, "Output drift (PSI), A vs B"): {contract.OUTPUT_DRIFT.psi},
    (CANARY, "Live MAE, A vs B"): {contract.ABSOLUTE_ERROR_MEAN, contract.REFERENCE_ABSOLUTE_ERROR_MAX},
    (CANARY, "Feature mismatches, A vs B"): {contract.FEATURE_MISSING_TOTAL, contract.FEATURE_UNKNOWN_TOTAL},
}
CLASS_PANELS = {(QUALITY, "Prediction drift (PSI of predicted classes)"),
                (QUALITY, "Predicted class shares vs reference (last hour)"),
                (QUALITY, "Predicted class shares over time"),
                (CANARY, "Predicted class shares, A vs B (last hour)"),
                (CANARY, "Predicted class share delta (B - A, last hour)")}


def by_title() -> Dict[tuple, dict]:
    out = {}
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        dash = json.loads(path.read_text())
        out.update({(dash["uid"], p["title"]): p for p in panels(dash)})
    return out


def test_regression_panels_read_the_regression_families_and_may_not_be_empty():
    found = by_title()
    for key, names in REGRESSION_PANELS.items():
        assert key in found, f"no panel {key}"
        text = " ".join(t["expr"] for t in found[key]["targets"])
        for name in names:
            assert re.search(rf"\b{re.escape(name)}\b", text), f"{key} does not read {name}"
        assert key not in ALLOWED_EMPTY


def test_class_score_and_accuracy_panels_say_they_are_empty_for_regressors():
    found = by_title()
    for key in CLASS_PANELS:
        assert "Empty for regression models" in found[key]["description"], key
    for key in [(QUALITY, "Score distribution"), (QUALITY, "Score p10 / median"), (CANARY, "Score median, A vs B")]:
        assert "regression models" in found[key]["description"], key
    for key in [(QUALITY, "Live accuracy vs baseline"), (QUALITY, "Feedback by outcome"),
                (CANARY, "Accuracy from feedback, A vs B")]:
        assert "MAE" in found[key]["description"], key
    for key in REGRESSION_PANELS:
        if "mismatch" not in key[1].lower():
            assert "Regression models only" in found[key]["description"], key


# -- the queries on known series, through Prometheus's engine -------------------------------------

S = 'job="mlmonitor", instance="a", model_name="diabetes"'
VALUES = {"job": "mlmonitor", "model_name": "(diabetes)", "model_version": "(v1|v2)", "version_a": "v1",
          "version_b": "v2", "__rate_interval": "5m"}
SERIES = f"""
      # v1: per minute 6 values of bmi missing, 3 unknown names, 60 binned values per feature
      - series: 'mlmonitor_feature_missing_total{{{S}, model_version="v1", feature="bmi"}}'
        values: '0+6x30'
      - series: 'mlmonitor_feature_unknown_total{{{S}, model_version="v1"}}'
        values: '0+3x30'
      - series: 'mlmonitor_feature_bin_total{{{S}, model_version="v1", feature="bmi", bin="0"}}'
        values: '0+60x30'
      # v2: features observed, nothing missing or unknown: 0, not a gap
      - series: 'mlmonitor_feature_bin_total{{{S}, model_version="v2", feature="bmi", bin="0"}}'
        values: '0+60x30'
      - series: 'mlmonitor_feature_unknown_total{{{S}, model_version="v2"}}'
        values: '0x30'
      # v1 outputs: 45 / 15 per minute in bins 00 / 01; reference 0.5 / 0.5
      - series: 'mlmonitor_prediction_bin_total{{{S}, model_version="v1", bin="00"}}'
        values: '0+45x30'
      - series: 'mlmonitor_prediction_bin_total{{{S}, model_version="v1", bin="01"}}'
        values: '0+15x30'
      - series: 'mlmonitor_prediction_reference_ratio{{{S}, model_version="v1", bin="00"}}'
        values: '0.5x30'
      - series: 'mlmonitor_prediction_reference_ratio{{{S}, model_version="v1", bin="01"}}'
        values: '0.5x30'
      # v1 feedback: MAE 4 (40 per minute over 10 answers), reference MAE 2.5
      - series: 'mlmonitor_feedback_absolute_error_sum{{{S}, model_version="v1"}}'
        values: '0+40x30'
      - series: 'mlmonitor_feedback_absolute_error_count{{{S}, model_version="v1"}}'
        values: '0+10x30'
      - series: 'mlmonitor_reference_absolute_error{{{S}, model_version="v1"}}'
        values: '2.5x30'"""

L = 'job="mlmonitor", model_name="diabetes"'
#: (panel, refId) -> the samples its query gives at 20m
EXPECTED = {
    ((QUALITY, "Feature mismatches: missing and unknown features"), "A"): [
        (f'{{{L}, model_version="v1", feature="bmi"}}', 30), (f'{{{L}, model_version="v2", feature="bmi"}}', 0)],
    ((QUALITY, "Feature mismatches: missing and unknown features"), "B"): [
        (f'{{{L}, model_version="v1"}}', 15), (f'{{{L}, model_version="v2"}}', 0)],
    ((QUALITY, "Output bin shares over time"), "A"): [
        (f'{{{L}, model_version="v1", bin="00"}}', 0.75), (f'{{{L}, model_version="v1", bin="01"}}', 0.25)],
    ((QUALITY, "Output distribution vs reference (last hour)"), "A"): [
        (f'model_version_bin:mlmonitor_prediction_bin:ratio_rate1h{{{L}, model_version="v1", bin="00"}}', 0.75),
        (f'model_version_bin:mlmonitor_prediction_bin:ratio_rate1h{{{L}, model_version="v1", bin="01"}}', 0.25)],
    ((QUALITY, "Output distribution vs reference (last hour)"), "B"): [
        (f'model_version_bin:mlmonitor_prediction_reference_ratio:max{{{L}, model_version="v1", bin="00"}}', 0.5),
        (f'model_version_bin:mlmonitor_prediction_reference_ratio:max{{{L}, model_version="v1", bin="01"}}', 0.5)],
    ((QUALITY, "Live MAE vs reference"), "A"): [
        (f'model_version:mlmonitor_feedback_absolute_error:mean1h{{{L}, model_version="v1"}}', 4)],
    ((QUALITY, "Live MAE vs reference"), "B"): [
        (f'model_version:mlmonitor_reference_absolute_error:max{{{L}, model_version="v1"}}', 2.5)],
    ((CANARY, "Feature mismatches, A vs B"), "B"): [(f'{{{L}}}', 15)],
    ((CANARY, "Feature mismatches, A vs B"), "D"): [(f'{{{L}}}', 0)],
}


def test_new_panel_queries_give_exact_values_on_known_series(tmp_path):
    require_binary("promtool")
    found = by_title()
    cases = []
    for (key, ref), samples in EXPECTED.items():
        (target,) = [t for t in found[key]["targets"] if t["refId"] == ref]
        expr = substitute(target["expr"], {**VALUES, "model_name": "diabetes"} if key[0] == CANARY else VALUES)
        lines = "".join(f"\n          - labels: '{labels}'\n            value: {value}" for labels, value in samples)
        cases.append(f"      - expr: {json.dumps(expr)}\n        eval_time: 20m\n        exp_samples:{lines}")
    path = tmp_path / "panels.yml"
    path.write_text(f"rule_files: [{RULES}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
                    f"    input_series:{SERIES}\n    promql_expr_test:\n" + "\n".join(cases) + "\n")
    promtool_test(path)


@pytest.mark.parametrize("key", sorted(REGRESSION_PANELS))
def test_every_regression_panel_has_a_description_and_unit(key):
    p = by_title()[key]
    assert p["description"].strip() and p["fieldConfig"]["defaults"]["unit"]
