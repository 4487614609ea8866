"""Shared fixtures: fail any test in which mlmonitor hit an internal error."""
from __future__ import annotations

import io
import os

import pytest

from mlmonitor import guard
from mlmonitor.testing import mlmonitor_capture  # noqa: F401  (the fixture, for every test)

from helpers.promstack import require_binary  # noqa: F401  (tests import it from here too)

IN_CI = os.environ.get("CI", "").lower() == "true"


#: a hypothesis test of more examples than this is a long fuzzer, marked ``slow`` (``make test``
#: runs it, ``make test-fast`` leaves it out); hypothesis' default is 100
LONG_FUZZ_EXAMPLES = 100
#: long fuzzers and soaks of fewer examples that still take 10 s or more each (measured), also ``slow``
LONG_TESTS = frozenset({
    "test_otlp_encoder.py::test_sliced_encoding_carries_the_same_spans",
    "test_core_flask.py::test_unknown_paths_and_methods_add_no_series",
    "test_reliability_inputs.py::test_random_paths_leave_memory_steady",
})


def pytest_configure(config):
    config.addinivalue_line("markers", "internal_errors_expected: the test injects mlmonitor faults")


def pytest_collection_modifyitems(config, items):
    for item in items:
        fuzz = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_settings", None)
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if (fuzz is not None and fuzz.max_examples > LONG_FUZZ_EXAMPLES) or name in LONG_TESTS:
            item.add_marker(pytest.mark.slow)


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
