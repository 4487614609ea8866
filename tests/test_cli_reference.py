"""`mlmonitor reference build|show` as a user runs it: a subprocess on a CSV file."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlmonitor.quality import ReferenceProfile

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "mlmonitor.cli", "reference", *map(str, args)],
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
