"""Honest dependency bounds (issue 15): what mlmonitor needs from the installed versions.

These tests check capabilities, not version strings, so run on the lowest allowed versions
they fail when a lower bound in setup.cfg is wrong. Checked by hand on the wheels:
prometheus-client 0.17 stores one double per entry (every worker file is then rejected),
0.18-0.21 lack ``prometheus_client.validation`` (every entry is then rejected); the SDK's
queue-full drops are countable from opentelemetry-sdk 1.34.

Run as a script it prints the lowest allowed versions as pip constraints; ``make test-lowest``
(which ``.ci/run`` runs after ``make test``) installs them, wheels only, in ``.venv-lowest`` and
runs the fast tests there. Bounds that run found false and raised: Flask 3.1.2 (2.2-2.3.2 break
with the Werkzeug 3 pip installs beside them; up to 3.1.1 the streamed-body tests under
FlaskInstrumentor fail after an earlier streamed request in the same process), OpenTelemetry 1.43 / instrumentation 0.64b0 (the
1.34 OTLP exporter's export() cannot take mlmonitor's encoder, up to 1.40 an unreachable endpoint
raises out of export(), up to 1.42 the SDK encodes empty and None values differently), asgiref 3.2.8 (before it, Flask's async views lose the app
context), numpy 1.23.2 and PyYAML 6.0.1 (the first with Python 3.11 wheels), hypothesis 6.83
(``characters(codec=)``), promql-parser 0.9 (``walk``).
"""
from __future__ import annotations

import configparser
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: the first versions with what mlmonitor uses (see the module docstring)
NEEDED = {"prometheus-client": (0, 22), "opentelemetry-sdk": (1, 34), "opentelemetry-api": (1, 34)}


def lower_bounds(extras=("test",)) -> dict:
    """``{name: version}`` of every ``name>=version`` in install_requires and ``extras``."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    bounds = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", line)
        if match:
            bounds[match.group(1).lower()] = match.group(2)
    return bounds


def _release(version: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _run(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, env={"PATH": "", **env, **{
                                key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ}})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("name", sorted(NEEDED))
def test_lower_bound_is_at_least_the_first_version_mlmonitor_works_with(name):
    assert _release(lower_bounds()[name]) >= NEEDED[name]


def test_installed_prometheus_client_files_are_read_by_mlmonitor(tmp_path):
    out = _run("""
import glob, os
from mlmonitor import multiprocess
multiprocess.use_multiprocess_values()
from prometheus_client import Counter
Counter("jobs_total", "jobs", ["kind"]).labels("a").inc(3)
[name] = glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "counter_*.db"))
entries, bad = multiprocess.read_db(name, "counter")
print(len(entries), bad, entries[0][2])
""", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert out == "1 0 3.0"


def test_installed_sdk_lets_mlmonitor_count_spans_dropped_on_a_full_queue():
    out = _run("""
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from mlmonitor import trace_provider

class Exporter:
    def export(self, spans): return SpanExportResult.SUCCESS
    def shutdown(self): pass

class Sink:
    dropped = 0
    def on_dropped(self, n): Sink.dropped += n

sink = Sink()
trace_provider.add_drop_counter(sink)
provider = TracerProvider()
provider.add_span_processor(trace_provider._batch_processor(Exporter()))
tracer = provider.get_tracer("t")
for _ in range(10):
    tracer.start_span("s").end()
print(Sink.dropped)
""", OTEL_BSP_MAX_QUEUE_SIZE="2", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2",
        OTEL_BSP_SCHEDULE_DELAY="60000")
    assert int(out) >= 7  # a queue of 2, at most one batch taken by the worker meanwhile


if __name__ == "__main__":  # the lowest allowed versions, as pip constraints [extras,...]
    chosen = tuple(sys.argv[1].split(",")) if len(sys.argv) > 1 else ("test", "otlp", "gunicorn")
    for package, version in sorted(lower_bounds(chosen).items()):
        print(f"{package}=={version}")


def test_ci_runs_the_fast_tests_on_the_lowest_versions_after_the_readme_command(tmp_path):
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip().startswith("make ")]
    # the three venvs are built side by side first (pip waits on the network), then the README's
    # command (the gates first), the instruction budget, then the lowest versions
    assert steps == ["make -j3 venv venv-mlflow venv-lowest", "make test", "make budget", "make test-lowest"]
    lowest = tmp_path / "lowest"
    plan = subprocess.run(["make", "-n", "-B", "test-lowest", f"LOWEST={lowest}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    commands = plan.stdout.splitlines()
    [constraints] = [c for c in commands if "tests/test_good_guest_bounds.py >" in c]
    [install] = [c for c in commands if c.startswith(f"{lowest}/bin/pip install")]
    [tests] = [c for c in commands if "-m pytest" in c]
    assert "-c" in install.split() and "--only-binary=:all:" in install
    assert ".[test,otlp,gunicorn]" in install
    assert tests.startswith(f"{lowest}/bin/python") and "not slow" in tests
    assert constraints.endswith("constraints.txt")


def test_the_constraints_pin_every_lower_bound_ci_installs():
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "test_good_guest_bounds.py")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    pinned = dict(line.split("==") for line in out.split())
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    wanted = config["options"]["install_requires"].split()
    for extra in ("test", "otlp", "gunicorn"):
        wanted += config["options.extras_require"][extra].split()
    for requirement in wanted:  # every dependency CI installs has a lower bound, pinned
        name, _, version = requirement.partition(">=")
        assert version, f"{requirement}: no lower bound to test"
        assert pinned[name.lower()] == version
