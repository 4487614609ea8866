"""A client that goes away (issue 24, defect 5): recorded as status 499, never as the model's 5xx
or invalid input, the same way under uvicorn (ASGI), gunicorn + Flask (WSGI) and gunicorn +
Django. Real servers, raw sockets: headers and 10 of 100,000 body bytes, then the socket closes."""
from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import EnvironBuilder

from helpers.gunicorn_proc import REPO, GunicornProcess, free_port, http_get
from helpers.promstack import wait_for
from mlmonitor import MonitorMiddleware
from mlmonitor.asgi import MonitorASGIMiddleware
from mlmonitor.testing import capture

ABORTED = 20
DECLARED = 100_000
PARTIAL = b'{"text": "'  # 10 of the 100,000 bytes the headers announce


def abort_uploads(port: int, path: str, headers: str = "", count: int = ABORTED) -> None:
    """``count`` clients that send the headers and 10 body bytes, then close the connection."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {DECLARED}\r\n{headers}\r\n").encode()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + PARTIAL)


def leave_mid_stream(port: int, path: str, body: bytes) -> None:
    """A whole request; the client reads the first bytes of the streamed answer and leaves."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(300)  # only so that a broken server cannot hang the suite
        sock.sendall(head + body)
        assert sock.recv(64).startswith(b"HTTP/1.1 200")


def scrape(url: str) -> dict:
    status, text = http_get(url + "/metrics", timeout=30)
    assert status == 200, text[:300]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, key), v in samples.items()
               if n == name and all(dict(key).get(k) == want for k, want in labels.items()))


def lines_of(stdout: list, route: str) -> list:
    out = []
    for line in list(stdout):
        if line.startswith("{"):
            item = json.loads(line)
            if item.get("route") == route:
                out.append(item)
    return out


def assert_recorded_as_gone(url: str, stdout: list, route: str, model: str) -> dict:
    lines = wait_for(lambda: len(lines_of(stdout, route)) >= ABORTED and lines_of(stdout, route),
                     timeout=60, what=f"{ABORTED} log lines of {route}")
    assert [(line["status"], line.get("error_type")) for line in lines] == [(499, None)] * ABORTED
    samples = scrape(url)
    assert total(samples, "mlmonitor_http_requests_total", route=route, status="499") == ABORTED
    assert total(samples, "mlmonitor_http_requests_total", route=route) == ABORTED
    # the model never answered: not charged (no prediction, no error, no invalid input)
    assert total(samples, "mlmonitor_predictions_total", model_name=model) == 0
    assert total(samples, "mlmonitor_prediction_errors_total", model_name=model) == 0
    return samples


class Uvicorn:
    """``uvicorn tests.apps.fastapi_app:app`` on a free port; stdout (the log lines) collected."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLMONITOR_TRACES": "false"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.apps.fastapi_app:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "critical"], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.stdout: list = []
        self.reader = threading.Thread(target=lambda: self.stdout.extend(
            line.rstrip("\n") for line in self.proc.stdout), daemon=True)  # type: ignore[union-attr]
        self.reader.start()

    def __enter__(self) -> "Uvicorn":
        wait_for(lambda: http_get(self.url + "/healthz", timeout=5)[0] == 200, timeout=60,
                 what="uvicorn ready")
        return self

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        self.reader.join(10)


@pytest.mark.slow
def test_uvicorn_an_aborted_upload_is_499_and_not_the_models_500():
    route = "/v1/models/{name}:predict"
    with Uvicorn() as server:
        abort_uploads(server.port, "/v1/models/sentiment:predict")
        assert_recorded_as_gone(server.url, server.stdout, route, "sentiment")


@pytest.mark.slow
def test_uvicorn_a_client_leaving_a_stream_is_499_and_the_answered_prediction_still_counts():
    """The model answered (status 200 went out), then the client left: the prediction counts,
    without an error; the request is 499, not 200."""
    route = "/v1/generate"
    with Uvicorn() as server:
        leave_mid_stream(server.port, route, json.dumps({"tokens": 10_000_000}).encode())
        lines = wait_for(lambda: lines_of(server.stdout, route), timeout=60, what="log line")
        samples = scrape(server.url)
    assert [line["status"] for line in lines] == [499]
    assert total(samples, "mlmonitor_http_requests_total", route=route, status="499") == 1
    assert total(samples, "mlmonitor_http_requests_total", route=route) == 1
    assert total(samples, "mlmonitor_predictions_total", model_name="writer") == 1
    assert total(samples, "mlmonitor_prediction_errors_total", model_name="writer") == 0


@pytest.mark.slow
def test_gunicorn_flask_an_aborted_upload_is_499_and_not_invalid_input(tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "MLMONITOR_TRACES": "false"}
    with GunicornProcess(workers=1, env=env) as server:
        abort_uploads(server.port, "/predict")
        samples = assert_recorded_as_gone(server.url, server.stdout_lines, "/predict", "iris")
        assert total(samples, "mlmonitor_http_requests_total", status="400") == 0


@pytest.mark.slow
def test_gunicorn_flask_a_broken_pipe_mid_stream_is_499_with_the_tokens_it_produced(tmp_path):
    """The sync worker's write fails (the client reset the connection): gunicorn closes the body
    with the error in flight; the model answered, so its prediction and tokens count."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "MLMONITOR_TRACES": "false"}
    body = json.dumps({"prompt": "Tell me about the iris flowers", "max_tokens": 256}).encode()
    head = (f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with GunicornProcess(workers=1, env=env) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(300)  # only so that a broken server cannot hang the suite
            sock.sendall(head + body)
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
            # close with RST: the worker's next write fails (EPIPE / ECONNRESET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        lines = wait_for(lambda: lines_of(server.stdout_lines, "/generate"), timeout=60,
                         what="the stream's log line")
        samples = scrape(server.url)
    assert [line["status"] for line in lines] == [499]
    assert total(samples, "mlmonitor_http_requests_total", route="/generate", status="499") == 1
    assert total(samples, "mlmonitor_predictions_total", model_name="textgen") == 1
    assert total(samples, "mlmonitor_prediction_errors_total", model_name="textgen") == 0
    produced = total(samples, "mlmonitor_tokens_total", model_name="textgen", direction="output")
    assert 0 < produced < 256  # what it produced before the write failed, not the whole answer


