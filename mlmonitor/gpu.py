"""Optional NVIDIA GPU metrics through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

Owns one prometheus_client collector that, at each scrape, reads per GPU:
``mlmonitor_gpu_utilization_ratio{gpu}`` (0..1), ``mlmonitor_gpu_memory_used_bytes{gpu}`` and
``mlmonitor_gpu_memory_total_bytes{gpu}``; ``gpu`` is the NVML device index.
:func:`register_gpu_collector` adds it to a registry when NVML answers and returns False, quietly,
when the package or a GPU is missing. A fault at scrape time yields no GPU samples; it never
raises into the scrape.

Example::

    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry()
    register_gpu_collector(registry)   # True with a GPU, False without
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .contract import GPU, GPU_MEMORY_TOTAL, GPU_MEMORY_USED, GPU_UTILIZATION

__all__ = ["GpuCollector", "register_gpu_collector"]

log = logging.getLogger(__name__)

MAX_GPUS = 64  # bounds the gpu label


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            GPU_UTILIZATION, "GPU busy share over NVML's last sample period (0..1).", labels=[GPU]
        ),
        GaugeMetricFamily(GPU_MEMORY_USED, "GPU memory in use.", labels=[GPU]),
        GaugeMetricFamily(GPU_MEMORY_TOTAL, "GPU memory installed.", labels=[GPU]),
    )


class GpuCollector(Collector):
    """Reads NVML at scrape time; pass the ``pynvml`` module in (tests pass a fake one)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._pid = os.getpid()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Names only, so registering does not query the GPU."""
        return iter(_families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            families = self._read()
        except Exception:  # NVMLError, a lost device, a driver reload: no GPU samples this scrape
            log.debug("mlmonitor: reading NVML failed", exc_info=True)
            return iter(())
        return iter(families)

    def _read(self) -> tuple[GaugeMetricFamily, ...]:
        nvml = self._nvml
        if os.getpid() != self._pid:  # a forked worker: NVML state does not survive fork
            nvml.nvmlInit()
            self._pid = os.getpid()
        utilization, used, total = _families()
        for index in range(min(int(nvml.nvmlDeviceGetCount()), MAX_GPUS)):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            gpu = str(index)
            utilization.add_metric([gpu], float(rates.gpu) / 100.0)
            used.add_metric([gpu], float(memory.used))
            total.add_metric([gpu], float(memory.total))
        return utilization, used, total


def make_gpu_collector() -> GpuCollector | None:
    """A collector if NVML is importable and sees a GPU, else None (one debug log line)."""
    try:
        import pynvml  # noqa: PLC0415 (optional: the gpu extra)
    except ImportError:
        log.debug("mlmonitor: no GPU metrics: pynvml is not installed (pip install 'mlmonitor-serving[gpu]')")
        return None
    try:
        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.debug("mlmonitor: no GPU metrics: NVML did not start: %s", exc)
        return None
    if count < 1:
        log.debug("mlmonitor: no GPU metrics: NVML sees no GPU")
        return None
    return GpuCollector(pynvml)


def register_gpu_collector(registry: CollectorRegistry) -> bool:
    """Register a :class:`GpuCollector` on ``registry`` if NVML is importable and sees a GPU.

    Returns False (one debug log line, no exception) without ``pynvml``, without a driver or
    without a GPU. In multiprocess mode register it on the registry that serves ``/metrics``.
    """
    collector = make_gpu_collector()
    if collector is None:
        return False
    registry.register(collector)
    return True
