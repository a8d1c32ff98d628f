"""`Measurement`, the profile stage's record of one timed artifact: what crosses into the search
is a dataclass, and its JSON (the fit's caches, `profile --json`) reads back the same."""

from __future__ import annotations

import json

import pytest

from hwcompress.profile.measurement import Measurement


def _local() -> dict:
    return {"median_ms": 0.2, "p90_ms": 0.25, "mean_ms": 0.21, "min_ms": 0.18, "max_ms": 0.4, "runs": 30,
            "warmup": 3, "host": {"cpu": "x", "arch": "x86_64", "load_avg": [0.1, 0.1, 0.1]},
            "peak_memory_bytes": None, "peak_memory_method": None, "harness": "h", "load_seconds": 0.01,
            "layers": [], "layers_count": 0, "layers_source": "not requested", "activations": "f32"}


def test_json_round_trip_keeps_every_key_and_leaves_unknown_fields_out() -> None:
    m = Measurement.from_json(_local())
    assert m.median_ms == 0.2 and m.device is None and m.quiet is None
    d = json.loads(json.dumps(m.to_json()))
    # the RAM keys stay (a reader relies on them), unknown optional ones are not written as null
    assert d["peak_memory_bytes"] is None and "peak_memory_method" in d
    assert "device" not in d and "quiet" not in d and "runtime_median_ms" not in d
    assert Measurement.from_json(d) == m


def test_keys_a_newer_runner_adds_are_kept_and_written_back() -> None:
    raw = {**_local(), "temperature_c": 61.5}
    m = Measurement.from_json(raw)
    assert m.extra == {"temperature_c": 61.5}
    assert m.to_json()["temperature_c"] == 61.5


def test_a_record_is_not_edited_in_place() -> None:
    m = Measurement.from_json(_local())
    with pytest.raises(AttributeError):
        m.median_ms = 0.0  # type: ignore[misc]
    w = m.with_(warning="pool host is x86_64")
    assert w.warning and m.warning is None


def test_a_measurement_without_its_latency_is_refused() -> None:
    raw = _local()
    del raw["median_ms"]
    with pytest.raises(TypeError):
        Measurement.from_json(raw)


def test_measure_artifact_returns_a_measurement_of_the_real_runtime(tmp_path) -> None:
    from hwcompress.export import get_backend
    from hwcompress.models.io import load_model
    from hwcompress.profile.measure import host_arch, measure_artifact

    path = get_backend("onnxruntime").export(load_model("tiny-crn"), tmp_path, "stream", weights="int8")
    m = measure_artifact("onnxruntime", path, threads=1, runs=20, warmup=5, top=3)
    assert isinstance(m, Measurement) and m.latency_source == "measured" and m.runs == 20
    assert 0 < m.min_ms <= m.median_ms <= m.p90_ms <= m.max_ms
    assert m.host["arch"] == host_arch() and m.peak_memory_bytes and m.peak_memory_method
    assert m.layers and m.layers_source  # onnxruntime's own profiler
    assert Measurement.from_json(json.loads(json.dumps(m.to_json()))) == m


def test_a_fit_timing_of_several_rounds_keeps_the_slowest(tmp_path) -> None:
    """`measure_rounds`: each round a fresh process of the real runtime; the figure kept is the
    slowest round's median, every round's median recorded beside it."""
    from hwcompress.export import get_backend
    from hwcompress.models.io import load_model
    from hwcompress.search.fit import FitConfig, Fitter

    path = get_backend("onnxruntime").export(load_model("tiny-crn"), tmp_path / "a", "stream", weights="int8")
    f = Fitter(FitConfig(target="generic-onnx", out=tmp_path / "fit", model="tiny-crn", measure_runs=20,
                         measure_rounds=3), log=print)
    m = f._measure(str(path))
    assert len(m.round_medians_ms) == 3 and m.median_ms == max(m.round_medians_ms)
    assert f.key["measure_rounds"] == 3  # its caches are not another setting's
    one = Fitter(FitConfig(target="generic-onnx", out=tmp_path / "fit1", model="tiny-crn", measure_runs=20), log=print)
    assert one._measure(str(path)).round_medians_ms is None and "measure_rounds" not in one.key


def test_measure_rounds_under_one_is_one_line(tmp_path) -> None:
    from hwcompress.errors import HwcError
    from hwcompress.search.fit import FitConfig, Fitter

    with pytest.raises(HwcError, match="measure_rounds must be at least 1"):
        Fitter(FitConfig(target="generic-onnx", out=tmp_path, model="tiny-crn", measure_rounds=0), log=print)
