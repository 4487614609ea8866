"""capture_io never reads more than its cap of a request, nor copies a larger response (issue 24,
defect 3).

Before, Flask checked ``content_length <= 64 KiB``, but a chunked request has none: the whole body
was read and parsed even when the view never read it (100 MB took a gunicorn worker from 37 to
548 MiB), and a 15 MB JSON response was copied and parsed (+76 MiB) for a 1 KiB preview.
"""
from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import threading
import tracemalloc
from typing import List

import pytest
from flask import Flask, jsonify, request
from opentelemetry.trace import SpanKind
from starlette.requests import Request
from werkzeug.test import EnvironBuilder

from mlmonitor import Monitor
from mlmonitor.previews import MAX_IO_BYTES
from mlmonitor.testing import capture

from helpers.gunicorn_proc import REPO, GunicornProcess
from helpers.promstack import wait_for

MiB = 1 << 20


_PATTERN = b"0," * (1 << 20)


class CountingInput(io.RawIOBase):
    """A chunked upload of about ``size`` bytes, one JSON array ``[0,0,...,0]``, counting what is
    read of it; made as it is read (a 100 MB body costs the test no memory)."""

    def __init__(self, size: int) -> None:
        self.size = size | 1  # odd: "[" + "0," * k + "0]"
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        start = self.sent
        end = min(start + len(buffer), start + (1 << 20), self.size)
        if end <= start:
            return 0
        out = bytearray()
        if start == 0:
            out += b"["
            start = 1
        middle = min(end, self.size - 2)
        if middle > start:
            offset = (start - 1) % 2
            out += _PATTERN[offset:offset + middle - start]
        out += b"0]"[max(start, self.size - 2) - (self.size - 2):end - (self.size - 2)]
        buffer[:len(out)] = out
        self.sent = end
        return len(out)


def flask_app(**options):
    app = Flask(__name__)
    monitor = Monitor(app, model_name="m", mlflow=True, capture_io=True, **options)

    @app.post("/ignores-body")
    @monitor.prediction
    def ignores_body():
        return jsonify(ok=True)

    @app.post("/parses-body")
    @monitor.prediction
    def parses_body():
        return jsonify(n=len(request.get_json()))

    return app


def chunked_call(app, path: str, upload: CountingInput) -> int:
    """A chunked request (no Content-Length; the server ends the stream) straight to the app."""
    environ = EnvironBuilder(path=path, method="POST", content_type="application/json").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": io.BufferedReader(upload, 8192), "wsgi.input_terminated": True,
                    "HTTP_TRANSFER_ENCODING": "chunked"})
    status: List[str] = []
    body = app(environ, lambda s, h, e=None: status.append(s))
    try:
        b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return int(status[0][:3])


def server_span(monitored):
    return [s for s in monitored.spans() if s.kind == SpanKind.SERVER][-1]


def test_a_chunked_body_the_view_never_reads_is_read_no_further_than_the_cap():
    for size in (10 * MiB, 100 * MiB):  # 10x the body: the same bytes read
        upload = CountingInput(size)
        with capture() as monitored:
            assert chunked_call(flask_app(), "/ignores-body", upload) == 200
        assert upload.sent <= MAX_IO_BYTES + 1 + 8192  # the cap, plus one buffered read
        assert "mlflow.spanInputs" not in server_span(monitored).attributes  # over the cap


def test_a_small_chunked_body_the_view_never_read_still_has_its_preview():
    upload = CountingInput(201)
    with capture() as monitored:
        assert chunked_call(flask_app(), "/ignores-body", upload) == 200
    assert json.loads(server_span(monitored).attributes["mlflow.spanInputs"]) == [0] * 100


def test_a_body_the_view_parsed_is_previewed_from_its_parse_not_read_again():
    upload = CountingInput(2 * MiB)
    with capture() as monitored:
        assert chunked_call(flask_app(), "/parses-body", upload) == 200
    assert upload.sent == upload.size  # read once, by the view
    preview = json.loads(server_span(monitored).attributes["mlflow.spanInputs"])
    assert isinstance(preview, str) and preview.startswith("[0, 0, 0")  # its head, cut


def _peak_of_request(call) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_json_response_is_not_copied_for_its_preview():
    """A ~7 MB JSON answer: capture_io adds no copy of it (before: +7 MB joined, +~40 MB parsed)."""
    peaks = {}
    for capture_io in (False, True):
        app = Flask(__name__)
        monitor = Monitor(app, model_name="m", capture_io=capture_io, traces=False, logs=False)

        @app.get("/large-answer")
        @monitor.prediction
        def large_answer():
            return app.response_class(_LARGE, mimetype="application/json")

        client = app.test_client()
        client.get("/large-answer")  # warm: imports, caches
        peaks[capture_io] = _peak_of_request(lambda: client.get("/large-answer").close())
    assert peaks[True] - peaks[False] < MiB, peaks


