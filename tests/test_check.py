"""``mlmonitor check`` against a real app on a real server (and a real Prometheus): a healthy app
passes with exit status 0, each injected fault gives its own line and exit status 1."""
from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from helpers.doubles import Doubles
from helpers.promstack import Prometheus, wait_for
from mlmonitor import Monitor
from mlmonitor.tools import check
from mlmonitor.tools.cli import main
from mlmonitor.tools.profiling import build_profile

ALERTS = Path(__file__).resolve().parent.parent / "alerts"
SHIPPED = [str(ALERTS / "mlmonitor-recording.rules.yml"), str(ALERTS / "mlmonitor-alerts.rules.yml")]
SECRET = "s" * 32


#: 400 rows in 10 bins: enough for PSI 0.2 (170 needed)
REFERENCE = build_profile({"x": [float(i) for i in range(400)]})


class App:
    """A monitored Flask app served by werkzeug on 127.0.0.1 in a thread."""

    def __init__(self, reference: Any = REFERENCE, **options: Any) -> None:
        self.doubles = Doubles()
        self.app = Flask(__name__)
        options.setdefault("feedback_secret", SECRET)
        self.monitor = m = Monitor(self.app, model_name="iris", model_version="v1", reference=reference,
                                   **self.doubles.monitor_options, **options)

        @self.app.post("/predict")
        @m.prediction
        def predict():
            m.observe({"x": 3.0})
            return jsonify(label="setosa", id=m.prediction_id("setosa"))

        @self.app.post("/feedback")
        def feedback():
            body = request.get_json()
            try:
                return jsonify(outcome=m.record_feedback(body["id"], body["label"]))
            except ValueError as exc:
                return jsonify(error=str(exc)), 400

        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.url = self.base + "/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def middleware(self) -> Any:
        return self.app.extensions["mlmonitor"]

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def predict_and_feedback(self) -> None:
        answer = self.post("/predict", {"x": 3.0})
        assert self.post("/feedback", {"id": answer["id"], "label": "setosa"}) == {"outcome": "correct"}

    def __enter__(self) -> "App":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("reference") / "reference.json"
    REFERENCE.save(path)
    return str(path)


@pytest.fixture
def app() -> Iterator[App]:
    with App() as served:
        served.predict_and_feedback()
        yield served


def run_check(capsys: Any, *args: str) -> tuple:
    """Exit status and the printed lines of ``mlmonitor check ARGS``."""
    status = main(["check", *args])
    return status, capsys.readouterr().out.splitlines()


def lines_of(lines: List[str], check_name: str) -> List[str]:
    return [line for line in lines if line.split(": ")[1:2] == [check_name]]


# -- healthy -------------------------------------------------------------------------------------

def test_a_healthy_app_passes_against_the_shipped_rules(app, capsys, reference_file):
    status, lines = run_check(capsys, app.url, "--job", "mlmonitor", "--reference", reference_file,
                              "--rules", SHIPPED[0], "--rules", SHIPPED[1])
    assert lines == [f"ok: {app.url}"]
    assert status == 0


def test_a_healthy_app_passes_against_the_default_render(app, capsys, reference_file):
    status, lines = run_check(capsys, app.url, "--job", "mlmonitor", "--reference", reference_file, "--strict")
    assert lines == [f"ok: {app.url}"]
    assert status == 0


def test_without_a_job_the_job_check_says_what_it_needs(app, capsys, reference_file):
    status, lines = run_check(capsys, app.url, "--reference", reference_file)
    assert lines_of(lines, "job") == ["note: job: not checked: pass --prometheus URL (or --job NAME)"]
    assert lines[-1] == f"ok: {app.url} (1 note)"
    assert status == 0


# -- buckets -------------------------------------------------------------------------------------

def test_buckets_without_the_rules_latency_bound_fail(capsys, reference_file):
    with App(buckets=(0.1, 0.25, 1.0, 2.5)) as served:
        served.predict_and_feedback()
        status, lines = run_check(capsys, served.url, "--job", "mlmonitor", "--reference", reference_file,
                                  "--rules", SHIPPED[0],
                                  "--rules", SHIPPED[1])
    found = lines_of(lines, "buckets")
    assert len(found) == 2, lines
    assert found[0].startswith(f"error: buckets: {SHIPPED[0]} select"
                               ' mlmonitor_prediction_duration_seconds_bucket{le="0.5"}')
    assert "its bounds: 0.1,0.25,1,2.5" in found[0]
    assert found[1].startswith(f"warning: buckets: {SHIPPED[1]} compare a quantile of"
                               " mlmonitor_prediction_duration_seconds with 0.5")
    assert lines[-1] == f"FAILED: {served.url} (1 error, 1 warning)"
    assert status == 1


