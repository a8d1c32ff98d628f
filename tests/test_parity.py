"""Parity enforced at export: an artifact whose runtime output departs from torch beyond the
stated tolerance of its weight format fails with one line (artifact, figures vs tolerance,
layer kinds and widths), and `check_parity` says so for any artifact on disk.

The broken exports are real files run in real runtimes: a weight initializer of an exported
ONNX graph negated or set to NaN, the largest weight constant in an OpenVINO IR's .bin
scaled, and an artifact checked against its model after the model's weights changed.

Tolerances (MIN_SNR_DB) were chosen from `check_parity` on every tiny preset, its compressed
form and the default, on each runtime (the figures are in hwcompress/export/check.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hwcompress.errors import HwcError
from hwcompress.export.check import MIN_SNR_DB, ParityError, check_parity, export_checked
from hwcompress.export.probe import stored_weights
from hwcompress.models.io import load_model, save_model
from test_export import _require

from conftest import cli  # the console entry point run in-process


def _tiny(name: str = "tiny-gru") -> torch.nn.Module:
    torch.manual_seed(0)
    return load_model(name).eval()


def _one_line(message: str) -> str:
    assert "\n" not in message
    return message


def _tamper_onnx(path: Path, how: str) -> None:
    """Rewrite the largest float weight initializer of an exported ONNX graph in place."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    target = max(floats, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(target).copy()
    w = -w if how == "negated" else np.full_like(w, np.nan)
    target.CopyFrom(numpy_helper.from_array(w, target.name))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def onnx_stream(tmp_path_factory):
    _require("onnxruntime")
    model = _tiny()
    out = tmp_path_factory.mktemp("ort")
    row = export_checked(model, "onnxruntime", out, ["stream"], stem="g")[0]
    return model, Path(row.path), row


def test_sound_export_passes_its_stated_tolerance(onnx_stream) -> None:
    _, path, row = onnx_stream
    par = row.parity
    assert par["ok"] is True and par["weights"] == "fp32" and par["min_snr_db"] == MIN_SNR_DB["fp32"]
    assert par["snr_db"] > MIN_SNR_DB["fp32"] and par["max_abs_diff"] < 1e-4
    assert par["mode"] == "stream" and par["frames"] == 50 and "SNR" in par["how"]
    assert par["layers"] is None and par["path"] == str(path)


@pytest.mark.parametrize("how", ["negated", "nan"])
def test_broken_onnx_export_fails_parity(onnx_stream, tmp_path, how: str) -> None:
    model, good, _ = onnx_stream
    broken = tmp_path / good.name
    broken.write_bytes(good.read_bytes())
    _tamper_onnx(broken, how)
    result = check_parity(model, broken)
    assert result.ok is False and result.weights == "fp32"
    if how == "negated":
        assert result.snr_db < MIN_SNR_DB["fp32"]
    with pytest.raises(ParityError) as exc:
        check_parity(model, broken, enforce=True)
    line = _one_line(str(exc.value))
    assert isinstance(exc.value, HwcError)
    assert line.startswith(f"{broken}: onnxruntime output departs from torch beyond the stated fp32 tolerance")
    assert re.search(r"SNR (-?[\d.]+|nan) dB < 60 dB", line), line
    assert "model layers (kind: output widths) GRU 16, Linear 161" in line
    assert exc.value.parity.ok is False


def test_model_changed_after_export_fails_parity(onnx_stream) -> None:
    model, path, _ = onnx_stream
    changed = _tiny()
    with torch.no_grad():
        for p in changed.rnn.parameters():
            p.mul_(1.5)
    assert check_parity(model, path).ok  # the model it was exported from still matches
    result = check_parity(changed, path)
    assert not result.ok and result.snr_db < MIN_SNR_DB["fp32"], result


def test_broken_openvino_ir_fails_parity(tmp_path) -> None:
    """Scale the biggest f32 weight constant inside the IR's .bin: the .xml is untouched."""
    _require("openvino")
    model = _tiny()
    path = Path(export_checked(model, "openvino", tmp_path, ["stream"], stem="g")[0].path)
    xml = path.read_text()
    consts = [(int(m["offset"]), int(m["size"])) for m in re.finditer(
        r'<data element_type="f32" shape="[^"]*" offset="(?P<offset>\d+)" size="(?P<size>\d+)"', xml)]
    assert consts, "no f32 weight constants in the IR"
    offset, size = max(consts, key=lambda c: c[1])
    blob = bytearray(path.with_suffix(".bin").read_bytes())
    w = np.frombuffer(bytes(blob[offset:offset + size]), dtype=np.float32) * 3.0
    blob[offset:offset + size] = w.astype(np.float32).tobytes()
    path.with_suffix(".bin").write_bytes(bytes(blob))
    result = check_parity(model, path)
    assert not result.ok and result.backend == "openvino" and result.snr_db < MIN_SNR_DB["fp32"]
    assert "GRU 16" in result.message()


