"""Issue 13, items 3 and 12: whole lines on a pipe, dropped lines counted, valid UTF-8 JSON.

Item 3: a pipe keeps a write whole only up to PIPE_BUF bytes, so on a pipe each line is one
write of at most PIPE_BUF bytes (the stack cut first); files keep log_max_bytes.
Item 12: a failed write (EPIPE, ENOSPC, closed stream) is one dropped line, counted through
``LogSink.on_dropped``, never an internal error; a lone surrogate from client text never
reaches a line as an escape that strict UTF-8 parsers reject.
"""
from __future__ import annotations

import json
import logging
import os
import select
import threading

import pytest

from helpers.tmpfs import fill, small_tmpfs
import structlog
from flask import Flask, jsonify
from hypothesis import given, settings as hsettings, strategies as st
from prometheus_client import CollectorRegistry

from mlmonitor import Monitor, configure_logging, guard
from mlmonitor.config import Settings
from mlmonitor.logs import LogSink
from mlmonitor.rendering import render_json
from mlmonitor.record import RequestRecord

PIPE_BUF = select.PIPE_BUF
IN_CI = os.environ.get("CI", "").lower() == "true"
LONG = "model failed: " + "x" * 9000
SURROGATES = {"high": "a\ud800b", "low": "a\udc00b", "reversed": "\udc00\ud83d", "end": "v\udbff",
              "pair": "\ud83d\ude00", "emoji": "\U0001F600", "text": "\\ud800 is six characters"}
CLEAN = {"high": "a\ufffdb", "low": "a\ufffdb", "reversed": "\ufffd\ufffd", "end": "v\ufffd",
         "pair": "\U0001F600", "emoji": "\U0001F600", "text": "\\ud800 is six characters"}


def strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from strings(value)


def strict(line: str) -> dict:
    """Parse as a strict UTF-8 JSON parser would: every string must encode as UTF-8."""
    obj = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    for text in strings(obj):
        text.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
    return obj


def failed_record(message: str = LONG) -> RequestRecord:
    rec = RequestRecord({"PATH_INFO": "/predict"}, "POST", 0.0, 0)
    rec.route, rec.status_code, rec.request_id = "/predict", 500, "r1"
    rec.is_prediction, rec.model_name, rec.model_version = True, "iris", "v1"
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        rec.exc = exc
    rec.error_type = "RuntimeError"
    return rec


def ok_record() -> RequestRecord:
    rec = RequestRecord({"PATH_INFO": "/predict"}, "POST", 0.0, 0)
    rec.route, rec.status_code, rec.request_id = "/predict", 200, "r2"
    rec.is_prediction, rec.model_name, rec.model_version = True, "iris", "v1"
    return rec


