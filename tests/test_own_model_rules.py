"""Regression recording rules (issue 16): output drift and live MAE beside the reference's,
checked with ``promtool test rules`` on the shipped recording rules."""
from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.promstack import require_binary

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
    promtool = require_binary("promtool")
    path = tmp_path / "regression.yml"
    path.write_text(CASES)
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
