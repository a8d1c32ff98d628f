"""`hwcompress profile --model X.onnx|.xml|.tflite`: an exported artifact is timed by path, in
its own runtime with the target's threads (the file a user compares with benchmark_app), and
commands that cannot take an artifact say what they accept in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hwcompress.errors import HwcError
from hwcompress.export import get_backend
from hwcompress.models.io import load_model
from hwcompress.profile.measure import host_arch, measure_local, profile_artifact
from test_export import _require

from conftest import cli, user_error  # the console entry point run in-process

x86_only = pytest.mark.skipif(host_arch() != "x86_64", reason="the measured targets here are x86_64")
RUNS = 20


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=300)





@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    _require("onnxruntime")
    out = tmp_path_factory.mktemp("ort")
    be = get_backend("onnxruntime")
    model = load_model("tiny-crn")
    return {"stream": be.export(model, out, "stream", stem="m"),
            "int8": be.export(model, out, "stream", stem="m", weights="int8"),
            "whole": be.export(model, out, "whole", stem="m")}


@x86_only
def test_cli_profiles_an_onnx_artifact_by_path(onnx_files) -> None:
    path = onnx_files["int8"]
    proc = run("profile", "--target", "generic-onnx", "--model", str(path), "--runs", str(RUNS), "--warmup", "5",
               "--top", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["model"] == str(path) and r["artifact"]["path"] == str(path) and r["artifact"]["kept"]
    assert r["artifact"]["bytes"] == path.stat().st_size
    assert r["latency_source"] == "measured" and r["runs"] == RUNS and r["threads"] == 1
    assert r["runtime"] == "onnxruntime" and r["weights"] == "int8"  # read from the graph, not given
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["latency_ms"] == r["median_ms"]
    assert r["predicted_ms"] is None and "no layer table" in r["prediction"]
    assert r["peak_memory_bytes"] > 0 and r["layers"] and len(r["layers"]) <= 3
    assert r["fits_storage"] is True and "given artifact" in r["how"]


@x86_only
def test_profile_an_openvino_ir_reports_the_runtime_timing(tmp_path) -> None:
    """The IR a user would hand benchmark_app: our per-hop figure plus OpenVINO's own
    InferRequest.latency of the same hops, with the target's two threads."""
    _require("openvino")
    path = get_backend("openvino").export(load_model("tiny-gru"), tmp_path, "stream", stem="g")
    r = profile_artifact(path, "x86-openvino", runs=RUNS, warmup=5, top=2)
    assert r["runtime"] == "openvino" and r["threads"] == 2 and r["weights"] == "fp32"
    assert {Path(f).suffix for f in r["artifact"]["files"]} == {".xml", ".bin"}
    assert r["artifact"]["bytes"] == sum(Path(f).stat().st_size for f in r["artifact"]["files"])
    assert r["runtime_median_ms"] > 0 and r["runtime_median_ms"] <= r["median_ms"]
    assert "note" not in r  # the target's own runtime


@x86_only
def test_measure_local_takes_an_artifact_path(onnx_files) -> None:
    r = measure_local(str(onnx_files["stream"]), "x86-openvino", runs=RUNS, warmup=5, top=1)
    assert r["runtime"] == "onnxruntime" and r["weights"] == "fp32" and r["latency_source"] == "measured"
    assert r["threads"] == 2 and "names openvino" in r["note"]  # the target's threads, the file's runtime
    with pytest.raises(HwcError, match="keeps the weights"):
        measure_local(str(onnx_files["stream"]), "generic-onnx", weights="int8")


def test_profile_artifact_refusals(onnx_files, tmp_path) -> None:
    stream, whole = onnx_files["stream"], onnx_files["whole"]
    with pytest.raises(HwcError, match=r"a whole-utterance ONNX model \(a dynamic T\).*--mode stream"):
        profile_artifact(whole, "generic-onnx", runs=RUNS)
    with pytest.raises(HwcError, match="runs in onnxruntime, not in backend 'openvino'"):
        profile_artifact(stream, "generic-onnx", backend="ov", runs=RUNS)
    if host_arch() != "aarch64":
        with pytest.raises(HwcError, match="target raspberrypi4 is aarch64 .* measured only on the CPU it runs on"):
            profile_artifact(stream, "raspberrypi4", runs=RUNS)
    with pytest.raises(HwcError, match="weights file of an OpenVINO IR; give its .xml"):
        profile_artifact(tmp_path / "model.bin", "generic-onnx")
    with pytest.raises(HwcError, match="no such model file"):
        profile_artifact(tmp_path / "gone.onnx", "generic-onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 not a protobuf" * 8)
    with pytest.raises(HwcError, match="corrupt or unreadable ONNX model"):
        profile_artifact(corrupt, "generic-onnx")


def test_cli_one_line_for_what_a_command_cannot_take(onnx_files, tmp_path, capsys) -> None:
    stream = str(onnx_files["stream"])
    user_error(cli(capsys, "profile", "--target", "generic-onnx", "--model", stream, "--weights", "int8", "--out",
                          str(tmp_path)),
                      "profile times an exported artifact as it is", "--weights, --out")
    user_error(cli(capsys, "export", "--model", stream, "--format", "openvino", "--out", str(tmp_path / "x")),
                      f"{stream}: export accepts a model (.pt, .hwc, a zoo preset or 'default')",
                      f"hwcompress eval --model {stream}", f"hwcompress profile --model {stream}")
    assert not (tmp_path / "x").exists()  # refused before anything is written
    # the original report: a corrupt file with an artifact suffix no longer reads as a pickle
    corrupt = tmp_path / "corrupt.xml"
    corrupt.write_text("garbage")
    line = user_error(cli(capsys, "profile", "--target", "generic-onnx", "--model", str(corrupt)),
                             "corrupt or unreadable OpenVINO IR")
    assert "Unpickling" not in line
