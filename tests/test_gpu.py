"""GPU collector: a fake NVML for the numbers, the real absence of one for the quiet skip."""

from __future__ import annotations

import logging
import sys
import types
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlmonitor.gpu import GpuCollector, register_gpu_collector


class NVMLError(Exception):
    pass


def _fake_pynvml(gpus, fail_init=False):
    module = types.ModuleType("pynvml")
    module.calls = []

    def init():
        module.calls.append("init")
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    module.NVMLError = NVMLError
    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: len(gpus)
    module.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    module.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(
        used=h["used"], total=h["total"], free=h["total"] - h["used"]
    )
    module.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=h["util"], memory=0)
    return module


def _samples(registry):
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels.get("gpu")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("mlmonitor_gpu")
    }


GPUS = [
    {"used": 2 * 1024**3, "total": 80 * 1024**3, "util": 37},
    {"used": 0, "total": 80 * 1024**3, "util": 100},
]


def test_fake_nvml_gives_gpu_metrics(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(GPUS))
    registry = CollectorRegistry()
    assert register_gpu_collector(registry) is True
    assert _samples(registry) == {
        ("mlmonitor_gpu_utilization_ratio", "0"): 0.37,
        ("mlmonitor_gpu_utilization_ratio", "1"): 1.0,
        ("mlmonitor_gpu_memory_used_bytes", "0"): 2 * 1024**3,
        ("mlmonitor_gpu_memory_used_bytes", "1"): 0.0,
        ("mlmonitor_gpu_memory_total_bytes", "0"): 80 * 1024**3,
        ("mlmonitor_gpu_memory_total_bytes", "1"): 80 * 1024**3,
    }


def test_register_does_not_query_devices(monkeypatch):
    fake = _fake_pynvml(GPUS)
    fake.nvmlDeviceGetHandleByIndex = lambda i: pytest.fail("queried at registration")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert register_gpu_collector(CollectorRegistry()) is True


def test_scrape_fault_gives_no_gpu_samples_and_no_exception():
    fake = _fake_pynvml(GPUS)

    def lost(handle):
        raise NVMLError("GPU is lost")

    fake.nvmlDeviceGetUtilizationRates = lost
    registry = CollectorRegistry()
    registry.register(GpuCollector(fake))
    assert _samples(registry) == {}


def test_forked_worker_reinitialises_nvml(monkeypatch):
    fake = _fake_pynvml(GPUS)
    collector = GpuCollector(fake)
    collector._pid = -1  # as if created in the gunicorn master before fork
    list(collector.collect())
    assert fake.calls == ["init"]
    list(collector.collect())
    assert fake.calls == ["init"]


def test_no_gpu_returns_false(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([]))
    registry = CollectorRegistry()
    with caplog.at_level(logging.DEBUG, logger="mlmonitor.gpu"):
        assert register_gpu_collector(registry) is False
    assert "no GPU" in caplog.text
    assert _samples(registry) == {}


def test_driver_missing_returns_false(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(GPUS, fail_init=True))
    assert register_gpu_collector(CollectorRegistry()) is False


def test_without_pynvml_returns_false_quietly(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with caplog.at_level(logging.DEBUG, logger="mlmonitor.gpu"):
        assert register_gpu_collector(CollectorRegistry()) is False
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.DEBUG


def test_this_machine_skips_cleanly_or_reports_real_gpus():
    """Real NVML when installed: True with samples on a GPU machine, False (no exception) elsewhere."""
    registry = CollectorRegistry()
    if register_gpu_collector(registry):
        samples = _samples(registry)
        totals = [v for (name, _), v in samples.items() if name == "mlmonitor_gpu_memory_total_bytes"]
        assert totals and all(t > 0 for t in totals)
        assert all(0 <= v <= 1 for (name, _), v in samples.items() if name == "mlmonitor_gpu_utilization_ratio")
    else:
        assert _samples(registry) == {}