def test_export_checked_enforces_and_can_record(tmp_path) -> None:
    """int8 against a tolerance no quantized graph meets: export_checked fails, names the file
    (left on disk for inspection); with enforce=False the row records ok=False instead."""
    _require("onnxruntime")
    model = _tiny()
    with pytest.raises(ParityError) as exc:
        export_checked(model, "onnxruntime", tmp_path / "a", ["stream"], weights="int8", stem="g", min_snr_db=200)
    line = _one_line(str(exc.value))
    assert "g-stream-int8.onnx: onnxruntime output departs from torch beyond the given tolerance (int8 weights)" in line
    assert "< 200 dB" in line and "GRU 16" in line
    assert (tmp_path / "a" / "g-stream-int8.onnx").is_file()
    row = export_checked(model, "onnxruntime", tmp_path / "b", ["stream"], weights="int8", stem="g",
                         min_snr_db=200, enforce=False)[0]
    assert row.parity["ok"] is False and row.parity["layers"] == "GRU 16, Linear 161"
    # no check: no parity, no failure
    unchecked = export_checked(model, "onnxruntime", tmp_path / "c", ["stream"], weights="int8", stem="g",
                               check=False, min_snr_db=200)[0]
    assert unchecked.parity is None and "parity" not in unchecked.to_json()


@pytest.mark.parametrize("name", ["tiny-crn", "tiny-gcrn", "tiny-lstm", "tiny-gru"])
def test_int8_exports_meet_the_stated_tolerance(tmp_path, name: str) -> None:
    """The tolerance is not so tight that a sound quantized export fails it (seen: 39-67 dB)."""
    _require("onnxruntime")
    model = _tiny(name)
    rows = export_checked(model, "onnxruntime", tmp_path, ["stream", "whole"], weights="int8", stem=name)
    for row in rows:
        assert row.parity["ok"] and row.parity["min_snr_db"] == MIN_SNR_DB["int8"], row.parity
    assert stored_weights(Path(rows[0].path)) == "int8"


def test_whole_utterance_parity_by_path(tmp_path) -> None:
    _require("onnxruntime")
    model = _tiny()
    path = Path(export_checked(model, "onnxruntime", tmp_path, ["whole"], stem="g", check=False)[0].path)
    result = check_parity(model, path)  # mode from the graph: dynamic T is a whole-utterance export
    assert result.ok and result.mode == "whole" and result.frames == 100




def test_cli_export_beyond_tolerance_is_one_line_exit_2(tmp_path, capsys) -> None:
    _require("onnxruntime")
    model = tmp_path / "g.pt"
    save_model(model, _tiny())
    proc = cli(capsys, "export", "--model", str(model), "--format", "onnx", "--out", str(tmp_path / "x"),
               "--mode", "stream", "--weights", "int8", "--min-snr-db", "200")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "g-stream-int8.onnx: onnxruntime output departs from torch" in lines[0] and "GRU 16" in lines[0]
    proc = cli(capsys, "export", "--model", str(model), "--format", "onnx", "--out", str(tmp_path / "y"),
               "--mode", "stream", "--no-check", "--min-snr-db", "30")
    assert proc.returncode == 2 and "--min-snr-db is the parity tolerance: it needs --check" in proc.stderr


def test_artifact_of_another_architecture_is_one_line(onnx_stream) -> None:
    _, path, _ = onnx_stream
    with pytest.raises(HwcError, match="exported from another architecture") as exc:
        check_parity(_tiny("tiny-lstm"), path)
    _one_line(str(exc.value))


def test_cli_tolerance_must_be_a_finite_number(tmp_path, capsys) -> None:
    proc = cli(capsys, "export", "--model", "tiny-gru", "--format", "onnx", "--out", str(tmp_path / "x"),
               "--min-snr-db", "nan")
    assert proc.returncode == 2 and "--min-snr-db must be a finite number of dB, got nan" in proc.stderr
    assert not (tmp_path / "x").exists()
