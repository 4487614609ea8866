"""Reference profiles: exact binning, shares, round trip, validation, PSI."""

from __future__ import annotations

import json
import math
from collections import Counter
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmonitor.contract import OTHER
from mlmonitor.reference import UNKNOWN_FEATURE, ReferenceProfile
from mlmonitor.reference_format import InvalidReference
from mlmonitor.tools.drift import psi
from mlmonitor.tools.profiling import build_profile


def _profile(values, name="x", **options):
    return build_profile({name: list(values)}, **options)


def _replay(profile, rows):
    """Live bin counts per feature when the reference rows come back as traffic."""
    counts = {name: Counter() for name in profile.features}
    for row in rows:
        for name, value in row.items():
            label = profile.bin_of(name, value)
            if label is not None:
                counts[name][label] += 1
    return counts


def test_ten_quantile_bins_give_nine_inner_edges():
    profile = _profile(range(1, 101))
    item = profile.to_dict()["features"][0]
    assert item["edges"] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert profile.bins("x") == tuple(f"{i:02d}" for i in range(10))
    assert all(share == pytest.approx(0.1) for share in item["bins"].values())


@pytest.mark.parametrize(
    "value, label",
    [
        (10, "00"),  # on the first edge: right-closed, lower bin
        (10.0, "00"),
        (10.000001, "01"),
        (-1e300, "00"),  # below the first edge
        (float("-inf"), "00"),
        (50, "04"),
        (90, "08"),  # on the last edge
        (90.5, "09"),  # above the last edge
        (float("inf"), "09"),
        (10**30, "09"),  # an int too big for exact float
        (True, "00"),  # bools are 0 / 1
        (np.int64(50), "04"),  # numpy scalars
        (np.float32(90.0), "08"),
        (np.float64(10.5), "01"),
        (Decimal("20"), "01"),
    ],
)
def test_numeric_bin_edges_are_right_closed(value, label):
    assert _profile(range(1, 101)).bin_of("x", value) == label


@pytest.mark.parametrize("value", [None, float("nan"), np.nan, "5", "", b"5", [5], {"a": 1}, 1j, object()])
def test_numeric_feature_missing_and_non_numeric_values_give_none(value):
    assert _profile(range(1, 101)).bin_of("x", value) is None


def test_unknown_feature_gives_the_sentinel():
    result = _profile(range(10)).bin_of("nope", 1.0)
    assert result is UNKNOWN_FEATURE
    assert not result and not isinstance(result, str)


def test_low_cardinality_feature_collapses_duplicate_edges():
    values = [0] * 70 + [1] * 25 + [2] * 5
    item = _profile(values).to_dict()["features"][0]
    assert item["edges"] == [0, 1]
    assert item["bins"] == {"00": 0.7, "01": 0.25, "02": 0.05}


def test_constant_feature_has_two_bins():
    profile = _profile([3.0] * 20)
    assert profile.to_dict()["features"][0]["bins"] == {"00": 1.0, "01": 0.0}
    assert profile.bin_of("x", 3.0) == "00"
    assert profile.bin_of("x", 3.5) == "01"


def test_categorical_top_values_plus_other():
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 1 + ["d"] * 1 + [None, ""]
    profile = _profile(values, top_n=2)
    item = profile.to_dict()["features"][0]
    assert item["type"] == "categorical"
    assert item["bins"] == {"a": 0.5, "b": 0.3, OTHER: 0.2}
    assert item["missing_share"] == pytest.approx(2 / 12)
    assert profile.bin_of("x", "a") == "a"
    assert profile.bin_of("x", "c") == OTHER
    assert profile.bin_of("x", "zzz") == OTHER
    assert profile.bin_of("x", None) is None
    assert profile.bin_of("x", float("nan")) is None
    assert profile.bin_of("x", "") is None


def test_a_literal_other_value_is_counted_in_other():
    profile = _profile(["other", "other", "a"])
    assert profile.to_dict()["features"][0]["bins"] == {"a": pytest.approx(1 / 3), OTHER: pytest.approx(2 / 3)}


def test_forced_categorical_integer_codes():
    profile = build_profile([{"zip": 1000}, {"zip": 2000}, {"zip": 1000}], categorical=["zip"])
    assert profile.bin_of("zip", 1000) == "1000"
    assert profile.bin_of("zip", 3000) == OTHER


def test_mixed_numbers_and_text_is_categorical():
    profile = _profile([1, 2, "three"])
    assert profile.to_dict()["features"][0]["type"] == "categorical"
    assert profile.bin_of("x", 1) == "1"