def test_a_bound_spelt_differently_from_the_apps_le_fails(app, capsys, tmp_path):
    """Prometheus matches le as a string: 1 is not the app's 1.0."""
    rules = tmp_path / "r.yml"
    rules.write_text(Path(SHIPPED[0]).read_text().replace('le="0.5"', 'le="1"'))
    status, lines = run_check(capsys, app.url, "--job", "mlmonitor", "--rules", str(rules))
    found = lines_of(lines, "buckets")
    assert [line.split(",")[0] for line in found] == [
        f'error: buckets: {rules} select mlmonitor_prediction_duration_seconds_bucket{{le="1"}}']
    assert found[0].endswith('the app writes it le="1.0" and Prometheus compares le as text; render the rules'
                             ' with mlmonitor alerts render')
    assert status == 1


def test_before_any_prediction_the_http_histogram_shows_the_buckets(capsys, reference_file):
    """Every latency histogram has the app's one set of buckets: a request that is no prediction
    already shows that the rules' bound and the streamed-answer threshold are missing."""
    with App(buckets=(0.1, 0.25, 2.5)) as served:
        assert "error" in served.post("/feedback", {"id": "x", "label": "y"})
        status, lines = run_check(capsys, served.url, "--job", "mlmonitor", "--reference", reference_file,
                                  "--rules", SHIPPED[0], "--rules", SHIPPED[1])
    found = [line.split(", which")[0].split(", not one")[0] for line in lines_of(lines, "buckets")]
    assert found == [
        f'error: buckets: {SHIPPED[0]} select mlmonitor_prediction_duration_seconds_bucket{{le="0.5"}}',
        f"warning: buckets: {SHIPPED[1]} compare a quantile of mlmonitor_prediction_duration_seconds with 0.5",
        f"warning: buckets: {SHIPPED[1]} compare a quantile of mlmonitor_time_to_first_chunk_seconds with 1"]
    assert status == 1


def test_a_histogram_without_series_is_noted_not_failed(capsys):
    with App() as served:  # no prediction yet: the labelled histogram has no series
        status, lines = run_check(capsys, served.url, "--job", "mlmonitor", "--rules", SHIPPED[0])
    assert lines_of(lines, "buckets") == [
        "note: buckets: mlmonitor_prediction_duration_seconds has no series yet (nothing observed):"
        " its buckets are not checked"]
    assert status == 0


def test_rules_rendered_with_other_thresholds_are_read(tmp_path):
    assert main(["alerts", "render", "--latency-p99", "1.0", "--ttfc-p95", "2.5", "--psi-threshold", "0.1",
                 "--prometheus-operator", "--selector",
                 '{job=~"model-.*", env!="dev"}', "--out-dir", str(tmp_path)]) == 0
    recording = check.Rules.from_text((tmp_path / "mlmonitor-recording.rules.yml").read_text(), "r")
    alerting = check.Rules.from_text((tmp_path / "mlmonitor-alerts.rules.yml").read_text(), "a")
    assert recording.bounds == {("mlmonitor_prediction_duration_seconds", "1.0")}
    assert alerting.quantiles == {("mlmonitor_prediction_duration_seconds", 1.0),
                                  ("mlmonitor_time_to_first_chunk_seconds", 2.5)}
    assert (alerting.psi, recording.psi) == ({0.1}, set())
    manifest = check.Rules.from_text((tmp_path / "prometheus-operator" / "mlmonitor-prometheusrule.yaml")
                                     .read_text(), "m")
    assert (manifest.bounds, manifest.quantiles, manifest.psi) == (recording.bounds, alerting.quantiles, {0.1})
    assert manifest.selector == alerting.selector
    for rules in (recording, alerting):
        assert rules.selector == (("env", "!=", "dev"), ("job", "=~", "model-.*"))
        assert rules.matches({"job": "model-a", "env": "prod"})
        assert not rules.matches({"job": "model-a", "env": "dev"})
        assert not rules.matches({"job": "xmodel-a", "env": "prod"})  # anchored, as in PromQL


