"""``mlmonitor kubernetes render`` and deploy/kubernetes/ (issue 28, items 1 and 2).

No API server runs here, so the objects are checked offline the strongest ways at hand: the
prometheus-operator v0.80.1 CRD schemas (from the cloudcoil-models-prometheus-operator 0.80.1.0 models)
with unknown fields refused, ``kubernetes-validate --strict`` for the built-in kinds, ``kubectl
kustomize`` for the directory, and promtool for the PrometheusRule's rules.
"""
from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as operator

from helpers.promstack import promtool_test, require_binary
from mlmonitor import contract
from mlmonitor.tools import cli, dashboards, kubernetes, rules

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "kubernetes"
#: the options deploy/kubernetes/kustomization.yaml names for deploy/kubernetes/monitoring/
EXAMPLE_ARGS = ("--name", "mlmonitor-example", "--namespace", "default", "--release-label", "kube-prometheus-stack",
                "--selector", '{job="mlmonitor-example"}')
KUBERNETES_VERSION = "1.30.0"


def mlmonitor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlmonitor.tools.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def objects(texts: dict[str, str]) -> list[dict[str, Any]]:
    return [yaml.safe_load(text) for name, text in texts.items() if name != kubernetes.KUSTOMIZATION]


def example_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(EXAMPLE.glob("*.yaml")) if path.name != kubernetes.KUSTOMIZATION
            for doc in yaml.safe_load_all(path.read_text())]


# -- the operator's schemas, unknown fields refused --------------------------------------------------

