"""Packaging a user meets before any request (issue 15, item 8): the licence, the metadata,
a machine without ``fcntl``, ``mlmonitor --version``."""
from __future__ import annotations

import configparser
import os
import pathlib
import subprocess
import sys

import mlmonitor

ROOT = pathlib.Path(__file__).resolve().parent.parent


def metadata() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    return config


def test_the_license_file_is_the_apache_license_the_metadata_declares():
    config = metadata()
    assert config["metadata"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(text.split()) > 1500  # the whole licence, not a pointer to it


def test_classifiers_and_python_requires_name_what_ci_tests():
    config = metadata()
    classifiers = config["metadata"]["classifiers"].split("\n")
    versions = sorted(c.rsplit(" :: ", 1)[1] for c in classifiers
                      if c.startswith("Programming Language :: Python :: 3.")
                      and c != "Programming Language :: Python :: 3 :: Only")
    ci_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert versions == ["3.11"] and ci_python in versions  # CI runs Python 3.11 only
    assert config["options"]["python_requires"] == f">={versions[0]}"
    assert "Operating System :: POSIX" in classifiers


def run_without_fcntl(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where ``import fcntl`` fails, as on Windows."""
    shim = "import sys; sys.modules['fcntl'] = None\n"
    clean = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return subprocess.run([sys.executable, "-c", shim + code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**clean, **env})


def test_import_and_a_single_process_monitor_work_without_fcntl():
    result = run_without_fcntl("""
import mlmonitor
from flask import Flask
from mlmonitor import Monitor
app = Flask(__name__)
monitor = Monitor(app, model_name="iris", model_version="v1")
@app.post("/predict")
@monitor.prediction
def predict():
    with monitor.stage("inference"):
        pass
    return {"label": "setosa"}
client = app.test_client()
assert client.post("/predict", json={}).status_code == 200
metrics = client.get("/metrics").get_data(as_text=True)
line = [l for l in metrics.splitlines() if l.startswith("mlmonitor_predictions_total{")]
print(line)
""")
    assert result.returncode == 0, result.stderr
    assert 'model_name="iris"' in result.stdout and "1.0" in result.stdout
    assert "ModuleNotFoundError" not in result.stderr and "fcntl" not in result.stderr


def test_without_fcntl_multiprocess_mode_fails_at_start_saying_why(tmp_path):
    result = run_without_fcntl("""
from mlmonitor import multiprocess
multiprocess.prepare_multiprocess_dir()
""", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    assert result.returncode != 0 and "fcntl" in result.stderr


def test_version_option_prints_the_installed_version():
    result = subprocess.run([sys.executable, "-m", "mlmonitor.cli", "--version"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mlmonitor {mlmonitor.__version__}"
    assert mlmonitor.__version__ != "0.0.0"  # read from the installed metadata