# -- job -----------------------------------------------------------------------------------------

def test_with_job_alone_only_the_job_matchers_are_judged(tmp_path):
    assert main(["alerts", "render", "--selector", '{job="iris-api", namespace="prod"}',
                 "--out-dir", str(tmp_path)]) == 0
    rules = check.Rules.from_text((tmp_path / "mlmonitor-alerts.rules.yml").read_text(), "a")
    assert check.check_job([rules], {"job": "iris-api"}, "--job") == []
    assert [f.level for f in check.check_job([rules], {"job": "iris-api", "namespace": "dev"}, "p")] == ["error"]
    assert [f.level for f in check.check_job([rules], {"job": "other"}, "--job")] == ["error"]


def test_a_job_the_selector_does_not_match_fails(app, capsys):
    status, lines = run_check(capsys, app.url, "--job", "iris-api")
    assert lines_of(lines, "job") == [
        'error: job: the app\'s series carry {job="iris-api"} (--job), which the rules\' selector does not'
        ' match (the default rules: {job="mlmonitor"}): no alert can fire for this app; render with'
        ' --selector \'{job="iris-api"}\'']
    assert status == 1


class _Prometheus(Prometheus):
    def __init__(self, *args: Any, features: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.features = features

    def command(self) -> List[str]:
        extra = [f"--enable-feature={self.features}"] if self.features else []
        return super().command() + extra


@pytest.mark.slow
def test_against_prometheus_the_scraped_job_and_exemplar_storage_are_checked(app, capsys, tmp_path,
                                                                              reference_file):
    host_port = app.base.split("//")[1]
    app.predict_and_feedback()  # a second sampled request: exemplars in the OpenMetrics scrape
    rendered = tmp_path / "rendered"
    assert main(["alerts", "render", "--selector", '{job="iris-api"}', "--out-dir", str(rendered)]) == 0
    own = ["--reference", reference_file, "--rules", str(rendered / "mlmonitor-recording.rules.yml"),
           "--rules", str(rendered / "mlmonitor-alerts.rules.yml")]
    with _Prometheus(tmp_path / "plain", targets={"iris-api": [host_port]}) as prom:
        wait_for(lambda: check.find_target(prom.url, app.url, 5)[0], 30, what="the app as a target")
        status, lines = run_check(capsys, app.url, "--prometheus", prom.url)
        assert [line.split(" (")[0] for line in lines_of(lines, "job")] == [
            f'error: job: the app\'s series carry {{instance="{host_port}", job="iris-api"}}']
        assert len(lines_of(lines, "exemplars")) == 1
        assert lines_of(lines, "exemplars")[0].startswith("warning: exemplars: the app serves exemplars")
        assert status == 1
        status, lines = run_check(capsys, app.url, "--prometheus", prom.url, *own)
        assert lines_of(lines, "job") == []
        assert status == 0 and lines[-1] == f"ok: {app.url} (1 warning)"
        status, lines = run_check(capsys, app.base + "/elsewhere/metrics", "--prometheus", prom.url, *own)
    assert status == 1
    with _Prometheus(tmp_path / "exemplars", targets={"iris-api": [host_port]},
                     features="exemplar-storage") as prom:
        wait_for(lambda: check.find_target(prom.url, app.url, 5)[0], 30, what="the app as a target")
        status, lines = run_check(capsys, app.url, "--prometheus", prom.url, "--strict", *own)
    assert lines == [f"ok: {app.url}"]
    assert status == 0


def test_an_app_prometheus_does_not_scrape_fails(app, capsys, tmp_path):
    with _Prometheus(tmp_path, targets={"other": ["127.0.0.1:9"]}) as prom:
        status, lines = run_check(capsys, app.url, "--prometheus", prom.url)
    assert lines_of(lines, "scrape") == [
        f"error: scrape: {prom.url} has no target at {app.url}: no rule or dashboard sees this app;"
        " add it to a scrape config (or give the URL as Prometheus scrapes it: its targets page shows it)"]
    assert lines_of(lines, "job") == []  # said once: the scrape line covers it
    assert status == 1


def test_a_prometheus_that_cannot_be_read_is_said_once(app, capsys, reference_file):
    from helpers.gunicorn_proc import free_port

    nobody = f"http://127.0.0.1:{free_port()}"
    status, lines = run_check(capsys, app.url, "--prometheus", nobody, "--reference", reference_file)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"error: prometheus: cannot read {nobody}: ")
    assert lines[1] == f"FAILED: {app.url} (1 error)"
    assert status == 1


