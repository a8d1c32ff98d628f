"""Backend registry: every backend declares one complete Capabilities, readable without its runtime,
and the tables the rest of hwcompress read are derived from it with the values they had when they
were written out by hand (issue 15)."""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hwcompress.export as ex
from hwcompress.errors import HwcError
from hwcompress.export.capabilities import Capabilities

REPO = Path(__file__).resolve().parent.parent

# the hand-written tables as they were before the capabilities replaced them (hwcompress 263f512)
OLD_INT4_BACKENDS = ("openvino", "litert", "onnxruntime")
OLD_MIXED_BACKENDS = ("litert", "onnxruntime", "openvino")
OLD_INT4_KINDS = {"litert": ("LSTM", "GRU", "Linear"), "onnxruntime": ("LSTM", "GRU", "Linear"),
                  "openvino": ("LSTM", "GRU", "Linear")}
OLD_NOT_INT4 = {"openvino": "its CPU plugin decompresses {kind} weights to f32 when the model compiles; it offers "
                            "them int8 storage (computed in f32) or fp32",
                "litert": "ai-edge-quantizer's 4-bit recipe here takes FULLY_CONNECTED ops only; it offers {kind} "
                          "int8 or fp32",
                "onnxruntime": "MatMulNBits replaces MatMul only; it offers {kind} int8 or fp32"}
OLD_GRID_EXACT_BACKENDS = ("onnxruntime", "litert", "openvino")
OLD_FLOAT_KINDS_WHEN_QUANTIZED = {"onnxruntime": ("GRU",)}
OLD_BACKENDS = {"onnxruntime": ("hwcompress.export.onnx", "onnxruntime", None),
                "openvino": ("hwcompress.export.openvino", "openvino", "openvino"),
                "litert": ("hwcompress.export.tflite", "ai_edge_litert.interpreter", "tflite"),
                "tflite-micro": ("hwcompress.export.tflm", "tflite_micro", "tflm")}
OLD_ALIASES = {"onnx": "onnxruntime", "ort": "onnxruntime", "ov": "openvino", "tflite": "litert",
               "tflm": "tflite-micro", "tflite_micro": "tflite-micro", "tfl-micro": "tflite-micro"}
OLD_ARTIFACT_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert"}
OLD_ARTIFACT_KINDS = {"onnxruntime": "ONNX model", "openvino": "OpenVINO IR", "litert": "LiteRT (.tflite) model",
                      "tflite-micro": "TFLite Micro (.tflite) model"}
OLD_RUNTIMES = ("openvino", "onnxruntime", "litert", "tflite-micro")  # targets.RUNTIMES
OLD_RUNTIME_ACTIVATIONS = {"openvino": ("f32", "bf16", "f16"), "onnxruntime": ("f32",), "litert": ("f32",),
                           "tflite-micro": ("int16",)}
OLD_DISTS = {"openvino": ("openvino", "openvino"), "onnxruntime": ("onnxruntime", "onnxruntime"),
             "litert": ("ai-edge-litert", "ai_edge_litert"), "tflite-micro": ("tflite-micro", "tflite_micro")}
OLD_PROFILED_RUNTIMES = ("onnxruntime", "openvino")  # search.report.PROFILED_RUNTIMES
# what the name checks decided: export's default mode and weights (cli), the microcontroller paths
# (fit, profile), the emulated check (fit), the per-layer widths read back (fit), whole-mode T
OLD_DEFAULT_WEIGHTS = {"onnxruntime": "fp32", "openvino": "fp32", "litert": "fp32", "tflite-micro": "int8"}
OLD_MICRO = {"tflite-micro"}
OLD_EMULATED = {"litert"}
OLD_WIDTHS_READ = {(b, w) for b in ("litert", "openvino") for w in ex.WEIGHTS} | {
    ("onnxruntime", w) for w in ex.WEIGHTS if w != "int8"}
OLD_DYNAMIC_WHOLE = {"onnxruntime", "openvino"}


def _defines(ref: str) -> bool:
    """Whether a "module:function" reference names a function (or a name) its module defines, read from the
    source without importing it (importing would import the runtime)."""
    module, _, name = ref.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, ref
    tree = ast.parse(Path(spec.origin).read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == name
               or isinstance(n, ast.Assign) and any(getattr(t, "id", None) == name for t in n.targets)
               for n in tree.body)


@pytest.mark.parametrize("name", list(ex.CAPABILITIES))
def test_every_backend_declares_complete_capabilities(name: str) -> None:
    caps = ex.CAPABILITIES[name]
    assert isinstance(caps, Capabilities) and caps.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        caps.name = "other"  # type: ignore[misc]
    for field in ("module", "runtime", "distribution", "suffix", "artifact_kind"):
        assert getattr(caps, field), f"{name}: {field} is empty"
    assert _defines(f"{caps.module}:BACKEND"), f"{name}: {caps.module} defines no BACKEND"
    assert caps.suffix.startswith(".")
    assert caps.modes and set(caps.modes) <= set(ex.MODES)
    assert caps.weights and set(caps.weights) <= set(ex.WEIGHTS) and caps.default_weights in caps.weights
    assert bool(caps.int4_kinds) == ("int4" in caps.weights), "4-bit layer kinds exactly where int4 is exported"
    assert "{kind}" in caps.not_int4
    assert not caps.grid_exact or "int8" in caps.weights
    assert caps.activations
    assert set(caps.widths_read_back) <= set(caps.weights)
    assert bool(caps.layer_widths) == bool(caps.widths_read_back)
    for ref in (caps.layer_widths, caps.layer_profiler, caps.claims_file):
        if ref is not None:
            assert _defines(ref), f"{name}: {ref} is no function of its module"
    assert bool(caps.layer_profiler) == bool(caps.layer_profiler_source)
    assert "pip install" in caps.install_hint()
    for alias in caps.aliases:
        assert ex.canonical_name(alias) == name
    assert ex.capabilities(name.upper()) is caps


