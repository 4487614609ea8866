from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz),
    path("v1/models/<str:name>:predict", views.predict),
    path("items/<int:item>", views.item),
    path("boom", views.boom),
    path("stream", views.stream),
]
