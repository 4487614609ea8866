from django.urls import path

from . import lineage_views, views

urlpatterns = [
    path("v1/models/<str:name>:predict", views.predict),
    path("classify", lineage_views.classify),
]
