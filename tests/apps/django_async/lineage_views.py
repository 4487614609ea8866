"""An async prediction view whose model comes from an MLflow model URI (declared at import)."""
from django.http import JsonResponse

from mlmonitor.django import prediction


@prediction(model_uri="models:/iris-clf/3")
async def classify(request):
    return JsonResponse({"label": "setosa"})
