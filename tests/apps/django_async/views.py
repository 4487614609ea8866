"""An async prediction view whose model is named per request by a callable (the view's arguments)."""
import asyncio
import json

from django.http import JsonResponse

import mlmonitor
from mlmonitor.django import prediction


@prediction(model_name=lambda request, name: name, model_version=lambda request, name: f"{name}-7")
async def predict(request, name):
    rows = json.loads(request.body)["instances"]
    with mlmonitor.stage("inference"):
        await asyncio.sleep(0)
        y = [2.0 * sum(row) for row in rows]
    mlmonitor.observe_batch(predictions=y)
    return JsonResponse({"predictions": y})
