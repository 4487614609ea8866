"""mixtool's lint rules (issue 28, item 5), applied to the rules and dashboards the project ships.

mixtool is a Go program and cannot be installed here, so its rules are restated: alert names in
CamelCase (``^([A-Z]+[a-z0-9]+)+$``) of at most 40 characters, at most 20 rules a group, ``severity``
one of critical / warning / info, a templated ``description``, an untemplated ``summary`` that starts
with a capital letter and ends with a period; dashboards with a title and a uid.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ALERT_NAME = re.compile(r"^([A-Z]+[a-z0-9]+)+$")


def lint_groups(groups: list[dict]) -> list[str]:
    """One line per broken rule of mixtool's Prometheus lint."""
    problems = []
    for group in groups:
        if len(group["rules"]) > 20:
            problems.append(f"group {group['name']}: {len(group['rules'])} rules, more than 20")
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name, ann = rule["alert"], rule.get("annotations", {})
            if not ALERT_NAME.match(name):
                problems.append(f"{name}: not CamelCase")
            if len(name) > 40:
                problems.append(f"{name}: longer than 40 characters")
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{name}: severity not critical, warning or info")
            if "{{" not in ann.get("description", ""):
                problems.append(f"{name}: description not templated")
            summary = ann.get("summary", "")
            if "{{" in summary:
                problems.append(f"{name}: summary templated")
            if not summary[:1].isupper() or not summary.endswith("."):
                problems.append(f"{name}: summary does not start with a capital letter and end with a period")
    return problems


def lint_dashboard(name: str, board: dict) -> list[str]:
    return [f"{name}: no {key}" for key in ("title", "uid") if not board.get(key)]


SHIPPED_RULES = ["alerts/mlmonitor-alerts.rules.yml", "alerts/mlmonitor-recording.rules.yml"]


@pytest.mark.parametrize("path", SHIPPED_RULES)
def test_the_shipped_rule_files_pass_mixtools_lint(path):
    groups = yaml.safe_load((REPO / path).read_text())["groups"]
    assert groups
    assert lint_groups(groups) == []


def test_the_shipped_prometheusrule_passes_mixtools_lint():
    manifest = yaml.safe_load((REPO / "alerts/prometheus-operator/mlmonitor-prometheusrule.yaml").read_text())
    assert lint_groups(manifest["spec"]["groups"]) == []


def test_the_shipped_dashboards_have_a_title_and_a_uid():
    boards = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
    assert len(boards) == 3
    for path in boards:
        assert lint_dashboard(path.name, json.loads(path.read_text())) == []


def test_the_lint_finds_each_broken_rule():
    good = {"alert": "MLModelGood", "labels": {"severity": "warning"},
            "annotations": {"summary": "A model is fine.", "description": "{{ $labels.job }} is fine."}}
    bad = [
        dict(good, alert="mlModel_bad"),
        dict(good, alert="MLModel" + "Long" * 9),
        dict(good, labels={"severity": "page"}),
        dict(good, annotations={"summary": "A model is fine.", "description": "untemplated"}),
        dict(good, annotations={"summary": "Job {{ $labels.job }} is down.", "description": "{{ $value }}"}),
        dict(good, annotations={"summary": "a model is down", "description": "{{ $value }}"}),
    ]
    assert lint_groups([{"name": "ok", "rules": [good]}]) == []
    found = lint_groups([{"name": "g", "rules": bad + [good] * 15}])
    assert [line.split(": ", 1)[1] for line in found] == [
        "21 rules, more than 20", "not CamelCase", "longer than 40 characters",
        "severity not critical, warning or info", "description not templated", "summary templated",
        "summary does not start with a capital letter and end with a period"]
    assert lint_dashboard("x.json", {"title": "X"}) == ["x.json: no uid"]
