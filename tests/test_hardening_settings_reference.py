"""Issue 13, item 11: any bad reference file stops start-up with one line, and labels taken
from a reference are cleaned like every other label value, so a scrape always encodes."""
from __future__ import annotations

import io
import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest

from mlmonitor import ConfigError, MonitorMiddleware, observe, reference
from mlmonitor.tools import cli
from mlmonitor.contract import OTHER
from mlmonitor.reference import ReferenceProfile
from mlmonitor.reference_format import InvalidReference
from mlmonitor.tools.profiling import build_profile, profile_csv


def _valid() -> dict:
    return build_profile({"n": list(range(20)), "c": ["a", "b"] * 10},
                         predictions=["x", "y"] * 10).to_dict()


def _big_edge(tmp_path):
    data = _valid()
    edges = json.dumps(data["features"][0]["edges"])
    bigger = edges[:-1] + ", " + "9" * 400 + "]"  # a valid JSON integer, too large for a float
    return json.dumps(data).replace(edges, bigger).encode()


#: name -> the bytes of a file that used to give a raw traceback (or load and fail later)
BAD_FILES = {
    "deeply-nested": lambda tmp: b"[" * 100_000 + b"]" * 100_000,  # RecursionError
    "not-utf8": lambda tmp: b'{"format": "mlmonitor.reference", "x": "\xff\xfe"}',  # UnicodeDecodeError
    "400-digit-edge": _big_edge,  # OverflowError
    "5000-digit-number": lambda tmp: b'{"rows": ' + b"1" * 5000 + b"}",  # past int's digit limit
    "huge-class-list": lambda tmp: json.dumps({**_valid(), "classes": {"source": "labels", "bins": {
        **{f"c{i}": 0.0 for i in range(500)}, OTHER: 1.0}}}).encode(),
    "long-feature-name": lambda tmp: json.dumps(_valid()).replace('"name": "c"', '"name": "' + "c" * 500 + '"').encode(),
}


def _write(tmp_path, shape):
    path = tmp_path / f"{shape}.json"
    path.write_bytes(BAD_FILES[shape](tmp_path))
    return path


@pytest.mark.parametrize("shape", sorted(BAD_FILES))
def test_load_gives_one_line_invalid_reference_for_any_bad_file(tmp_path, shape):
    path = _write(tmp_path, shape)
    with pytest.raises(InvalidReference) as info:
        ReferenceProfile.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shape", sorted(BAD_FILES))
def test_start_up_with_a_bad_file_is_one_config_error_line(tmp_path, shape):
    path = _write(tmp_path, shape)
    with pytest.raises(ConfigError) as info:
        MonitorMiddleware(lambda environ, start_response: [], reference=str(path),
                          registry=CollectorRegistry(), tracer_provider=TracerProvider(),
                          log_stream=io.StringIO())
    assert "reference" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shape", sorted(BAD_FILES))
def test_cli_show_prints_one_line_and_exits_2(tmp_path, shape, capsys):
    path = _write(tmp_path, shape)
    assert cli.main(["reference", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlmonitor: error: ") and err.count("\n") == 1


def test_unreadable_and_oversized_files_are_invalid_references(tmp_path, monkeypatch):
    for path in (tmp_path / "missing.json", tmp_path):  # absent; a directory
        with pytest.raises(InvalidReference, match="cannot read"):
            ReferenceProfile.load(path)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(_valid()))
    monkeypatch.setattr(reference, "MAX_FILE_BYTES", 100)
    with pytest.raises(InvalidReference, match="larger than"):
        ReferenceProfile.load(path)


def test_a_file_without_optional_fields_shows_instead_of_a_traceback(tmp_path, capsys):
    data = _valid()
    del data["classes"]["source"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert cli.main(["reference", "show", str(path)]) == 0
    assert "classes (from ?)" in capsys.readouterr().out


def test_a_csv_with_an_oversized_field_is_an_invalid_reference(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a,b\n1," + "x" * 200_000 + "\n")
    with pytest.raises(InvalidReference, match="not a readable UTF-8 CSV"):
        profile_csv(path)


def _surrogate_reference(tmp_path):
    data = _valid()
    feature = data["features"][1]  # categorical "c": a -> 0.5, b -> 0.5
    feature["name"] = "c\ud800"
    feature["bins"] = {"a": 0.3, "\ud800": 0.2, "b": 0.5, OTHER: 0.0}
    data["classes"]["bins"] = {"x\udcff": 0.5, "y": 0.5, OTHER: 0.0}
    path = tmp_path / "surrogate.json"
    path.write_text(json.dumps(data))  # ensure_ascii: written as the JSON escape "\ud800"
    return path


def test_surrogate_labels_are_cleaned_on_load(tmp_path):
    profile = ReferenceProfile.load(_surrogate_reference(tmp_path))
    assert profile.features == ("n", "c?")
    assert profile.bins("c?") == ("a", "?", "b", OTHER)
    assert dict(profile.class_ratios()) == {"x?": 0.5, "y": 0.5, OTHER: 0.0}
    assert profile.bin_of("c?", "\ud800") == OTHER  # a live surrogate never becomes a label
    json.dumps(profile.to_dict(), ensure_ascii=False).encode("utf-8")


def test_scrape_encodes_after_loading_a_reference_with_surrogate_labels(tmp_path):
    registry = CollectorRegistry()

    def app(environ, start_response):
        observe(features={"c?": "?", "n": 3}, prediction="x\udcff")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = MonitorMiddleware(app, reference=str(_surrogate_reference(tmp_path)), registry=registry,
                                prediction_paths=["/predict"], tracer_provider=TracerProvider(),
                                log_stream=io.StringIO())
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "SERVER_NAME": "x",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO()}
    body = wrapped(environ, lambda status, headers, exc_info=None: None)
    b"".join(body)
    body.close()
    assert 'feature="c?"' in generate_latest(registry).decode("utf-8")
    assert registry.get_sample_value("mlmonitor_feature_bin_total", {
        "model_name": "model", "model_version": "unknown", "feature": "c?", "bin": "?"}) == 1.0
    assert registry.get_sample_value("mlmonitor_predicted_class_total", {
        "model_name": "model", "model_version": "unknown", "class": OTHER}) == 1.0


def test_two_labels_that_clean_to_one_are_one_bin():
    data = _valid()
    data["features"][1]["bins"] = {"a\ud800": 0.25, "a?": 0.25, "b": 0.5, OTHER: 0.0}
    assert {b: s for f, b, s in ReferenceProfile(data).reference_ratios() if f == "c"} == {
        "a?": 0.5, "b": 0.5, OTHER: 0.0}
