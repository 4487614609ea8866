"""``GET /metrics``: method check, authentication, content negotiation, gzip and caching headers.

Runs for each scrape, in front of the app (a scrape makes no request record). The
metrics sink says what to expose (``MetricsSink.exposition``: text or OpenMetrics,
chosen by prometheus-client's ``choose_encoder`` from ``Accept``); this module
decides who may read it and how it travels: the body is gzipped when the scraper
sends ``Accept-Encoding: gzip``, as client_python's ``make_wsgi_app`` does.
"""
from __future__ import annotations

import base64
import gzip
import hmac
from collections.abc import Iterable
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from . import guard
from .config import Settings

__all__ = ["MetricsEndpoint", "gzip_accepted", "MAX_CONCURRENT_SCRAPES", "BUSY"]


class MetricsEndpoint:
    """The WSGI answer to a scrape of one metrics sink."""

    def __init__(self, settings: Settings, sink: Any) -> None:
        self.sink = sink
        self.expected = expected_auth(settings)
        self.challenge = 'Basic realm="metrics"' if settings.metrics_basic_auth else 'Bearer realm="metrics"'

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        refused = self.refusal(environ)
        if refused is not None:
            return _plain(start_response, *refused)
        return self.serve(environ, start_response)

    def refusal(self, environ: WSGIEnvironment) -> tuple[str, bytes, list[tuple[str, str]]] | None:
        """(status, body, headers) refusing a scrape (wrong method, no credentials), or None.
        Cheap, collects nothing: an event loop may answer it in place."""
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"method not allowed\n", [("Allow", "GET, HEAD")]
        if self.expected and not self.authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return "401 Unauthorized", b"unauthorized\n", [("WWW-Authenticate", self.challenge)]
        return None

    def serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The exposition of an admitted scrape: the collection, the encoding and gzip."""
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            data, content_type = self.sink.exposition(environ.get("HTTP_ACCEPT", ""))
        except Exception as exc:
            guard.report_fault("exposition", exc, self.sink)
            return _plain(start_response, "503 Service Unavailable", b"metrics unavailable\n", [])
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            data = gzip.compress(data)
            headers.append(("Content-Encoding", "gzip"))
        if method == "HEAD":
            data = b""
        headers += [("Content-Length", str(len(data))), ("Cache-Control", "no-store")]
        start_response("200 OK", headers)
        return [data]

    def authorized(self, header: str) -> bool:
        """The scheme is case-insensitive (RFC 7235); the credentials compare in constant time."""
        scheme, _, supplied = header.encode("latin-1", "replace").partition(b" ")
        scheme = scheme.lower()  # bytes.lower(): ASCII letters only
        supplied = supplied.lstrip(b" ")  # 1*SP between scheme and credentials
        ok = False
        for expected_scheme, expected in self.expected:
            ok |= hmac.compare_digest(supplied, expected) & (scheme == expected_scheme)
        return ok


def expected_auth(settings: Settings) -> list[tuple[bytes, bytes]]:
    """(lowercase scheme, credentials) pairs that /metrics admits."""
    expected: list[tuple[bytes, bytes]] = []
    if settings.metrics_token:
        expected.append((b"bearer", settings.metrics_token.encode()))
    if settings.metrics_basic_auth:
        expected.append((b"basic", base64.b64encode(settings.metrics_basic_auth.encode())))
    return expected


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` names gzip (client_python's rule)."""
    return any(accepted.split(";")[0].strip().lower() == "gzip" for accepted in accept_encoding.split(","))


#: scrapes an ASGI app admits at once: one is collected (in a thread, off the event loop), the
#: others wait their turn; one more is answered 503 with Retry-After at once, so scrapers can
#: neither starve the app's requests of the GIL nor pile up
MAX_CONCURRENT_SCRAPES = 8
BUSY = ("503 Service Unavailable", b"too many scrapes at once, retry\n", [("Retry-After", "1")])


def _plain(start_response: StartResponse, status: str, body: bytes,
           headers: list[tuple[str, str]]) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]
