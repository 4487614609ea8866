"""Alerts end to end: the example app under gunicorn -> Prometheus -> Alertmanager -> a webhook.

A real Prometheus (1 s scrape and evaluation) loads the rules rendered with ``--time-scale 60``
(5m windows become 5 s, ``for: 5m`` becomes 5 s, the 1h drift window 60 s) and this test's job as
``--selector``; a real Alertmanager runs the ``alertmanager.yml`` rendered with them (group_wait 1 s,
group_interval 5 s) with only its webhook URLs pointed at a receiver in this test. The example
app's loadgen sends the traffic. The FastAPI example (uvicorn workers under gunicorn) runs beside
the Flask one as a second job of the same Prometheus, and the page for server errors is proven
for it too: the same rules, unchanged.
"""
from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator

import pytest
import yaml

from example_app import loadgen, model
from helpers.gunicorn_proc import GunicornProcess
from helpers.promstack import Alertmanager, Prometheus, WebhookReceiver, query, require_binary, wait_for
from mlmonitor.tools.rules import ALERTMANAGER_FILE, Thresholds, render_files

pytestmark = pytest.mark.slow

JOB = "mlmonitor-e2e"
ASGI_JOB = "mlmonitor-e2e-asgi"
TIME_SCALE = 60
DRIFTED = "petal_length_cm"
ALERT_TIMEOUT = 120.0


def routing_to(path: Path, url: str) -> str:
    """The rendered alertmanager.yml with every webhook sent to ``url`` (its times as rendered)."""
    config = yaml.safe_load(path.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = url
    return yaml.safe_dump(config, sort_keys=False)


class Traffic:
    """The loadgen in a thread, batch after batch at a steady rate, until stopped."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url, self.options = url, options
        self.stop_event = threading.Event()
        self.summaries: list[Dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seed = 0
        while not self.stop_event.is_set():
            seed += 1
            opts = loadgen.Options(url=self.url, requests=10, concurrency=2, rate=10.0, seed=seed,
                                   **self.options)
            self.summaries.append(loadgen.run(opts))

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.thread.join(30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[SimpleNamespace]:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("alerts-e2e")
    rules = render_files(Thresholds(time_scale=TIME_SCALE, selector=f'{{job=~"{JOB}|{ASGI_JOB}"}}'),
                         str(tmp / "rules"))
    rule_files = [r for r in rules if r.endswith(".rules.yml")]
    (tmp / "prom-multiproc").mkdir()
    (tmp / "asgi-multiproc").mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom-multiproc"), "MLMONITOR_TRACES": "false",
           "MLMONITOR_FEEDBACK_SECRET": "alerts-e2e-secret-0123456789abcdef", "CANARY_FRACTION": "0.5"}
    asgi_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp / "asgi-multiproc")}
    with WebhookReceiver() as hook, GunicornProcess(workers=2, env=env) as app, \
            GunicornProcess("example_app.asgi:app", workers=2, env=asgi_env,
                            args=("-k", "uvicorn.workers.UvicornWorker")) as asgi_app, \
            Alertmanager(tmp, routing_to(tmp / "rules" / ALERTMANAGER_FILE, hook.url)) as am, \
            Prometheus(tmp, {JOB: [f"127.0.0.1:{app.port}"], ASGI_JOB: [f"127.0.0.1:{asgi_app.port}"]},
                       rule_files, am.url) as prom:
        # Prometheus scrapes its first targets ~6 s after start: wait on a query, not on readiness
        for job in (JOB, ASGI_JOB):
            wait_for(lambda: query(prom.url, f'up{{job="{job}"}} == 1'), 60, what=f"first scrape of {job}")
        yield SimpleNamespace(app=app, prom=prom, am=am, hook=hook,
                              examples={"flask": (app, JOB), "asgi": (asgi_app, ASGI_JOB)})


def received(stack: SimpleNamespace, alertname: str, **labels: str):
    def found():
        return stack.hook.find(alertname=alertname, **labels)
    try:
        return wait_for(found, ALERT_TIMEOUT, what=f"{alertname} {labels} at the webhook")
    except TimeoutError:
        raise AssertionError(
            f"{alertname} never reached the webhook; Prometheus alerts: {stack.prom.alerts()};"
            f" webhook got: {stack.hook.alerts()}; alertmanager log: {stack.am.log[-1500:]}") from None


@pytest.mark.parametrize("example", ["flask", "asgi"])
def test_injected_server_errors_page_with_the_failing_version(stack, example):
    app, job = stack.examples[example]
    with Traffic(app.url, version="v1"), Traffic(app.url, version="v2", error_fraction=0.5):
        alerts = received(stack, "MLModelServerErrorRatioHigh", job=job)
    for alert in alerts:  # v1 served without errors all along: only v2 may be named
        assert alert["labels"]["model_version"] == "v2"
        assert alert["labels"]["model_name"] == model.MODEL_NAME
        assert alert["labels"]["job"] == job
        assert alert["labels"]["severity"] == "critical"
        assert alert["receiver"] == "critical"
        assert f"{model.MODEL_NAME} v2 (job {job})" in alert["annotations"]["description"]
        assert alert["annotations"]["runbook_url"].endswith("#mlmodelservererrorratiohigh")


def test_injected_feature_drift_reaches_the_warning_receiver(stack):
    with Traffic(stack.app.url, version="v1", drift={DRIFTED: 3.0}):
        alerts = received(stack, "MLModelFeatureDrift", model_version="v1", job=JOB)
        psi = query(stack.prom.url, f'model_version_feature:mlmonitor_feature_bin:psi1h{{job="{JOB}", '
                                    f'model_version="v1"}}')
    assert {a["labels"]["feature"] for a in alerts} == {DRIFTED}
    alert = alerts[0]
    assert alert["labels"]["model_name"] == model.MODEL_NAME
    assert alert["labels"]["job"] == JOB
    assert alert["labels"]["severity"] == "warning"
    assert alert["receiver"] == "warning"
    by_feature = {r["metric"]["feature"]: r["value"] for r in psi}
    assert by_feature[DRIFTED] > 0.2
