"""Views of the test project: a multi-model predict view, a view that raises, an auth check."""
import json
import os

from django.http import Http404, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

import mlmonitor
from mlmonitor.django import prediction

API_KEY = "k-test"
MODELS = {"glucose": 2.0, "pressure": 3.0}  # a "regressor": y = weight * sum(features)


class ApiKeyMiddleware:
    """The app's own auth: a 401 before any view runs (Authorization: Key <key>)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/v1/") and \
                request.headers.get("Authorization") != f"Key {API_KEY}":
            return JsonResponse({"error": "unauthorized"}, status=401)
        return self.get_response(request)


def healthz(request):
    mlmonitor.tag(pid=os.getpid())
    return JsonResponse({"ok": True})


@csrf_exempt
@prediction(model_name=lambda request, name: name)
def predict(request, name):
    if name not in MODELS:
        raise Http404(f"no model {name}")
    mlmonitor.tag(pid=os.getpid())  # which worker served it, in the log line
    try:
        rows = json.loads(request.body)["instances"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return JsonResponse({"error": "expected {\"instances\": [[...], ...]}"}, status=400)
    with mlmonitor.stage("inference"):
        y = [MODELS[name] * sum(row) for row in rows]
    mlmonitor.observe_batch(features=rows, predictions=y, feature_names=["a", "b"])
    return JsonResponse({"predictions": y})


def item(request, item):
    return JsonResponse({"item": item})


@csrf_exempt
def boom(request):
    password = request.GET.get("password", "")
    raise RuntimeError(f"model store unreachable: password={password} at db.internal")


def stream(request):
    return StreamingHttpResponse(f"chunk {i}\n" for i in range(3))