def test_derived_tables_equal_the_hand_written_ones() -> None:
    from hwcompress.export import probe
    from hwcompress.profile.measure import RUNTIME_BACKENDS
    from hwcompress.search.report import PROFILED_RUNTIMES
    from hwcompress.targets import RUNTIME_ACTIVATIONS, RUNTIMES

    # the same members (the registry's order now; only messages list them)
    assert set(ex.INT4_BACKENDS) == set(OLD_INT4_BACKENDS)
    assert set(ex.MIXED_BACKENDS) == set(OLD_MIXED_BACKENDS)
    assert set(ex.GRID_EXACT_BACKENDS) == set(OLD_GRID_EXACT_BACKENDS)
    assert set(RUNTIMES) == set(OLD_RUNTIMES) and set(PROFILED_RUNTIMES) == set(OLD_PROFILED_RUNTIMES)
    assert ex.INT4_KINDS == OLD_INT4_KINDS and ex._NOT_INT4 == OLD_NOT_INT4
    assert ex.FLOAT_KINDS_WHEN_QUANTIZED == OLD_FLOAT_KINDS_WHEN_QUANTIZED
    assert ex._BACKENDS == OLD_BACKENDS and ex._ALIASES == OLD_ALIASES
    assert ex.ARTIFACT_SUFFIXES == OLD_ARTIFACT_SUFFIXES and ex.ARTIFACT_KINDS == OLD_ARTIFACT_KINDS
    assert dict(RUNTIME_ACTIVATIONS) == OLD_RUNTIME_ACTIVATIONS
    assert RUNTIME_BACKENDS == {n: n for n in OLD_RUNTIMES}
    assert {n: (c.distribution, c.runtime_module) for n, c in ex.CAPABILITIES.items()} == OLD_DISTS
    assert probe.runtime_version("onnxruntime") == importlib.metadata.version("onnxruntime")
    caps = ex.CAPABILITIES.values()
    assert {c.name: c.default_weights for c in caps} == OLD_DEFAULT_WEIGHTS
    assert {c.name for c in caps if c.microcontroller} == OLD_MICRO
    assert {c.name for c in caps if c.emulated} == OLD_EMULATED
    assert {(c.name, w) for c in caps for w in c.widths_read_back} == OLD_WIDTHS_READ
    assert {c.name for c in caps if c.dynamic_whole and "whole" in c.modes} == OLD_DYNAMIC_WHOLE
    assert ex.backend_names() == list(OLD_BACKENDS)


def test_unknown_runtime_is_one_clear_line() -> None:
    with pytest.raises(HwcError) as err:
        ex.capabilities("tensorrt")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("unknown backend 'tensorrt': choose one of ")
    assert all(n in msg for n in (*OLD_BACKENDS, *OLD_ALIASES))


def test_capabilities_import_no_runtime() -> None:
    """Reading every backend's capabilities (and the target registry built on them) imports none of
    the optional runtimes, nor torch: a missing runtime fails only in get_backend, with its hint."""
    code = ("import sys, hwcompress.export as ex, hwcompress.targets\n"
            "[ex.capabilities(n) for n in ex.backend_names()]\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'openvino', 'ai_edge_litert', 'tflite_micro', "
            "'torch', 'onnxruntime'})\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_missing_runtime_names_its_install_hint(monkeypatch) -> None:
    """get_backend checks the descriptor's runtime import first and says how to install it."""
    fake = dataclasses.replace(ex.CAPABILITIES["openvino"], runtime="hwc_no_such_runtime.sub")
    monkeypatch.setitem(ex.CAPABILITIES, "openvino", fake)
    with pytest.raises(HwcError, match=r"^backend 'openvino' needs the optional runtime hwc_no_such_runtime: "
                                       r"pip install 'hwcompress\[openvino\]'$"):
        ex.get_backend("ov")


def test_companion_files_by_capability(tmp_path: Path) -> None:
    """An IR's .bin is named by the openvino capabilities: it counts as an artifact file, is listed
    with its .xml, and given alone gets the message it got when the check was by name."""
    from hwcompress.export.probe import artifact_files

    assert ex.is_artifact("m.bin") and ex.is_artifact("m.XML") and not ex.is_artifact("m.pt")
    with pytest.raises(HwcError) as err:
        ex.backend_for_artifact(tmp_path / "m.bin")
    assert str(err.value) == (f"{tmp_path / 'm.bin'}: the weights file of an OpenVINO IR; give its .xml (m.xml), "
                              "which names this .bin")
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_text("<net/>")
    assert artifact_files(xml) == [xml]
    bin_.write_bytes(b"\0")
    assert artifact_files(xml) == [xml, bin_]
    assert artifact_files(tmp_path / "m.onnx") == [tmp_path / "m.onnx"]


@pytest.mark.parametrize("name", list(ex.CAPABILITIES))
def test_implementation_matches_its_descriptor(name: str) -> None:
    """The module a descriptor names implements that backend: same name and artifact suffix."""
    caps = ex.CAPABILITIES[name]
    backend = ex.get_backend(name)
    assert (backend.name, backend.suffix) == (caps.name, caps.suffix)
    assert isinstance(backend, ex.Backend)
