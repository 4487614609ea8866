"""Django (issue 16, item 5), in process with Django's test client: the route label is the URL
pattern, a 500 keeps its exception (type, message, stack; secrets redacted) in the log line and
the span, ``mlmonitor.django.prediction`` charges the model only once it is known, and the
middleware works alone or with ``MonitorMiddleware`` around the WSGI app."""
from __future__ import annotations

import json
import os

import django
import pytest
from django.test import Client, override_settings
from werkzeug.test import Client as WsgiClient

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.django_project.settings")
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402

from mlmonitor import MonitorMiddleware  # noqa: E402
from mlmonitor.testing import capture  # noqa: E402

PATTERN = "/v1/models/<str:name>:predict"
AUTH = {"HTTP_AUTHORIZATION": "Key k-test"}
BODY = json.dumps({"instances": [[1.0, 2.0], [3.0, 4.0]]})


def post(client, name, **headers):
    return client.post(f"/v1/models/{name}:predict", data=BODY, content_type="application/json",
                       **headers)


@pytest.fixture
def alone():
    """The Django middleware alone, with the project's MLMONITOR settings and tracing on."""
    with override_settings(MLMONITOR={"model_version": "v1"}), capture() as monitored:
        yield Client(raise_request_exception=False), monitored


def test_route_label_is_the_url_pattern_and_predictions_are_charged_per_model(alone):
    client, monitored = alone
    assert post(client, "glucose", **AUTH).json() == {"predictions": [6.0, 14.0]}
    assert post(client, "pressure", **AUTH).status_code == 200
    assert client.get("/items/7").status_code == 200
    assert client.get("/no/such/page").status_code == 404
    assert monitored.value("mlmonitor_http_requests_total", method="POST", route=PATTERN,
                           status="200") == 2
    assert monitored.value("mlmonitor_http_requests_total", method="GET",
                           route="/items/<int:item>", status="200") == 1
    assert monitored.value("mlmonitor_http_requests_total", method="GET", route="<unmatched>",
                           status="404") == 1
    for name in ("glucose", "pressure"):
        assert monitored.value("mlmonitor_predictions_total", model_name=name,
                               model_version="v1") == 1
        assert monitored.value("mlmonitor_stage_duration_seconds_count", model_name=name,
                               model_version="v1", stage="inference") == 1
    lines = monitored.logs()
    assert [line["route"] for line in lines[:2]] == [PATTERN, PATTERN]
    assert lines[0]["model_name"] == "glucose"
    spans = [span for span in monitored.spans() if span.parent is None]  # not the stage spans
    assert spans[0].name == f"POST {PATTERN}"
    assert spans[0].attributes["ml.model.name"] == "glucose"
    response = post(client, "glucose", **AUTH)
    assert response["X-Request-ID"] == monitored.logs()[-1]["request_id"]


def test_a_500_has_its_exception_type_message_and_stack_with_secrets_redacted(alone):
    client, monitored = alone
    assert client.get("/boom?password=hunter2").status_code == 500  # Django's own error page
    line = monitored.logs()[-1]
    assert line["status"] == 500 and line["route"] == "/boom" and line["level"] == "error"
    assert line["error_type"] == "RuntimeError"
    assert line["error"] == "model store unreachable: password=[REDACTED] at db.internal"
    assert "views.py" in line["stack"] and "in boom" in line["stack"]
    assert "hunter2" not in json.dumps(monitored.logs())
    span = monitored.spans()[-1]
    event = next(e for e in span.events if e.name == "exception")
    assert event.attributes["exception.type"] == "RuntimeError"
    assert "in boom" in event.attributes["exception.stacktrace"]
    assert "hunter2" not in json.dumps([dict(e.attributes) for e in span.events])
    assert "hunter2" not in json.dumps(dict(span.attributes))
    assert monitored.value("mlmonitor_http_requests_total", method="GET", route="/boom",
                           status="500") == 1


def test_unknown_model_and_the_apps_auth_are_http_only(alone):
    client, monitored = alone
    assert post(client, "bogus", **AUTH).status_code == 404  # Http404 raised in the view
    assert post(client, "glucose").status_code == 401  # the app's auth middleware
    assert client.get("/v1/models/glucose:predict").status_code == 401
    assert monitored.value("mlmonitor_http_requests_total", method="POST", route=PATTERN,
                           status="404") == 1
    # answered before the view ran: the pattern is still the label
    assert monitored.value("mlmonitor_http_requests_total", method="POST", route=PATTERN,
                           status="401") == 1
    families = {s.name: s for f in monitored.registry.collect() for s in f.samples}
    assert not any(name.startswith(("mlmonitor_predictions_total", "mlmonitor_prediction_errors",
                                    "mlmonitor_model_info")) for name in families)
    assert not any("model_name" in line for line in monitored.logs())


def test_metrics_endpoint_is_served_by_the_middleware_alone(alone):
    client, monitored = alone
    post(client, "glucose", **AUTH)
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'mlmonitor_predictions_total{model_name="glucose",model_version="v1"} 1.0' in text
    assert 'model_name="model"' not in text  # no phantom default model


