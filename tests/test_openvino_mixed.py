"""OpenVINO per-layer 4/8-bit weights (issue 15): `--weights mixed` stores the MatMul layers a
`.hwc` holds on the 4-bit grid as i4, the rest at 8 bits, and weights on an integer grid exactly
(i4/i8 integers and the grid's f32 step written into the IR). Each IR is read back (the element
types of its weight constants, its weights as OpenVINO folds its decompression subgraphs), compiled
by the real CPU plugin (its runtime graph says what each FullyConnected reads) and run against the
model in torch."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed")
pytest.importorskip("nncf", reason="nncf is not installed")

from conftest import cli, user_error  # noqa: E402
from grid_models import GRIDDED, clustered  # noqa: E402
from hwcompress.export import grid_bits, openvino  # noqa: E402
from hwcompress.export.check import export_checked  # noqa: E402
from hwcompress.export.probe import stored_weights  # noqa: E402

CONVS = ("enc.0", "enc.1", "enc.2", "enc.3", "enc.4", "dec.0", "dec.1", "dec.2", "dec.3", "dec.4")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The GRIDDED tiny CRN (rnn.0 on the 4-bit grid, proj 16 free centroids, three convolutions on
    the 8-bit grid) exported int8 and mixed, each checked against torch at its tolerance."""
    model = clustered(*GRIDDED)
    out = tmp_path_factory.mktemp("ov")
    rows = {w: export_checked(model, "openvino", out / w, ["stream"], weights=w)[0] for w in ("int8", "mixed")}
    return model, rows


def test_mixed_stores_the_4_bit_grid_layers_in_4_bits_and_the_cpu_plugin_runs_them_so(exports) -> None:
    model, rows = exports
    path = rows["mixed"].path
    assert grid_bits(model) == {"rnn.0": 4, "enc.1": 8, "enc.2": 8, "dec.1": 8}
    widths = openvino.layer_widths(path, model)
    # proj: K=16 free centroids lie on no 4-bit grid, so it stays 8-bit (nncf's own int8)
    assert widths == {"rnn.0": "int4", "proj": "int8", **{c: "int8" for c in CONVS}}, widths
    assert stored_weights(path) == "int4" and rows["mixed"].parity["weights"] == "int4"
    # compiled by the CPU plugin: the 4-bit gate matrices are read as i4 by their FullyConnected
    # (not decompressed to f32 at compile time, which it does to every convolution's weights)
    ran = openvino.executed_widths(path)
    assert ran["rnn.layers.0.weight_ih_l0"] == ran["rnn.layers.0.weight_hh_l0"] == "i4", ran
    assert ran["proj.weight"] in ("u8", "i8"), ran
    assert all(ran[f"{c}.conv.weight"] == "f32" for c in CONVS), ran
    assert openvino.layer_widths(rows["int8"].path, model) == {layer: "int8" for layer in widths}


def test_weights_on_a_grid_are_the_hwc_weights_element_by_element(exports) -> None:
    model, rows = exports
    on_grid = {"rnn.layers.0.weight_ih_l0", "rnn.layers.0.weight_hh_l0", "enc.1.conv.weight", "enc.2.conv.weight",
               "dec.1.conv.weight"}
    for weights, row in rows.items():
        exact = openvino.exact_weights(row.path, model)
        assert set(exact) == {n for n, p in model.named_parameters() if p.dim() >= 2}
        assert {n for n, same in exact.items() if same} == on_grid, (weights, exact)
        # read back as OpenVINO folds the IR's decompression subgraphs: the stored step is one f32
        values = openvino.stored_weight_values(row.path)
        assert values["rnn.layers.0.weight_hh_l0"].shape == (64, 16)


def test_parity_against_the_hwc_in_torch_is_the_same_at_4_and_8_bits(exports) -> None:
    """Every grid weight is exact, so the 4-bit IR departs from torch only as the int8 one does (the
    plugin's dynamic quantization of activations), far above int4's 20 dB tolerance; nncf's own int4
    rounding of the same grid weights costs 10+ dB (benchmarks/weights_4bit.md)."""
    _, rows = exports
    snr = {w: r.parity["snr_db"] for w, r in rows.items()}
    assert all(r.parity["ok"] for r in rows.values()), snr
    assert snr["mixed"] > 40 and abs(snr["mixed"] - snr["int8"]) < 1.0, snr


