"""Profile tables: the fit recovers known costs, the latency model uses a table when one
exists, a real (small) sweep on this machine's onnxruntime, and a clear error for a sweep of
another machine's target."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwcompress.errors import HwcError
from hwcompress.models.io import load_model
from hwcompress.profile import table as tb
from hwcompress.profile.latency_model import predict_latency
from hwcompress.targets import load_target


def test_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    true = {k: float(rng.uniform(1e-9, 1e-7)) for k in tb.FEATURES}
    true.update({"const": 0.05, "layers": 0.002, "linear_macs": 0.0})
    rows = []
    for _ in range(40):
        wb = float(rng.uniform(5e5, 8e7))
        f = {k: float(rng.uniform(0, 1e7)) for k in tb.FEATURES}
        f.update({"const": 1.0, "layers": float(rng.integers(3, 14)), "weight_bytes": wb})
        f.update({tb._knot_key(frac): max(0.0, wb - frac * 2**25) for frac in tb.CACHE_KNOTS})
        rows.append({"features": f, "measured_ms": sum(true[k] * f[k] for k in tb.FEATURES)})
    fit = tb.fit_coefficients(rows)
    for k in tb.FEATURES:
        assert fit[k] == pytest.approx(true[k], rel=1e-3, abs=1e-12), k
    for r in rows:
        assert sum(fit[k] * r["features"][k] for k in tb.FEATURES) == pytest.approx(r["measured_ms"], rel=1e-3)


def test_latency_model_prefers_a_measured_table(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HWCOMPRESS_PROFILES", str(tmp_path / "none"))  # not the repo's profiles/
    target = load_target("generic-onnx")
    model = load_model("tiny-crn")
    roof = predict_latency(model, target, 8)
    assert roof.latency_model == "roofline"
    fits = {w: {k: 0.0 for k in tb.FEATURES} for w in ("fp32", "int8")}
    fits["int8"]["const"] = 0.25
    (tmp_path / "generic-onnx.json").write_text(json.dumps({
        "format": tb.TABLE_FORMAT, "target": "generic-onnx", "runtime": "onnxruntime", "cache_bytes": 1 << 25,
        "provenance": "test", "fits": fits, "rows": [{}] * 3}))
    monkeypatch.setenv("HWCOMPRESS_PROFILES", str(tmp_path))
    got = predict_latency(model, target, 8)
    assert got.latency_model == "profile table" and got.latency_ms == pytest.approx(0.25)
    assert got.latency_source == "predicted" and got.roofline_ms == pytest.approx(roof.latency_ms)
    # another runtime's table is ignored
    assert predict_latency(model, load_target("x86-openvino"), 8).latency_model == "roofline"


def test_small_sweep_on_this_machine(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HWCOMPRESS_PROFILES", str(tmp_path))
    specs = [s for s in tb.sweep_specs() if s[0] in ("lstm-h128", "gru-h256", "crn-c0.25-h128")]
    table = tb.sweep(load_target("generic-onnx"), runs=30, specs=specs, repeats=2)
    path = tb.write_table(table)
    assert path == tmp_path / "generic-onnx.json"
    assert len(table["rows"]) == 6 and {r["weights"] for r in table["rows"]} == {"fp32", "int8"}
    assert all(r["measured_ms"] > 0 and len(r["repeat_ms"]) == 2 for r in table["rows"])
    assert table["provenance"].startswith("measured here: hwcompress profile --sweep")
    assert tb.load_table(load_target("generic-onnx"))["fits"] == table["fits"]


def test_pruned_default_specs_are_fit_shapes() -> None:
    """The sweep's and the benchmark's prunings of the shipped model: deterministic per
    seed, different between seeds, every width a kept fraction fit can choose."""
    a, b = tb.pruned_default_specs(6, seed=1), tb.pruned_default_specs(6, seed=2)
    assert a == tb.pruned_default_specs(6, seed=1)
    assert not {str(s[2]) for s in a} & {str(s[2]) for s in b}
    base = {"channels": tb.BASE_CHANNELS, "hidden": tb.DEFAULT_CRN["hidden"], "proj_channels": [tb.BASE_CHANNELS[-1]],
            "dec_channels": tb.BASE_CHANNELS[-2::-1]}
    for label, arch, config in a + b:
        assert arch == "crn" and label.startswith("pruned-default-s")
        for key, full in base.items():
            widths = config[key] if isinstance(config[key], list) else [config[key]]
            for w, f in zip(widths, full):
                assert any(w == max(1, round(f * (1 - lvl))) for lvl in tb.PRUNE_LEVELS), (key, w, f)
    assert {s[0] for s in tb.pruned_default_specs(12, seed=1)} <= {s[0] for s in tb.sweep_specs()}


def test_sweep_of_another_machine_is_refused() -> None:
    with pytest.raises(HwcError, match="run the sweep on the device itself"):
        tb.sweep(load_target("raspberrypi4"))
