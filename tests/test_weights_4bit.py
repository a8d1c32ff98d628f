"""4-bit runtime weights (issue 15) on two backends. LiteRT: `--weights int4` stores every
FULLY_CONNECTED weight (the recurrent gate matmuls and Linear layers, as litert-torch lowers
them) at 4 bits and the convolutions at 8. onnxruntime: every constant-weight MatMul (the
recurrent cells exported as matmuls) as MatMulNBits, the rest int8. `--weights mixed` gives 4
bits only to the layers whose codebooks lie on the 4-bit grid. Layers on a grid are stored
exactly: the files are read back (flatbuffer, ONNX graph), compared weight by weight with the
model, and run in the real runtimes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hwcompress.errors import HwcError

pytest.importorskip("ai_edge_litert", reason="LiteRT runtime is not installed")
pytest.importorskip("ai_edge_quantizer", reason="ai-edge-quantizer is not installed")
pytest.importorskip("onnx_ir", reason="onnx-ir (onnxruntime's 4-bit quantizer needs it) is not installed")

from hwcompress.export import distinct_weights, tflite  # noqa: E402
from hwcompress.export.check import export_checked  # noqa: E402
from hwcompress.export.probe import stored_weights  # noqa: E402
from hwcompress.models import zoo  # noqa: E402
from grid_models import GRIDDED, clustered  # noqa: E402

pytestmark = pytest.mark.slow  # each export runs the litert-torch converter (~10-40 s)


@pytest.fixture(scope="module")
def converter():
    from hwcompress.export.tflite import converter_python

    try:
        converter_python()
    except HwcError as exc:
        pytest.skip(str(exc))


def test_int4_stores_fully_connected_weights_in_4_bits_and_runs(converter, tmp_path) -> None:
    model = clustered({})
    (src,) = [r.path for r in export_checked(model, "litert", tmp_path / "fp32", ["stream"], check=False)]
    files = {}
    for weights in ("int8", "int4"):
        files[weights] = tmp_path / f"{weights}.tflite"
        tflite.quantize(src, files[weights], weights)
    ops = tflite.weight_ops(files["int4"])
    fc = [r for r in ops if r["op"] == "FULLY_CONNECTED"]
    assert fc and all(r["type"] == "INT4" for r in fc), ops
    assert all(r["type"] == "INT8" for r in ops if r["op"] != "FULLY_CONNECTED"), ops
    assert all(r["type"] == "INT8" for r in tflite.weight_ops(files["int8"]))
    assert stored_weights(files["int4"]) == "int4" and stored_weights(files["int8"]) == "int8"
    assert files["int4"].stat().st_size < files["int8"].stat().st_size
    # the whole export path: the file is run against torch at int4's stated tolerance
    (row,) = export_checked(model, "litert", tmp_path / "out", ["stream"], weights="int4")
    assert row.parity["ok"] and row.parity["weights"] == "int4", row.parity


def test_mixed_gives_4_bits_to_the_layers_on_the_4_bit_grid_and_stores_them_exactly(converter, tmp_path) -> None:
    from hwcompress.export import grid_bits
    from hwcompress.export._litert_convert import tensor_layers
    from hwcompress.models.cost import layer_paths

    model = clustered(*GRIDDED)
    ks = distinct_weights(model)
    assert ks["rnn.0"] <= 15 and ks["proj"] == 16 and ks["enc.1"] > 16
    assert grid_bits(model) == {"rnn.0": 4, "enc.1": 8, "enc.2": 8, "dec.1": 8}
    (fp32,) = export_checked(model, "litert", tmp_path / "fp32", ["stream"], check=False)
    (row,) = export_checked(model, "litert", tmp_path, ["stream"], weights="mixed")
    ops = tflite.weight_ops(row.path)
    layer_of = tensor_layers([r["output"] for r in ops], model, layer_paths(model))
    widths = {}
    for r in ops:
        widths.setdefault(layer_of.get(r["output"], "?"), set()).add(r["type"])
    assert widths["rnn.0"] == {"INT4"}, widths
    assert widths["proj"] == {"INT8"}, widths  # K=16 free centroids: on no 4-bit grid
    assert all(t == {"INT8"} for layer, t in widths.items() if layer != "rnn.0"), widths
    assert row.parity["ok"] and row.parity["weights"] == "int4", row.parity
    # weight by weight against the fp32 file of the same model: the layers on a grid exactly
    checked = {layer_of.get(op): same for op, same in tflite.exact_weights(row.path, fp32.path).items()}
    assert all(checked[layer] for layer in grid_bits(model) if layer in checked), checked
    assert {"rnn.0", "enc.1", "dec.1"} <= set(checked) and checked["proj"] is False, checked


def test_mixed_on_a_backend_without_it_is_one_line(capsys, tmp_path) -> None:
    from conftest import cli, user_error

    proc = cli(capsys, "export", "--model", "tiny-crn", "--format", "tflm", "--weights", "mixed", "--out",
               str(tmp_path / "x"), "--mode", "stream")
    user_error(proc, "mixed weights", "tflite-micro", "litert", "openvino")
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


def test_fit_mixed_ships_4_bit_layers_where_the_search_chose_k_up_to_16(converter, small_corpus, tmp_path) -> None:
    """`fit --weights mixed` on a LiteRT target: the recurrent and linear layers clustered to
    K <= 16 are 4-bit in the shipped file (read back from it), the convolutions 8-bit, every
    codebook held on its width's grid, and the file is checked against the .hwc at int4's tolerance. Uniform allocation gives every layer
    K=16, so which layers get 4 bits is fixed by their kinds alone."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hwcompress", "fit", "--target", "raspberrypi4", "--model", "tiny-crn",
                           "--budget-ms", "50", "--weights", "mixed", "--allocation", "uniform", "--data",
                           str(small_corpus), "--out", str(tmp_path / "fit"), "--prune-steps", "4", "--cluster-steps",
                           "2", "--eval-items", "2", "--no-dnsmos", "--no-emulate", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    r = report["results"][0]
    assert set(report["codebooks"].values()) == {16}
    assert r["layer_widths"]["rnn.0"] == "int4" and r["layer_widths"]["proj"] == "int4", r["layer_widths"]
    assert all(w == "int8" for layer, w in r["layer_widths"].items() if layer not in ("rnn.0", "proj")), r["layer_widths"]
    assert r["parity_vs_torch"]["ok"] and r["parity_vs_torch"]["weights"] == "int4"
    assert stored_weights(r["runtime_artifact"]["path"]) == "int4"
    assert "Runtime weight widths per layer" in (tmp_path / "fit" / "report.md").read_text()
    from hwcompress.export import grid_bits
    from hwcompress.models.io import load_model

    bits = grid_bits(load_model(str(tmp_path / "fit" / "model.hwc"), template=load_model("tiny-crn")))
    assert bits == {layer: 4 if layer in ("rnn.0", "proj") else 8 for layer in r["layer_widths"]}, bits