@pytest.fixture
def pipe():
    """A real pipe: (text stream on the write end, read end fd); both closed after."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w")
    yield stream, read_fd
    for close in (stream.close, lambda: os.close(read_fd)):
        try:
            close()
        except OSError:
            pass


def read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    return data


# -- item 3: at most PIPE_BUF bytes per line on a pipe ------------------------------

def test_a_long_line_on_a_pipe_is_cut_to_one_pipe_buf_write_stack_first(pipe):
    stream, read_fd = pipe
    sink = LogSink(Settings(), stream)
    sink.record(failed_record())
    data = read_available(read_fd)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert len(data) <= PIPE_BUF
    line = strict(data[:-1].decode("utf-8"))
    assert line["truncated"] is True and line["status"] == 500
    assert line["error_type"] == "RuntimeError" and line["model_version"] == "v1"
    # the stack keeps its most recent part (the exception's own line), the error its head
    assert line["stack"].startswith("...[truncated]") and line["stack"].rstrip().endswith("x" * 40)
    assert line["error"].startswith("model failed: xxx")


def test_the_error_message_is_cut_after_the_stack_is_gone(pipe):
    stream, read_fd = pipe
    sink = LogSink(Settings(), stream)
    rec = failed_record()
    sink.line(rec)  # the message and stack are made once, then cached on the record
    rec.error_detail = ("model failed: " + "y" * 6000, "short stack\n")
    rec.tags = {"note": "t" * 2500}
    sink.record(rec)
    data = read_available(read_fd)
    assert len(data) <= PIPE_BUF and data.count(b"\n") == 1
    line = strict(data[:-1].decode())
    assert line["truncated"] is True and line["stack"] == "...[truncated]"
    assert line["error"].startswith("model failed: yyy") and line["error"].endswith("...[truncated]")
    assert line["tags"] == {"note": "t" * 2500}


def test_a_short_failed_line_on_a_pipe_is_not_marked_truncated(pipe):
    stream, read_fd = pipe
    LogSink(Settings(), stream).record(failed_record("short"))
    line = strict(read_available(read_fd).decode())
    assert "truncated" not in line and line["error"] == "short"


def test_lines_from_many_threads_reach_a_pipe_whole(pipe):
    stream, read_fd = pipe
    sink = LogSink(Settings(), stream)
    out = bytearray()
    reader = threading.Thread(target=lambda: [out.extend(c) for c in iter(lambda: os.read(read_fd, 1024), b"")])
    reader.start()
    threads = [threading.Thread(target=lambda: [sink.record(failed_record()) for _ in range(20)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stream.close()
    reader.join(30)
    lines = bytes(out).decode().split("\n")
    assert lines[-1] == "" and len(lines) == 81
    assert all(strict(line)["truncated"] is True for line in lines[:-1])


def test_a_regular_file_keeps_log_max_bytes(tmp_path):
    with open(tmp_path / "log", "w") as stream:
        LogSink(Settings(), stream).record(failed_record())
    text = (tmp_path / "log").read_text()
    line = strict(text.rstrip("\n"))
    assert PIPE_BUF < len(text) <= 16384 and "truncated" not in line
    assert line["error"] == LONG[:2000]


def test_a_stream_without_a_descriptor_is_written_as_before(log_stream):
    sink = LogSink(Settings(), log_stream)
    sink.record(failed_record())
    sink.record(ok_record())
    first, second, end = log_stream.getvalue().split("\n")
    assert end == "" and len(first) > PIPE_BUF and "truncated" not in strict(first)
    assert strict(second)["status"] == 200


def test_configure_logging_on_a_pipe_writes_lines_of_at_most_pipe_buf(pipe):
    """The app's own lines (same class as item 3): a traceback longer than PIPE_BUF is cut."""
    stream, read_fd = pipe
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(stream=stream)
        try:
            raise RuntimeError(LONG)
        except RuntimeError:
            logging.getLogger("app").exception("scoring failed")
        structlog.get_logger().error("big", payload="z" * 9000)
    finally:
        structlog.reset_defaults()
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = read_available(read_fd).decode().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    for line in lines[:-1]:
        assert len(line) + 1 <= PIPE_BUF and strict(line)["truncated"] is True


# -- item 12a: a failed write is one dropped line, not an error -------------------

def test_a_write_to_a_closed_pipe_is_one_dropped_line(pipe):
    stream, read_fd = pipe
    os.close(read_fd)
    sink = LogSink(Settings(), stream)
    dropped = []
    sink.on_dropped = dropped.append
    sink.record(failed_record())  # EPIPE: Python ignores SIGPIPE, so BrokenPipeError
    sink.record(ok_record())
    assert dropped == [1, 1]


def test_a_closed_stream_is_a_dropped_line_too(log_stream):
    sink = LogSink(Settings(), log_stream)
    dropped = []
    sink.on_dropped = dropped.append
    log_stream.close()
    sink.record(ok_record())
    assert dropped == [1]


def test_without_a_callback_a_failed_write_is_silent(pipe):
    stream, read_fd = pipe
    os.close(read_fd)
    LogSink(Settings(), stream).record(failed_record())  # nothing raised, no fault recorded