def test_numpy_array_and_rows_give_the_same_profile():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    names = ["a", "b", "c"]
    from_array = build_profile(X, feature_names=names).to_dict()
    from_rows = build_profile([dict(zip(names, row)) for row in X.tolist()]).to_dict()
    from_lists = build_profile(X.tolist(), feature_names=names).to_dict()
    for other in (from_rows, from_lists):
        assert other["features"] == from_array["features"]


def test_build_without_numpy_gives_the_same_profile(monkeypatch):
    import mlmonitor.tools.profiling as profiling

    rng = np.random.default_rng(2)
    X = rng.lognormal(size=(300, 2)).round(1)
    with_numpy = build_profile(X, feature_names=["a", "b"]).to_dict()
    monkeypatch.setattr(profiling, "_numpy", lambda: None)
    without = build_profile(X.tolist(), feature_names=["a", "b"]).to_dict()
    assert without["features"] == with_numpy["features"]


def test_nan_in_the_reference_is_missing():
    profile = _profile([1.0, 2.0, float("nan"), None, 3.0, 4.0], bins=2)
    item = profile.to_dict()["features"][0]
    assert item["missing_share"] == pytest.approx(2 / 6)
    assert item["count"] == 4


def test_classes_scores_and_accuracy():
    predictions = ["a", "a", "b", "b"]
    labels = ["a", "b", "b", "b"]
    profile = build_profile(
        {"x": [1, 2, 3, 4]}, predictions=predictions, labels=labels, scores=[0.05, 0.1, 0.55, 1.0]
    )
    assert profile.accuracy == 0.75
    assert dict(profile.class_ratios()) == {"a": 0.5, "b": 0.5, OTHER: 0.0}
    assert dict(profile.score_cumulative())[0.1] == 0.5  # 0.1 is in the le=0.1 bucket
    assert dict(profile.score_cumulative())[1.0] == 1.0
    assert profile.class_of("a") == "a" and profile.class_of("zebra") == OTHER


def test_classes_from_labels_without_predictions_and_no_accuracy():
    profile = build_profile({"x": [1, 2, 3]}, labels=[0, 1, 1])
    assert dict(profile.class_ratios()) == {"1": pytest.approx(2 / 3), "0": pytest.approx(1 / 3), OTHER: 0.0}
    assert profile.accuracy is None
    assert profile.class_of(1) == "1"


def test_reference_ratios_cover_every_bin():
    profile = build_profile({"n": list(range(100)), "c": ["a", "b"] * 50})
    ratios = list(profile.reference_ratios())
    assert {(f, b) for f, b, _ in ratios} == {("n", f"{i:02d}") for i in range(10)} | {
        ("c", "a"),
        ("c", "b"),
        ("c", OTHER),
    }
    for feature in ("n", "c"):
        assert sum(s for f, _, s in ratios if f == feature) == pytest.approx(1.0)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    rows = [{"a": float(v), "c": str(int(v * 3) % 4)} for v in rng.random(200)]
    profile = build_profile(rows, predictions=[r["c"] for r in rows], labels=[r["c"] for r in rows])
    path = tmp_path / "reference.json"
    profile.save(path)
    loaded = ReferenceProfile.load(path)
    assert loaded.to_dict() == profile.to_dict()
    assert loaded.accuracy == 1.0
    for row in rows:
        for name, value in row.items():
            assert loaded.bin_of(name, value) == profile.bin_of(name, value)
    assert json.loads(path.read_text())["format_version"] == 1


def _valid_dict():
    return build_profile({"n": list(range(20)), "c": ["a", "b"] * 10}).to_dict()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="other"), "not an mlmonitor reference"),
        (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
        (lambda d: d.update(features=[]), "'features' must be a non-empty list"),
        (lambda d: d["features"][0].update(edges=[3, 2] + d["features"][0]["edges"][2:]), "strictly increasing"),
        (lambda d: d["features"][0]["bins"].update({"00": 0.9}), "sum to"),
        (lambda d: d["features"][0]["bins"].update({"10": d["features"][0]["bins"].pop("09")}), "labelled"),
        (lambda d: d["features"][0].update(type="weird"), "'type' must be"),
        (lambda d: d["features"][1]["bins"].pop(OTHER), "need 'other'"),
        (lambda d: d["features"].append(dict(d["features"][0])), "appears twice"),
        (lambda d: d.update(accuracy=1.5), "'accuracy'"),
        (lambda d: d["features"][0]["bins"].update({"00": "x"}), "must be a number"),
    ],
)
def test_load_rejects_invalid_files_with_a_clear_error(tmp_path, mutate, message):
    data = _valid_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidReference, match=message) as info:
        ReferenceProfile.load(path)
    assert str(path) in str(info.value)