def _onnx_ops(path) -> dict[str, int]:
    import onnx

    ops: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def test_onnxruntime_int4_stores_the_matmuls_in_4_bits_and_runs(tmp_path) -> None:
    from hwcompress.export.onnx import layer_widths

    model = zoo.build("rnn", {"cell": "lstm", "hidden": [256, 256]}).eval()
    (i8,) = export_checked(model, "onnxruntime", tmp_path, ["stream"], weights="int8")
    (i4,) = export_checked(model, "onnxruntime", tmp_path, ["stream"], weights="int4")
    ops = _onnx_ops(i4.path)
    # both LSTMs' gate matmuls (input and recurrent, per layer) and the output Linear
    assert ops.get("MatMulNBits") == 5 and "DynamicQuantizeLSTM" not in ops and "LSTM" not in ops, ops
    assert stored_weights(i4.path) == "int4" and stored_weights(i8.path) == "int8"
    assert layer_widths(i4.path) == {layer: "int4" for layer in ("rnn.0", "rnn.1", "out")}
    assert i4.bytes < 0.6 * i8.bytes, (i4.bytes, i8.bytes)
    assert i4.parity["ok"] and i4.parity["weights"] == "int4", i4.parity


def test_onnxruntime_mixed_follows_the_grid_and_stores_the_weights_exactly(tmp_path) -> None:
    from hwcompress.export.onnx import exact_weights, layer_widths

    model = clustered(*GRIDDED)
    (row,) = export_checked(model, "onnxruntime", tmp_path, ["stream"], weights="mixed")
    ops = _onnx_ops(row.path)
    assert ops.get("MatMulNBits") == 2, ops  # rnn.0's input and recurrent matmuls; proj (no grid) stays int8
    assert layer_widths(row.path) == {"rnn.0": "int4"}
    assert row.parity["ok"] and row.parity["weights"] == "int4", row.parity
    exact = exact_weights(row.path, model)
    on_grid = [n for n in exact if n.split(".")[0] + "." + n.split(".")[1] in ("enc.1", "enc.2", "dec.1")
               or n.startswith("rnn.layers.0")]
    assert on_grid and all(exact[n] for n in on_grid), exact
    assert not exact["proj.weight"], exact  # free centroids: the runtime's own int8 rounding
    (i8,) = export_checked(model, "onnxruntime", tmp_path / "int8", ["stream"], weights="int8")
    exact8 = exact_weights(i8.path, model)
    assert all(exact8[n] for n in on_grid) and not exact8["proj.weight"], exact8


