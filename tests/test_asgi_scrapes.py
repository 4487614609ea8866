"""``/metrics`` on an ASGI server (issue 24, 7g): the collection runs in a thread, off the event
loop, one scrape at a time; up to MAX_CONCURRENT_SCRAPES are admitted (the others wait their
turn), one more is refused at once with 503 and Retry-After and counted; a refusal for
credentials is answered before any slot is taken."""
from __future__ import annotations

import asyncio
import threading

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from mlmonitor.asgi import MonitorASGIMiddleware
from mlmonitor.exposition import MAX_CONCURRENT_SCRAPES
from mlmonitor.testing import capture


class SlowCollector:
    """A collector that notes the thread it runs in and waits until released."""

    def __init__(self) -> None:
        self.threads: list = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.block = False

    def collect(self):
        self.threads.append(threading.get_ident())
        if self.block:
            self.entered.release()
            self.release.wait(20)
        yield GaugeMetricFamily("slow_collector_up", "test collector", value=1)


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(monitored, path: str, headers=()) -> dict:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    answer: dict = {"body": b""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    await monitored(scope, receive, send)
    return answer


def build(registry, **options):
    slow = SlowCollector()
    registry.register(slow)
    return MonitorASGIMiddleware(app, registry=registry, model_name="m",
                                 prediction_paths=["/predict"], **options), slow


def test_a_scrape_is_collected_in_another_thread_than_the_event_loop():
    with capture():
        monitored, slow = build(CollectorRegistry())

        async def scenario():
            return threading.get_ident(), await call(monitored, "/metrics")

        loop_thread, answer = asyncio.run(scenario())
    assert answer["status"] == 200 and b"slow_collector_up 1.0" in answer["body"]
    assert slow.threads and loop_thread not in slow.threads


def test_scrapes_above_the_bound_are_refused_and_counted_while_requests_are_served():
    registry = CollectorRegistry()
    with capture():
        monitored, slow = build(registry, metrics_token="t0ken-for-scrapes")
        slow.block = True
        auth = [("authorization", "Bearer t0ken-for-scrapes")]

        async def scenario():
            running = [asyncio.create_task(call(monitored, "/metrics", auth))
                       for _ in range(MAX_CONCURRENT_SCRAPES)]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, slow.entered.acquire)  # one is collecting
            while monitored.scrapes < MAX_CONCURRENT_SCRAPES:  # the others are waiting
                await asyncio.sleep(0)
            assert len(slow.threads) == 1  # one collection at a time
            refused = await call(monitored, "/metrics", auth)
            unauthorized = await call(monitored, "/metrics")
            served = await call(monitored, "/predict")  # the loop is free for the app
            slow.block = False
            slow.release.set()
            return refused, unauthorized, served, await asyncio.gather(*running)

        refused, unauthorized, served, admitted = asyncio.run(scenario())
        after = asyncio.run(call(monitored, "/metrics", auth))
    assert refused["status"] == 503 and refused["headers"]["retry-after"] == "1"
    assert unauthorized["status"] == 401  # credentials first: no slot spent on them
    assert served["status"] == 200
    assert [a["status"] for a in admitted] == [200] * MAX_CONCURRENT_SCRAPES
    assert after["status"] == 200  # the slots are given back
    assert registry.get_sample_value("mlmonitor_telemetry_dropped_total",
                                     {"signal": "metrics"}) == 1
    assert registry.get_sample_value("mlmonitor_http_requests_total",
                                     {"method": "GET", "route": "/predict", "status": "200"}) == 1
