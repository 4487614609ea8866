"""The metric contract: every name that dashboards, alert rules and users' queries rely on.

Spelled once here and imported by the sinks, the rules and the dashboards, so a
rename is one change that everything follows. Imports nothing (not even
prometheus-client): request-time and offline code both read it.
"""
from __future__ import annotations

#: the value that stands for every label value beyond a cap
OTHER = "other"
#: the route label of a path that matches no known route
UNMATCHED_ROUTE = "<unmatched>"
#: shares below this count as this in the population stability index (no log(0))
PSI_FLOOR = 1e-4
#: buckets of the prediction score histogram (confidence, 0..1)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: inference-friendly latency buckets, 1 ms .. 30 s
DEFAULT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
