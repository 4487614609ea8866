"""mlmonitor's offline tools: reference building, drift maths, rules, dashboards, the check, the CLI.

Run by a person, a training job or a release pipeline (``mlmonitor ...``), never in a request:
nothing outside this subpackage imports it (``tests/test_imports.py`` checks it), and it may
import argparse, csv and numpy freely. It imports the request-time modules it needs (the
contract, :mod:`mlmonitor.reference`), never the other way round.
"""
