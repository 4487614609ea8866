"""``MonitorMiddleware`` around Django's WSGI app; the Django middleware labels routes."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.django_project.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

from mlmonitor import MonitorMiddleware  # noqa: E402

application = MonitorMiddleware(get_wsgi_application(), route_from_app=True, model_version="v1")
