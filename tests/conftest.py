"""Shared fixtures: fail any test in which mlmonitor hit an internal error."""
from __future__ import annotations

import io
import os
import shutil

import pytest

from mlmonitor import guard

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """The path of a real tool; in CI a missing one fails the test, elsewhere it skips."""
    path = shutil.which(name)
    if path is None:
        package = {"promtool": "prometheus", "amtool": "prometheus-alertmanager",
                   "prometheus-alertmanager": "prometheus-alertmanager"}.get(name, name)
        message = f"{name} is not installed (Debian: apt-get install {package})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "internal_errors_expected: the test injects mlmonitor faults")


@pytest.fixture(autouse=True)
def no_internal_errors(request):
    """Like sentry's fixture: a hidden mlmonitor fault fails the test that caused it."""
    before = guard.total_faults()
    yield
    if request.node.get_closest_marker("internal_errors_expected"):
        return
    after = guard.total_faults()
    assert after == before, f"mlmonitor recorded internal errors: {guard.fault_counts}"


@pytest.fixture
def log_stream():
    return io.StringIO()