@pytest.mark.internal_errors_expected
def test_a_failing_callback_is_one_internal_fault_not_an_exception(pipe):
    stream, read_fd = pipe
    os.close(read_fd)
    sink = LogSink(Settings(), stream)
    sink.on_dropped = lambda n: 1 / 0
    before = guard.fault_counts.get("logs", 0)
    sink.record(ok_record())
    assert guard.fault_counts.get("logs", 0) == before + 1


@pytest.fixture
def full_disk(tmp_path):
    """A file on a real, full 64 KiB tmpfs (we run as root); unmounted after."""
    with small_tmpfs(tmp_path / "tmpfs", "64k") as mount:
        fill(mount)
        stream = open(mount / "log", "w")
        yield stream
        try:
            stream.close()
        except OSError:
            pass


def test_a_write_to_a_full_disk_is_one_dropped_line(full_disk):
    sink = LogSink(Settings(), full_disk)
    dropped = []
    sink.on_dropped = dropped.append
    for _ in range(3):
        sink.record(ok_record())  # ENOSPC
    sink.record(failed_record())
    assert dropped == [1, 1, 1, 1]


def test_a_broken_stdout_changes_no_response_and_counts_dropped_lines(pipe):
    """Through the middleware: every request answers as without logs, the lines are counted.

    Needs the middleware to wire LogSink.on_dropped to count_dropped("logs").
    """
    stream, read_fd = pipe
    os.close(read_fd)
    app = Flask(__name__)
    registry = CollectorRegistry()
    monitor = Monitor(app, model_name="iris", model_version="v1", registry=registry,
                      log_stream=stream)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return jsonify(ok=True)

    client = app.test_client()
    for _ in range(3):
        response = client.post("/predict", json={})
        assert response.status_code == 200 and response.get_json() == {"ok": True}
        response.close()
    assert registry.get_sample_value("mlmonitor_telemetry_dropped_total", {"signal": "logs"}) == 3


# -- item 12b: valid UTF-8 JSON whatever the client sent ---------------------------

def test_render_json_replaces_lone_surrogates_and_keeps_pairs():
    line = strict(render_json({"event": "x", "tags": dict(SURROGATES), **SURROGATES}))
    assert line["tags"] == CLEAN and {k: line[k] for k in SURROGATES} == CLEAN


def test_render_json_replaces_lone_surrogates_in_keys_and_in_cut_strings():
    line = strict(render_json({"event": "x", "k\udfff": "\U0001F600" * 3000}, max_bytes=2048))
    assert line["truncated"] is True and "k\ufffd" in line
    assert set(line["k\ufffd"].replace("...[truncated]", "")) <= {"\U0001F600", "\ufffd"}


def test_a_failed_request_line_is_valid_utf8(log_stream):
    rec = failed_record("bad \ud800 input")
    rec.model_version = "v\udc00"
    rec.tags = dict(SURROGATES)
    LogSink(Settings(), log_stream).record(rec)
    line = strict(log_stream.getvalue().rstrip("\n"))
    assert line["tags"] == CLEAN and line["model_version"] == "v\ufffd"
    assert line["error"] == "bad \ufffd input" and "bad \ufffd input" in line["stack"]


def test_the_plain_success_line_is_valid_utf8(log_stream):
    sink = LogSink(Settings(), log_stream)
    for value in SURROGATES.values():
        rec = ok_record()
        rec.model_version, rec.model_name = value, "m\ud800"
        rec.stages = [(value, 0.001)]
        fast, slow = strict(sink.plain_line(rec)), strict(render_json(sink.line(rec)))
        assert fast.pop("timestamp") and slow.pop("timestamp") and fast == slow
        sink.record(rec)
    lines = log_stream.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == len(SURROGATES) + 1
    assert [strict(line)["model_version"] for line in lines[:-1]] == list(CLEAN.values())


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d\ude00", "\\",
                                 "u", "d", "8", "c", "0", "a", "\U0001F600", '"']), max_size=12))
def test_any_mix_of_surrogates_and_backslashes_gives_strict_json(parts):
    value = "".join(parts)
    expected = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    assert strict(render_json({"v": value}))["v"] == expected
