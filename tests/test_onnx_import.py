"""ONNX import: tiny real graphs (torch-exported and onnx.helper-built) run in onnxruntime
and in the imported torch module must agree; what cannot be mapped exactly is one line."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hwcompress.errors import HwcError
from hwcompress.models.onnx_import import import_onnx


def _ort(path, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _export(module: nn.Module, args: tuple, path, names: list[str], opset: int, dynamic: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["out"], opset_version=opset,
                          dynamic_axes=dynamic, dynamo=False)


class TinySE(nn.Module):
    """Frame-wise masker using every layer kind the importer maps (features [B, T, 12])."""

    def __init__(self, f: int = 12) -> None:
        super().__init__()
        self.conv_t = nn.Conv1d(f, 8, 3)  # causal over time (left pad below)
        self.conv_tf = nn.Conv2d(1, 2, (1, 3), padding=(0, 1))
        self.prelu = nn.PReLU(2)
        self.lin = nn.Linear(8 + 2 * f, 16)
        self.gru = nn.GRU(16, 10, batch_first=True)
        self.lstm = nn.LSTM(10, 9, batch_first=True)
        self.out = nn.Linear(9, f)

    def forward(self, x):
        b, t, f = x.shape
        c = F.elu(self.conv_t(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2))
        c2 = self.prelu(self.conv_tf(x.unsqueeze(1)))  # [B, 2, T, F]
        c2 = F.leaky_relu(c2, 0.1).permute(0, 2, 1, 3).reshape(b, t, -1)  # a Shape-derived reshape
        h = torch.tanh(self.lin(torch.cat([c, c2], dim=-1)))
        g, _ = self.gru(h)
        s, _ = self.lstm(g)
        mask = torch.sigmoid(self.out(torch.relu(s)))
        return torch.clamp(mask, 0.05, 1.0) * (x / 2 + 1)


DYNAMIC = {"features": {0: "b", 1: "t"}, "out": {0: "b", 1: "t"}}


@pytest.mark.parametrize("opset", [11, 17])  # Squeeze/Unsqueeze axes as attribute (11) and as input (17)
def test_torch_exported_net_imports_and_matches_onnxruntime(tmp_path, opset) -> None:
    torch.manual_seed(0)
    net = TinySE().eval()
    path = tmp_path / "tiny.onnx"
    _export(net, (torch.randn(1, 7, 12),), path, ["features"], opset, DYNAMIC)
    m = import_onnx(path)
    kinds = sorted(type(mod).__name__ for mod in m.children())
    assert kinds == ["Conv1d", "Conv2d", "GRU", "LSTM", "Linear", "Linear", "PReLU"], kinds
    x = torch.randn(3, 25, 12)  # another batch and length than the export's
    ref = _ort(path, {"features": x.numpy()})[0]
    with torch.no_grad():
        got = m(x).numpy()
        assert np.abs(got - net(x).numpy()).max() < 1e-5
    diff = float(np.abs(got - ref).max())
    print(f"opset {opset}: max |imported - onnxruntime| = {diff:.2e}")
    assert got.shape == ref.shape and diff < 1e-5
    # the compression stages trace it, the export stage exports it
    traced = torch.fx.symbolic_trace(m)
    with torch.no_grad():
        assert np.abs(traced(x).numpy() - ref).max() < 1e-5
    again = tmp_path / "again.onnx"
    _export(m, (torch.randn(1, 7, 12),), again, ["features"], 17, DYNAMIC)
    assert np.abs(_ort(again, {"features": x.numpy()})[0] - ref).max() < 1e-5


def _model(nodes, inputs, outputs, inits, opset: int = 17, path=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _f(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _rnn_graph(tmp_path, cell: str, layout: int = 0, **attrs):
    """One ONNX GRU/LSTM node with random weights, initial state as graph inputs."""
    rng = np.random.default_rng(1)
    gates, hid, inp = (3, 5, 4) if cell == "GRU" else (4, 5, 4)
    inits = {"W": rng.normal(0, 0.6, (1, gates * hid, inp)).astype(np.float32),
             "R": rng.normal(0, 0.6, (1, gates * hid, hid)).astype(np.float32),
             "B": rng.normal(0, 0.6, (1, 2 * gates * hid)).astype(np.float32)}
    state_shape = ["b", 1, hid] if layout else [1, "b", hid]
    x_shape = ["b", "t", inp] if layout else ["t", "b", inp]
    ins = ["x", "W", "R", "B", "", "h0"] + (["c0"] if cell == "LSTM" else [])
    outs = ["y", "yh"] + (["yc"] if cell == "LSTM" else [])
    if cell == "GRU":
        attrs.setdefault("linear_before_reset", 1)
    node = helper.make_node(cell, ins, outs, name=f"my_{cell.lower()}", hidden_size=hid, layout=layout, **attrs)
    graph_inputs = [_f("x", *x_shape), _f("h0", *state_shape)] + ([_f("c0", *state_shape)] if cell == "LSTM" else [])
    graph_outputs = [_f("y", *(["b", "t", 1, hid] if layout else ["t", 1, "b", hid])), _f("yh", *state_shape)]
    graph_outputs += [_f("yc", *state_shape)] if cell == "LSTM" else []
    return _model([node], graph_inputs, graph_outputs, inits, path=tmp_path / f"{cell}.onnx"), inits, (inp, hid)


@pytest.mark.parametrize("cell,layout", [("GRU", 0), ("LSTM", 0), ("GRU", 1), ("LSTM", 1)])
def test_recurrence_gate_order_on_random_weights(tmp_path, cell, layout) -> None:
    path, inits, (inp, hid) = _rnn_graph(tmp_path, cell, layout)
    rng = np.random.default_rng(2)
    t, b = 9, 2
    feeds = {"x": rng.normal(size=(b, t, inp) if layout else (t, b, inp)).astype(np.float32)}
    for name in ["h0"] + (["c0"] if cell == "LSTM" else []):
        feeds[name] = rng.normal(size=(b, 1, hid) if layout else (1, b, hid)).astype(np.float32)
    if layout:  # onnxruntime refuses batch-major recurrences: onnx's reference runtime runs them
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(str(path)).run(None, feeds)
    else:
        ref = _ort(path, feeds)
    m = import_onnx(path)
    rnn = getattr(m, f"{cell.lower()}0")
    assert isinstance(rnn, nn.GRU if cell == "GRU" else nn.LSTM) and rnn.hidden_size == hid
    with torch.no_grad():
        got = m(*(torch.from_numpy(feeds[k]) for k in feeds))
    for r, g in zip(ref, got):
        assert r.shape == tuple(g.shape)
        assert np.abs(r - g.numpy()).max() < 1e-5
    # the check can fail: the same weights in ONNX's gate order, unreordered, give another output
    naive = (nn.GRU if cell == "GRU" else nn.LSTM)(inp, hid, batch_first=bool(layout))
    with torch.no_grad():
        naive.weight_ih_l0.copy_(torch.from_numpy(inits["W"][0]))
        naive.weight_hh_l0.copy_(torch.from_numpy(inits["R"][0]))
        naive.bias_ih_l0.copy_(torch.from_numpy(inits["B"][0, : inits["W"].shape[1]]))
        naive.bias_hh_l0.copy_(torch.from_numpy(inits["B"][0, inits["W"].shape[1]:]))
        x = torch.from_numpy(feeds["x"])
        h0 = torch.from_numpy(feeds["h0"])
        if layout:
            h0 = h0.transpose(0, 1)
        state = h0 if cell == "GRU" else (h0, torch.from_numpy(feeds["c0"]).transpose(0, 1) if layout
                                           else torch.from_numpy(feeds["c0"]))
        wrong = naive(x, state)[0].numpy()
    assert np.abs(wrong - ref[0].squeeze(2 if layout else 1)).max() > 1e-2


def test_helper_graph_of_other_ops_matches_onnxruntime(tmp_path) -> None:
    """Gemm, asymmetric Conv pads, ConvTranspose, Clip/PRelu/Softmax/Slice/Gather/Expand/Div
    and Squeeze without axes, as other exporters write them."""
    rng = np.random.default_rng(3)
    r = lambda *s: rng.normal(0, 0.5, s).astype(np.float32)  # noqa: E731
    inits = {"cw": r(4, 3, 3), "cb": r(4), "tw": r(4, 2, 4), "gw": r(5, 6), "gb": r(5), "slope": r(6),
             "slope_last": r(2),
             "clip_lo": np.array(-0.5, np.float32), "st": np.array([1], np.int64), "en": np.array([6], np.int64),
             "ax": np.array([2], np.int64), "idx": np.array([0, 2, 3], np.int64), "two": np.array(2.0, np.float32),
             "eshape": np.array([1, 1, 1], np.int64), "sq": np.array([1], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv_causal", pads=[2, 0]),  # [B, 4, T]
        helper.make_node("Clip", ["c", "clip_lo", ""], ["cc"], name="clip"),
        helper.make_node("ConvTranspose", ["cc", "tw"], ["ct"], name="deconv", strides=[2], pads=[1, 2]),
        helper.make_node("Slice", ["ct", "st", "en", "ax"], ["sl"], name="slice"),  # [B, 2, 5]
        helper.make_node("Transpose", ["sl"], ["tr"], perm=[0, 2, 1]),  # [B, 5, 2]
        helper.make_node("Gather", ["tr", "idx"], ["ga"], name="gather", axis=1),  # [B, 3, 2]
        helper.make_node("PRelu", ["ga", "slope_last"], ["gp"]),  # a slope per last-axis entry
        helper.make_node("Flatten", ["gp"], ["fl"], axis=1),  # [B, 6]
        helper.make_node("PRelu", ["fl", "slope"], ["pr"]),  # a slope per channel: nn.PReLU
        helper.make_node("Gemm", ["pr", "gw", "gb"], ["gm"], name="gemm", transB=1),  # [B, 5]
        helper.make_node("Div", ["gm", "two"], ["dv"]),
        helper.make_node("Softmax", ["dv"], ["sm"], axis=-1),
        helper.make_node("Unsqueeze", ["sm", "sq"], ["un"]),  # [B, 1, 5]
        helper.make_node("Expand", ["un", "eshape"], ["ex"]),
        helper.make_node("Squeeze", ["ex"], ["out"]),  # no axes: the static 1 at axis 1
    ]
    path = _model(nodes, [_f("x", 2, 3, 6)], [_f("out", 2, 5)], inits, path=tmp_path / "ops.onnx")
    x = r(2, 3, 6)
    ref = _ort(path, {"x": x})[0]
    m = import_onnx(path)
    assert isinstance(m.conv_causal if hasattr(m, "conv_causal") else m.conv1d0, nn.Conv1d)
    assert any(isinstance(c, nn.ConvTranspose1d) for c in m.children())
    assert any(isinstance(c, nn.Linear) for c in m.children())
    assert sum(isinstance(c, nn.PReLU) for c in m.children()) == 1
    with torch.no_grad():
        got = m(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-5


def _one_line(exc: pytest.ExceptionInfo, *words: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize("op,attrs,extra", [("Hardmax", {"axis": -1}, []), ("TopK", {"axis": -1}, ["k"])])
def test_unsupported_op_is_one_line_naming_it(tmp_path, op, attrs, extra) -> None:
    node = helper.make_node(op, ["x", *extra], ["y"] + (["i"] if op == "TopK" else []), name="the_odd_one", **attrs)
    path = _model([node], [_f("x", 1, 4, 3)], [_f("y", 1, 4, None)], {"k": np.array([2], np.int64)} if extra else {},
                  path=tmp_path / "odd.onnx")
    with pytest.raises(HwcError) as exc:
        import_onnx(path)
    _one_line(exc, op, "the_odd_one", "not supported")


def test_bidirectional_gru_is_refused_naming_the_node(tmp_path) -> None:
    rng = np.random.default_rng(4)
    inits = {"W": rng.normal(size=(2, 15, 4)).astype(np.float32), "R": rng.normal(size=(2, 15, 5)).astype(np.float32)}
    node = helper.make_node("GRU", ["x", "W", "R"], ["y"], name="blstm_like", hidden_size=5, direction="bidirectional",
                            linear_before_reset=1)
    path = _model([node], [_f("x", "t", 1, 4)], [_f("y", "t", 2, 1, 5)], inits, path=tmp_path / "bi.onnx")
    with pytest.raises(HwcError) as exc:
        import_onnx(path)
    _one_line(exc, "GRU", "blstm_like", "non-causal")


def test_gru_linear_before_reset_0_is_refused(tmp_path) -> None:
    path = _rnn_graph(tmp_path, "GRU", linear_before_reset=0)[0]
    with pytest.raises(HwcError) as exc:
        import_onnx(path)
    _one_line(exc, "my_gru", "linear_before_reset=0")


def test_bad_files_are_one_line(tmp_path) -> None:
    with pytest.raises(HwcError) as exc:
        import_onnx(tmp_path / "missing.onnx")
    _one_line(exc, "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 this is not protobuf \xff\xfe" * 50)
    with pytest.raises(HwcError) as exc:
        import_onnx(junk)
    _one_line(exc, "junk.onnx")
    # a constant subgraph asking for 2^40 floats is refused, not allocated
    huge = helper.make_node("ConstantOfShape", ["shape"], ["z"], name="huge")
    add = helper.make_node("Add", ["x", "z"], ["y"])
    path = _model([huge, add], [_f("x", 1)], [_f("y", None, None)], {"shape": np.array([1 << 20, 1 << 20], np.int64)},
                  path=tmp_path / "huge.onnx")
    with pytest.raises(HwcError) as exc:
        import_onnx(path)
    _one_line(exc, "huge", "limit")


class GroupedLinearEinsum(nn.Module):
    """DeepFilterNet's grouped linear layer (an einsum with a [G, I, H] weight) inside a causal net."""

    def __init__(self, f: int = 12, groups: int = 3, hidden: int = 15) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.randn(groups, f // groups, hidden // groups))
        self.gru = nn.GRU(hidden, 6, batch_first=True)

    def forward(self, x):  # [B, T, F]
        b, t, _ = x.shape
        g, i, _ = self.weight.shape
        y = torch.einsum("btgi,gih->btgh", x.reshape(b, t, g, i), self.weight).reshape(b, t, -1)
        h, _ = self.gru(torch.relu(y))
        return h


def test_grouped_linear_einsum_imports_as_grouped_conv_and_matches_onnxruntime(tmp_path) -> None:
    torch.manual_seed(3)
    net = GroupedLinearEinsum().eval()
    path = tmp_path / "einsum.onnx"
    _export(net, (torch.randn(1, 5, 12),), path, ["features"], 17, DYNAMIC)
    assert "Einsum" in {n.op_type for n in onnx.load(str(path)).graph.node}
    m = import_onnx(path)
    convs = [mod for mod in m.children() if isinstance(mod, nn.Conv1d)]
    assert len(convs) == 1 and convs[0].groups == 3 and tuple(convs[0].weight.shape) == (15, 4, 1)
    x = torch.randn(2, 9, 12)
    ref = _ort(path, {"features": x.numpy()})[0]
    with torch.no_grad():
        got = m(x).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-5
    # it streams: the time axis folded into the conv's batch is a frame-wise operation
    from hwcompress.models import streaming

    derived = streaming.derive(m, lambda b, t: torch.randn(b, t, 12), (6,), "einsum.onnx")
    assert derived.state_shapes == [(1, 6)]


@pytest.mark.parametrize("equation", ["bij,bjk->bik", "btgi,gih->bthg"])
def test_other_einsum_equations_are_one_line(tmp_path, equation) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 3, 4)).astype(np.float32)
    node = helper.make_node("Einsum", ["x", "w"], ["y"], name="odd_einsum", equation=equation)
    path = _model([node], [_f("x", 1, 5, 2, 3)], [_f("y", None, None, None, None)], {"w": w},
                  path=tmp_path / "odd_einsum.onnx", opset=12)
    with pytest.raises(HwcError) as exc:
        import_onnx(path)
    _one_line(exc, "Einsum", "odd_einsum", "not supported")