def test_fit_mixed_on_onnxruntime_is_measured_with_its_4_bit_layers(small_corpus, tmp_path) -> None:
    """generic-onnx is timed here: the allocation probes and the verification measure the
    mixed file itself (4-bit matmuls where the search chose K <= 16)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hwcompress", "fit", "--target", "generic-onnx", "--model", "tiny-crn",
                           "--budget-ms", "50", "--weights", "mixed", "--allocation", "uniform", "--data",
                           str(small_corpus), "--out", str(tmp_path / "fit"), "--prune-steps", "4", "--cluster-steps",
                           "2", "--eval-items", "2", "--no-dnsmos", "--measure-runs", "30", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["results"][0]
    assert r["latency_source"] == "measured" and r["runtime"] == "onnxruntime"
    assert r["layer_widths"]["rnn.0"] == "int4" and r["layer_widths"]["proj"] == "int4", r["layer_widths"]
    assert r["layer_widths"]["enc.1"] == "int8"
    assert stored_weights(r["runtime_artifact"]["path"]) == "int4" and r["parity_ok"]
    # the .hwc holds each codebook on its width's grid, and the shipped file holds those weights
    from hwcompress.export import grid_bits
    from hwcompress.export.onnx import exact_weights
    from hwcompress.models.io import load_model

    hwc = load_model(str(tmp_path / "fit" / "model.hwc"), template=load_model("tiny-crn"))
    bits = grid_bits(hwc)
    assert bits["rnn.0"] == 4 and bits["proj"] == 4 and all(bits[f"enc.{i}"] == 8 for i in range(5)), bits
    exact = exact_weights(r["runtime_artifact"]["path"], hwc)
    assert all(exact.values()), exact  # ConvTranspose too: int8 behind a DequantizeLinear


def test_onnxruntime_int8_stores_gru_and_transposed_conv_weights_in_8_bits(tmp_path) -> None:
    """quantize_dynamic has no integer GRU or ConvTranspose: their weights are stored as int8
    behind a DequantizeLinear (float compute), exactly where they lie on the 8-bit grid."""
    from hwcompress.compress.cluster import cluster_tensor, snap_to_grid
    from hwcompress.export.onnx import exact_weights

    torch.manual_seed(0)
    model = zoo.build("rnn", {"cell": "gru", "hidden": [256]}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("rnn.layers.0.weight_ih"):
                p.copy_(snap_to_grid(cluster_tensor(p, 64), 8).dense())
    (fp32,) = export_checked(model, "onnxruntime", tmp_path / "fp32", ["stream"], check=False)
    (i8,) = export_checked(model, "onnxruntime", tmp_path / "int8", ["stream"], weights="int8")
    ops = _onnx_ops(i8.path)
    assert ops.get("GRU") == 1 and ops.get("DequantizeLinear") == 2, ops  # W and R of the GRU
    assert stored_weights(i8.path) == "int8"
    assert i8.bytes < 0.3 * fp32.bytes, (i8.bytes, fp32.bytes)
    assert i8.parity["ok"], i8.parity
    exact = exact_weights(i8.path, model)
    assert exact["rnn.layers.0.weight_ih_l0"] and not exact["rnn.layers.0.weight_hh_l0"], exact


def test_litert_weights_stored_by_offset_are_written_exactly_too(converter, tmp_path) -> None:
    """ai-edge-quantizer stores larger buffers after the flatbuffer (offset/size, not inline
    data): the grid rewrite and the readers must reach those too (the default CRN's LSTM weights
    are stored so). Two 256-unit LSTMs on the 4-bit grid, exported int4."""
    from ai_edge_litert import schema_py_generated as fb

    from hwcompress.compress.cluster import cluster_tensor, snap_to_grid

    torch.manual_seed(0)
    model = zoo.build("rnn", {"cell": "lstm", "hidden": [256, 256]}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(snap_to_grid(cluster_tensor(p, 16), 4).dense())
    (fp32,) = export_checked(model, "litert", tmp_path / "fp32", ["stream"], check=False)
    (i4,) = export_checked(model, "litert", tmp_path / "int4", ["stream"], weights="int4")
    m = fb.Model.GetRootAsModel(open(i4.path, "rb").read(), 0)
    assert any(m.Buffers(i).Offset() > 1 for i in range(m.BuffersLength())), "no buffer stored by offset here"
    exact = tflite.exact_weights(i4.path, fp32.path)
    assert len(exact) == 5 and all(exact.values()), exact  # 2 x (input, recurrent) gate matmuls + the Linear
    assert i4.parity["ok"], i4.parity


def test_export_of_a_hwc_defaults_to_the_narrowest_exact_widths(capsys, tmp_path) -> None:
    """`export --model X.hwc` without --weights: mixed when every layer lies on an integer grid
    (rnn.0 then 4-bit, every weight exact), fp32 when one layer has free centroids (int8 would
    round it), said on stderr; --weights still chooses."""
    from hwcompress.compress.artifact import save_artifact
    from hwcompress.export.onnx import exact_weights, layer_widths
    from hwcompress.models.cost import layer_paths
    from hwcompress.models.io import load_model
    from conftest import cli

    layers = list(layer_paths(zoo.build(*zoo.PRESETS["tiny-crn"])))
    all_grid = clustered({x: 16 if x == "rnn.0" else 64 for x in layers},
                          {x: 4 if x == "rnn.0" else 8 for x in layers})
    save_artifact(tmp_path / "grid.hwc", all_grid)
    proc = cli(capsys, "export", "--model", str(tmp_path / "grid.hwc"), "--format", "onnx", "--mode", "stream",
               "--out", str(tmp_path / "grid"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "weights: mixed (default for a .hwc" in proc.stderr, proc.stderr
    path = next((tmp_path / "grid").glob("*.onnx"))
    assert layer_widths(path) == {"rnn.0": "int4"}
    exact = exact_weights(path, load_model(str(tmp_path / "grid.hwc")))
    assert exact and all(exact.values()), exact

    free = clustered(*GRIDDED)  # proj: 16 free centroids, on no grid
    save_artifact(tmp_path / "free.hwc", free)
    proc = cli(capsys, "export", "--model", str(tmp_path / "free.hwc"), "--format", "onnx", "--mode", "stream",
               "--out", str(tmp_path / "free"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "weights: fp32 (default for a .hwc" in proc.stderr and "proj" in proc.stderr, proc.stderr
    assert {r["weights"] for r in json.loads(proc.stdout)["artifacts"]} == {"fp32"}
    proc = cli(capsys, "export", "--model", str(tmp_path / "free.hwc"), "--format", "onnx", "--mode", "stream",
               "--weights", "int8", "--out", str(tmp_path / "free8"), "--json")
    assert proc.returncode == 0 and "default for a .hwc" not in proc.stderr, proc.stderr