# -- references ----------------------------------------------------------------------------------

def test_a_model_without_reference_is_a_warning(capsys):
    with App(reference=None) as served:
        served.predict_and_feedback()
        status, lines = run_check(capsys, served.url, "--job", "mlmonitor")
        strict, _ = run_check(capsys, served.url, "--job", "mlmonitor", "--strict")
    assert lines_of(lines, "reference") == [
        "warning: reference: model iris v1 has no reference (no mlmonitor_feature_reference_ratio series):"
        " the drift rules and panels stay empty for it; set MLMONITOR_REFERENCE(S)"]
    assert lines[-1] == f"ok: {served.url} (1 warning)"
    assert (status, strict) == (0, 1)


def test_a_reference_of_too_few_rows_per_bin_fails(capsys, tmp_path):
    """54 rows in 10 bins: unshifted traffic crossed PSI 0.2 for most features."""
    small = build_profile({"x": [float(i) for i in range(54)]})
    path = tmp_path / "reference.json"
    small.save(path)
    with App(reference=small) as served:
        served.predict_and_feedback()
        status, lines = run_check(capsys, served.url, "--job", "mlmonitor", "--reference", str(path))
        alone, alone_lines = run_check(capsys, served.url, "--job", "mlmonitor")
    assert lines_of(lines, "reference") == [
        f"error: reference: {path}: feature x has 54 rows for 10 bins; PSI 0.2 needs 170 or more,"
        " else unshifted traffic fires the drift alerts"]
    assert status == 1
    assert lines_of(alone_lines, "reference") == [
        "note: reference: the shares on /metrics do not prove enough reference rows for iris v1"
        " (1 of 1 binned parts): pass the reference file with --reference to count them"]
    assert alone == 0


def test_the_rows_needed_follow_the_rules_psi_threshold(app, capsys, tmp_path, reference_file):
    """400 rows in 10 bins are enough for the default PSI 0.2 (170), not for rules rendered at 0.05."""
    assert main(["alerts", "render", "--psi-threshold", "0.05", "--out-dir", str(tmp_path)]) == 0
    rules = ["--rules", str(tmp_path / "mlmonitor-recording.rules.yml"),
             "--rules", str(tmp_path / "mlmonitor-alerts.rules.yml")]
    status, lines = run_check(capsys, app.url, "--job", "mlmonitor", "--reference", reference_file, *rules)
    assert lines_of(lines, "reference") == [
        f"error: reference: {reference_file}: feature x has 400 rows for 10 bins; PSI 0.05 needs 677 or"
        " more, else unshifted traffic fires the drift alerts"]
    assert status == 1


def test_a_reference_of_enough_rows_passes_with_its_file(app, capsys, reference_file):
    status, lines = run_check(capsys, app.url, "--job", "mlmonitor", "--reference", reference_file)
    assert lines == [f"ok: {app.url}"]
    assert status == 0


def test_the_shares_on_metrics_prove_a_lower_bound_of_rows():
    assert check._rows_at_least([6 / 54, 5 / 54, 0.0]) == 54  # 1/9 and 5/54
    assert check._rows_at_least([0.1] * 10) == 10  # 10 or 100 or 1000 rows: a lower bound
    assert check._rows_at_least([0.25, 0.5, 0.25]) == 4


# -- feedback, internal errors, dropped telemetry ------------------------------------------------

def test_replicas_without_one_feedback_secret_fail(app, capsys, reference_file):
    """A prediction made by one replica, its feedback landing on another with its own secret."""
    with App(feedback_secret="u" * 32) as other:
        other.predict_and_feedback()
        made_here = app.post("/predict", {"x": 3.0})["id"]
        assert "bad_signature" in other.post("/feedback", {"id": made_here, "label": "setosa"})["error"]
        status, lines = run_check(capsys, other.url, "--job", "mlmonitor", "--reference", reference_file)
    assert lines_of(lines, "feedback") == [
        "error: feedback: 1 feedback ids refused as bad_signature (1 accepted): the workers or replicas"
        " do not share one MLMONITOR_FEEDBACK_SECRET, so the accuracy rules see part of the feedback;"
        " set the same secret on every replica"]
    assert lines[-1] == f"FAILED: {other.url} (1 error)"
    assert status == 1