def test_django_does_not_copy_a_large_json_response_for_its_preview():
    django = pytest.importorskip("django")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.django_project.settings")
    django.setup()
    from django.test import Client, override_settings

    peaks = {}
    for capture_io in (False, True):
        with override_settings(ROOT_URLCONF=__name__,
                               MLMONITOR={"model_version": "v1", "capture_io": capture_io,
                                          "traces": False, "logs": False}), capture():
            client = Client()
            client.get("/large-answer")
            peaks[capture_io] = _peak_of_request(lambda: client.get("/large-answer"))
    assert peaks[True] - peaks[False] < MiB, peaks


def test_django_under_asgi_does_not_read_a_chunked_body_the_view_never_read():
    """Django's ASGI handler spools a chunked upload (no Content-Length) to a file before the
    view; capture_io does not load it into memory (before: all of it, or RequestDataTooBig
    counted as mlmonitor's fault above Django's upload limit)."""
    django = pytest.importorskip("django")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.django_project.settings")
    django.setup()
    from django.core.handlers.asgi import ASGIHandler
    from django.test import override_settings

    def call() -> int:
        sent, handed = [], [0]
        chunk = b"0," * 32768

        async def receive():
            if handed[0] > 10 * MiB:  # the body is over: the client waits for the answer
                await asyncio.Event().wait()
            if handed[0] == 10 * MiB:
                handed[0] += 1
                return {"type": "http.request", "body": b"0]", "more_body": False}
            handed[0] += len(chunk)
            return {"type": "http.request", "body": (b"[" if handed[0] == len(chunk) else b"")
                    + chunk, "more_body": True}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/ignores-body",
                 "raw_path": b"/ignores-body", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        asyncio.run(ASGIHandler()(scope, receive, send))
        return sent[0]["status"]

    peaks = {}
    for capture_io in (False, True):
        with override_settings(ROOT_URLCONF=__name__, DATA_UPLOAD_MAX_MEMORY_SIZE=None,
                               MLMONITOR={"model_version": "v1", "capture_io": capture_io,
                                          "traces": False, "logs": False}), capture():
            assert call() == 200
            peaks[capture_io] = _peak_of_request(lambda: call())
    assert peaks[True] - peaks[False] < MiB, peaks


def _django_ignores_body(request):
    from django.http import JsonResponse
    return JsonResponse({"ok": True})


def _django_large_answer(request):
    from django.http import HttpResponse
    response = HttpResponse(content_type="application/json")
    for start in range(0, len(_LARGE), 65536):  # written in parts: joined only when sent
        response.write(_LARGE[start:start + 65536])
    return response


_LARGE = json.dumps(list(range(1_000_000))).encode()


_URLS: list = []


def _django_urlpatterns():
    """Made once; a per-request model name declares no series in later tests' monitors."""
    if not _URLS:
        from django.urls import path

        from mlmonitor.django import prediction

        def model(request):
            return "m"

        _URLS.extend([path("large-answer", prediction(_django_large_answer, model_name=model)),
                      path("ignores-body", prediction(_django_ignores_body, model_name=model))])
    return _URLS


def __getattr__(name):  # Django reads urlpatterns lazily, after setup
    if name == "urlpatterns":
        return _django_urlpatterns()
    raise AttributeError(name)


