"""Settings of the test Django project (no database, no installed apps)."""
import os

SECRET_KEY = "test-only-django-secret-key-not-used-for-anything"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "tests.apps.django_project.urls"
INSTALLED_APPS: list = []
DATABASES: dict = {}
USE_TZ = True
MIDDLEWARE = [
    "mlmonitor.django.MonitorDjangoMiddleware",  # first: it sees every answer
    "tests.apps.django_project.views.ApiKeyMiddleware",
]
# the MonitorMiddleware keyword arguments; MLMONITOR_* in the environment still apply
MLMONITOR = {"model_version": "v1", "traces": os.environ.get("DJANGO_TEST_TRACES", "") == "1"}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "loggers": {"django.request": {"level": "CRITICAL"}}}  # mlmonitor's line is the one
