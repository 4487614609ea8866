"""The ASGI layer in-process (issue 20): the pure middleware and FastAPI's Monitor, written as a
user's tests would be: ``mlmonitor.testing.capture()`` around the app factory, httpx against it."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.trace import SpanKind

from mlmonitor.asgi import MonitorASGIMiddleware
from mlmonitor.testing import capture

from apps import fastapi_app


def client(app, **kwargs) -> TestClient:
    return TestClient(app, raise_server_exceptions=False, **kwargs)


def run(coroutine):
    return asyncio.run(coroutine)


def by_route(logs, route):
    return [line for line in logs if line["route"] == route]


# -- FastAPI ------------------------------------------------------------------------------
def test_fastapi_routes_are_the_router_templates_and_each_request_is_one_line_and_one_span():
    with capture() as monitored:
        app = fastapi_app.create_app()
        with client(app) as c:
            assert c.post("/v1/models/sentiment:predict", json={"text": "good"}).status_code == 200
            assert c.post("/v1/models/toxicity:predict", json={"text": "awful"},
                          headers={"X-Model-Version": "t2"}).status_code == 200
            assert c.post("/score", json={"text": "fine"}).status_code == 200
            assert c.get("/healthz").status_code == 200
            assert c.get("/no/such/path/123").status_code == 404
    logs = monitored.logs()
    assert [line["route"] for line in logs] == [
        "/v1/models/{name}:predict", "/v1/models/{name}:predict", "/score", "/healthz", "<unmatched>"]
    assert [(line.get("model_name"), line.get("model_version")) for line in logs[:3]] == [
        ("sentiment", "s1"), ("toxicity", "t2"), ("sentiment", "s1")]
    assert monitored.value("mlmonitor_predictions_total", model_name="toxicity",
                           model_version="t2") == 1
    assert monitored.value("mlmonitor_http_requests_total", method="GET", route="<unmatched>",
                           status="404") == 1
    servers = [s for s in monitored.spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in servers] == [
        "POST /v1/models/{name}:predict", "POST /v1/models/{name}:predict", "POST /score",
        "GET /healthz", "GET"]
    for line, span in zip(logs, servers):
        assert line["trace_id"] == format(span.context.trace_id, "032x")
        assert span.attributes["http.response.status_code"] == line["status"]
    assert servers[1].attributes["ml.model.version"] == "t2"
    stages = [s for s in monitored.spans() if s.name == "inference"]
    assert len(stages) == 3 and all(s.parent.span_id == p.context.span_id
                                    for s, p in zip(stages, servers[:3]))


def test_a_sync_endpoint_in_the_thread_pool_keeps_its_request_context():
    with capture() as monitored:
        app = fastapi_app.create_app()
        with client(app) as c:
            answer = c.post("/score", json={"text": "great"}).json()
            assert c.post("/feedback", json={"id": answer["id"], "label": 2.0}).status_code == 200
    line = monitored.logs()[0]
    assert line["tags"] == {"thread": "pool"} and "inference" in line["stages_ms"]
    assert monitored.value("mlmonitor_stage_duration_seconds_count", model_name="sentiment",
                           model_version="s1", stage="inference") == 1
    assert monitored.logs()[1]["route"] == "/feedback"


def test_an_unhandled_exception_is_a_500_with_its_type_and_stack_and_secrets_redacted():
    with capture() as monitored:
        app = fastapi_app.create_app()
        with client(app) as c:
            response = c.post("/v1/models/sentiment:predict?token=s3cr3t-value",
                              json={"text": "good"}, headers={"X-Fail": "1"})
    assert response.status_code == 500
    line = monitored.logs()[0]
    assert response.headers["x-request-id"] == line["request_id"]  # Starlette's own 500 too
    assert line["status"] == 500 and line["error_type"] == "RuntimeError"
    assert "model failed on purpose" in line["error"] and "Traceback" in line["stack"]
    assert "s3cr3t-value" not in json.dumps(monitored.logs())
    assert all("s3cr3t-value" not in json.dumps(dict(s.attributes)) for s in monitored.spans())
    assert monitored.value("mlmonitor_prediction_errors_total", model_name="sentiment",
                           model_version="s1", error_type="RuntimeError") == 1


def test_a_stream_is_counted_once_when_its_last_chunk_is_sent_with_its_tokens():
    with capture() as monitored:
        app = fastapi_app.create_app()
        with client(app) as c:
            response = c.post("/v1/generate", json={"prompt": "say it", "tokens": 4})
            assert response.text.count("data:") == 4
    (line,) = monitored.logs()
    assert line["model_name"] == "writer" and line["status"] == 200
    assert monitored.value("mlmonitor_tokens_total", model_name="writer", model_version="w1",
                           direction="output") == 4
    assert monitored.value("mlmonitor_tokens_total", model_name="writer", model_version="w1",
                           direction="input") == 2
    assert monitored.value("mlmonitor_predictions_total", model_name="writer", model_version="w1") == 1
    decode = [s for s in monitored.spans() if s.name == "decode"]
    server = [s for s in monitored.spans() if s.kind == SpanKind.SERVER]
    assert len(decode) == 4 and len(server) == 1
    assert {s.parent.span_id for s in decode} == {server[0].context.span_id}


def test_a_stage_across_a_yield_in_a_thread_pool_generator_is_timed_and_leaves_no_context(caplog):
    with capture() as monitored:
        app = fastapi_app.create_app()
        with client(app) as c:
            assert c.post("/v1/generate-sync", json={"tokens": 3}).text.count("data:") == 3
            c.get("/healthz")
    assert "Failed to detach context" not in caplog.text
    decode = [s for s in monitored.spans() if s.name == "decode"]
    assert len(decode) == 3 and monitored.logs()[0]["route"] == "/v1/generate-sync"
    assert monitored.value("mlmonitor_tokens_total", model_name="writer", model_version="w1",
                           direction="output") == 3
    healthz = [s for s in monitored.spans() if s.name == "GET /healthz"][0]
    assert healthz.parent is None  # no stage context leaked into the next request


def test_a_stream_failing_midway_keeps_its_status_and_records_the_error():
    with capture() as monitored:
        app = fastapi_app.create_app()
        with client(app) as c:
            response = c.post("/v1/generate", json={"tokens": 5, "fail_at": 2})
    assert response.status_code == 200  # the chunks before the failure: the test client's choice
    (line,) = monitored.logs()
    assert line["error_type"] == "RuntimeError" and line["status"] == 200


def test_websocket_and_lifespan_pass_through():
    with capture() as monitored:
        app = fastapi_app.create_app()
        with client(app) as c:  # the context manager runs the lifespan
            with c.websocket_connect("/ws") as ws:
                ws.send_text("hello")
                assert ws.receive_text() == "hello"
    assert monitored.logs() == []


def test_a_thousand_concurrent_requests_on_one_loop_each_carry_only_their_own_tags():
    with capture() as monitored:
        app = fastapi_app.create_app()

        async def one(c, i):
            response = await c.post(
                "/v1/models/sentiment:predict", json={"text": "good"},
                headers={"X-Tag": f"c{i}", "X-Model-Version": f"v{i % 7}", "X-Sleep": "0.01"})
            return response.json()

        async def many():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await asyncio.gather(*(one(c, i) for i in range(1000)))

        answers = run(many())
    assert [a["tag"] for a in answers] == [f"c{i}" for i in range(1000)]
    logs = monitored.logs()
    assert len(logs) == 1000
    for line in logs:
        i = int(line["tags"]["client"][1:])
        assert line["model_version"] == f"v{i % 7}"
    assert sum(monitored.value("mlmonitor_predictions_total", model_name="sentiment",
                               model_version=f"v{k}") for k in range(7)) == 1000
    assert monitored.value("mlmonitor_http_requests_in_progress", method="POST",
                           route="/v1/models/{name}:predict") == 0


def test_monitor_refuses_a_second_registration_and_a_started_app():
    with capture():
        app = fastapi_app.create_app()
        with pytest.raises(RuntimeError, match="already registered"):
            fastapi_app.Monitor(app)


# -- the pure ASGI middleware ------------------------------------------------------------------
async def raw_app(scope, receive, send):
    """A bare ASGI app: no framework at all."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/boom":
        raise ValueError("bad thing")
    if scope["path"] == "/gone":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        return  # the client went away: no last chunk
    from mlmonitor import context
    context.tag(seen=scope["path"])
    with context.stage("inference"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_pure_middleware_labels_by_prediction_paths_and_finishes_every_request_once():
    with capture() as monitored:
        app = MonitorASGIMiddleware(raw_app, model_name="raw", model_version="r1",
                                    prediction_paths=["/predict"], routes=["/gone", "/boom"])
        with client(app) as c:
            response = c.post("/predict", headers={"traceparent":
                              "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
            assert response.status_code == 200 and response.headers["x-request-id"]
            assert c.get("/elsewhere/42").status_code == 200
            assert c.get("/boom").status_code == 500
            c.get("/gone")
    logs = monitored.logs()
    assert [(line["route"], line["status"]) for line in logs] == [
        ("/predict", 200), ("<unmatched>", 200), ("/boom", 500), ("/gone", 200)]
    assert logs[0]["request_id"] == response.headers["x-request-id"]
    assert logs[0]["model_name"] == "raw" and logs[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert logs[2]["error_type"] == "ValueError" and "bad thing" in logs[2]["error"]
    assert monitored.value("mlmonitor_predictions_total", model_name="raw", model_version="r1") == 1


def test_the_pure_middleware_serves_metrics_with_the_same_auth_settings():
    with capture():
        app = MonitorASGIMiddleware(raw_app, model_name="raw", prediction_paths=["/predict"],
                                    metrics_token="t0ken-for-scrapes")
        with client(app) as c:
            c.post("/predict")
            assert c.get("/metrics").status_code == 401
            scraped = c.get("/metrics", headers={"Authorization": "bearer t0ken-for-scrapes"})
    assert scraped.status_code == 200
    assert 'mlmonitor_predictions_total{model_name="raw"' in scraped.text


def test_lifespan_and_websocket_scopes_reach_the_app_as_they_are():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["type"], receive, send))

    async def receive():
        return {}

    async def send(message):
        pass

    with capture() as monitored:
        wrapped = MonitorASGIMiddleware(app, model_name="raw")
        for kind in ("lifespan", "websocket"):
            run(wrapped({"type": kind, "path": "/ws"}, receive, send))
    assert seen == [("lifespan", receive, send), ("websocket", receive, send)]
    assert monitored.logs() == []


def test_the_wsgi_path_and_the_pure_middleware_import_no_framework():
    code = ("import sys, mlmonitor.asgi, mlmonitor.middleware, mlmonitor.flask, mlmonitor.gunicorn;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'fastapi', 'uvicorn', 'anyio', 'httpx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_one_line_from_mlmonitor_recognises_a_fastapi_app():
    from fastapi import FastAPI

    import mlmonitor
    with capture() as monitored:
        app = FastAPI()
        monitor = mlmonitor.Monitor(app, model_name="churn", model_version="c9")

        @app.post("/predict")
        @monitor.prediction
        def predict(body: dict):
            return {"ok": True}

        with client(app) as c:
            assert c.post("/predict", json={}).status_code == 200
    assert isinstance(monitor, mlmonitor.Monitor)
    assert monitored.logs()[0]["model_name"] == "churn"
    assert monitored.value("mlmonitor_model_info", model_name="churn", model_version="c9",
                           run_id="", model_id="") == 1


def test_routes_of_included_routers_and_mounted_apps_are_templates():
    from fastapi import APIRouter, FastAPI

    from mlmonitor import Monitor
    with capture() as monitored:
        app = FastAPI()
        monitor = Monitor(app, model_name="anomaly")
        router = APIRouter(prefix="/api/v2")

        @router.post("/score/{tenant}")
        @monitor.prediction
        async def score(tenant: str):
            if tenant == "boom":
                raise RuntimeError("failed")
            return {"tenant": tenant}

        app.include_router(router)
        sub = FastAPI()

        @sub.get("/items/{item_id}")
        def item(item_id: int):
            return {"id": item_id}

        app.mount("/sub", sub)
        with client(app) as c:
            assert c.post("/api/v2/score/acme").status_code == 200
            assert c.post("/api/v2/score/boom").status_code == 500
            assert c.get("/sub/items/7").status_code == 200
            assert c.get("/sub/nothing").status_code == 404
    assert [line["route"] for line in monitored.logs()] == [
        "/api/v2/score/{tenant}", "/api/v2/score/{tenant}", "/sub/items/{item_id}", "<unmatched>"]
