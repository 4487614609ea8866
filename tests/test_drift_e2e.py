"""Drift computed where all workers' counts meet: a real Prometheus evaluating the shipped rules.

The example app runs under gunicorn (2 workers); Prometheus scrapes it every second and evaluates the
recording rules rendered with ``--time-scale 20`` (the 1h PSI window becomes 180 s, names unchanged):
long enough that every request of the module, and the zero samples before them, stay in the window
however slow the machine, so the PSI is computed over exactly the counts the test sent.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Dict, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from example_app import loadgen
from helpers.gunicorn_proc import GunicornProcess, http_get
from helpers.promstack import Prometheus, query, require_binary, wait_for
from helpers.psi import psi
from mlmonitor.tools.rules import Thresholds, render_files

pytestmark = pytest.mark.slow

JOB = "mlmonitor-drift"
PSI_RULE = "model_version_feature:mlmonitor_feature_bin:psi1h"
DRIFTED = "petal_length_cm"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[SimpleNamespace]:
    require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("drift-e2e")
    rules = render_files(Thresholds(time_scale=20, selector=f'job="{JOB}"'), str(tmp / "rules"))
    rules = [r for r in rules if r.endswith(".rules.yml")]
    (tmp / "multiproc").mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "multiproc"), "MLMONITOR_TRACES": "false",
           "MLMONITOR_LOGS": "false"}
    with GunicornProcess(workers=2, env=env) as app, \
            Prometheus(tmp, {JOB: [f"127.0.0.1:{app.port}"]}, rules) as prom:
        # the zero-valued v1 series must be in Prometheus before any traffic: wait on a query
        wait_for(lambda: query(prom.url, f'mlmonitor_feature_bin_total{{job="{JOB}"}}'), 60,
                 what="first scrape")
        yield SimpleNamespace(app=app, prom=prom)


def scraped(url: str) -> Dict[str, Dict[tuple, float]]:
    """Samples by name -> {sorted label items: value} from the app's own /metrics."""
    status, text = http_get(url + "/metrics")
    assert status == 200
    out: Dict[str, Dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def counts_and_reference(samples, version: str, feature: str):
    def pick(name):
        return {dict(labels)["bin"]: value for labels, value in samples[name].items()
                if dict(labels)["model_version"] == version and dict(labels)["feature"] == feature}
    return pick("mlmonitor_feature_bin_total"), pick("mlmonitor_feature_reference_ratio")


def prometheus_psi(prom_url: str, version: str) -> Dict[str, float]:
    rows = query(prom_url, f'{PSI_RULE}{{job="{JOB}", model_version="{version}"}}')
    return {row["metric"]["feature"]: row["value"] for row in rows}


def settle(stack, version: str) -> Dict[str, Dict[tuple, float]]:
    """Wait until Prometheus holds the app's final counts and the rules ran on them."""
    samples = scraped(stack.app.url)
    total = sum(v for labels, v in samples["mlmonitor_feature_bin_total"].items()
                if dict(labels)["model_version"] == version)
    expr = f'sum(mlmonitor_feature_bin_total{{job="{JOB}", model_version="{version}"}})'
    wait_for(lambda: [r for r in query(stack.prom.url, expr) if r["value"] == total],
             30, what="final counts scraped")
    time.sleep(2.5)  # two more rule evaluations on the final scrape
    return samples


def test_prometheus_psi_equals_numpy_on_the_same_counts(stack):
    summary = loadgen.run(loadgen.Options(url=stack.app.url, requests=300, concurrency=4,
                                          version="v1", seed=11))
    assert summary["by_version"].get("v1", 0) == 300 or summary["predictions"] >= 300
    samples = settle(stack, "v1")
    from_prometheus = prometheus_psi(stack.prom.url, "v1")
    features = {dict(labels)["feature"] for labels in samples["mlmonitor_feature_reference_ratio"]}
    assert set(from_prometheus) == features
    for feature in features:
        counts, reference = counts_and_reference(samples, "v1", feature)
        assert sum(counts.values()) == 300
        assert from_prometheus[feature] == pytest.approx(psi(counts, reference), abs=1e-6), feature


def test_shifted_feature_drifts_and_the_others_stay_stable(stack):
    # v2's series appear with its first request; rate() counts only what comes after the first
    # scrape that sees them, so let Prometheus see them before the traffic that is measured
    loadgen.run(loadgen.Options(url=stack.app.url, requests=4, concurrency=1, version="v2", seed=13))
    wait_for(lambda: query(stack.prom.url, f'mlmonitor_feature_bin_total{{job="{JOB}", '
                                           f'model_version="v2"}}'), 30, what="v2 series scraped")
    loadgen.run(loadgen.Options(url=stack.app.url, requests=600, concurrency=4, version="v2",
                                drift={DRIFTED: 3.0}, seed=12))
    settle(stack, "v2")
    values = prometheus_psi(stack.prom.url, "v2")
    assert values[DRIFTED] > 0.2, values
    for feature, value in values.items():
        if feature != DRIFTED:
            assert value < 0.1, values
