"""GET /metrics: gzip when the scraper asks for it, plain text otherwise."""
from __future__ import annotations

import gzip

from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from helpers.doubles import Doubles
from mlmonitor import MonitorMiddleware


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def monitored() -> Client:
    client = Client(MonitorMiddleware(hello, **Doubles().monitor_options))
    client.get("/", buffered=True)  # buffered: the body is closed, the request counted
    return client


def scraped(headers=None, method="GET", client=None):
    client = client or monitored()
    return client.open("/metrics", method=method, headers=headers or {}, buffered=True)


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if not s.name.startswith("mlmonitor_process_")}


def test_a_scraper_that_accepts_gzip_gets_the_same_exposition_gzipped():
    client = monitored()
    plain = scraped(client=client)
    zipped = scraped({"Accept-Encoding": "deflate, gzip;q=1.0"}, client=client)
    assert zipped.status_code == 200 and zipped.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(zipped.get_data())
    assert int(zipped.headers["Content-Length"]) == len(zipped.get_data())
    assert zipped.headers["Content-Type"] == plain.headers["Content-Type"]
    assert samples(body.decode()) == samples(plain.get_data(as_text=True))
    assert ("mlmonitor_http_requests_total",
            (("method", "GET"), ("route", "<unmatched>"), ("status", "200"))) in samples(body.decode())


def test_a_scraper_without_gzip_gets_plain_text():
    for headers in ({}, {"Accept-Encoding": "identity"}, {"Accept-Encoding": "br, deflate"}):
        response = scraped(headers)
        assert response.status_code == 200 and "Content-Encoding" not in response.headers
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.headers["Cache-Control"] == "no-store"
        assert b"mlmonitor_http_requests_total" in response.get_data()


def test_head_answers_headers_only_gzip_or_not():
    for headers in ({}, {"Accept-Encoding": "gzip"}):
        response = scraped(headers, method="HEAD")
        assert response.status_code == 200 and response.get_data() == b""
        assert ("Content-Encoding" in response.headers) == bool(headers)


def test_a_histograms_series_are_grouped_as_openmetrics_requires():
    """prometheus-client before 0.23 interleaves a histogram's series in multiprocess mode (the
    lowest-versions run refused the OpenMetrics scrape: "Invalid metric grouping"); the checked
    collector groups them, in the order they first appear, and moves nothing already grouped."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Sample

    from mlmonitor.multiprocess import _group_series

    interleaved = Metric("h", "help", "histogram")
    interleaved.samples = [Sample("h_sum", {"v": "1"}, 1.0), Sample("h_sum", {"v": "2"}, 2.0),
                           Sample("h_bucket", {"v": "1", "le": "+Inf"}, 1.0), Sample("h_count", {"v": "1"}, 1.0),
                           Sample("h_bucket", {"v": "2", "le": "+Inf"}, 1.0), Sample("h_count", {"v": "2"}, 1.0)]
    _group_series([interleaved])
    assert [(s.name, s.labels["v"]) for s in interleaved.samples] == [
        ("h_sum", "1"), ("h_bucket", "1"), ("h_count", "1"), ("h_sum", "2"), ("h_bucket", "2"), ("h_count", "2")]
    grouped = list(interleaved.samples)
    _group_series([interleaved])
    assert interleaved.samples == grouped