def test_export_of_a_gridded_hwc_defaults_to_mixed_on_openvino(capsys, tmp_path) -> None:
    from hwcompress.compress.artifact import save_artifact
    from hwcompress.models.cost import layer_paths
    from hwcompress.models.io import load_model

    layers = [layer for layer in layer_paths(clustered({}))]
    all_grid = clustered({x: 16 if x == "rnn.0" else 64 for x in layers}, {x: 4 if x == "rnn.0" else 8 for x in layers})
    save_artifact(tmp_path / "grid.hwc", all_grid)
    proc = cli(capsys, "export", "--model", str(tmp_path / "grid.hwc"), "--format", "openvino", "--mode", "stream",
               "--out", str(tmp_path / "grid"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "weights: mixed (default for a .hwc on openvino" in proc.stderr, proc.stderr
    (row,) = json.loads(proc.stdout)["artifacts"]
    hwc = load_model(str(tmp_path / "grid.hwc"))
    assert openvino.layer_widths(row["path"], hwc)["rnn.0"] == "int4"
    exact = openvino.exact_weights(row["path"], hwc)
    assert exact and all(exact.values()), exact

    save_artifact(tmp_path / "free.hwc", clustered(*GRIDDED))  # proj: free centroids
    proc = cli(capsys, "export", "--model", str(tmp_path / "free.hwc"), "--format", "openvino", "--mode", "stream",
               "--out", str(tmp_path / "free"), "--no-check", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "weights: fp32 (default for a .hwc on openvino" in proc.stderr and "proj" in proc.stderr, proc.stderr


def test_4_bits_for_a_layer_kind_openvino_runs_in_float_is_one_line(capsys, tmp_path) -> None:
    """The CPU plugin runs compressed weights in MatMuls only (it decompresses convolution weights
    when compiling): 4 bits asked for a convolution is refused, naming the kind and what it offers."""
    out = tmp_path / "x"
    proc = cli(capsys, "export", "--model", "tiny-crn", "--format", "openvino", "--weights", "mixed", "--mode",
               "stream", "--int4-layers", "rnn.0,enc.1,enc.2", "--out", str(out))
    user_error(proc, "openvino", "Conv2d", "enc.1, enc.2", "LSTM, GRU, Linear", "int8")
    assert not out.exists() or not list(out.iterdir())
    user_error(cli(capsys, "export", "--model", "tiny-crn", "--format", "openvino", "--weights", "mixed", "--mode",
                   "stream", "--int4-layers", "rnn.7", "--out", str(out)), "rnn.7", "no such weight layer")
    # the layers it runs at 4 bits are honoured as named, on no grid too (dense: nncf's rounding)
    proc = cli(capsys, "export", "--model", "tiny-crn", "--format", "openvino", "--weights", "mixed", "--mode",
               "stream", "--int4-layers", "proj", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["artifacts"]
    from hwcompress.models.io import load_model

    widths = openvino.layer_widths(row["path"], load_model("tiny-crn"))
    assert widths["proj"] == "int4" and widths["rnn.0"] == "int8", widths


@pytest.mark.slow
def test_fit_mixed_on_openvino_ships_exact_4_bit_layers_and_reads_their_widths_back(small_corpus, tmp_path) -> None:
    """`fit --weights mixed` on x86-openvino (timed here): the layers clustered to K <= 16 whose kind
    the CPU plugin runs at 4 bits (the LSTM and the Linear) are i4 in the shipped IR, the convolutions
    8-bit, every codebook held on its width's grid and the IR's weights equal to the .hwc's. Uniform
    allocation gives every layer K=16, so which layers get 4 bits is fixed by their kinds alone."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hwcompress", "fit", "--target", "x86-openvino", "--model", "tiny-crn",
                           "--budget-ms", "50", "--weights", "mixed", "--allocation", "uniform", "--data",
                           str(small_corpus), "--out", str(tmp_path / "fit"), "--prune-steps", "4", "--cluster-steps",
                           "2", "--eval-items", "2", "--no-dnsmos", "--measure-runs", "30", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["results"][0]
    assert r["latency_source"] == "measured" and r["runtime"] == "openvino"
    assert r["layer_widths"] == {"rnn.0": "int4", "proj": "int4", **{c: "int8" for c in CONVS}}, r["layer_widths"]
    assert stored_weights(r["runtime_artifact"]["path"]) == "int4" and r["parity_ok"]
    from hwcompress.models.io import load_model

    hwc = load_model(str(tmp_path / "fit" / "model.hwc"), template=load_model("tiny-crn"))
    assert grid_bits(hwc) == {layer: 4 if layer in ("rnn.0", "proj") else 8 for layer in r["layer_widths"]}
    exact = openvino.exact_weights(r["runtime_artifact"]["path"], hwc)
    assert exact and all(exact.values()), exact
    ran = openvino.executed_widths(r["runtime_artifact"]["path"])
    assert ran["rnn.layers.0.weight_ih_l0"] == ran["proj.weight"] == "i4", ran


@pytest.mark.parametrize("fmt, weights", [("openvino", "int8"), ("onnx", "int4")])
def test_whole_utterance_graphs_with_the_cells_as_matmuls_run_a_fixed_t(capsys, tmp_path, fmt, weights) -> None:
    """The recurrent cells traced as matmuls (integer OpenVINO weights, onnxruntime 4-bit) unroll
    over the traced T: their whole-utterance graph fixes T (it had a dynamic T and failed at any T
    but the traced one, a traceback from `export --mode whole`), checked against torch at that T."""
    proc = cli(capsys, "export", "--model", "tiny-crn", "--format", fmt, "--weights", weights, "--mode", "whole",
               "--frames", "40", "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["artifacts"]
    assert "-whole-t40-" in row["path"] and row["parity"]["ok"] and row["parity"]["frames"] == 40, row
