"""The CLI end to end: enhance with a real (tiny) model, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from hwcompress.models.io import load_model, save_model
from conftest import user_error  # exit 2 and one error line


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=300)



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.pt"
    save_model(path, load_model("tiny-crn"))
    return path


@pytest.fixture(scope="module")
def noisy_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("a") / "noisy_44k_stereo.wav"
    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 4 * t))
    sf.write(path, np.stack([tone + 0.05 * rng.standard_normal(t.size), np.zeros_like(t)], 1), 44100)
    return path


def test_enhance_writes_16k_mono(tmp_path, tiny_model, noisy_wav) -> None:
    out = tmp_path / "out" / "clean.wav"
    proc = run("enhance", str(noisy_wav), str(out), "--model", str(tiny_model))
    assert proc.returncode == 0, proc.stderr
    audio, sr = sf.read(out)
    assert sr == 16000 and audio.ndim == 1 and audio.size == 16000


def test_enhance_bad_audio(tmp_path, tiny_model) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    out = str(tmp_path / "o.wav")
    for path, fragment in ((tmp_path / "missing.wav", "not found"), (silent, "silent"), (nan, "NaN"),
                           (empty, "empty"), (corrupt, "cannot read")):
        user_error(run("enhance", str(path), out, "--model", str(tiny_model)), fragment)
    assert not (tmp_path / "o.wav").exists()


def test_unknown_model_and_target(tmp_path, noisy_wav) -> None:
    user_error(run("enhance", str(noisy_wav), str(tmp_path / "o.wav"), "--model", "nope"), "unknown model")
    user_error(run("targets", "show", "no-such-device"), "no-such-device")


def test_malformed_target_file(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    user_error(run("targets", "show", str(bad)), "bad.toml")


def test_eval_on_small_corpus(small_corpus, tiny_model, tmp_path) -> None:
    out = tmp_path / "eval.json"
    proc = run("eval", "--model", str(tiny_model), "--data", str(small_corpus), "--set", "test", "--limit", "3",
               "--json", str(out), "--workers", "1", "--no-dnsmos")  # DNSMOS: test_dnsmos
    assert proc.returncode == 0, proc.stderr
    assert "PESQ" in proc.stdout and out.exists()
    user_error(run("eval", "--model", str(tiny_model), "--data", str(small_corpus), "--set", "nope"), "nope")
    user_error(run("eval", "--model", str(tiny_model), "--data", str(tmp_path)), "not a corpus")


def test_export_reports_bytes_and_parity(tmp_path, tiny_model) -> None:
    import json

    proc = run("export", "--model", str(tiny_model), "--format", "onnx", "--out", str(tmp_path / "x"), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["artifacts"]
    assert [r["mode"] for r in rows] == ["stream", "whole"]
    for r in rows:
        assert r["bytes"] == sum((tmp_path / "x" / p.split("/")[-1]).stat().st_size for p in r["files"])
        assert r["parity"]["max_abs_diff"] < 1e-4  # fp32 graph of the same model


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--format", "caffe"], "unknown backend 'caffe'"),
        (["--format", "onnx", "--weights", "int2"], "unknown weight format 'int2'"),
        (["--format", "tflm", "--weights", "int4"], "backend 'tflite-micro' has no native 4-bit"),
        (["--format", "tflm", "--weights", "mixed"], "backend 'tflite-micro' exports no per-layer 4/8-bit"),
        (["--format", "onnx", "--weights", "int8", "--int4-layers", "rnn.0"], "--int4-layers names the layers"),
        (["--format", "onnx", "--mode", "chunk"], "unknown export mode 'chunk'"),
    ],
)
def test_export_bad_options(tmp_path, tiny_model, args, fragment) -> None:
    user_error(run("export", "--model", str(tiny_model), "--out", str(tmp_path), *args), fragment)


def test_export_corrupt_model_file(tmp_path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    user_error(run("export", "--model", str(bad), "--format", "onnx", "--out", str(tmp_path)), "broken.pt")


def test_eval_runs_an_exported_artifact_in_its_runtime(small_corpus, tiny_model, tmp_path) -> None:
    """An fp32 ONNX streaming export scores what the torch model scores (same audio out,
    hop by hop in onnxruntime); a file that is not an artifact is one line."""
    import json

    proc = run("export", "--model", str(tiny_model), "--format", "onnx", "--mode", "stream", "--out", str(tmp_path / "x"),
               "--json")
    assert proc.returncode == 0, proc.stderr
    onnx_path = json.loads(proc.stdout)["artifacts"][0]["path"]
    got = {}
    for name, model in (("torch", str(tiny_model)), ("onnx", onnx_path)):
        out = tmp_path / f"{name}.json"
        proc = run("eval", "--model", model, "--data", str(small_corpus), "--limit", "2", "--json", str(out),
                   "--workers", "1", "--no-dnsmos")
        assert proc.returncode == 0, proc.stderr
        got[name] = json.loads(out.read_text())["summary"]["overall"]["mean"]
    assert got["onnx"]["enhanced_si_sdr"] == pytest.approx(got["torch"]["enhanced_si_sdr"], abs=0.01)
    assert got["onnx"]["enhanced_stoi"] == pytest.approx(got["torch"]["enhanced_stoi"], abs=1e-3)
    user_error(run("eval", "--model", str(tmp_path / "missing.onnx"), "--data", str(small_corpus)), "missing.onnx")
