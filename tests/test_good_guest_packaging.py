"""Packaging a user meets before any request (issue 15, item 8): the licence, the metadata,
a machine without ``fcntl``, ``mlmonitor --version``; the distribution's own name and its install
lines (issue 25, item 1)."""
from __future__ import annotations

import configparser
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

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
    result = subprocess.run([sys.executable, "-m", "mlmonitor.tools.cli", "--version"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mlmonitor {mlmonitor.__version__}"
    assert mlmonitor.__version__ != "0.0.0"  # read from the installed metadata


# -- the distribution's name (issue 25, item 1) ------------------------------------------
#: where a user reads an install line: the README, the docs, every README of the repository,
#: and the messages of the package itself
DOC_FILES = sorted({ROOT / "README.md", *ROOT.glob("*/README.md"), *(ROOT / "docs").rglob("*.md")})
PACKAGE_FILES = sorted((ROOT / "mlmonitor").rglob("*.py"))
_CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`]+)`", re.S)
_TARGET = re.compile(r"^(\.|[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]*)\])?")


def extras() -> set:
    return set(metadata()["options.extras_require"])


def install_commands() -> list:
    """(file, what follows ``pip install``) for each install command a user can copy."""
    found = []
    for path in DOC_FILES:
        for block, span in _CODE.findall(path.read_text()):
            code = block or span
            for line in re.split(r"\n(?!')|&&|;", code):  # a span may wrap before its quoted target
                if "pip install" in line:
                    found.append((path, line.split("pip install", 1)[1].split("#")[0]))
    for path in PACKAGE_FILES:
        for text in re.findall(r"pip install[^\"\n)]*", path.read_text()):
            found.append((path, text.split("pip install", 1)[1]))
    return found


def test_the_distribution_has_a_name_of_its_own_and_the_import_package_stays_mlmonitor():
    """``mlmonitor`` on PyPI is an unrelated project: ours is ``mlmonitor-serving``."""
    from importlib import metadata as md
    assert metadata()["metadata"]["name"] == mlmonitor.DISTRIBUTION == "mlmonitor-serving"
    installed = md.metadata(mlmonitor.DISTRIBUTION)
    assert installed["Name"] == "mlmonitor-serving" and md.version("mlmonitor-serving") == mlmonitor.__version__
    scripts = {e.name: e.value for e in md.distribution("mlmonitor-serving").entry_points
               if e.group == "console_scripts"}
    assert scripts == {"mlmonitor": "mlmonitor.tools.cli:main"}
    assert {"fastapi", "asgi", "otlp", "gunicorn"} <= set(installed.get_all("Provides-Extra"))
    fastapi = {r.split(";")[0].split(">")[0].strip() for r in installed.get_all("Requires-Dist")
               if 'extra == "fastapi"' in r}
    assert fastapi == {"fastapi", "starlette", "uvicorn"}  # [asgi] has no FastAPI


def test_every_install_line_names_the_distribution_or_the_checkout_and_extras_that_exist():
    commands = install_commands()
    assert len(commands) >= 10  # the README's own lines were found
    wrong = []
    for path, args in commands:
        targets = [t.strip("'\"") for t in args.split() if not t.startswith("-")]
        ours = 0
        for target in targets:
            match = _TARGET.match(target)
            name, named = (match.group(1), match.group(2)) if match else (target, None)
            if name.lower().replace("_", "-").startswith("mlmonitor") and name != mlmonitor.DISTRIBUTION:
                wrong.append((path.name, args, f"{name} is another project's name"))
            ours += name in (".", mlmonitor.DISTRIBUTION)
            unknown = {e.strip() for e in (named or "").split(",") if e.strip()} - extras()
            if unknown:
                wrong.append((path.name, args, f"no such extra {sorted(unknown)}"))
        if not ours:
            wrong.append((path.name, args, "installs neither the checkout nor mlmonitor-serving"))
    assert wrong == []


def test_the_install_section_gives_both_lines_and_names_every_extra_a_user_installs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    assert "pip install -e '.[otlp,gunicorn]'" in section
    assert "pip install 'mlmonitor-serving[otlp,gunicorn]'" in section
    assert "not yet published on PyPI" in section and "The PyPI project named `mlmonitor` is unrelated" in section
    listed = set(re.findall(r"`(\w+)`(?: \(|,| and|\))", section.split("Extras", 1)[1]))
    assert listed == extras() - {"test", "lint", "dev", "bench"}
    fastapi_section = readme.split("\n## ASGI / FastAPI\n", 1)[1][:400]
    assert "pip install 'mlmonitor-serving[fastapi]'" in fastapi_section


@pytest.mark.slow
def test_the_built_wheel_is_mlmonitor_serving_and_installs_into_a_fresh_venv(tmp_path):
    """The wheel pip builds from the checkout (as ``pip install .`` does), installed with
    ``--no-deps`` into a new venv: its name, extras and command; its dependencies come from
    this venv (``make test`` has them), so no index is asked for them."""
    import sysconfig
    import zipfile
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mlmonitor", source / "mlmonitor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(pip + ["wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("mlmonitor_serving-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
        text = archive.read(meta).decode()
    assert "\nName: mlmonitor-serving\n" in text and "mlmonitor/py.typed" in names
    assert {f"Provides-Extra: {e}" for e in extras()} <= set(text.splitlines())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    installed = subprocess.run(pip + ["--python", str(venv / "bin" / "python"), "install", "--no-deps",
                                      "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}  # the dependencies only
    version = subprocess.run([str(venv / "bin" / "mlmonitor"), "--version"], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path, env=env)
    assert version.stdout.strip() == f"mlmonitor {mlmonitor.__version__}", version.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import mlmonitor; print(mlmonitor.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert where.stdout.strip().startswith(str(venv)), where.stderr  # the wheel's copy, not the checkout
