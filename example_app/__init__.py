"""An iris classifier served with Flask under gunicorn and watched by mlmonitor.

``example_app.app`` is the server, ``example_app.loadgen`` drives traffic at it and
``example_app.demo`` starts both and shows where to look.
"""