@pytest.mark.parametrize("route_from_app", [True, False])
def test_with_monitor_middleware_around_the_wsgi_app(route_from_app):
    """MonitorMiddleware owns the request; the Django middleware labels and keeps the error."""
    with override_settings(MLMONITOR={"traces": False}), capture() as monitored:
        app = MonitorMiddleware(get_wsgi_application(), route_from_app=route_from_app,
                                model_version="v2", traces=True)
        client = WsgiClient(app)

        def call(method, path, **kwargs):
            return client.open(path, method=method, buffered=True, **kwargs)

        auth = {"Authorization": "Key k-test"}
        ok = call("POST", "/v1/models/glucose:predict", data=BODY, headers=auth,
                  content_type="application/json")
        assert ok.status_code == 200
        assert call("POST", "/v1/models/bogus:predict", data=BODY, headers=auth,
                    content_type="application/json").status_code == 404
        assert call("GET", "/boom?password=hunter2").status_code == 500
        assert call("GET", "/nowhere").status_code == 404
    assert monitored.value("mlmonitor_predictions_total", model_name="glucose",
                           model_version="v2") == 1
    assert monitored.value("mlmonitor_http_requests_total", method="POST", route=PATTERN,
                           status="404") == 1
    assert monitored.value("mlmonitor_http_requests_total", method="GET", route="<unmatched>",
                           status="404") == 1
    assert monitored.value("mlmonitor_http_requests_in_progress", method="GET",
                           route="<unmatched>") == 0
    lines = monitored.logs()
    assert len(lines) == 4  # one line per request: the Django middleware's own core is idle
    boom = lines[2]
    assert boom["route"] == "/boom" and boom["error_type"] == "RuntimeError"
    assert "in boom" in boom["stack"] and "hunter2" not in json.dumps(lines)
    assert len([span for span in monitored.spans() if span.parent is None]) == 4


def test_a_streamed_response_is_recorded_once_when_django_closes_it(alone):
    client, monitored = alone
    response = client.get("/stream")
    assert b"".join(response.streaming_content) == b"chunk 0\nchunk 1\nchunk 2\n"
    response.close()
    lines = [line for line in monitored.logs() if line["route"] == "/stream"]
    assert len(lines) == 1 and lines[0]["status"] == 200
    assert monitored.value("mlmonitor_http_requests_total", method="GET", route="/stream",
                           status="200") == 1
    assert monitored.value("mlmonitor_http_requests_in_progress", method="GET",
                           route="/stream") == 0


def test_set_reference_and_flat_settings_reach_the_django_monitor():
    import numpy as np

    from mlmonitor.django import set_reference
    from mlmonitor.tools.profiling import build_profile

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2)) + [2.0, 3.0]
    profile = build_profile(X, feature_names=["a", "b"], predictions=2.0 * X.sum(axis=1))
    with override_settings(MLMONITOR={"traces": False}, MLMONITOR_MODEL_VERSION="v9"), \
            capture() as monitored:
        client = Client(raise_request_exception=False)
        set_reference("glucose", profile)
        assert post(client, "glucose", **AUTH).status_code == 200
    assert monitored.value("mlmonitor_predictions_total", model_name="glucose",
                           model_version="v9") == 1
    bins = sum(s.value for f in monitored.registry.collect() for s in f.samples
               if s.name == "mlmonitor_feature_bin_total" and s.labels["model_name"] == "glucose")
    assert bins == 4  # two rows of two features, each in a reference bin


def test_capture_io_previews_for_a_django_view_are_its_json_body_and_answer_redacted():
    secret = json.dumps({"instances": [[1.0, 2.0]], "api_key": "s3cr3t-value"})
    with override_settings(MLMONITOR={"model_version": "v1", "mlflow": True, "capture_io": True}), \
            capture() as monitored:
        client = Client(raise_request_exception=False)
        client.post("/v1/models/glucose:predict", data=secret, content_type="application/json",
                    **AUTH)
        client.post("/v1/models/glucose:predict", data="not json", content_type="text/plain",
                    **AUTH)
    first, second = [span for span in monitored.spans() if span.parent is None]
    inputs = json.loads(first.attributes["mlflow.spanInputs"])
    assert inputs["instances"] == [[1.0, 2.0]]
    assert "s3cr3t-value" not in first.attributes["mlflow.spanInputs"]
    assert json.loads(first.attributes["mlflow.spanOutputs"]) == {"predictions": [6.0]}
    assert "mlflow.spanInputs" not in second.attributes  # a body that is not JSON
    assert json.loads(second.attributes["mlflow.spanOutputs"])["error"].startswith("expected")
    lines = monitored.logs()
    assert [line["status"] for line in lines] == [200, 400]
    assert "s3cr3t-value" not in json.dumps(lines)


def test_capture_io_on_json_nested_too_deep_is_no_preview_and_no_fault():
    nested = "[" * 30000 + "]" * 30000  # 60 KB: under the size cap, over the parser's depth
    with override_settings(MLMONITOR={"model_version": "v1", "mlflow": True, "capture_io": True}), \
            capture() as monitored:
        client = Client(raise_request_exception=False)
        assert client.post("/v1/models/glucose:predict", data=nested,
                           content_type="application/json", **AUTH).status_code == 400
        assert monitored.value("mlmonitor_internal_errors_total", component="traces") == 0
    (span,) = [span for span in monitored.spans() if span.parent is None]
    assert "mlflow.spanInputs" not in span.attributes
