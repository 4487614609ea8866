"""Issue 17, items 6 and 2: the private temporary directory mlmonitor makes for gunicorn is removed
when the master exits (a directory the user named is left alone), and buckets without the
shipped rules' latency bound give one warning at start-up."""
from __future__ import annotations

import os
import re

import pytest

from helpers.gunicorn_proc import GunicornProcess, http_get


def _started_in(g: GunicornProcess) -> str:
    for line in g.stderr_lines:
        found = re.search(r"mlmonitor: multiprocess metrics in (\S+)", line)
        if found:
            return found.group(1)
    raise AssertionError("the master did not say where its directory is:\n" + "\n".join(g.stderr_lines))


@pytest.mark.slow
def test_the_temporary_directory_is_removed_when_the_master_exits():
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")}
    g = GunicornProcess(app="tests.apps.simple_app:app", workers=2)
    g.env = env | {"PYTHONUNBUFFERED": "1"}
    with g:
        assert http_get(g.url + "/healthz")[0] == 200
        path = _started_in(g)
        assert os.path.basename(path).startswith("mlmonitor-metrics-") and os.path.isdir(path)
    assert not os.path.exists(path)


@pytest.mark.slow
def test_a_directory_the_user_named_is_left_alone(tmp_path):
    named = tmp_path / "metrics"
    with GunicornProcess(app="tests.apps.simple_app:app", workers=1,
                         env={"PROMETHEUS_MULTIPROC_DIR": str(named)}) as g:
        assert http_get(g.url + "/healthz")[0] == 200
        assert _started_in(g) == str(named)
    assert named.is_dir()


# -- issue 17, item 2: buckets without the shipped rules' latency bound say so at start-up ----

def test_buckets_without_the_rules_threshold_give_one_warning(caplog):
    from prometheus_client import CollectorRegistry

    from mlmonitor import MonitorMiddleware
    from mlmonitor.metrics import _warned_buckets
    _warned_buckets.clear()
    app = lambda environ, start_response: []  # noqa: E731
    with caplog.at_level("WARNING", logger="mlmonitor"):
        MonitorMiddleware(app, buckets=(0.1, 0.3, 1.0), registry=CollectorRegistry(), traces=False)
        MonitorMiddleware(app, buckets=(0.1, 0.3, 1.0), registry=CollectorRegistry(), traces=False)
        MonitorMiddleware(app, registry=CollectorRegistry(), traces=False)
    warnings = [r.getMessage() for r in caplog.records if "lack" in r.getMessage()]
    assert len(warnings) == 1 and "0.5" in warnings[0] and "alerts render --buckets" in warnings[0]