@pytest.mark.slow
def test_gunicorn_django_an_aborted_upload_is_499_alone_and_inside_the_wsgi_middleware(tmp_path):
    route = "/v1/models/<str:name>:predict"
    for app in ("tests.apps.django_project.wsgi:application",
                "tests.apps.django_project.wsgi_wrapped:application"):
        prom = tmp_path / app.split(":")[0].rsplit(".", 1)[1]
        env = {"PROMETHEUS_MULTIPROC_DIR": str(prom), "MLMONITOR_TRACES": "false",
               "DJANGO_SETTINGS_MODULE": "tests.apps.django_project.settings"}
        with GunicornProcess(app=app, config="python:mlmonitor.gunicorn", workers=1,
                             env=env) as server:
            abort_uploads(server.port, "/v1/models/glucose:predict", "Authorization: Key k-test\r\n")
            assert_recorded_as_gone(server.url, server.stdout_lines, route, "glucose")


# -- the same rule in process, one protocol signal at a time ---------------------------------------
def wsgi_predict(environ, start_response):
    """A prediction view that reads its whole body, as Flask's get_data() does."""
    body = environ["wsgi.input"].read()
    json.loads(body)  # a truncated body fails here, as the app's own parsing would
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"ok": true}']


def wsgi_call(app, body: bytes, declared: int, **environ_extra):
    environ = EnvironBuilder(path="/predict", method="POST", data=body).get_environ()
    environ["CONTENT_LENGTH"] = str(declared)
    environ.update(environ_extra)
    answer = []
    try:
        result = app(environ, lambda status, headers, exc_info=None: answer.append(status))
        chunks = b"".join(result)
        result.close()
        return answer, chunks
    except Exception as exc:  # the app's own exception passes through
        return answer, exc


@pytest.mark.parametrize("declared, status, charged", [(100_000, "499", 0), (12, "200", 1)])
def test_wsgi_a_body_that_ends_before_its_length_is_499_and_charges_no_model(declared, status,
                                                                              charged):
    with capture() as monitored:
        app = MonitorMiddleware(wsgi_predict, model_name="m", prediction_paths=["/predict"])
        wsgi_call(app, b'{"text": ""}', declared)
    assert [line["status"] for line in monitored.logs()] == [int(status)]
    assert monitored.value("mlmonitor_http_requests_total", status=status) == 1
    assert monitored.value("mlmonitor_predictions_total", model_name="m") == charged
    assert monitored.value("mlmonitor_prediction_errors_total", model_name="m") == 0


def test_wsgi_a_chunked_body_the_server_cannot_finish_is_499():
    class Truncated(io.BytesIO):
        def read(self, *args):
            raise OSError("no more data")  # gunicorn's NoMoreData is an IOError

    with capture() as monitored:
        app = MonitorMiddleware(wsgi_predict, model_name="m", prediction_paths=["/predict"])
        _, outcome = wsgi_call(app, b"", 0, HTTP_TRANSFER_ENCODING="chunked",
                               **{"wsgi.input": Truncated()})
    assert isinstance(outcome, OSError)  # the app's exception is untouched
    assert [line["status"] for line in monitored.logs()] == [499]
    assert monitored.value("mlmonitor_prediction_errors_total") == 0


def test_wsgi_readline_readinto_and_iteration_see_the_early_end_too():
    def by_lines(environ, start_response):
        stream = environ["wsgi.input"]
        mode = environ["PATH_INFO"]
        if mode == "/lines":
            list(stream)
        elif mode == "/readinto":
            buffer = bytearray(64)
            while stream.readinto(buffer):
                pass
        else:
            stream.readline(1000)
            stream.readline(1000)
        start_response("400 Bad Request", [])
        return [b"bad"]

    with capture() as monitored:
        app = MonitorMiddleware(by_lines, model_name="m", prediction_paths=["/lines", "/readinto",
                                                                            "/readline"])
        for path in ("/lines", "/readinto", "/readline"):
            environ = EnvironBuilder(path=path, method="POST", data=b"a\nb").get_environ()
            environ["CONTENT_LENGTH"] = "1000"
            app(environ, lambda *a: None).close()
        whole = EnvironBuilder(path="/lines", method="POST", data=b"a\nb").get_environ()
        app(whole, lambda *a: None).close()  # all 3 bytes came: the app's own 400 stands
    assert [line["status"] for line in monitored.logs()] == [499, 499, 499, 400]
    assert monitored.value("mlmonitor_prediction_errors_total", error_type="invalid_input") == 1


