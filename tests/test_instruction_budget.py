"""The instruction budget of the request path (issue 26): it cannot creep.

``benchmarks/budget.toml`` holds the budget; ``bench_instructions.py --budget`` measures it under
callgrind, mlmonitor and the peers in the same run, and exits 1 when a share is over. Instruction
counts do not move with the machine's load, so this is a gate, not a timed test. Marked ``budget``
(and ``slow``): ``make budget`` runs it alone, after ``make test`` (CI); ``make test`` leaves it out.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import require_binary

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
#: the turn-one figures the issue starts the budget at: a maximum may go down, never up
TURN_ONE = {"metrics_vs_prometheus_flask_exporter_added": 0.45, "full_vs_peer_stack_added": 0.27}


def budget() -> dict:
    with open(BENCH / "budget.toml", "rb") as handle:
        return tomllib.load(handle)


def test_the_budget_is_at_or_below_the_turn_one_figures():
    rows = {row["name"]: row for row in budget()["budget"]}
    assert set(rows) == set(TURN_ONE)
    assert rows["metrics_vs_prometheus_flask_exporter_added"]["config"] == "mlmonitor_metrics"
    assert rows["metrics_vs_prometheus_flask_exporter_added"]["over"] == "prometheus_flask_exporter"
    assert rows["full_vs_peer_stack_added"]["config"] == "mlmonitor_full"
    assert rows["full_vs_peer_stack_added"]["over"] == "peer_stack"
    assert all(rows[name]["max"] <= TURN_ONE[name] for name in TURN_ONE)
    assert budget()["requests"] >= 300  # enough requests that one slow path in many still shows


@pytest.mark.slow
@pytest.mark.budget
def test_the_request_path_stays_within_the_instruction_budget(tmp_path):
    require_binary("valgrind")
    out = tmp_path / "budget.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_instructions.py"), "--budget", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode in (0, 1) and out.exists(), proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["budget"]) == set(TURN_ONE)
    assert report["results"]["bare"]["instructions_per_request"] > 10_000  # a real run
    over = {name: row for name, row in report["budget"].items() if not row["met"]}
    assert not over, proc.stdout
