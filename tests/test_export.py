"""Backends: every tiny preset exported to every installed runtime matches torch.

Tolerance: ATOL = 1e-4 absolute on outputs and carried states (spectra and masks are
O(1)); fp32 runtimes land near 1e-6, so a real graph bug (wrong state order, a lost
normalisation buffer, a bf16 fallback at ~1e-3) cannot hide under it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hwcompress.enhance import enhance_streaming
from hwcompress.errors import HwcError
from hwcompress.export import available_backends, get_backend, run_stream
from hwcompress.models.io import load_model
from hwcompress.models.stft import stft
from hwcompress.models.zoo import RnnMasker

TINY = ["tiny-crn", "tiny-gcrn", "tiny-lstm", "tiny-gru"]
BACKENDS = ["onnxruntime", "openvino", "litert"]
# each LiteRT conversion runs litert-torch in a subprocess (~5-15 s): slow for parity sweeps
SWEEP = ["onnxruntime", "openvino", pytest.param("litert", marks=pytest.mark.slow)]
RUNTIME_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}
ATOL = 1e-4
N_FRAMES = 30


def _require(backend: str):
    pytest.importorskip(RUNTIME_MODULE[backend], reason=f"runtime of backend {backend!r} is not installed")
    if backend == "litert":
        from hwcompress.export.tflite import converter_python

        try:
            converter_python()
        except HwcError as exc:
            pytest.skip(str(exc))
    return get_backend(backend)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = load_model(name).eval()
    # non-trivial normalisation, so a graph that dropped these buffers would show
    model.feat_mean.uniform_(-3.0, 0.0)
    model.feat_std.uniform_(1.0, 3.0)
    return model


def _spectrum(frames: int) -> torch.Tensor:
    audio = torch.from_numpy(np.random.default_rng(2).standard_normal(frames * 160).astype(np.float32) * 0.1)
    return stft(audio[None])[:, :frames]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """(preset, backend, mode) -> (model, path), each exported once per test run."""
    cache: dict[tuple[str, str, str], tuple[torch.nn.Module, object]] = {}

    def get(name: str, backend: str, mode: str):
        key = (name, backend, mode)
        if key not in cache:
            model = _model(name)
            out = tmp_path_factory.mktemp(f"{name}-{backend}")
            cache[key] = (model, get_backend(backend).export(model, out, mode, frames=N_FRAMES))
        return cache[key]

    return get


def _close(got: np.ndarray, want: torch.Tensor, what: str) -> float:
    np.testing.assert_allclose(got, want.numpy(), atol=ATOL, rtol=0, err_msg=what)
    return float(np.abs(got - want.numpy()).max())


@pytest.mark.parametrize("backend", SWEEP)
@pytest.mark.parametrize("name", TINY)
def test_streaming_parity(artifacts, name: str, backend: str) -> None:
    be = _require(backend)
    model, path = artifacts(name, backend, "stream")
    session = be.load(path, threads=1)
    assert session.frames in (None, 1)
    assert session.state_shapes == [tuple(s) for s in model.state_shapes()]
    spec = _spectrum(N_FRAMES)
    state_t, state_r = model.initial_state(1), None
    for t in range(N_FRAMES):
        frame = spec[:, t : t + 1]
        with torch.no_grad():
            want, state_t = model(frame, state_t)
        got, state_r = session.run(frame.numpy(), state_r)
        _close(got, want, f"{name}/{backend} frame {t}")
    for i, (got, want) in enumerate(zip(state_r, state_t)):
        _close(got, want, f"{name}/{backend} state {i} after {N_FRAMES} frames")


@pytest.mark.parametrize("backend", SWEEP)
@pytest.mark.parametrize("name", TINY)
def test_whole_utterance_parity(artifacts, name: str, backend: str) -> None:
    be = _require(backend)
    model, path = artifacts(name, backend, "whole")
    session = be.load(path, threads=1)
    # LiteRT unrolls the recurrent layers: fixed T; the others keep T dynamic
    lengths = [N_FRAMES] if backend == "litert" else [N_FRAMES, 7, 1]
    assert session.frames == (N_FRAMES if backend == "litert" else None)
    for frames in lengths:
        spec = _spectrum(frames)
        with torch.no_grad():
            want, want_state = model(spec, model.initial_state(1))
        got, got_state = session.run(spec.numpy())
        _close(got, want, f"{name}/{backend} whole T={frames}")
        for i, (g, w) in enumerate(zip(got_state, want_state)):
            _close(g, w, f"{name}/{backend} whole T={frames} state {i}")


@pytest.mark.slow
def test_litert_rejects_other_lengths(artifacts) -> None:
    be = _require("litert")
    _, path = artifacts("tiny-gru", "litert", "whole")
    with pytest.raises(HwcError, match="T=30"):
        be.load(path).run(_spectrum(12).numpy())


@pytest.mark.parametrize("name", ["tiny-crn", "tiny-lstm"])
def test_run_stream_matches_enhance_streaming(artifacts, name: str) -> None:
    be = _require("onnxruntime")
    model, path = artifacts(name, "onnxruntime", "stream")
    audio = np.random.default_rng(3).standard_normal(4000).astype(np.float32) * 0.1
    got = run_stream(be.load(path), audio, model.state_shapes())
    want = enhance_streaming(model, audio)
    assert got.shape == audio.shape
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert np.abs(got - audio).max() > 1e-3  # the model did something


@pytest.mark.slow
def test_whole_artifact_refused_by_run_stream(artifacts) -> None:
    _require("litert")
    _, path = artifacts("tiny-gru", "litert", "whole")
    with pytest.raises(HwcError, match="streaming"):
        run_stream(get_backend("litert").load(path), np.zeros(800, np.float32))


def test_onnx_backend_always_available() -> None:
    assert "onnxruntime" in available_backends()
    assert get_backend("onnx") is get_backend("ORT") is get_backend("onnxruntime")


@pytest.mark.parametrize(
    ("backend", "modules", "hint"),
    [
        ("openvino", ["openvino"], "pip install 'hwcompress[openvino]'"),
        ("ov", ["openvino"], "pip install 'hwcompress[openvino]'"),
        ("tflite", ["ai_edge_litert", "ai_edge_litert.interpreter"], "pip install 'hwcompress[tflite]'"),
        ("litert", ["ai_edge_litert", "ai_edge_litert.interpreter"], "pip install 'hwcompress[tflite]'"),
    ],
)
def test_missing_runtime_is_one_line_error(monkeypatch, backend, modules, hint) -> None:
    for mod in modules:
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    with pytest.raises(HwcError) as err:
        get_backend(backend)
    msg = str(err.value)
    assert "\n" not in msg and hint in msg and "needs the optional runtime" in msg


def test_missing_litert_converter_is_one_line_error(monkeypatch, tmp_path) -> None:
    pytest.importorskip("ai_edge_litert", reason="LiteRT runtime is not installed")
    import hwcompress.export.tflite as tfl

    monkeypatch.delenv(tfl.ENV_PYTHON, raising=False)
    monkeypatch.setattr(tfl, "VENV_PYTHON", tmp_path / "nowhere" / "python")
    monkeypatch.setattr(tfl.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(HwcError, match="litert-torch") as err:
        get_backend("litert").export(_model("tiny-gru"), tmp_path)
    assert "\n" not in str(err.value) and not list(tmp_path.glob("*.tflite"))


def test_unknown_backend_and_mode(tmp_path) -> None:
    with pytest.raises(HwcError, match="unknown backend"):
        get_backend("tensorrt")
    with pytest.raises(HwcError, match="unknown export mode"):
        get_backend("onnx").export(_model("tiny-gru"), tmp_path, mode="batch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_or_missing_file_is_hwc_error(artifacts, tmp_path, backend: str) -> None:
    be = _require(backend)
    with pytest.raises(HwcError, match="no such model file"):
        be.load(tmp_path / f"absent{be.suffix}")
    garbage = tmp_path / f"garbage{be.suffix}"
    garbage.write_bytes(b"\x00not a model\xff" * 64)
    with pytest.raises(HwcError, match="corrupt or unreadable"):
        be.load(garbage)
    _, good = artifacts("tiny-gru", backend, "stream")
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{be.suffix}"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(HwcError) as err:
        be.load(truncated)
    assert "\n" not in str(err.value)


class BesselLinear(torch.nn.Linear):
    """A layer using an op no exporter here maps (aten::special_i0e)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0e(super().forward(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_op_is_named_in_one_line(tmp_path, backend: str) -> None:
    be = _require(backend)
    model = RnnMasker(hidden=[8], cell="gru")
    model.out = BesselLinear(8, model.n_bins)
    with pytest.raises(HwcError) as err:
        be.export(model, tmp_path, "stream")
    msg = str(err.value)
    assert "special_i0e" in msg and "layer out (BesselLinear)" in msg and "\n" not in msg
    assert model.training  # the caller's model is left as it was
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing half-written left behind


def test_export_is_atomic_and_names_artifacts(tmp_path) -> None:
    be = _require("openvino")
    model = _model("tiny-gru")
    xml = be.export(model, tmp_path, "stream", stem="gru")
    assert xml.name == "gru-stream.xml"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gru-stream.bin", "gru-stream.xml"]
    # re-export over an existing artifact replaces it in place
    assert be.export(model, tmp_path, "stream", stem="gru") == xml
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gru-stream.bin", "gru-stream.xml"]


def test_openvino_compiles_with_threads_latency_and_fp32(artifacts) -> None:
    be = _require("openvino")
    import openvino
    import openvino.properties as props
    import openvino.properties.hint as hints

    _, path = artifacts("tiny-gru", "openvino", "stream")
    compiled = be.load(path, threads=2).compiled
    assert compiled.get_property(props.inference_num_threads) == 2
    assert str(compiled.get_property(hints.performance_mode)).endswith("LATENCY")
    assert compiled.get_property(hints.inference_precision) == openvino.Type.f32


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_into_a_relative_folder(tmp_path, monkeypatch, backend: str) -> None:
    """`--out exports` from the shell: converters that run in a subprocess with their own
    working directory must still find the staged files."""
    be = _require(backend)
    monkeypatch.chdir(tmp_path)
    path = be.export(_model("tiny-gru"), Path("exports"), "stream")
    assert path.is_file() and path.resolve().parent == (tmp_path / "exports").resolve()


@pytest.mark.parametrize("backend", SWEEP)
def test_hops_with_held_state_equal_the_per_call_path(artifacts, backend: str) -> None:
    # the fast paths reuse their buffers each hop (onnxruntime IOBinding, OpenVINO's paired
    # requests, LiteRT's tensors by index): they must read the caller's new arrays, hand back
    # copies, keep the state where the next hop reads it, and agree with each runtime's plain
    # per-call path to the bit
    be = _require(backend)
    _, path = artifacts("tiny-gru", backend, "stream")
    fast, hops, plain = (be.load(path, threads=1) for _ in range(3))
    plain.fast_path = False
    spec = _spectrum(6).numpy()
    s_f, s_p, outs = None, None, []
    for t in range(6):
        frame = spec[:, t : t + 1]
        got_f, s_f = fast.run(frame, s_f)
        got_p, s_p = plain.run(frame, s_p)
        got_h = hops.hop(frame)
        np.testing.assert_array_equal(got_f, got_p, err_msg=f"{backend} hop {t}: run")
        np.testing.assert_array_equal(got_h, got_p, err_msg=f"{backend} hop {t}: hop")
        for a, b, c in zip(s_f, s_p, hops.held_state()):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(c, b)
        outs.append((got_h, got_h.copy()))
    for got, kept in outs:  # a later hop did not overwrite what an earlier one returned
        np.testing.assert_array_equal(got, kept)
    hops.reset()
    assert all(not s.any() for s in hops.held_state())
    np.testing.assert_array_equal(hops.hop(spec[:, :1]), outs[0][1])  # a new stream from zero state
    with pytest.raises(HwcError, match="spec must be"):
        hops.hop(spec[:, :1, :3])
