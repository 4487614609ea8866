"""docker-compose.yml and deploy/: the configs the tools themselves accept, mounts that exist.

There is no Docker engine here: Prometheus' config is checked with ``promtool check config``
(rules included), Alertmanager's with ``amtool check-config``; the compose file is checked for
what can go wrong without running it (missing mounted files, ports open beyond loopback).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import require_binary
from mlmonitor.contract import DEFAULT_JOB

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_prometheus_config_passes_promtool_with_the_shipped_rules(tmp_path):
    promtool = require_binary("promtool")
    # lay the files out as the compose mounts do: /etc/prometheus/{prometheus.yml,rules/}
    shutil.copy(REPO / "deploy" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(REPO / "alerts", tmp_path / "rules")
    proc = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rule_files = sorted(p.name for p in (REPO / "alerts").glob("*.rules.yml"))
    assert rule_files, "alerts/*.rules.yml is empty"
    for name in rule_files:  # the glob found and checked every shipped rule file
        assert name in proc.stdout + proc.stderr


def test_alertmanager_config_passes_amtool():
    amtool = require_binary("amtool")
    proc = subprocess.run([amtool, "check-config", str(REPO / "alerts" / "alertmanager.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_has_the_whole_stack():
    assert set(COMPOSE["services"]) >= {"app", "prometheus", "alertmanager", "grafana", "otel-collector", "jaeger"}


@pytest.mark.parametrize("service", sorted(COMPOSE["services"]))
def test_compose_mounts_exist_in_the_repository(service):
    for volume in COMPOSE["services"][service].get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith("."):
            assert (REPO / source).exists(), f"{service} mounts missing {source}"


@pytest.mark.parametrize("service", sorted(COMPOSE["services"]))
def test_compose_publishes_ports_on_loopback_only(service):
    for port in COMPOSE["services"][service].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{service} publishes {port} beyond loopback"


def test_compose_build_files_exist():
    for service in COMPOSE["services"].values():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file()


def test_compose_prometheus_scrapes_the_app_and_alerts_through_alertmanager():
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = {t: job["job_name"] for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert targets["app:8000"] == DEFAULT_JOB  # the job the shipped rules select
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"]


def test_otel_collector_pipeline_uses_only_defined_components():
    config = yaml.safe_load((REPO / "deploy" / "otel-collector.yml").read_text())
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline.get(kind, []):
                assert name in config[kind], f"{kind} {name} is not defined"
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    provider = yaml.safe_load(
        (REPO / "grafana" / "provisioning" / "dashboards" / "mlmonitor.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = [v.split(":")[1] for v in COMPOSE["services"]["grafana"]["volumes"]]
    assert path in mounts
    assert list((REPO / "grafana" / "dashboards").glob("*.json")), "no dashboards to provision"
    datasources = yaml.safe_load(
        (REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


def _expand(value: str, environ: dict) -> str:
    """Grafana's interpolation of a provisioned value: ``$NAME`` and ``${NAME}``, unset -> empty."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: environ.get(m.group(1) or m.group(2), ""), value)


def test_grafana_links_exemplar_trace_ids_to_a_trace_datasource_named_by_the_environment():
    text = (REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    prometheus = yaml.safe_load(text)["datasources"][0]
    [link] = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == "trace_id"  # the exemplar label mlmonitor writes, the OpenTelemetry key
    assert set(link) <= {"name", "datasourceUid", "url", "urlDisplayLabel"}
    # no hard-coded uid: Grafana fills it from MLMONITOR_TRACES_DATASOURCE_UID when it loads the file
    assert link["datasourceUid"] == "${MLMONITOR_TRACES_DATASOURCE_UID}"
    assert _expand(link["datasourceUid"], {"MLMONITOR_TRACES_DATASOURCE_UID": "traces"}) == "traces"
    assert "MLMONITOR_TRACES_DATASOURCE_UID" in text.split("apiVersion")[0]  # said in the header
    # the commented trace datasources, uncommented one at a time, are datasources of that same uid
    block = text[text.index("#  - name: Traces"):]
    entries = [e for e in re.split(r"\n#\n", block) if e.strip()]
    kinds = set()
    for entry in entries:
        uncommented = "\n".join(line[1:] for line in entry.splitlines())
        [datasource] = yaml.safe_load("datasources:\n" + uncommented)["datasources"]
        assert datasource["uid"] == link["datasourceUid"]
        assert datasource["url"].startswith("http://")
        kinds.add(datasource["type"])
    assert kinds == {"tempo", "jaeger"}
    services = {url.split("//")[1].split(":")[0] for url in re.findall(r"url: (http://\S+)", block)}
    assert "jaeger" in services and "jaeger" in COMPOSE["services"]  # the compose stack's Jaeger


def test_compose_keeps_exemplars_and_links_them_to_its_jaeger():
    prometheus = COMPOSE["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in prometheus
    grafana = COMPOSE["services"]["grafana"]
    environ = {k: str(v) for k, v in grafana["environment"].items()}
    mounted = {v.split(":")[1]: REPO / v.split(":")[0] for v in grafana["volumes"]}
    datasources = [d for target, source in mounted.items()
                   if target.startswith("/etc/grafana/provisioning/datasources/")
                   for d in yaml.safe_load(source.read_text())["datasources"]]
    [prometheus_ds] = [d for d in datasources if d["type"] == "prometheus"]
    [link] = prometheus_ds["jsonData"]["exemplarTraceIdDestinations"]
    [traces] = [d for d in datasources if _expand(d["uid"], environ) == _expand(link["datasourceUid"], environ)]
    assert traces["type"] == "jaeger" and traces["url"] == "http://jaeger:16686"
    assert _expand(link["datasourceUid"], environ)  # set: the dots link to a trace
