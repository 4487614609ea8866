"""An async prediction view whose model comes from an MLflow model URI (declared at import)."""
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from mlmonitor.django import prediction


@csrf_exempt
@prediction(model_uri="models:/iris-clf/3")
async def classify(request):
    return JsonResponse({"label": "setosa"})
