from django.urls import path

from . import views

urlpatterns = [path("v1/models/<str:name>:predict", views.predict)]