def _closed(node: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its properties."""
    if isinstance(node, dict):
        node = {key: _closed(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_closed(item) for item in node]
    return node


SCHEMAS = {kind: _closed(getattr(operator, kind).model_json_schema(by_alias=True))
           for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")}


def operator_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMAS[obj["kind"]])
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]


def builtin_errors(obj: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


def errors(obj: dict[str, Any]) -> list[str]:
    return operator_errors(obj) if obj["apiVersion"] == kubernetes.API else builtin_errors(obj)


OPTIONS = [
    kubernetes.Options(),
    kubernetes.Options(name="fraud-model", namespace="ml", release_label="prom", monitor="pod",
                       labels=(("team", "risk"),), match_labels=(("app", "fraud"),), port_name="metrics",
                       scrape_interval="15s", thresholds=rules.Thresholds(selector='{job="ml/fraud-model"}')),
]


@pytest.mark.parametrize("options", OPTIONS, ids=["defaults", "pod-monitor"])
def test_every_rendered_object_passes_its_schema_with_unknown_fields_refused(options):
    rendered = objects(kubernetes.render(options))
    kinds = sorted(obj["kind"] for obj in rendered)
    monitor = "PodMonitor" if options.monitor == "pod" else "ServiceMonitor"
    assert kinds == sorted(["ConfigMap"] * len(dashboards.DASHBOARDS) + ["PrometheusRule", monitor])
    for obj in rendered:
        assert errors(obj) == [], obj["metadata"]["name"]


def test_the_deployment_and_service_pass_kubernetes_validate_strict():
    for obj in example_objects():
        assert errors(obj) == [], obj["metadata"]["name"]


def _with(obj: dict[str, Any], path: list[Any], old: str, new: str) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    node = obj
    for key in path:
        node = node[key]
    node[new] = node.pop(old)
    return obj


def test_a_misspelt_field_fails_the_checks():
    """The checks must refuse what the API server would: a typo is an unknown field, not a no-op."""
    by_kind = {obj["kind"]: obj for obj in objects(kubernetes.render(kubernetes.Options()))}
    by_kind.update({obj["kind"]: obj for obj in example_objects()})
    typos = [
        ("ServiceMonitor", ["spec"], "endpoints", "endpoint"),
        ("ServiceMonitor", ["spec", "endpoints", 0], "interval", "intervall"),
        ("PrometheusRule", ["spec", "groups", 0, "rules", 0], "expr", "expression"),
        ("PrometheusRule", ["metadata"], "labels", "label"),
        ("ConfigMap", ["metadata"], "annotations", "annotation"),
        ("Deployment", ["spec", "template", "spec", "containers", 0], "livenessProbe", "livenesProbe"),
        ("Service", ["spec", "ports", 0], "targetPort", "target_port"),
    ]
    for kind, path, old, new in typos:
        assert errors(_with(by_kind[kind], path, old, new)), f"{kind}: {new} accepted"
    pod = objects(kubernetes.render(kubernetes.Options(monitor="pod")))[0]
    assert errors(_with(pod, ["spec"], "podMetricsEndpoints", "endpoints"))


# -- sizes, labels, names -----------------------------------------------------------------------------

def test_each_object_is_below_what_kubernetes_takes():
    texts = kubernetes.render(kubernetes.Options())
    for name, text in texts.items():
        size = len(text.encode())
        kind = yaml.safe_load(text)["kind"]
        if kind == "ConfigMap":
            assert size < 256 * 1024, (name, size)
        elif kind == "PrometheusRule":
            assert size < 512 * 1024, (name, size)


def test_an_object_over_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(kubernetes, "MAX_CONFIGMAP_BYTES", 1000)
    with pytest.raises(ValueError, match="overview.yaml is [0-9]+ bytes"):
        kubernetes.render(kubernetes.Options())


def test_every_object_carries_the_release_label_and_the_given_labels_when_asked():
    options = kubernetes.Options(release_label="kps", labels=(("team", "risk"), ("tier", "gold")))
    for obj in objects(kubernetes.render(options)):
        labels = obj["metadata"]["labels"]
        assert labels["release"] == "kps", obj["metadata"]["name"]
        assert labels["team"] == "risk"
        assert labels["tier"] == "gold"
    assert all("release" not in obj["metadata"]["labels"] for obj in objects(kubernetes.render(kubernetes.Options())))


def test_the_dashboards_carry_the_sidecar_label_and_folder_and_equal_the_shipped_json():
    options = kubernetes.Options(dashboard_label=("grafana_dashboard", "mine"), folder_annotation="grafana_folder",
                                 folder="ML")
    maps = [obj for obj in objects(kubernetes.render(options)) if obj["kind"] == "ConfigMap"]
    shipped = {path.name: path.read_text() for path in (REPO / "grafana" / "dashboards").glob("*.json")}
    assert len(maps) == len(dashboards.DASHBOARDS)
    for obj in maps:
        assert obj["metadata"]["labels"]["grafana_dashboard"] == "mine"
        assert obj["metadata"]["annotations"] == {"grafana_folder": "ML"}
        (name, text), = obj["data"].items()
        assert text + "\n" == shipped[name]
    defaults = [obj for obj in objects(kubernetes.render(kubernetes.Options())) if obj["kind"] == "ConfigMap"]
    assert {obj["metadata"]["labels"]["grafana_dashboard"] for obj in defaults} == {"1"}
    assert {tuple(obj["metadata"]["annotations"]) for obj in defaults} == {("k8s-sidecar-target-directory",)}


def test_two_renders_for_two_apps_share_no_object_or_file_name():
    a = kubernetes.render(kubernetes.Options(name="app-a", thresholds=rules.Thresholds(selector='{job="a"}')))
    b = kubernetes.render(kubernetes.Options(name="app-b", thresholds=rules.Thresholds(selector='{job="b"}')))
    names = [{(obj["kind"], obj["metadata"]["name"]) for obj in objects(texts)} for texts in (a, b)]
    assert len(names[0]) == len(a) - 1
    assert not names[0] & names[1]
    assert set(a) & set(b) == {kubernetes.KUSTOMIZATION}


def test_the_prometheusrule_holds_the_rules_alerts_render_writes():
    """One source: the same groups as ``alerts render --prometheus-operator`` with the same thresholds."""
    t = rules.Thresholds(selector='{job="x"}', error_ratio=0.1, runbook_base_url="https://runbooks.example/ml")
    rule = next(obj for obj in objects(kubernetes.render(kubernetes.Options(thresholds=t)))
                if obj["kind"] == "PrometheusRule")
    manifest = yaml.safe_load(rules.render_text(t, prometheus_operator=True))
    assert rule["spec"] == manifest["spec"]


# -- promtool on the PrometheusRule's spec ------------------------------------------------------------

def _spec_file(options: kubernetes.Options, path: Path) -> Path:
    rule = next(obj for obj in objects(kubernetes.render(options)) if obj["kind"] == "PrometheusRule")
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def test_the_prometheusrule_spec_passes_promtool_check_and_the_project_rule_tests(tmp_path):
    spec = _spec_file(kubernetes.Options(), tmp_path / "spec.yml")
    check = subprocess.run([require_binary("promtool"), "check", "rules", str(spec)], capture_output=True,
                           text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    for test_file in sorted((REPO / "alerts" / "tests").glob("*.yml")):
        test = yaml.safe_load(test_file.read_text())
        test["rule_files"] = [str(spec)]
        path = tmp_path / test_file.name
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        promtool_test(path, f"\n{test_file.name} on the PrometheusRule's spec")


def test_two_apps_prometheusrules_judge_their_own_series_only(tmp_path):
    """App a fails half its predictions, app b none: each render's rules see their own job only."""
    files = [str(_spec_file(kubernetes.Options(name=f"app-{n}", thresholds=rules.Thresholds(selector=f'{{job="{n}"}}')),
                            tmp_path / f"{n}.yml")) for n in ("a", "b")]

    def series(job: str, metric: str, values: str, **labels: str) -> dict[str, str]:
        every = {"job": job, "instance": "h:8000", "model_name": "iris", "model_version": "v1", **labels}
        return {"series": metric + "{" + ", ".join(f'{k}="{v}"' for k, v in every.items()) + "}", "values": values}

    test = {"rule_files": files, "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [series("a", contract.PREDICTIONS_TOTAL, "0+60x40"),
                         series("a", contract.PREDICTION_ERRORS_TOTAL, "0+30x40", error_type="ValueError"),
                         series("b", contract.PREDICTIONS_TOTAL, "0+60x40")],
        "promql_expr_test": [{"expr": contract.ERROR_RATIO, "eval_time": "30m", "exp_samples": [
            {"labels": f'{contract.ERROR_RATIO}{{job="{job}", model_name="iris", model_version="v1"}}', "value": v}
            for job, v in (("a", 0.5), ("b", 0))]},
            {"expr": 'count by (job, alertname) (ALERTS{alertstate="firing", alertname="MLModelServerErrorRatioHigh"})',
             "eval_time": "30m",
             "exp_samples": [{"labels": '{alertname="MLModelServerErrorRatioHigh", job="a"}', "value": 1}]}],
    }]}
    path = tmp_path / "side_by_side.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    promtool_test(path, f"\nrule files: {files}")


