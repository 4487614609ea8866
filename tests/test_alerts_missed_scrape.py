"""A target that misses scrapes for 10 s keeps its alerts: a real Prometheus, the example app under gunicorn.

Prometheus (1 s scrape and evaluation) loads the rules rendered with ``--time-scale 15``: the drift
window is 240 s, ``for: 15m`` is 60 s and gauges are read over ``last_over_time`` of 20 s. Drifted
traffic makes ``MLModelFeatureDrift`` pending, a 1-byte memory threshold makes
``MLModelProcessMemoryHigh`` pending for every worker; then the app is stopped (SIGSTOP to its
process group) for 10 s, so every scrape fails and Prometheus marks every series of the target
stale. After the gap both alerts must still be there with the same ``activeAt``, and the PSI
recording rule must have a value at every evaluation through the gap.
"""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
from typing import Dict, List

import pytest

from example_app import loadgen
from helpers.gunicorn_proc import GunicornProcess
from helpers.promstack import Prometheus, query, require_binary, wait_for
from mlmonitor.tools.rules import Thresholds, render_files

pytestmark = pytest.mark.slow

JOB = "mlmonitor-gap"
TIME_SCALE = 15
GAP_S = 10.0
DRIFTED = "petal_length_cm"
PSI = "model_version_feature:mlmonitor_feature_bin:psi1h"
WATCHED = ("MLModelFeatureDrift", "MLModelProcessMemoryHigh")


def active(prom: Prometheus) -> Dict[tuple, dict]:
    """The watched alerts Prometheus holds now (pending or firing), by name and labels."""
    return {(a["labels"]["alertname"], a["labels"].get("feature"), a["labels"].get("worker")): a
            for a in prom.alerts() if a["labels"]["alertname"] in WATCHED}


def query_range(promurl: str, expr: str, start: float, end: float) -> List[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1s"})
    with urllib.request.urlopen(f"{promurl}/api/v1/query_range?{params}", timeout=60) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_a_ten_second_scrape_gap_resets_no_alert(tmp_path):
    require_binary("prometheus")
    thresholds = Thresholds(time_scale=TIME_SCALE, selector=f'job="{JOB}"', memory_bytes=1.0)
    rules = [p for p in render_files(thresholds, str(tmp_path / "rules")) if p.endswith(".rules.yml")]
    (tmp_path / "multiproc").mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc"), "MLMONITOR_TRACES": "false",
           "MLMONITOR_LOGS": "false"}
    with GunicornProcess(workers=2, env=env) as app, \
            Prometheus(tmp_path, {JOB: [f"127.0.0.1:{app.port}"]}, rules) as prom:
        wait_for(lambda: query(prom.url, f'mlmonitor_feature_bin_total{{job="{JOB}"}}'), 60,
                 what="first scrape")
        loadgen.run(loadgen.Options(url=app.url, requests=300, concurrency=4, version="v1",
                                    drift={DRIFTED: 3.0}, seed=17))

        def both_pending():
            found = active(prom)
            names = {key[0] for key in found}
            return found if set(WATCHED) <= names else None

        before = wait_for(both_pending, 60, what=f"{WATCHED} pending")
        os.killpg(app.pid, signal.SIGSTOP)  # the app stops answering: every scrape fails
        stopped = time.time()
        try:
            wait_for(lambda: query(prom.url, f'up{{job="{JOB}"}} == 0'), GAP_S, what="a failed scrape")
            time.sleep(max(0.0, GAP_S - (time.time() - stopped)))
        finally:
            os.killpg(app.pid, signal.SIGCONT)
        resumed = time.time()
        wait_for(lambda: query(prom.url, f'up{{job="{JOB}"}} == 1'), 30, what="scrapes again")
        time.sleep(3)  # a few rule evaluations on the fresh scrapes
        after = active(prom)
        end = time.time()
        up = query_range(prom.url, f'up{{job="{JOB}"}}', stopped - 2, end)
        psi = query_range(prom.url, f'{PSI}{{job="{JOB}", feature="{DRIFTED}"}}', stopped - 2, end)

    timeline = {key: (a["state"], a["activeAt"], (after.get(key) or {}).get("activeAt"))
                for key, a in before.items()}
    failed = [v for _, v in up[0]["values"] if float(v) == 0]
    assert len(failed) >= GAP_S - 2, f"the gap was not a gap: up={up}"
    for key, alert in before.items():
        assert key in after, f"{key} resolved during the gap; timeline {timeline}"
        assert after[key]["activeAt"] == alert["activeAt"], f"{key} restarted its for:; timeline {timeline}"
    (series,) = psi
    steps = [float(t) for t, _ in series["values"]]
    holes = [(a, b) for a, b in zip(steps, steps[1:]) if b - a > 1.5]
    # present from the stop (its first value may be that recent) to after the gap, every second
    assert steps[0] <= stopped + 1 and steps[-1] >= resumed and not holes, f"PSI missing: {steps}"
    assert resumed - stopped >= GAP_S
    stamp = "%H:%M:%S"
    print(f"\napp stopped {time.strftime(stamp, time.gmtime(stopped))}Z, resumed"
          f" {time.strftime(stamp, time.gmtime(resumed))}Z, {len(failed)} failed scrapes;"
          f" (state before, activeAt before, activeAt after): {timeline}")
