"""Route templates under hostile paths (issue 24, defect 4 and item 7d): the FastAPI route cache
holds a bounded number of bytes whatever the paths, and ``int`` placeholders take ASCII digits
only, as Starlette's and Django's converters do (Werkzeug 3.1's ``\\d+`` and ``int()`` refuse
``²`` but take ``٣`` and ``３``)."""
from __future__ import annotations

import asyncio
import io
import sys

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from mlmonitor import MonitorMiddleware
from mlmonitor.asgi import MonitorASGIMiddleware
from mlmonitor import Monitor

#: what the cache may hold, measured from its contents: its 1 MiB budget and some slack
BOUND = 3 << 19


def total(registry, name, **labels) -> float:
    return sum(s.value for f in registry.collect() for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def fastapi_app():
    registry = CollectorRegistry()
    app = FastAPI()
    Monitor(app, registry=registry, logs=False, traces=False, model_name="m", model_version="v1")

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str):
        return {"name": name}

    @app.get("/items/{item}")
    async def item(item: str):
        return {"item": len(item)}

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    return app, registry


async def _call(app, method: str, path: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": [(b"host", b"test")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    status = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def held(cache: dict) -> int:
    """Bytes the cache's dict, key tuples and key strings take (templates are the app's own)."""
    return sys.getsizeof(cache) + sum(sys.getsizeof(key) + sys.getsizeof(key[0])
                                      + sys.getsizeof(key[1]) for key in cache)


@pytest.mark.parametrize("shape", ["long", "many"])
def test_the_fastapi_route_cache_stays_bounded_in_bytes_whatever_the_paths(shape):
    """10x the attack that added 227 MiB per worker: 42,000 unique 60 KB paths answered 405
    (and, for ``many``, 42,000 unique 400-byte ones answered 200): it stays under 1.5 MiB."""
    app, registry = fastapi_app()

    async def attack():
        assert await _call(app, "GET", "/healthz") == 200
        cache = app.middleware_stack.route_of
        for i in range(42_000):
            if shape == "long":
                path = f"/v1/models/{i:06d}{'x' * 60_000}:predict"
                assert await _call(app, "GET", path) == 405
            else:
                assert await _call(app, "GET", f"/items/{i}-{'y' * 400}") == 200
            if i % 500 == 0:
                assert held(cache.cache) < BOUND, (i, held(cache.cache))
        assert held(cache.cache) < BOUND and cache.size <= 1 << 20
        # the app's own paths still labelled right, cached or not, after the attack
        for _ in range(3):
            assert await _call(app, "GET", "/healthz") == 200
            assert await _call(app, "POST", "/v1/models/iris:predict") == 200
            assert await _call(app, "GET", "/items/42") == 200
        assert cache.cache[("GET", "/healthz")] == "/healthz"

    asyncio.run(attack())
    routes: dict = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "mlmonitor_http_requests_total":
                route = sample.labels["route"]
                routes[route] = routes.get(route, 0) + sample.value
    attacked = "/v1/models/{name}:predict" if shape == "long" else "/items/{item}"
    assert routes[attacked] == 42_003
    assert routes["/healthz"] == 4
    assert set(routes) == {"/healthz", "/v1/models/{name}:predict", "/items/{item}"}


# -- item 7d: int placeholders take ASCII digits only ---------------------------------------------

NOT_ASCII_DIGITS = ["²", "٣", "３", "1²", "٣3"]  # superscript, Arabic-Indic, fullwidth, mixed
TEMPLATES = dict(prediction_paths=["/v1/models/<int:n>:predict"],
                 routes=["/orders/<int:n>/lines", "/items/{n:int}"])


def _ok(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize("digit", NOT_ASCII_DIGITS)
def test_int_placeholders_refuse_unicode_digits_under_asgi(digit):
    """ASGI servers decode the path as UTF-8: ``/items/٣`` reaches the matcher as such."""
    registry = CollectorRegistry()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = MonitorASGIMiddleware(app, registry=registry, log_stream=io.StringIO(),
                                    traces=False, model_name="m", **TEMPLATES)

    async def requests():
        for path in (f"/orders/{digit}/lines", f"/items/{digit}", f"/v1/models/{digit}:predict",
                     "/orders/12/lines", "/items/7", "/v1/models/3:predict"):
            method = "POST" if path.startswith("/v1/") else "GET"
            assert await _call(wrapped, method, path) == 200

    asyncio.run(requests())
    for route in ("/orders/<int:n>/lines", "/items/{n:int}", "/v1/models/<int:n>:predict"):
        assert total(registry, "mlmonitor_http_requests_total", route=route) == 1, route
    assert total(registry, "mlmonitor_http_requests_total", route="<unmatched>") == 3
    assert total(registry, "mlmonitor_predictions_total", model_name="m") == 1


@pytest.mark.parametrize("digit", NOT_ASCII_DIGITS)
def test_int_placeholders_refuse_unicode_digits_under_wsgi(digit):
    """A WSGI server hands the path over as latin-1 (``%B2`` arrives as ``²``); a test or a
    server that decodes UTF-8 hands ``٣`` over as it is: neither is a number."""
    registry = CollectorRegistry()
    app = MonitorMiddleware(_ok, registry=registry, log_stream=io.StringIO(), traces=False,
                            model_name="m", **TEMPLATES)
    for path in (f"/orders/{digit}/lines", f"/items/{digit}", "/orders/12/lines", "/items/7"):
        environ = EnvironBuilder(path="/").get_environ()
        environ["PATH_INFO"] = path
        body = app(environ, lambda status, headers, exc_info=None: None)
        b"".join(body)
        body.close()
    assert total(registry, "mlmonitor_http_requests_total", route="/orders/<int:n>/lines") == 1
    assert total(registry, "mlmonitor_http_requests_total", route="/items/{n:int}") == 1
    assert total(registry, "mlmonitor_http_requests_total", route="<unmatched>") == 2
