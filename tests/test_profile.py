"""hwcompress.profile.measure and `hwcompress profile`: measured vs predicted labels, the
fields every profile carries, per-layer times, and agreement with OpenVINO's benchmark_app."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwcompress.errors import HwcError
from hwcompress.models.io import load_model
from hwcompress.profile.latency_model import predict_latency
from hwcompress.profile.measure import (
    benchmark_app_latency,
    host_arch,
    measure_local,
    parse_benchmark_app,
)
from hwcompress.targets import load_target

x86_only = pytest.mark.skipif(host_arch() != "x86_64", reason="the measured targets here are x86_64")
FAST_RUNS = 20


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, dict]:
    """One short measurement per local runtime, shared by the field checks."""
    if host_arch() != "x86_64":
        pytest.skip("the measured targets here are x86_64")
    out = {}
    for target in ("x86-openvino", "generic-onnx"):
        out[target] = measure_local("tiny-crn", target, runs=FAST_RUNS, warmup=5,
                                    out_dir=tmp_path_factory.mktemp(target), top=5)
    return out


@x86_only
@pytest.mark.parametrize("target,runtime,dist", [("x86-openvino", "openvino", "openvino"),
                                                 ("generic-onnx", "onnxruntime", "onnxruntime")])
def test_measured_fields(measured, target, runtime, dist) -> None:
    r = measured[target]
    tg = load_target(target)
    assert r["latency_source"] == "measured"
    assert r["runtime"] == runtime and r["runtime_version"] == importlib.metadata.version(dist)
    assert r["threads"] == tg.threads
    assert r["runs"] == FAST_RUNS
    assert r["device"]["arch"] == "x86_64" and r["device"]["cpu"]
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
    assert r["mean_ms"] > 0 and r["latency_ms"] == r["median_ms"]
    assert r["peak_memory_bytes"] > 0 and r["peak_memory_method"]
    assert r["predicted_ms"] > 0
    json.dumps(r)  # the CLI prints it as JSON


@x86_only
def test_artifact_size_is_bytes_on_disk(measured) -> None:
    ov_art = measured["x86-openvino"]["artifact"]
    files = [Path(f) for f in ov_art["files"]]
    assert {f.suffix for f in files} == {".xml", ".bin"}  # the weights live in the .bin
    assert ov_art["bytes"] == sum(f.stat().st_size for f in files)
    ort_art = measured["generic-onnx"]["artifact"]
    assert ort_art["bytes"] == Path(ort_art["path"]).stat().st_size
    assert ov_art["kept"] and ort_art["kept"]


@x86_only
@pytest.mark.parametrize("target", ["x86-openvino", "generic-onnx"])
def test_per_layer_times(measured, target) -> None:
    r = measured[target]
    assert r["layers"], r["layers_source"]
    assert len(r["layers"]) <= 5 and r["layers_count"] >= len(r["layers"])
    assert all(layer["name"] and layer["ms"] >= 0 for layer in r["layers"])
    ms = [layer["ms"] for layer in r["layers"]]
    assert ms == sorted(ms, reverse=True) and ms[0] > 0
    assert r["layers_total_ms"] >= sum(ms) - 1e-9


@pytest.mark.parametrize("target", ["raspberrypi4", "cortex-m7"])
def test_other_arch_is_predicted_not_measured(target) -> None:
    net = load_model("tiny-crn")
    tg = load_target(target)
    r = measure_local(net, tg, runs=FAST_RUNS)
    assert r["latency_source"] == "predicted"
    assert tg.arch in r["reason"] and "not this machine" in r["reason"]
    assert r["latency_ms"] == pytest.approx(predict_latency(net, tg).latency_ms)
    assert r["runs"] == 0 and r["p90_ms"] is None and r["peak_memory_bytes"] is None
    assert r["device"]["arch"] == tg.arch  # the number is about the device, not this host
    assert r["layers"] and "predicted" in r["layers_source"]


@x86_only
def test_backend_override_measures_that_runtime() -> None:
    r = measure_local("tiny-gru", "x86-openvino", backend="ort", runs=FAST_RUNS, warmup=2, top=3)
    assert r["runtime"] == "onnxruntime" and r["target_runtime"] == "openvino"
    assert r["latency_source"] == "measured" and r["threads"] == 2


def test_sessions_load_without_torch(tmp_path) -> None:
    """The measurement child (one fresh process per timed artifact) must not pay torch's
    ~1 s import: loading and running a session of every runtime leaves torch unimported."""
    from hwcompress.export import available_backends, get_backend
    from hwcompress.models.io import load_model

    paths = {name: get_backend(name).export(load_model("tiny-gru"), tmp_path / name, "stream")
             for name in available_backends()}
    code = ("import sys, json, numpy as np\n"
            "from hwcompress.export import get_backend\n"
            "from hwcompress.profile import measure\n"
            "for name, path in json.loads(sys.argv[1]).items():\n"
            "    s = get_backend(name).load(path)\n"
            "    s.run(np.zeros((1, 1, 161, 2), np.float32))\n"
            "print(sorted(m for m in ('torch', 'litert_torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code, json.dumps({k: str(v) for k, v in paths.items()})],
                         capture_output=True, text=True, check=True)
    assert len(paths) >= 2 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_errors_are_one_line_hwc_errors() -> None:
    with pytest.raises(HwcError, match="unknown target"):
        measure_local("tiny-crn", "no-such-target")
    with pytest.raises(HwcError, match="unknown backend"):
        measure_local("tiny-crn", "generic-onnx", backend="tensorrt")
    with pytest.raises(HwcError, match="runs"):
        measure_local("tiny-crn", "generic-onnx", runs=0)


def test_parse_benchmark_app_report() -> None:
    text = """[ INFO ]   INFERENCE_NUM_THREADS: 2
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'float32'>
[ INFO ] First inference took 7.36 ms
[ INFO ] Count:            200 iterations
[ INFO ] Latency:
[ INFO ]    Median:        8.16 ms
[ INFO ]    Average:       8.36 ms
[ INFO ]    Min:           3.48 ms
[ INFO ]    Max:           16.13 ms
"""
    p = parse_benchmark_app(text)
    assert p["median_ms"] == 8.16 and p["min_ms"] == 3.48 and p["max_ms"] == 16.13
    assert p["iterations"] == 200 and p["threads_reported"] == 2
    # a later line that merely mentions latency (stderr is appended after stdout) must not hide the report
    p = parse_benchmark_app(text + "[ WARNING ] Latency: hint ignored for this device\n")
    assert p["median_ms"] == 8.16
    # under 1 ms the report is in microseconds (seen with OpenVINO 2026.4 on int8/int4 IRs)
    fast = text.replace("8.16 ms", "842.11 us").replace("3.48 ms", "430.64 us")
    p = parse_benchmark_app(fast)
    assert p["median_ms"] == pytest.approx(0.84211) and p["min_ms"] == pytest.approx(0.43064)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=600)


@x86_only
def test_cli_json_parses() -> None:
    proc = _cli("profile", "--target", "generic-onnx", "--model", "tiny-gru", "--runs", str(FAST_RUNS), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["latency_source"] == "measured" and r["model"] == "tiny-gru" and r["median_ms"] > 0


def test_cli_table_and_errors() -> None:
    proc = _cli("profile", "--target", "raspberrypi4", "--model", "tiny-crn")
    assert proc.returncode == 0, proc.stderr
    assert "PREDICTED" in proc.stdout and "litert" in proc.stdout
    proc = _cli("profile", "--target", "no-such-target", "--model", "tiny-crn")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown target")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_activations_the_target_lacks_are_one_line_exit_2() -> None:
    for target, asked in (("raspberrypi4", "bf16"), ("generic-onnx", "f16")):
        proc = _cli("profile", "--target", target, "--model", "tiny-crn", "--activations", asked)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"target {target} runs f32 activations, not '{asked}'" in proc.stderr


@x86_only
def test_openvino_runs_bf16_activations_when_asked_and_only_then(tmp_path) -> None:
    """The CPU plugin's own default on an AVX512-BF16 host is bf16: a session runs f32 unless
    bf16 is asked for, and then really compiles bf16 (or, on a CPU without it, refuses in one
    line instead of falling back silently). The timed run reports the precision it ran."""
    import openvino as ov

    from hwcompress.export import get_backend

    be = get_backend("openvino")
    path = be.export(load_model("tiny-crn"), tmp_path, "stream")
    assert str(be.load(path).compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(HwcError, match="cannot run bf16 activations"):
            be.load(path, precision="bf16")
        return
    session = be.load(path, precision="bf16")
    assert session.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    from hwcompress.export.check import check_parity

    f32 = check_parity(load_model("tiny-crn"), path, session=be.load(path))
    bf16 = check_parity(load_model("tiny-crn"), path, session=session, min_snr_db=30)
    assert bf16.ok and bf16.snr_db < f32.snr_db  # really another arithmetic, close to f32
    r = measure_local("tiny-crn", "x86-openvino", runs=FAST_RUNS, top=1, activations="bf16")
    assert r["activations"] == "bf16" and r["latency_source"] == "measured"
    with pytest.raises(HwcError, match="onnxruntime runs f32 activations"):
        get_backend("onnxruntime").load(path.with_suffix(".onnx"), precision="bf16")


@pytest.mark.slow
def test_predicted_target_can_still_report_artifact_size(tmp_path) -> None:
    from hwcompress.export.tflite import converter_python

    try:
        converter_python()
    except HwcError as e:
        pytest.skip(str(e))
    r = measure_local("tiny-crn", "raspberrypi4", out_dir=tmp_path, export_when_predicted=True)
    assert r["latency_source"] == "predicted"
    assert r["artifact"]["bytes"] == Path(r["artifact"]["path"]).stat().st_size > 0
    assert r["fits_storage"] is True


@x86_only
@pytest.mark.slow
def test_agrees_with_openvino_benchmark_app(tmp_path) -> None:
    """Our timing loop vs benchmark_app on the same IR, full-size untrained CRN, 2 threads.

    Rounds alternate ours / benchmark_app and the ratio is taken per round, so slow
    drifts in host load (this test may share the CPU) hit both sides of a ratio alike;
    the median of the round ratios then drops the rounds that bursts hit (five rounds: CI once
    saw two of three rounds hit, 1.21 and 1.24 around 0.69).
    """
    net = load_model("crn")
    ratios, runtime_ratios, pairs = [], [], []
    for _ in range(5):
        ours = measure_local(net, "x86-openvino", runs=200, warmup=30, out_dir=tmp_path, top=1)
        theirs = benchmark_app_latency(ours["artifact"]["path"], threads=2, niter=200)
        assert theirs["threads_reported"] == 2 and "float32" in theirs["precision_reported"]
        pairs.append((ours["median_ms"], ours["runtime_median_ms"], theirs["median_ms"]))
        ratios.append(ours["median_ms"] / theirs["median_ms"])
        runtime_ratios.append(ours["runtime_median_ms"] / theirs["median_ms"])
    # benchmark_app reports InferRequest.latency, which our session records for the same
    # hops it wall-times (runtime_median_ms); the headline adds the Python call and copies
    print(f"\nours/benchmark_app median ratios {ratios}; runtime's own/benchmark_app {runtime_ratios}; "
          f"ms (Session.run, InferRequest.latency, benchmark_app) {pairs}; load {os.getloadavg()}")
    # 1.25: this DRAM-bound model (74 MB of fp32 weights per hop) times 2.8-4.9 ms on either side
    # from round to round on the 2-core VM; CI once saw the median round at 0.82 with the
    # state-in-place hop (InferRequest.latency 3.6 vs benchmark_app 4.4 ms), this machine 1.10
    # in the next run. A harness regression (the dict-infer path cost 50-80% here) still fails
    assert 1 / 1.25 <= sorted(runtime_ratios)[2] <= 1.25, (runtime_ratios, ratios, pairs)
    # the headline adds the Python call and the copies to the same hops (0.1-0.3 ms of 2.5-4.5):
    # CI once saw its median round at 1.27 while the runtime's own median round was within 1.25
    assert 1 / 1.25 <= sorted(ratios)[2] <= 1.35, (runtime_ratios, ratios, pairs)


@x86_only
@pytest.mark.slow
def test_fit_with_bf16_activations_times_checks_and_scores_the_file_at_bf16(small_corpus, tmp_path) -> None:
    """`fit --activations bf16` on x86-openvino: the timed runs, the parity check and the quality
    rows are of the shipped IR run with bf16 activations (or one line, exit 2, on a CPU without
    bf16); a target that lacks the precision refuses before any work."""
    import openvino as ov

    args = ["fit", "--target", "x86-openvino", "--model", "tiny-crn", "--budget-ms", "50", "--allocation", "uniform",
            "--data", str(small_corpus), "--prune-steps", "2", "--cluster-steps", "2", "--eval-items", "2",
            "--no-dnsmos", "--measure-runs", "30", "--activations", "bf16", "--json"]
    proc = _cli(*args, "--out", str(tmp_path / "fit"))
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert proc.returncode == 2 and "cannot run bf16 activations" in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["results"][0]
    assert r["activations"] == "bf16" and r["latency_source"] == "measured"
    assert r["parity_vs_torch"]["activations"] == "bf16" and r["parity_vs_torch"]["ok"]
    assert r["quality"]["scored"] == "the runtime artifact in openvino with bf16 activations"
    assert "bf16 activations" in (tmp_path / "fit" / "report.md").read_text()
    proc = _cli(*[a if a != "x86-openvino" else "generic-onnx" for a in args], "--out", str(tmp_path / "onnx"))
    assert proc.returncode == 2 and "target generic-onnx runs f32 activations, not 'bf16'" in proc.stderr
    assert not (tmp_path / "onnx" / "calibration.json").exists()


def test_eval_activations_need_an_artifact_and_a_runtime_that_has_them(tmp_path) -> None:
    proc = _cli("eval", "--model", "tiny-crn", "--activations", "bf16", "--limit", "1")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--activations runs an exported artifact" in proc.stderr
    from hwcompress.export import get_backend

    onnx = get_backend("onnxruntime").export(load_model("tiny-crn"), tmp_path, "stream")
    proc = _cli("eval", "--model", str(onnx), "--activations", "bf16", "--limit", "1")
    assert proc.returncode == 2 and "onnxruntime runs f32 activations, not 'bf16'" in proc.stderr, proc.stderr
