"""`mlmonitor reference build|show` as a user runs it: a subprocess on a CSV file."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mlmonitor.tools.drift import psi
from mlmonitor.reference import ReferenceProfile
from mlmonitor.reference import PSI_THRESHOLD, min_rows, too_few_rows
from mlmonitor.tools.profiling import build_profile

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "mlmonitor.tools.cli", "reference", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _write_csv(path, n=300):
    rng = np.random.default_rng(7)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["age", "income", "city", "zip", "y", "p", "s"])
        for i in range(n):
            y = int(rng.integers(0, 2))
            writer.writerow(
                [
                    int(rng.integers(18, 80)),
                    "" if i % 10 == 0 else f"{rng.lognormal(10, 1):.2f}",
                    ["paris", "lyon", "nice"][i % 3],
                    1000 + i % 4,
                    y,
                    y if i % 4 else 1 - y,
                    f"{rng.random():.3f}",
                ]
            )


def test_build_writes_a_loadable_profile(tmp_path):
    _write_csv(tmp_path / "train.csv")
    result = _cli(
        "build",
        "--csv",
        "train.csv",
        "--label-column",
        "y",
        "--prediction-column",
        "p",
        "--score-column",
        "s",
        "--categorical",
        "zip",
        "--bins",
        "5",
        "--out",
        "reference.json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    profile = ReferenceProfile.load(tmp_path / "reference.json")
    assert profile.features == ("age", "income", "city", "zip")
    data = profile.to_dict()
    kinds = {f["name"]: f["type"] for f in data["features"]}
    assert kinds == {"age": "numeric", "income": "numeric", "city": "categorical", "zip": "categorical"}
    assert len(profile.bins("age")) == 5
    assert data["features"][1]["missing_share"] == 0.1
    assert profile.accuracy == 0.75
    assert dict(profile.class_ratios()).keys() == {"0", "1", "other"}
    assert profile.bin_of("zip", 1001) == "1001"
    assert profile.bin_of("city", "nice") == "nice"
    assert data["scores"]["count"] == 300


def test_build_with_labels_only(tmp_path):
    _write_csv(tmp_path / "train.csv")
    result = _cli("build", "--csv", "train.csv", "--label-column", "y", "--out", "ref.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    profile = ReferenceProfile.load(tmp_path / "ref.json")
    assert "y" not in profile.features and "p" in profile.features
    assert profile.accuracy is None
    assert json.loads((tmp_path / "ref.json").read_text())["classes"]["source"] == "labels"


def test_show_prints_a_summary(tmp_path):
    _write_csv(tmp_path / "train.csv")
    _cli(
        "build",
        "--csv",
        "train.csv",
        "--label-column",
        "y",
        "--prediction-column",
        "p",
        "--out",
        "r.json",
        cwd=tmp_path,
    )
    result = _cli("show", "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "300 rows" in result.stdout
    assert "age: numeric, 10 bins" in result.stdout
    assert "accuracy: 0.7500" in result.stdout


def test_missing_column_is_a_clear_error(tmp_path):
    _write_csv(tmp_path / "train.csv")
    result = _cli("build", "--csv", "train.csv", "--label-column", "nope", "--out", "r.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "no column 'nope'" in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_show_rejects_a_broken_file(tmp_path):
    (tmp_path / "r.json").write_text('{"format": "mlmonitor.reference", "format_version": 2}')
    result = _cli("show", "r.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "format_version 2 is not supported" in result.stderr


# -- a reference too small for its bins (issue 25) ------------------------------------------------------

def _normal_reference(rng, rows, bins=10):
    return build_profile({"x": rng.normal(size=rows)}, bins=bins)


def _shares(profile):
    return {b: share for feature, b, share in profile.reference_ratios() if feature == "x"}


def _population_shares(profile):
    """The standard normal's share of each of the profile's bins (right-closed, as bin_of)."""
    edges = profile.to_dict()["features"][0]["edges"]
    cdf = [0.0] + [0.5 * (1 + math.erf(e / math.sqrt(2))) for e in edges] + [1.0]
    return {f"{i:02d}": cdf[i + 1] - cdf[i] for i in range(len(edges) + 1)}


def _psi_of_live(profile, live):
    return psi(Counter(profile.bin_of("x", v) for v in live), _shares(profile))


@pytest.mark.parametrize("bins", [3, 5, 10, 20])
def test_at_min_rows_the_references_own_noise_passes_half_the_threshold_in_about_5_percent_of_draws(bins):
    """The derivation of min_rows, by simulation: the PSI of the population against a reference of
    min_rows(bins) rows drawn from it exceeds threshold / 2 in ~5% of draws (not far fewer: the
    number is not padded; not more: it is enough)."""
    rng = np.random.default_rng(bins)
    rows = min_rows(bins)
    over = 0
    for _ in range(1000):
        profile = _normal_reference(rng, rows, bins)
        over += psi(_population_shares(profile), _shares(profile)) > PSI_THRESHOLD / 2
    assert 0.02 <= over / 1000 <= 0.09, (bins, rows, over)


def test_at_min_rows_unshifted_traffic_stays_under_the_threshold_in_most_draws():
    rng = np.random.default_rng(1)
    rows = min_rows(10)
    assert rows == 170
    draws = [_psi_of_live(_normal_reference(rng, rows), rng.normal(size=rows)) for _ in range(1000)]
    assert sum(d > PSI_THRESHOLD for d in draws) / len(draws) <= 0.08


def test_the_reported_reference_of_54_rows_and_10_bins_fires_on_unshifted_traffic():
    """The report's case: 54 rows, 10 bins, ~100 live values: PSI > 0.2 in most draws (8 of 13 features)."""
    rng = np.random.default_rng(2)
    draws = [_psi_of_live(_normal_reference(rng, 54), rng.normal(size=100)) for _ in range(1000)]
    assert sum(d > PSI_THRESHOLD for d in draws) / len(draws) > 0.5
    assert too_few_rows(_normal_reference(rng, 54).to_dict()) is not None
    assert too_few_rows(_normal_reference(rng, 170).to_dict()) is None