def test_an_asgi_view_that_takes_the_request_leaves_its_body_unread():
    """FastAPI: a view given the raw Request (not a parsed body) has its stream left alone."""
    from fastapi import FastAPI

    from mlmonitor import Monitor as AsgiMonitor

    app = FastAPI()
    monitor = AsgiMonitor(app, model_name="m", mlflow=True, capture_io=True)

    @app.post("/predict")
    @monitor.prediction
    async def predict(request: Request):
        return {"ok": True}

    handed = [0]
    chunk = b"0," * 32768

    async def receive():
        if handed[0] >= 10 * MiB:
            return {"type": "http.request", "body": b"", "more_body": False}
        handed[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"),
                                          (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    with capture():
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert handed[0] == 0


def test_a_large_pydantic_result_is_previewed_without_a_copy():
    from pydantic import BaseModel

    from mlmonitor.previews import preview
    from mlmonitor.redact import redactor

    class Answer(BaseModel):
        api_key: str
        scores: list

    answer = Answer(api_key="sk-LIVE-1", scores=list(range(1_000_000)))
    redact = redactor(("api_key",))
    peak = _peak_of_request(lambda: preview(redact, answer))
    text = preview(redact, answer)
    assert peak < MiB // 4 and "sk-LIVE-1" not in text


# -- a real gunicorn worker ----------------------------------------------------------------------
GUNICORN_APP = '''
from flask import Flask, jsonify
from mlmonitor import Monitor

app = Flask(__name__)
monitor = Monitor(app, model_name="m", mlflow=True, capture_io=True)
READ = {"bytes": 0, "served": 0}


@app.post("/predict")
@monitor.prediction
def predict():  # never reads the body
    return jsonify(ok=True)


LARGE = b"[" + b"0," * 8_000_000 + b"0]"  # 16 MB of JSON, made before the baseline


@app.get("/large-answer")
@monitor.prediction
def large_answer():
    return app.response_class(LARGE, mimetype="application/json")


@app.get("/stats")
def stats():
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return jsonify(dict(READ, hwm_kib=int(status["VmHWM"].split()[0]),
                        rss_kib=int(status["VmRSS"].split()[0])))


@app.get("/healthz")
def healthz():
    return "ok"


class Counted:
    def __init__(self, stream):
        self.stream = stream

    def read(self, *args):
        data = self.stream.read(*args)
        READ["bytes"] += len(data)
        return data

    def readline(self, *args):
        data = self.stream.readline(*args)
        READ["bytes"] += len(data)
        return data

    def __iter__(self):
        return iter(self.readline, b"")


inner = app.wsgi_app


def counting(environ, start_response):
    if environ["PATH_INFO"] == "/predict":
        READ["bytes"] = 0
        READ["served"] += 1
        environ["wsgi.input"] = Counted(environ["wsgi.input"])
    return inner(environ, start_response)


app.wsgi_app = counting
'''


def _chunked_upload(port: int, size: int) -> None:
    """POST ``size`` bytes of a JSON array, chunked; the server may close before the end."""
    def body():
        yield b"["
        left = size - 2
        piece = b"0," * 32768
        while left > len(piece):
            yield piece
            left -= len(piece)
        yield b"0," * ((left - 1) // 2) + b"0]"

    connection = http.client.HTTPConnection("127.0.0.1", port)
    try:
        connection.request("POST", "/predict", body=body(), encode_chunked=True,
                           headers={"Content-Type": "application/json"})
        connection.getresponse().read()
    except OSError:  # the worker answered without reading the body, and closed
        pass
    finally:
        connection.close()


def test_gunicorn_worker_memory_stays_flat_for_a_chunked_body_ten_times_larger(tmp_path):
    """10 MB then 100 MB chunked bodies to a view that never reads them: the worker reads at most
    the cap of each and its peak RSS does not move (before: 100 MB took it from 37 to 548 MiB);
    nor does a 16 MB JSON answer's (before: parsed for its preview, +76 MiB)."""
    (tmp_path / "capture_app.py").write_text(GUNICORN_APP)
    (tmp_path / "conf.py").write_text("workers = 1\nworker_class = 'sync'\ntimeout = 120\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "OTEL_TRACES_EXPORTER": "none"}
    with GunicornProcess(app="capture_app:app", config=tmp_path / "conf.py", cwd=tmp_path,
                         env=env) as server:
        def get_stats():
            connection = http.client.HTTPConnection("127.0.0.1", server.port)
            connection.request("GET", "/stats")
            answer = json.loads(connection.getresponse().read())
            connection.close()
            return answer

        _chunked_upload(server.port, 100_000)  # warm: imports, first request
        wait_for(lambda: get_stats()["served"] == 1, timeout=60)
        before = get_stats()
        connection = http.client.HTTPConnection("127.0.0.1", server.port)
        connection.request("GET", "/large-answer")
        answer = connection.getresponse()
        assert answer.status == 200 and len(answer.read()) > 15_000_000
        connection.close()
        figures = [("16 MB answer", 0, (get_stats()["hwm_kib"] - before["hwm_kib"]) / 1024)]
        for n, size in enumerate((10 * MiB, 100 * MiB), start=2):
            thread = threading.Thread(target=_chunked_upload, args=(server.port, size))
            thread.start()
            wait_for(lambda: get_stats()["served"] == n, timeout=120)
            thread.join(120)
            after = get_stats()
            figures.append((size, after["bytes"], (after["hwm_kib"] - before["hwm_kib"]) / 1024))
        print("capture_io: (request, body bytes read, worker peak RSS growth so far, MiB)", figures)
        for size, read, growth in figures:
            assert read <= MAX_IO_BYTES + 1 + 65536, figures  # the cap, plus one buffered chunk
            assert growth < 16, figures
