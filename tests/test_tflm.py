"""TFLite Micro backend: a tiny streaming model exported fully integer (16x8) and run hop by hop in
the real TFLM Python interpreter (PyPI tflite-micro), against torch.

Tolerance: MIN_SNR_DB = 35 dB of the TFLM output against torch over 50 speech-like hops with the
state carried (`check.stream_parity`); measured 43.5 dB on tiny-gru (int8 weights, int16
activations and state, the log-power features in float). Calibration uses other frames (seed 1)
than the check (seed 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwcompress.errors import HwcError
from hwcompress.export import canonical_name, get_backend
from hwcompress.export.check import stream_parity
from hwcompress.export.probe import speech_like_frames
from hwcompress.models.io import load_model
from hwcompress.models.zoo import RnnMasker

pytest.importorskip("tflite_micro", reason="TFLite Micro runtime (tflite-micro) is not installed")
pytest.importorskip("ai_edge_quantizer", reason="ai-edge-quantizer is not installed")

MIN_SNR_DB = 35.0


def _require_converter() -> None:
    from hwcompress.export.tflite import converter_python

    try:
        converter_python()
    except HwcError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    _require_converter()
    torch.manual_seed(0)
    model = load_model("tiny-gru").eval()
    path = get_backend("tflm").export(model, tmp_path_factory.mktemp("tflm"))
    return model, path, get_backend("tflite-micro").load(path)


def test_names_and_aliases() -> None:
    assert canonical_name("tflm") == canonical_name("TFLite-Micro") == "tflite-micro"
    assert get_backend("tflm").name == "tflite-micro"


def test_stream_export_is_16x8_and_runs_in_tflm(exported) -> None:
    from hwcompress.export.tflm import float_ops, op_names

    model, path, session = exported
    data = path.read_bytes()
    assert session.frames == 1 and session.state_shapes == [tuple(s) for s in model.state_shapes()]
    ops = op_names(data)
    fcs = [types for name, types in ops if name == "FULLY_CONNECTED"]
    assert fcs and all(set(types) == {"INT16"} for types in fcs), fcs  # int16 activations in and out
    # the log-power features stay float (int16 cannot hold a power spectrum); nothing else does
    assert set(float_ops(data)) <= {"MUL", "SUM", "ADD", "LOG"}, float_ops(data)
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    sub = m.subgraphs[0]
    fc_code = [i for i, c in enumerate(m.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode)
               == fb.BuiltinOperator.FULLY_CONNECTED]
    weights = {sub.tensors[op.inputs[1]].type for op in sub.operators if op.opcodeIndex in fc_code}
    assert weights == {fb.TensorType.INT8}
    assert 0 < path.stat().st_size < 64 * 1024


def test_tflm_parity_vs_torch_with_carried_state(exported) -> None:
    model, _, session = exported
    figures = stream_parity(model, session, 50)
    assert figures["snr_db"] >= MIN_SNR_DB, figures
    # the state really is carried: dropping it each hop gives another output
    spec = speech_like_frames(20)
    carried, state = [], None
    for frame in spec:
        out, state = session.run(frame, state)
        carried.append(out)
    fresh = [session.run(frame, None)[0] for frame in spec]
    assert np.abs(np.concatenate(carried)[5:] - np.concatenate(fresh)[5:]).max() > 1e-3


def test_arena_is_measured(exported) -> None:
    from hwcompress.export.tflm import _runs_in

    _, path, session = exported
    data = path.read_bytes()
    assert 0 < session.arena_recorded_bytes <= session.arena_bytes < 512 * 1024
    assert _runs_in(data, session.arena_bytes)
    assert not _runs_in(data, session.arena_bytes - 64)  # the smallest it runs in, to 16 bytes


def test_whole_mode_and_float_weights_are_refused(tmp_path) -> None:
    model = load_model("tiny-gru")
    with pytest.raises(HwcError, match="streaming graphs only") as exc:
        get_backend("tflm").export(model, tmp_path, "whole")
    assert "\n" not in str(exc.value)
    with pytest.raises(HwcError, match="int8 weights with int16 activations"):
        get_backend("tflm").export(model, tmp_path, "stream", weights="fp32")


class _GeluMasker(RnnMasker):
    """A GELU before the output layer: litert-torch emits a GELU op, which TFLM has no kernel for."""

    def forward(self, spec, state):
        h, state = self.rnn(self.features(spec), state)
        mask = torch.sigmoid(self.out(torch.nn.functional.gelu(h)))
        return spec * mask.unsqueeze(-1), state


def test_op_tflm_lacks_is_one_line_naming_it(tmp_path) -> None:
    _require_converter()
    torch.manual_seed(0)
    with pytest.raises(HwcError) as exc:
        get_backend("tflm").export(_GeluMasker(hidden=[8], cell="gru").eval(), tmp_path)
    message = str(exc.value)
    assert "no kernel for op GELU" in message and "\n" not in message, message
    assert not list(tmp_path.glob("*.tflite"))  # nothing half-made is published


# ---------------------------------------------------------------- LUT compression of clustered layers


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """tiny-gru with its GRU input weights clustered to K=4 and the other weight matrices to K=16,
    exported with and without LUT compression."""
    from hwcompress.compress.cluster import apply_clustering, cluster_model

    _require_converter()
    torch.manual_seed(0)
    model = load_model("tiny-gru").eval()
    apply_clustering(model, cluster_model(model, {"rnn.layers.0.weight_ih_l0": 4, "*": 16}))
    be = get_backend("tflm")
    lut = be.export(model, tmp_path_factory.mktemp("tflm-lut"))
    plain = be.export(model, tmp_path_factory.mktemp("tflm-plain"), lut=False)
    return model, lut, plain


def test_dense_layers_are_not_lut_compressed(exported) -> None:
    assert exported[2].lut_layers == []


def test_lut_index_bits_follow_k(clustered) -> None:
    _, lut, plain = clustered
    session = get_backend("tflm").load(lut)
    bits = {tuple(row["shape"]): row["index_bits"] for row in session.lut_layers}
    assert bits == {(48, 161): 2, (48, 16): 4, (161, 16): 4}, session.lut_layers  # ceil(log2 K)
    assert lut.stat().st_size < plain.stat().st_size


def test_lut_decodes_back_and_the_interpreter_runs_it_exactly(clustered) -> None:
    from hwcompress.export.tflm import lut_decode
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    model, lut, plain = clustered
    decoded = lut_decode(lut.read_bytes())
    tensors = {t.name: t for t in model_editor.read(plain.read_bytes()).subgraphs[0].tensors}
    assert len(decoded) == 3
    for name, values in decoded.items():
        assert np.array_equal(values, tensors[name].array), name
    # TFLM decodes in its DECODE kernels: outputs identical to the uncompressed file, hop by hop
    s_lut, s_plain = get_backend("tflm").load(lut), get_backend("tflm").load(plain)
    state_a = state_b = None
    for frame in speech_like_frames(20):
        a, state_a = s_lut.run(frame, state_a)
        b, state_b = s_plain.run(frame, state_b)
        assert np.array_equal(a, b)
    assert stream_parity(model, s_lut, 50)["snr_db"] >= MIN_SNR_DB
    # the decoded weights live in the arena: measured, it grows
    assert s_lut.arena_bytes > s_plain.arena_bytes


def test_lut_wider_than_7_bits_is_one_line(clustered) -> None:
    from hwcompress.export.tflm import LutLayer, lut_compress

    _, _, plain = clustered
    row = LutLayer(tensor="w", op="FULLY_CONNECTED", shape=(4, 4), axis=None, values=200, index_bits=8,
                   bytes_before=16, bytes_after=8)
    with pytest.raises(HwcError, match="need 8-bit indices, TFLite Micro's LUT decoder takes at most 7") as exc:
        lut_compress(plain.read_bytes(), [row])
    assert "\n" not in str(exc.value)


class _DivMasker(RnnMasker):
    """A division in the mask: TFLM's DIV kernel has no int16 form, so that op must stay float."""

    def forward(self, spec, state):
        h, state = self.rnn(self.features(spec), state)
        z = torch.sigmoid(self.out(h))
        return spec * (z / (1.0 + z)).unsqueeze(-1), state