# -- the command and the committed example ------------------------------------------------------------

def test_the_committed_example_objects_equal_what_the_command_renders(tmp_path):
    out = tmp_path / "monitoring"
    proc = mlmonitor("kubernetes", "render", *EXAMPLE_ARGS, "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == sorted(str(p) for p in out.iterdir())
    committed = EXAMPLE / "monitoring"
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in out.iterdir())
    for path in out.iterdir():
        assert (committed / path.name).read_text() == path.read_text(), (
            f"{path.name} is stale: run `mlmonitor kubernetes render {' '.join(EXAMPLE_ARGS)}"
            " --out-dir deploy/kubernetes/monitoring`")
    assert "--selector '{job=\"mlmonitor-example\"}'" in (EXAMPLE / "kustomization.yaml").read_text()


def test_without_out_dir_the_objects_go_to_stdout():
    proc = mlmonitor("kubernetes", "render", "--name", "x", "--monitor", "pod", "--release-label", "kps")
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["PodMonitor", "PrometheusRule", "ConfigMap", "ConfigMap", "ConfigMap"]
    assert all(d["metadata"]["labels"]["release"] == "kps" for d in docs)


@pytest.mark.parametrize("args, why", [
    (("--name", "My_App"), "not a Kubernetes name"),
    (("--labels", "team"), "not KEY=VALUE"),
    (("--monitor", "node"), "invalid choice"),
    (("--release-label", "kube prometheus"), "not a Kubernetes label"),
    (("--labels", "team=risk/ml"), "not a Kubernetes label"),
])
def test_bad_options_are_refused_in_one_line(args, why):
    proc = mlmonitor("kubernetes", "render", *args)
    assert proc.returncode == 2
    assert why in proc.stderr


def test_the_service_monitor_scrapes_the_service_port_by_its_name_and_labels():
    by_kind = {obj["kind"]: obj for obj in example_objects()}
    by_kind.update({obj["kind"]: obj for obj in objects(
        {p.name: p.read_text() for p in (EXAMPLE / "monitoring").glob("*.yaml")})})
    monitor, service, deployment = by_kind["ServiceMonitor"], by_kind["Service"], by_kind["Deployment"]
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container, = pod["spec"]["containers"]
    container_ports = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports
    # the job label Prometheus gives a ServiceMonitor's targets is the Service's name: the rules' selector
    assert service["metadata"]["name"] == "mlmonitor-example"