def test_internal_errors_and_dropped_telemetry_fail(app, capsys):
    status, lines = run_check(capsys, app.url, "--job", "mlmonitor")
    assert status == 0
    app.middleware.count_fault("traces")
    app.middleware.count_dropped("logs", 3)
    status, lines = run_check(capsys, app.url, "--job", "mlmonitor")
    assert lines_of(lines, "internal") == [
        "error: internal: mlmonitor_internal_errors_total: traces 1: internal errors; the app's log says"
        " which (logger mlmonitor)"]
    assert lines_of(lines, "telemetry") == [
        "error: telemetry: mlmonitor_telemetry_dropped_total: logs 3: telemetry dropped; the app's log"
        " says which (logger mlmonitor)"]
    assert status == 1


# -- reading /metrics ----------------------------------------------------------------------------

def test_serving_requests_does_not_import_the_check(tmp_path):
    import subprocess
    import sys

    from test_layout import REPO, SERVE

    path = tmp_path / "reference.json"
    REFERENCE.save(path)
    proc = subprocess.run([sys.executable, "-c", SERVE, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "mlmonitor.tools.check" not in json.loads(proc.stdout)


@pytest.mark.parametrize("auth", [("metrics_token", "--token", "t0ken-for-metrics-1234"),
                                  ("metrics_basic_auth", "--basic-auth", "prom:pa55word")])
def test_protected_metrics_are_read_with_the_credentials(capsys, auth, reference_file):
    setting, option, value = auth
    with App(**{setting: value}) as served:
        served.predict_and_feedback()
        refused, refused_lines = run_check(capsys, served.url, "--job", "mlmonitor")
        status, lines = run_check(capsys, served.url, "--job", "mlmonitor", "--reference", reference_file,
                                  option, value)
    assert refused_lines == [f"error: metrics: cannot read {served.url}: 401 Unauthorized"]
    assert refused == 1
    assert lines == [f"ok: {served.url}"]
    assert status == 0


# -- under gunicorn ------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_example_app_under_gunicorn_passes_with_its_llm_named(tmp_path):
    """Two workers, the multiprocess exposition: every check reads it; the example's text generator
    serves without reference, which is what --strict fails on."""
    import subprocess
    import sys

    from helpers.gunicorn_proc import REPO, GunicornProcess

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "MLMONITOR_TRACES": "false"}
    with GunicornProcess(workers=2, env=env) as server:
        load = subprocess.run([sys.executable, "-m", "example_app.loadgen", "--url", server.url, "--json",
                               "--requests", "60", "--feedback-accuracy", "0.9", "--seed", "1"],
                              cwd=REPO, capture_output=True, text=True, timeout=240)
        assert load.returncode == 0, load.stderr[-2000:]
        assert json.loads(load.stdout.splitlines()[-1])["feedback_status"] == {"200": 60}
        url = server.url + "/metrics"
        plain = subprocess.run([sys.executable, "-m", "mlmonitor.tools.cli", "check", url, "--job", "mlmonitor"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        strict = subprocess.run([sys.executable, "-m", "mlmonitor.tools.cli", "check", url, "--job", "mlmonitor",
                                 "--strict"], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = plain.stdout.splitlines()
    assert lines_of(lines, "reference")[0] == (
        "warning: reference: model textgen v1 has no reference (no mlmonitor_feature_reference_ratio"
        " series): the drift rules and panels stay empty for it; set MLMONITOR_REFERENCE(S)")
    assert [line.split(": ")[1] for line in lines[:-1]] == ["reference", "reference"]  # + the rows note
    assert lines[-1] == f"ok: {url} (1 warning, 1 note)"
    assert plain.returncode == 0, plain.stderr
    assert strict.returncode == 1 and strict.stdout.splitlines()[-1] == f"FAILED: {url} (1 warning, 1 note)"
