"""The peer compressors of benchmarks/peers.py on a tiny model: each produces an artifact its
runtime loads and runs through the same streaming session hwcompress uses, close enough to
the fp32 model that a broken conversion (wrong state wiring, unquantized-input crash) shows.

SNR floors are loose on purpose: weight-only int8 keeps ~30 dB on these presets; fully int8
models (int8 activations and recurrent state) are allowed to be bad (the benchmark reports
how bad) but must run and give finite audio.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from hwcompress.export import get_backend, run_stream
from test_export import _model, _require
from test_export_compressed import _snr_db

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
peers = pytest.importorskip("peers")

AUDIO = (0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)
         + 0.02 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ort")
    model = _model("tiny-gru")
    fp32 = get_backend("onnxruntime").export(model, tmp, "stream")
    ref = run_stream(get_backend("onnxruntime").load(fp32), AUDIO)
    return model, fp32, ref, tmp


def _feeds(fp32: Path) -> list[dict]:
    rec = peers._Recorder(get_backend("onnxruntime").load(fp32))
    run_stream(rec, AUDIO)
    return rec.feeds


@pytest.mark.parametrize("kind", ["dynamic", "dynamic-per-channel", "static"])
def test_onnxruntime_quantizers(onnx_pair, kind: str) -> None:
    _, fp32, ref, tmp = onnx_pair
    dst = tmp / f"{kind}.onnx"
    if kind == "static":
        peers.ort_static(fp32, dst, _feeds(fp32))
    else:
        peers.ort_dynamic(fp32, dst, per_channel=kind.endswith("channel"))
    got = run_stream(get_backend("onnxruntime").load(dst), AUDIO)
    assert np.isfinite(got).all() and _snr_db(ref, got) > 10


def test_torch_global_magnitude_prunes_half_of_all_weights() -> None:
    import torch

    dense = _model("tiny-crn")
    pruned = peers.torch_global_magnitude(dense, 0.5)
    weights = [p for n, p in pruned.named_parameters() if "weight" in n and p.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert 0.49 < zeros / total < 0.51
    assert all(isinstance(p, torch.nn.Parameter) for p in pruned.parameters())  # masks made permanent


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf not installed")
@pytest.mark.parametrize("mode", ["int8", "int4", "cb4"])
def test_nncf_modes_run_in_openvino(tmp_path, mode: str) -> None:
    be = _require("openvino")
    model = _model("tiny-lstm")
    ir = tmp_path / "cells.xml"
    peers.explicit_cell_ir(model, ir)
    dst = tmp_path / f"{mode}.xml"
    peers.nncf_compress(ir, dst, mode, group_size=-1)  # per channel: 161-wide rows split into no group
    ref = run_stream(be.load(ir), AUDIO)
    got = run_stream(be.load(dst), AUDIO)
    assert np.isfinite(got).all() and _snr_db(ref, got) > (20 if mode == "int8" else 5)
    assert dst.with_suffix(".bin").stat().st_size < ir.with_suffix(".bin").stat().st_size


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ai_edge_quantizer") is None, reason="ai-edge-quantizer not installed")
def test_litert_static_int8_runs_with_float_io(onnx_pair, tmp_path) -> None:
    """ai-edge-quantizer's static recipe makes inputs and outputs int8: the session quantizes and
    dequantizes with each tensor's scale and zero point, and works around LiteRT's planner."""
    be = _require("litert")
    model, fp32_onnx, _, _ = onnx_pair
    tfl = be.export(model, tmp_path, "stream")
    ref = run_stream(be.load(tfl), AUDIO)
    dst = tmp_path / "static.tflite"
    peers.aeq(tfl, dst, "static_wi8_ai8", _feeds(fp32_onnx))
    session = be.load(dst)
    assert session._in_q, "expected int8 inputs from the static recipe"
    got = run_stream(session, AUDIO)
    assert got.shape == ref.shape and np.isfinite(got).all()