class PaddedDeconv(nn.Module):
    """A frequency upsampler as DeepFilterNet's decoder has it: depthwise ConvTranspose2d with
    stride 2, padding 1 and output_padding 1 on frequency."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 4, (1, 3), stride=(1, 2), padding=(0, 1))
        self.up = nn.ConvTranspose2d(4, 4, (1, 3), stride=(1, 2), padding=(0, 1), output_padding=(0, 1), groups=4)
        self.out = nn.Conv2d(4, 1, 1)

    def forward(self, x):  # [B, T, 12]
        return self.out(torch.relu(self.up(torch.relu(self.down(x.unsqueeze(1)))))).squeeze(1)


def test_padded_conv_transpose_imports_unpadded_and_cropped(tmp_path) -> None:
    """Imported as an unpadded ConvTranspose2d plus a crop (the same values; litert-torch
    mis-converts the padded form with output_padding, see _conv_transpose)."""
    torch.manual_seed(5)
    net = PaddedDeconv().eval()
    path = tmp_path / "deconv.onnx"
    _export(net, (torch.randn(1, 6, 12),), path, ["features"], 17, DYNAMIC)
    m = import_onnx(path)
    ups = [mod for mod in m.children() if isinstance(mod, nn.ConvTranspose2d)]
    assert len(ups) == 1 and ups[0].padding == (0, 0) and ups[0].output_padding == (0, 0) and ups[0].groups == 4
    x = torch.randn(2, 9, 12)
    ref = _ort(path, {"features": x.numpy()})[0]
    with torch.no_grad():
        got = m(x).numpy()
        assert np.abs(got - net(x).numpy()).max() < 1e-5
    assert got.shape == ref.shape == (2, 9, 12) and np.abs(got - ref).max() < 1e-5