def test_op_without_int16_kernel_stays_float(tmp_path) -> None:
    _require_converter()
    torch.manual_seed(0)
    model = _DivMasker(hidden=[8], cell="gru").eval()
    session = get_backend("tflm").load(get_backend("tflm").export(model, tmp_path))
    assert "DIV" in session.float_ops
    assert stream_parity(model, session, 50)["snr_db"] >= MIN_SNR_DB


def test_cli_export_checks_parity_in_tflm(tmp_path, capsys) -> None:
    import json

    from conftest import cli

    _require_converter()
    proc = cli(capsys, "export", "--model", "tiny-gru", "--format", "tflm", "--weights", "int8", "--mode", "stream",
               "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["artifacts"]
    assert row["backend"] == row["parity"]["backend"] == "tflite-micro"
    assert row["parity"]["ok"] and row["parity"]["snr_db"] >= MIN_SNR_DB


def test_crn_runs_in_tflm_with_select_as_select_v2(tmp_path) -> None:
    """nn.ELU becomes SELECT in litert-torch's output, which TFLM lacks: exported as SELECT_V2."""
    from hwcompress.export.tflm import op_names

    _require_converter()
    torch.manual_seed(0)
    model = load_model("tiny-crn").eval()
    path = get_backend("tflm").export(model, tmp_path)
    names = {name for name, _ in op_names(path.read_bytes())}
    assert "SELECT_V2" in names and "SELECT" not in names
    figures = stream_parity(model, get_backend("tflm").load(path), 50)
    assert figures["snr_db"] >= MIN_SNR_DB, figures


def test_weights_over_256_kib_survive_the_rewrites(tmp_path) -> None:
    """ai-edge-quantizer stores a model's constants after the flatbuffer once they pass 256 KiB;
    the SELECT_V2 and LUT rewrites read inline buffers only and once dropped every weight (TFLM
    then aborted on the default CRN). Every int8 weight must reach the file, and the output torch's."""
    from hwcompress.export.tflm import _read_model, _schema

    _require_converter()
    torch.manual_seed(0)
    model = RnnMasker(hidden=[320], cell="gru").eval()
    assert sum(p.numel() for p in model.parameters()) > 256 * 1024
    path = get_backend("tflm").export(model, tmp_path)
    fb, m = _schema(), _read_model(path.read_bytes())
    weights = [t for t in m.subgraphs[0].tensors if t.type == fb.TensorType.INT8 and t.shape is not None
               and int(np.prod(t.shape)) >= 320 * 161]
    assert weights and all(m.buffers[t.buffer].data is not None
                           and len(m.buffers[t.buffer].data) == int(np.prod(t.shape)) for t in weights)
    assert path.stat().st_size > 256 * 1024
    assert stream_parity(model, get_backend("tflm").load(path), 50)["snr_db"] >= MIN_SNR_DB


def _loud_crn() -> torch.nn.Module:
    """tiny-crn whose ELU inputs reach about 21 on speech-like hops: exp(x) of ELU over the whole tensor
    spans more than int16 can hold (the default CRN's reach ~49)."""
    torch.manual_seed(0)
    model = load_model("tiny-crn").eval()
    with torch.no_grad():
        for conv in [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][:2]:
            conv.weight.mul_(3.0)
    return model


def test_elu_is_exported_bounded_and_overflowing_rescales_are_caught(tmp_path, monkeypatch) -> None:
    """The ELU's EXP sees min(x, 0) only (bounded_elu), so nothing overflows and parity holds; with
    the plain lowering, requant_overflows finds the SUB whose rescale TFLM would abort on (it
    cannot be caught once in the interpreter), and the export leaves it float instead of crashing."""
    import contextlib

    from hwcompress.export import tflm
    from hwcompress.export.tflite import BACKEND as LITERT

    _require_converter()
    model = _loud_crn()
    path = get_backend("tflm").export(model, tmp_path / "bounded")
    assert tflm.requant_overflows(path.read_bytes()) == []
    assert stream_parity(model, get_backend("tflm").load(path), 50)["snr_db"] >= MIN_SNR_DB

    plain = LITERT.export(model, tmp_path / "plain", "stream", stem="float")
    q = tmp_path / "plain" / "q.tflite"
    tflm.quantize_16x8(plain, q, tflm.calibration_inputs(model))
    assert any(op == "SUB" for _, op, _ in tflm.requant_overflows(q.read_bytes()))
    monkeypatch.setattr(tflm, "bounded_elu", lambda m: contextlib.nullcontext())
    guarded = get_backend("tflm").export(model, tmp_path / "guarded")  # no abort: the SUB stays float
    assert tflm.requant_overflows(guarded.read_bytes()) == [] and "SUB" in tflm.float_ops(guarded.read_bytes())


def test_per_op_cycles_price_every_operator_of_the_file(exported, clustered) -> None:
    """profile/mcu.py reads the exported file: its MACs are the model's own (every GRU matmul
    and the output layer, per hop), every operator gets a row, and a LUT file costs exactly its
    decoded weights times the decode figures more than the same model stored int8."""
    from hwcompress.export.tflm import op_names
    from hwcompress.models.cost import layer_costs
    from hwcompress.profile.mcu import predict_tflm
    from hwcompress.targets import load_target

    target = load_target("cortex-m7")
    model, path, _ = exported
    p = predict_tflm(path.read_bytes(), target)
    assert p["latency_source"] == "predicted" and p["latency_model"] == "per-op cycles"
    assert p["macs"] == sum(r["macs_per_frame"] for r in layer_costs(model))
    assert len(p["layers"]) == p["ops"] == len(op_names(path.read_bytes()))
    assert p["latency_ms"] == pytest.approx(sum(r["cycles"] for r in p["layers"]) / (target.cycles["clock_mhz"].value * 1e3))
    assert all(r["cycles"] >= target.cycles["op_dispatch"].value for r in p["layers"])
    c = {k: v.value for k, v in target.cycles.items()}
    _, lut, plain = clustered
    a, b = predict_tflm(lut.read_bytes(), target), predict_tflm(plain.read_bytes(), target)
    assert a["macs"] == b["macs"]
    decodes = [r for r in a["layers"] if r["op"] == "TFLM_DECODE"]
    assert decodes and "TFLM_DECODE" not in {r["op"] for r in b["layers"]}
    # tiny-gru's K=4 and K=16 tables: 2 and 4-bit indices, TFLM's unrolled decoders
    assert sum(r["elements"] for r in decodes) == 48 * 161 + 48 * 16 + 161 * 16
    assert {r["figure"] for r in decodes} == {"decode"}
    flash = sum(r["flash_bytes"] for r in b["layers"] if r["op"] == "FULLY_CONNECTED")
    assert flash >= 48 * 161 + 48 * 16 + 161 * 16  # the int8 file streams those weights from flash
    extra = sum(r["cycles"] for r in decodes)
    assert extra == len(decodes) * c["op_dispatch"] + c["decode"] * sum(r["elements"] for r in decodes)


def test_a_micro_file_is_told_from_a_litert_one_and_profiled_per_op(exported, clustered, tmp_path) -> None:
    """The .tflite suffix names two runtimes: the 16x8 and LUT files run in TFLite Micro (eval,
    profile), a LiteRT file stays LiteRT. Profiling a TFLM file on cortex-m7 is its per-op
    prediction and its measured arena; on a CPU target it is one line."""
    from hwcompress.export import backend_for_artifact
    from hwcompress.profile.measure import profile_artifact

    model, path, session = exported
    assert backend_for_artifact(path) == "tflite-micro" and backend_for_artifact(clustered[1]) == "tflite-micro"
    litert = get_backend("litert").export(model, tmp_path, "stream")
    assert backend_for_artifact(litert) == "litert"
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer")
    assert backend_for_artifact(junk) == "litert"  # its loader says what is wrong with it
    r = profile_artifact(path, "cortex-m7", top=3)
    assert r["latency_source"] == "predicted" and r["runtime"] == "tflite-micro"
    assert r["latency_ms"] == r["per_op"]["latency_ms"] > 0 and len(r["layers"]) == 3
    assert r["peak_memory_bytes"] == session.arena_bytes and r["fits_memory"] and r["fits_latency"]
    with pytest.raises(HwcError, match="microcontroller target"):
        profile_artifact(path, "raspberrypi4")


def test_int8_activation_alternative_runs_and_is_coarser(exported, tmp_path) -> None:
    """The fully int8 form (activations=8) of the same model runs in TFLM and departs further
    from torch than the 16x8 default: what the int16 activations buy, measured."""
    from hwcompress.export.check import check_parity

    model, path16, _ = exported
    path8 = get_backend("tflm").export(model, tmp_path, activations=8)
    assert path8.name.endswith("-a8.tflite") and path16.name.endswith("-a16.tflite")
    from hwcompress.export import backend_for_artifact

    assert backend_for_artifact(path8) == "tflite-micro"
    p8 = check_parity(model, path8, weights="int8", mode="stream", enforce=False, backend="tflite-micro")
    p16 = check_parity(model, path16, weights="int8", mode="stream", enforce=False, backend="tflite-micro")
    assert p8.snr_db < p16.snr_db - 6, (p8.snr_db, p16.snr_db)
    with pytest.raises(HwcError, match="int8 or int16"):
        get_backend("tflm").export(model, tmp_path, activations=4)


def test_clustered_rows_of_unequal_scale_keep_per_channel_scales(tmp_path) -> None:
    """A clustered matrix whose rows differ 40x in scale would lose its small rows to one int8
    scale: it keeps per-channel scales, and LUT compression gives each row its own table of at
    most K values, so the index bits still follow K and the output stays close to torch."""
    from hwcompress.compress.cluster import apply_clustering, cluster_model
    from hwcompress.export.check import check_parity

    _require_converter()
    torch.manual_seed(0)
    model = load_model("tiny-gru").eval()
    with torch.no_grad():
        w = model.rnn.layers[0].weight_ih_l0
        w[: w.shape[0] // 2] *= 40.0  # the first gate block's rows 40x the others'
    apply_clustering(model, cluster_model(model, {"rnn.layers.0.weight_ih_l0": 16, "*": 16}))
    path = get_backend("tflm").export(model, tmp_path)
    session = get_backend("tflm").load(path)
    bits = {tuple(row["shape"]): row["index_bits"] for row in session.lut_layers}
    assert bits.get((48, 161)) == 4, session.lut_layers
    parity = check_parity(model, path, weights="int8", mode="stream", enforce=False, backend="tflite-micro",
                          session=session)
    assert parity.snr_db >= 40, parity.snr_db  # one scale for the tensor: 32.5 dB (measured)


def test_nsnet2_runs_in_tflm_and_its_tensors_trace_to_its_layers(tmp_path) -> None:
    """NSNet2 (imported from ONNX: its core is a torch.fx GraphModule, which adds no module scope
    to the traced tensor names) exports to TFLite Micro, matches torch, and every weight tensor
    maps to its layer; priced per op it is over the 10 ms budget dense (2.68 M MACs)."""
    from hwcompress.export.check import check_parity
    from hwcompress.export.tflm import tensor_layers, weight_tensors
    from hwcompress.models.cost import layer_paths
    from hwcompress.profile.mcu import predict_tflm
    from hwcompress.targets import load_target

    _require_converter()
    model = load_model("nsnet2").eval()
    path = get_backend("tflm").export(model, tmp_path)
    parity = check_parity(model, path, weights="int8", mode="stream", enforce=False, backend="tflite-micro")
    assert parity.snr_db >= 40, parity.snr_db
    rows = weight_tensors(path.read_bytes())
    names = tensor_layers([r["tensor"] for r in rows], model, layer_paths(model))
    assert len(rows) == 8 and set(names) == {r["tensor"] for r in rows}
    assert set(names.values()) == set(layer_paths(model))  # the GRUs' two matrices each
    p = predict_tflm(path.read_bytes(), load_target("cortex-m7"))
    assert p["macs"] == 2_681_000 and p["latency_ms"] > 10


def test_calibration_on_real_audio_spreads_its_hops_over_every_clip() -> None:
    """Given clips, the calibration hops come from all of them (every n-th hop, state reset at each
    clip's start), about as many as asked; without, the speech-like frames as before."""
    from hwcompress.export.probe import audio_frames, speech_like_frames
    from hwcompress.export.tflm import calibration_inputs

    model = load_model("tiny-gru").eval()
    rng = np.random.default_rng(0)
    clips = [0.1 * rng.standard_normal(16000 * s).astype(np.float32) for s in (1, 2)]
    rows = calibration_inputs(model, frames=30, audio=clips)
    hops = [len(audio_frames(c)) for c in clips]
    every = -(-sum(hops) // 30)
    assert len(rows) == sum(-(-h // every) for h in hops) and 25 <= len(rows) <= 30
    firsts = [r for r in rows if not any(np.any(v) for k, v in r.items() if k != "spec")]
    assert len(firsts) == 2  # a fresh state at the start of each clip
    np.testing.assert_array_equal(rows[0]["spec"], audio_frames(clips[0])[0])
    plain = calibration_inputs(model, frames=20)
    assert len(plain) == 20
    np.testing.assert_array_equal(plain[3]["spec"], speech_like_frames(20, seed=1)[3])