def test_wsgi_a_broken_pipe_writing_the_answer_is_499_but_the_app_s_own_error_stays_500():
    def streamed(environ, start_response):
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/own":
            def failing():
                yield b"a"
                raise ConnectionResetError("the feature store hung up")  # the app's fault
            return failing()
        return iter([b"a", b"b"])

    def serve(app, path):
        """As gunicorn's sync worker: write each chunk; close() in a finally."""
        environ = EnvironBuilder(path=path, method="GET").get_environ()
        body = app(environ, lambda *a: None)
        try:
            try:
                for _ in body:
                    if path == "/pipe":
                        raise BrokenPipeError(32, "Broken pipe")  # the write failed
            finally:
                body.close()
        except OSError:
            pass

    with capture() as monitored:
        app = MonitorMiddleware(streamed, model_name="m", prediction_paths=["/pipe", "/own"])
        serve(app, "/pipe")
        serve(app, "/own")
    assert [line["status"] for line in monitored.logs()] == [499, 200]
    # the model answered before the client left: its prediction counts, without an error
    assert monitored.value("mlmonitor_predictions_total", model_name="m") == 2
    assert monitored.value("mlmonitor_prediction_errors_total",
                           error_type="ConnectionResetError") == 1
    assert monitored.value("mlmonitor_prediction_errors_total") == 1


async def asgi_call(app, path: str, messages: list, fail_send: bool = False) -> list:
    """Drive an ASGI app as a server does; ``messages``: what receive() hands out in turn."""
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    sent: list = []
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # nothing more: as a server with a quiet client

    async def send(message):
        if fail_send and message["type"] == "http.response.body":
            raise ConnectionResetError("gone")
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception as exc:
        sent.append(exc)
    return sent


async def reads_then_answers(scope, receive, send):
    """An app that reads the body to its end (more_body=False) before it answers."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RuntimeError("client disconnected")  # as Starlette's ClientDisconnect
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
    if scope["path"] == "/after":
        assert (await receive())["type"] == "http.disconnect"  # the server says so once done


def test_asgi_disconnect_before_the_answer_is_499_after_it_is_no_news_and_a_failed_send_is_499():
    part = {"type": "http.request", "body": b"{", "more_body": True}
    gone = {"type": "http.disconnect"}
    whole = {"type": "http.request", "body": b"{}", "more_body": False}
    with capture() as monitored:
        app = MonitorASGIMiddleware(reads_then_answers, model_name="m",
                                    prediction_paths=["/predict", "/after", "/send"])
        asyncio.run(asgi_call(app, "/predict", [part, gone]))
        asyncio.run(asgi_call(app, "/after", [whole, gone]))
        sent = asyncio.run(asgi_call(app, "/send", [whole], fail_send=True))
    assert isinstance(sent[-1], ConnectionResetError)
    assert [(line["route"], line["status"]) for line in monitored.logs()] == [
        ("/predict", 499), ("/after", 200), ("/send", 499)]
    assert monitored.value("mlmonitor_predictions_total", model_name="m") == 2  # /after, /send
    assert monitored.value("mlmonitor_prediction_errors_total") == 0
    assert monitored.value("mlmonitor_http_requests_total", status="500") == 0


def test_asgi_a_5xx_the_app_sent_before_its_client_left_stays_the_model_s_error():
    async def fails(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await receive()
        await send({"type": "http.response.body", "body": b""})

    with capture() as monitored:
        app = MonitorASGIMiddleware(fails, model_name="m", prediction_paths=["/predict"])
        asyncio.run(asgi_call(app, "/predict", [{"type": "http.disconnect"}]))
    assert [line["status"] for line in monitored.logs()] == [503]
    assert monitored.value("mlmonitor_prediction_errors_total", error_type="http_5xx") == 1


def test_asgi_a_response_is_counted_once_its_last_chunk_is_handed_over_not_when_the_app_returns():
    """What a SIGKILL can lose is bounded by this: the record is finished right after the last
    chunk's send returns, while the app may still run (background work after the answer)."""
    counted_while_running = []

    async def lingers(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        counted_while_running.append(monitored.value("mlmonitor_predictions_total", model_name="m"))

    with capture() as monitored:
        app = MonitorASGIMiddleware(lingers, model_name="m", prediction_paths=["/predict"])
        asyncio.run(asgi_call(app, "/predict", []))
    assert counted_while_running == [1]
    assert monitored.value("mlmonitor_predictions_total", model_name="m") == 1
    assert [line["status"] for line in monitored.logs()] == [200]