def test_build_and_show_warn_when_a_reference_is_too_small_for_its_bins(tmp_path):
    _write_csv(tmp_path / "train.csv", n=54)
    built = _cli("build", "--csv", "train.csv", "--label-column", "y", "--out", "r.json", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (line,) = built.stderr.splitlines()
    assert line.startswith("warning: only 54 reference rows: too few rows for its bins")
    assert "feature 'age': 54 rows for 10 bins, needs 170" in line
    assert "feature 'city': 54 rows for 3 bins, needs 60" in line
    shown = _cli("show", "r.json", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stderr.splitlines() == [line]


def test_a_reference_with_enough_rows_for_its_bins_gets_no_warning(tmp_path):
    _write_csv(tmp_path / "train.csv", n=300)
    built = _cli("build", "--csv", "train.csv", "--label-column", "y", "--bins", "5", "--out", "r.json",
                 cwd=tmp_path)
    assert built.returncode == 0 and built.stderr == ""
    assert _cli("show", "r.json", cwd=tmp_path).stderr == ""


def test_loading_a_small_reference_at_start_up_logs_one_warning(tmp_path, caplog):
    rng = np.random.default_rng(3)
    _normal_reference(rng, 54).save(tmp_path / "small.json")
    _normal_reference(rng, 400).save(tmp_path / "large.json")
    with caplog.at_level(logging.WARNING, logger="mlmonitor"):
        ReferenceProfile.load(tmp_path / "large.json")
        assert caplog.records == []
        ReferenceProfile.load(tmp_path / "small.json")
    (record,) = caplog.records
    assert "small.json" in record.getMessage() and "54 rows for 10 bins, needs 170" in record.getMessage()
