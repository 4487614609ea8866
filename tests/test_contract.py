"""The metric contract (mlmonitor/contract.py): names spelled once, rules and dashboards follow it."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.promstack import require_binary
from mlmonitor import contract
from mlmonitor.tools import dashboards, rules

REPO = Path(__file__).resolve().parents[1]
RECORD_NAME = re.compile(r"\b[a-z_]+:mlmonitor_[a-z_]+:[a-z0-9_]+\b")


def string_literals(path: Path):
    """Every string constant in a module, docstrings and f-string pieces included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def records(recording_groups) -> set:
    return {r["record"] for g in recording_groups for r in g["rules"]}


def test_rules_and_dashboards_spell_no_metric_name():
    for module in ("rules.py", "dashboards.py"):
        spelled = [s for s in string_literals(REPO / "mlmonitor" / "tools" / module) if "mlmonitor_" in s]
        assert spelled == [], f"{module} spells {spelled}: import the name from mlmonitor.contract"


def test_offline_modules_define_no_contract_constant():
    names = set(contract.__all__)
    for module in ("rules.py", "dashboards.py", "cli.py"):
        tree = ast.parse((REPO / "mlmonitor" / "tools" / module).read_text())
        assigned = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
        assert assigned & names == set(), f"{module} defines {assigned & names}: import it from the contract"


PACKAGE = sorted(p for p in (REPO / "mlmonitor").rglob("*.py") if p.name != "contract.py")
METRIC_NAMES = {value for name in contract.__all__ if isinstance(value := getattr(contract, name), str)
                and value.startswith("mlmonitor_")}


def code_literals(path: Path):
    """String constants that are not docstrings (a docstring may name a metric, as the README does)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def test_every_module_defines_contract_constants_only_by_importing_them():
    names = set(contract.__all__)
    for path in PACKAGE:
        tree = ast.parse(path.read_text())
        assigned = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)}
        assert assigned & names == set(), f"{path.name} defines {assigned & names}: import it from the contract"


def test_no_module_spells_a_metric_name_in_code():
    for path in PACKAGE:
        spelled = [s for s in code_literals(path) if any(name in s for name in METRIC_NAMES)]
        assert spelled == [], f"{path.name} spells {spelled}: import the name from mlmonitor.contract"


def test_every_family_mlmonitor_registers_is_named_in_the_contract():
    from prometheus_client import CollectorRegistry

    from mlmonitor.families import Families
    from mlmonitor.gpu import GpuCollector

    registry = CollectorRegistry()
    Families(registry, contract.DEFAULT_BUCKETS)
    families = {f.name for f in registry.collect()} | {f.name for f in GpuCollector(None).describe()}
    # prometheus-client drops a counter's _total from the family name
    assert families - {n.removesuffix("_total") for n in METRIC_NAMES} == set()


def test_every_recording_rule_read_exists():
    recording, alerting = rules.render_groups()
    recorded = records(recording)
    read = set()
    for group in recording + alerting:
        for rule in group["rules"]:
            read |= set(RECORD_NAME.findall(rule["expr"]))
    for text in dashboards.render().values():
        for panel in json.loads(text)["panels"]:
            for target in panel.get("targets", []):
                read |= set(RECORD_NAME.findall(target["expr"]))
    assert read - recorded == set()
    assert {contract.FEATURE_DRIFT.psi, contract.CLASS_DRIFT.psi, contract.ACCURACY,
            contract.LATENCY_P99, contract.ERROR_RATIO} <= read


def test_a_window_renamed_in_the_contract_is_followed_everywhere(tmp_path):
    """One line changed in contract.py: rules, alerts and dashboards all use the new names."""
    package = tmp_path / "mlmonitor"
    shutil.copytree(REPO / "mlmonitor", package, ignore=shutil.ignore_patterns("__pycache__"))
    source = (package / "contract.py").read_text()
    for old, new in (('DRIFT_WINDOW = "1h"', 'DRIFT_WINDOW = "2h"'), ('RATE_WINDOW = "5m"', 'RATE_WINDOW = "10m"')):
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    (package / "contract.py").write_text(source)
    script = (
        "import json, re, sys\n"
        "from mlmonitor.tools import dashboards, rules\n"
        "rules.render_files(rules.Thresholds(), sys.argv[1])\n"
        "rec, alerts = rules.render_groups()\n"
        "recorded = {r['record'] for g in rec for r in g['rules']}\n"
        "exprs = [r['expr'] for g in rec + alerts for r in g['rules']]\n"
        "exprs += [t['expr'] for d in dashboards.render().values() for p in json.loads(d)['panels']\n"
        "          for t in p.get('targets', [])]\n"
        "text = '\\n'.join(exprs)\n"
        "read = set(re.findall(r'\\b[a-z_]+:mlmonitor_[a-z_]+:[a-z0-9_]+\\b', text))\n"
        "print(json.dumps({'missing': sorted(read - recorded), 'recorded': sorted(recorded)}))\n"
    )
    out = tmp_path / "rules"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["missing"] == []
    recorded = set(result["recorded"])
    assert "model_version_feature:mlmonitor_feature_bin:psi2h" in recorded
    assert "model_version:mlmonitor_predictions:rate10m" in recorded
    assert "model_version:mlmonitor_prediction_errors:ratio_rate10m" in recorded
    assert not any(name.endswith(("psi1h", ":rate5m", "_5m")) for name in recorded)
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(out / rules.RECORDING_FILE),
                            str(out / rules.ALERTS_FILE)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_contract_imports_nothing():
    tree = ast.parse((REPO / "mlmonitor" / "contract.py").read_text())
    imported = {alias.name if isinstance(node, ast.Import) else node.module
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert imported <= {"__future__", "typing"}
