"""Settings of the async Django project: async prediction views under Django's ASGI handler."""
SECRET_KEY = "test-only-django-secret-key-not-used-for-anything"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "tests.apps.django_async.server_urls"
INSTALLED_APPS: list = []
DATABASES: dict = {}
USE_TZ = True
MIDDLEWARE = ["mlmonitor.django.MonitorDjangoMiddleware"]
MLMONITOR = {"model_version": "v1", "traces": False}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "loggers": {"django.request": {"level": "CRITICAL"}}}