def test_load_rejects_non_json_and_nan(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(InvalidReference, match="not valid JSON"):
        ReferenceProfile.load(path)
    path.write_text(json.dumps(_valid_dict()).replace('"accuracy": null', '"accuracy": NaN'))
    with pytest.raises(InvalidReference, match="non-finite"):
        ReferenceProfile.load(path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data={"x": [None, None]}), "no values"),
        (dict(data={"x": [1, 2]}, bins=1), "bins must be"),
        (dict(data={"x": [1, 2]}, categorical=["y"]), "not in the data"),
        (dict(data={"x": [1, 2]}, labels=[1]), "1 labels for 2"),
        (dict(data=[[1, 2]]), "feature_names is required"),
        (dict(data=np.zeros((2, 2)), feature_names=["a"]), "1 feature names for 2 columns"),
        (dict(data={"x": [1, 2], "y": [1]}), "different lengths"),
    ],
)
def test_build_rejects_bad_input(kwargs, message):
    data = kwargs.pop("data")
    with pytest.raises(InvalidReference, match=message):
        build_profile(data, **kwargs)


def test_psi_formula_and_floor():
    assert psi({"a": 50, "b": 50}, {"a": 0.5, "b": 0.5}) == 0.0
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi({"a": 80, "b": 20}, {"a": 0.5, "b": 0.5}) == pytest.approx(expected)
    floored = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1 - 0.5) * math.log(1 / 0.5)
    assert psi({"b": 10}, {"a": 0.5, "b": 0.5}) == pytest.approx(floored)
    assert psi([80, 20], [0.5, 0.5]) == pytest.approx(expected)
    assert math.isnan(psi({}, {"a": 1.0}))


def test_reference_sample_gives_psi_zero():
    rng = np.random.default_rng(4)
    rows = [
        {"n": float(v), "i": int(k), "c": "abcdefghijkl"[int(k)]}
        for v, k in zip(rng.normal(size=1000), rng.integers(0, 12, 1000))
    ]
    profile = build_profile(rows)
    counts = _replay(profile, rows)
    ratios = {}
    for feature, label, share in profile.reference_ratios():
        ratios.setdefault(feature, {})[label] = share
    for feature in profile.features:
        assert psi(counts[feature], ratios[feature]) == 0.0


def test_shifted_feature_drifts():
    rng = np.random.default_rng(5)
    profile = build_profile({"x": rng.normal(size=2000).tolist()})
    ratios = {b: s for _, b, s in profile.reference_ratios()}
    same = Counter(profile.bin_of("x", v) for v in rng.normal(size=2000).tolist())
    shifted = Counter(profile.bin_of("x", v) for v in rng.normal(1.0, 1.0, size=2000).tolist())
    assert psi(same, ratios) < 0.1
    assert psi(shifted, ratios) > 0.2


numbers = st.one_of(
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(numbers, min_size=1, max_size=300), bins=st.integers(2, 20))
def test_property_reference_replay_matches_shares_and_psi_is_zero(values, bins):
    profile = _profile(values, bins=bins)
    item = profile.to_dict()["features"][0]
    counts = _replay(profile, [{"x": v} for v in values])["x"]
    assert sum(counts.values()) == len(values)
    for label, share in item["bins"].items():
        assert counts.get(label, 0) / len(values) == share
    assert psi(counts, item["bins"]) == 0.0


@settings(max_examples=60, deadline=None)
@given(values=st.lists(numbers, min_size=1, max_size=200), probe=numbers)
def test_property_bin_matches_the_edge_rule(values, probe):
    profile = _profile(values)
    edges = profile.to_dict()["features"][0]["edges"]
    index = int(profile.bin_of("x", probe))
    assert index == 0 or edges[index - 1] < probe
    assert index == len(edges) or probe <= edges[index]


def test_works_without_numpy_installed(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from mlmonitor.tools.profiling import build_profile\n"
        "p = build_profile([{'a': i, 'c': 'xy'[i % 2]} for i in range(100)])\n"
        "print(p.bin_of('a', 10), p.bin_of('c', 'x'))\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["01", "x"]
