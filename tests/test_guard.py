"""The guard: one fault is counted once, by the app whose request caused it."""
from __future__ import annotations

import gc
import weakref

import pytest
from werkzeug.test import Client

import mlmonitor
from helpers.doubles import Doubles
from mlmonitor import MonitorMiddleware, guard

FAULTS = "mlmonitor_internal_errors_total"


def faulty_app(environ, start_response):
    if environ["PATH_INFO"] == "/fault":
        mlmonitor.set_model_version(lambda: 1 / 0)  # a callable version that raises: one fault
    if environ["PATH_INFO"] == "/report":
        guard.report_fault("test")  # no owner given: the request's app counts it
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def monitored(name: str):
    d = Doubles()
    app = MonitorMiddleware(faulty_app, model_name=name, **d.monitor_options)
    return app, d.registry


@pytest.mark.internal_errors_expected
@pytest.mark.parametrize("path, component", [("/fault", "model_version"), ("/report", "test")])
def test_a_fault_in_one_apps_request_counts_once_in_that_apps_registry(path, component):
    app_a, registry_a = monitored("a")
    app_b, registry_b = monitored("b")  # built last: the newest app
    assert Client(app_a).get(path, buffered=True).status_code == 200
    assert registry_a.get_sample_value(FAULTS, {"component": component}) == 1
    assert registry_b.get_sample_value(FAULTS, {"component": component}) is None
    assert Client(app_b).get("/", buffered=True).status_code == 200
    assert registry_a.get_sample_value(FAULTS, {"component": component}) == 1


@pytest.mark.internal_errors_expected
def test_a_fault_outside_any_request_counts_once_in_the_newest_app():
    app_a, registry_a = monitored("a")
    app_b, registry_b = monitored("b")
    guard.report_fault("outside")
    assert registry_a.get_sample_value(FAULTS, {"component": "outside"}) is None
    assert registry_b.get_sample_value(FAULTS, {"component": "outside"}) == 1


@pytest.mark.internal_errors_expected
def test_guarded_swallows_exceptions_and_lets_base_exceptions_through():
    app, registry = monitored("a")
    with guard.guarded("block", app):
        raise ValueError("inside mlmonitor")
    assert registry.get_sample_value(FAULTS, {"component": "block"}) == 1
    with pytest.raises(KeyboardInterrupt):
        with guard.guarded("block", app):
            raise KeyboardInterrupt
    assert registry.get_sample_value(FAULTS, {"component": "block"}) == 1


def test_an_app_that_goes_away_is_not_kept_alive_by_the_guard_or_the_trace_sink():
    app, _ = monitored("gone")
    Client(app).get("/", buffered=True)
    ref = weakref.ref(app)
    del app
    gc.collect()
    assert ref() is None


def test_dropped_spans_are_counted_once_by_the_newest_live_trace_sink():
    from mlmonitor import trace_provider

    class Sink:
        def __init__(self):
            self.dropped = []

        def on_dropped(self, count):
            self.dropped.append(count)

    old, new = Sink(), Sink()
    trace_provider.add_drop_counter(old)
    trace_provider.add_drop_counter(new)
    trace_provider.notify_dropped(3)
    assert old.dropped == [] and new.dropped == [3]
    del new
    gc.collect()
    trace_provider.notify_dropped(2)
    assert old.dropped == [2]