def test_the_deployment_keeps_gunicorn_metrics_exact_and_probes_healthz():
    deployment = next(obj for obj in example_objects() if obj["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container, = spec["containers"]
    assert container["command"][:3] == ["gunicorn", "-c", "example_app/gunicorn.conf.py"]
    assert (REPO / container["command"][2]).is_file()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLMONITOR_EXCLUDED_URLS"] == "/healthz"
    mount, = (m for m in container["volumeMounts"] if m["mountPath"] == env["PROMETHEUS_MULTIPROC_DIR"])
    volume, = (v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    named = {port["name"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert container[probe]["httpGet"]["port"] in named


def test_kubectl_kustomize_renders_the_example_directory(tmp_path):
    kubectl = require_binary("kubectl")
    proc = subprocess.run([kubectl, "kustomize", str(EXAMPLE)], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "KUBECONFIG": os.devnull})
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert sorted(d["kind"] for d in docs) == sorted(
        ["Deployment", "Service", "ServiceMonitor", "PrometheusRule"] + ["ConfigMap"] * len(dashboards.DASHBOARDS))
    assert {d["metadata"]["namespace"] for d in docs} == {"default"}
    for doc in docs:
        assert errors(doc) == [], doc["metadata"]["name"]
    # a render of its own, with a namespace, is a kustomization too
    out = tmp_path / "render"
    kubernetes.write(replace(kubernetes.Options(), namespace="ml", monitor="pod"), str(out))
    proc = subprocess.run([kubectl, "kustomize", str(out)], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "KUBECONFIG": os.devnull})
    assert proc.returncode == 0, proc.stderr
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(proc.stdout)} == {"ml"}


# -- what a user gets ---------------------------------------------------------------------------------

def _kustomize(directory: Path) -> subprocess.CompletedProcess:
    """What ``kubectl apply -k directory`` would send (no cluster here)."""
    return subprocess.run([require_binary("kubectl"), "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "KUBECONFIG": os.devnull})


def readme_commands() -> list[list[str]]:
    """The commands of the shell block of the README's "On Kubernetes" section, as written."""
    section = (REPO / "README.md").read_text().split("\n## On Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_following_the_readme_gives_objects_the_checks_accept(tmp_path, monkeypatch):
    """Run the README's render command as written, then what its `kubectl apply -k` applies: every object
    passes its schema (unknown fields refused), the sizes, the release label and promtool."""
    commands = readme_commands()
    assert [argv[:2] for argv in commands] == [["mlmonitor", "kubernetes"], ["kubectl", "apply"]]
    monkeypatch.chdir(tmp_path)  # the README's relative --out-dir lands here
    render, apply = commands
    assert cli.main(render[1:]) == 0
    option = dict(zip(render[3::2], render[4::2]))
    assert apply[2:] == ["-k", option["--out-dir"]]
    built = _kustomize(tmp_path / option["--out-dir"])
    assert built.returncode == 0, built.stderr
    docs = list(yaml.safe_load_all(built.stdout))
    monitor = "PodMonitor" if option.get("--monitor") == "pod" else "ServiceMonitor"
    assert sorted(d["kind"] for d in docs) == sorted(
        [monitor, "PrometheusRule"] + ["ConfigMap"] * len(dashboards.DASHBOARDS))
    for doc in docs:
        assert errors(doc) == [], doc["metadata"]["name"]
        assert doc["metadata"]["namespace"] == option["--namespace"]
        assert doc["metadata"]["labels"]["release"] == option["--release-label"]
        limit = 256 * 1024 if doc["kind"] == "ConfigMap" else 512 * 1024
        assert len(yaml.safe_dump(doc).encode()) < limit
    scrape, = (d for d in docs if d["kind"] == monitor)
    assert [e["port"] for e in scrape["spec"]["endpoints"]] == [option["--port-name"]]
    rule, = (d for d in docs if d["kind"] == "PrometheusRule")
    spec = tmp_path / "spec.yml"
    spec.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    check = subprocess.run([require_binary("promtool"), "check", "rules", str(spec)], capture_output=True,
                           text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    selector = option["--selector"].strip("{}")
    assert all(selector in r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])


SIDE_BY_SIDE = {
    "two names": [("--name", "app-a", "--selector", '{job="app-a"}'),
                  ("--name", "app-b", "--selector", '{job="app-b"}', "--no-dashboards")],
    "two namespaces": [("--name", "my-model", "--namespace", "team-a", "--selector",
                        '{namespace="team-a", job="my-model"}'),
                       ("--name", "my-model", "--namespace", "team-b", "--selector",
                        '{namespace="team-b", job="my-model"}', "--no-dashboards", "--monitor", "pod")],
}


@pytest.mark.parametrize("case", SIDE_BY_SIDE)
def test_two_renders_apply_side_by_side_in_one_kustomization(tmp_path, case):
    """kustomize refuses two objects of one kind, name and namespace: both renders in one build pass it,
    and the dashboards (fixed uids, rendered once as the README says) are there once."""
    for n, options in enumerate(SIDE_BY_SIDE[case]):
        assert cli.main(["kubernetes", "render", *options, "--release-label", "kps",
                         "--out-dir", str(tmp_path / f"app-{n}")]) == 0
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["app-0", "app-1"]}))
    built = _kustomize(tmp_path)
    assert built.returncode == 0, built.stderr
    docs = list(yaml.safe_load_all(built.stdout))
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)) == 2 * 2 + len(dashboards.DASHBOARDS)
    uids = [json.loads(text)["uid"] for d in docs if d["kind"] == "ConfigMap" for text in d["data"].values()]
    assert sorted(uids) == sorted(set(uids)) and len(uids) == len(dashboards.DASHBOARDS)
    # the same render twice would collide, and kustomize says so
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["app-0", "app-0-again"]}))
    shutil.copytree(tmp_path / "app-0", tmp_path / "app-0-again")
    assert _kustomize(tmp_path).returncode != 0
