"""One feedback secret for the workers of one server without configuration (issue 24, defect 6):
processes sharing PROMETHEUS_MULTIPROC_DIR read one secret file that the first of them creates,
atomically and private to this user; a file others could read or plant is not used (one log line).
Under ``uvicorn --workers 3`` with no MLMONITOR_FEEDBACK_SECRET, feedback for ids minted by other
workers is accepted."""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.gunicorn_proc import REPO, free_port, http_get, post_json
from helpers.promstack import wait_for
from mlmonitor.config import Settings
from mlmonitor.feedback import SECRET_FILE, FeedbackRecorder, shared_secret
from mlmonitor.tokens import verify_prediction


def _race(directory, barrier, results):
    barrier.wait()
    results.put(shared_secret(directory))


def test_processes_creating_the_secret_at_once_all_get_the_same_private_one(tmp_path):
    ctx = multiprocessing.get_context("fork")
    directory = tmp_path / "prom"
    directory.mkdir(mode=0o700)
    count = 8
    barrier, results = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(directory), barrier, results)) for _ in range(count)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert len(set(got)) == 1 and got[0] and len(got[0]) == 64
    assert os.listdir(directory) == [SECRET_FILE]  # no temporary file left behind
    info = os.stat(directory / SECRET_FILE)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert shared_secret(str(directory)) == got[0]  # read again, not made anew


def _planted(tmp_path, mode=0o600, content="p" * 64):
    directory = tmp_path / "prom"
    directory.mkdir(mode=0o700)
    path = directory / SECRET_FILE
    path.write_text(content)
    os.chmod(path, mode)
    return directory, path


def _refused(caplog, directory, why):
    with caplog.at_level(logging.WARNING, logger="mlmonitor"):
        assert shared_secret(str(directory)) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "mlmonitor"]
    assert len(lines) == 1 and why in lines[0] and "MLMONITOR_FEEDBACK_SECRET" in lines[0], lines
    assert "p" * 32 not in lines[0]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_secret_file_that_group_or_others_may_read_or_write_is_not_used(tmp_path, caplog, mode):
    directory, _ = _planted(tmp_path, mode)
    _refused(caplog, directory, "group or others may read or write it")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_secret_file_of_another_user_is_not_used(tmp_path, caplog):
    directory, path = _planted(tmp_path)
    os.chown(path, os.geteuid() + 4242, -1)
    _refused(caplog, directory, "owned by uid")


def test_a_symbolic_link_or_a_fifo_is_not_used(tmp_path, caplog):
    directory, path = _planted(tmp_path)
    target = tmp_path / "elsewhere"
    path.rename(target)
    path.symlink_to(target)
    _refused(caplog, directory, "a symbolic link")
    caplog.clear()
    path.unlink()
    os.mkfifo(path, 0o600)
    _refused(caplog, directory, "not a regular file")  # and start-up does not wait on it


def test_a_file_that_holds_no_secret_is_not_used(tmp_path, caplog):
    directory, _ = _planted(tmp_path, content="short")
    _refused(caplog, directory, "does not hold a secret")


def test_a_directory_others_may_write_is_not_used(tmp_path, caplog):
    directory = tmp_path / "prom"
    directory.mkdir()
    os.chmod(directory, 0o777)
    _refused(caplog, directory, "world-writable")


def test_recorders_on_one_directory_sign_and_verify_for_each_other(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    one, two = FeedbackRecorder(Settings(), None), FeedbackRecorder(Settings(), None)
    assert not one.ephemeral and one.secret == two.secret
    with caplog.at_level(logging.WARNING, logger="mlmonitor"):
        token = one.sign("m", "v", "cat")
    assert verify_prediction(two.secret, token, 60).predicted == "cat"
    assert not caplog.records  # nothing to set: the workers agree
    # a configured secret wins, and no file is made for it
    configured = FeedbackRecorder(Settings(feedback_secret="c" * 32), None)
    assert configured.secret == "c" * 32


def test_without_a_shared_directory_the_first_id_says_what_to_set(monkeypatch, caplog):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    recorder = FeedbackRecorder(Settings(), None)
    assert recorder.ephemeral
    with caplog.at_level(logging.WARNING, logger="mlmonitor"):
        recorder.sign("m", "v", "cat")
        recorder.sign("m", "v", "dog")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "set MLMONITOR_FEEDBACK_SECRET" in lines[0] \
        and "PROMETHEUS_MULTIPROC_DIR" in lines[0]


# -- a real uvicorn with three workers and no configured secret -----------------------------------

APP = textwrap.dedent("""
    import os
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from mlmonitor import Monitor

    app = FastAPI()
    monitor = Monitor(app, model_name="m", model_version="v1", prediction_paths=["/predict"])

    @app.post("/predict")
    def predict(body: dict):
        return {"id": monitor.prediction_id(body["value"]), "pid": os.getpid()}

    @app.post("/feedback")
    def feedback(body: dict):
        try:
            return {"outcome": monitor.record_feedback(body["id"], body["label"]), "pid": os.getpid()}
        except ValueError as exc:
            return JSONResponse({"error": str(exc), "pid": os.getpid()}, status_code=400)

    @app.get("/healthz")
    def healthz():
        return {"ok": True}
""")


def _ready(url):
    try:
        return http_get(url + "/healthz", timeout=2)[0] == 200 or None
    except OSError:
        return None


@pytest.mark.slow
def test_uvicorn_workers_accept_feedback_for_ids_other_workers_minted(tmp_path):
    (tmp_path / "secret_app.py").write_text(APP)
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLMONITOR_FEEDBACK_SECRET"}
    env.update({"PROMETHEUS_MULTIPROC_DIR": str(prom), "MLMONITOR_TRACES": "false",
                "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])})
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "secret_app:app", "--app-dir", str(tmp_path),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "3",
                             "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    answers = []
    try:
        wait_for(lambda: _ready(url), timeout=60, what="uvicorn answers")

        def round_trip(i):
            status, minted = post_json(url + "/predict", {"value": f"c{i % 3}"})
            assert status == 200, minted
            status, counted = post_json(url + "/feedback", {"id": minted["id"], "label": f"c{i % 3}"})
            return minted["pid"], status, counted

        def crossed():  # send until 20 ids were checked by a worker that did not mint them
            with ThreadPoolExecutor(6) as pool:
                answers.extend(pool.map(round_trip, range(30)))
            return sum(1 for pid, _, counted in answers if counted["pid"] != pid) >= 20 or None

        wait_for(crossed, timeout=120, interval=0, what="feedback crossing workers")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        stderr = proc.stderr.read()
    refused = [counted for _, status, counted in answers if status != 200]
    assert not refused, f"{len(refused)} of {len(answers)} refused, e.g. {refused[0]}"
    assert all(counted["outcome"] == "correct" for _, _, counted in answers)
    assert len({pid for pid, _, _ in answers}) >= 2
    assert "MLMONITOR_FEEDBACK_SECRET" not in stderr  # nothing to set: no warning
    assert os.listdir(prom).count(SECRET_FILE) == 1
