"""ONNX export (torch.onnx) and the ONNX Runtime CPU session.

Exporter choice: the TorchScript exporter (`dynamo=False`), not the torch.export one
that torch 2.13 makes the default. Measured on the four tiny presets:
  - both export the streaming (T=1) graph and map nn.LSTM/nn.GRU with their initial
    states to single ONNX LSTM/GRU nodes;
  - but torch.export specialises the sequence length of nn.LSTM/nn.GRU, so the
    whole-utterance graph with a dynamic T fails ("You marked T as dynamic but your
    code specialized it to be a constant"); the TorchScript exporter keeps T dynamic
    through `dynamic_axes` and matches torch to ~1e-6;
  - it needs no onnxscript, and exports in ~0.3 s instead of ~3.5 s.
It is deprecated upstream, so the DeprecationWarning is silenced here on purpose; if
a later torch removes it, revisit (the dynamo path then needs RNNs whose T is not
specialised).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from hwcompress.errors import HwcError
from hwcompress.export import _graph as g
from hwcompress.export._capture import captured_fd
from hwcompress.export import check_int4_layers, check_mode

if TYPE_CHECKING:  # torch is imported where a model is traced: sessions load without it
    import torch

#: ONNX LSTM/GRU/ConvTranspose are all stable here; ORT and OpenVINO both read it
OPSET = 17


def _layer_of(op: str, dump: str) -> str | None:
    """'layer rnn.layers.0 (GRU), zoo.py:70' for the dumped node that calls `op`."""
    line = next((ln for ln in dump.splitlines() if f"= {op}(" in ln), None)
    if line is None:
        return None
    scope = re.search(r"scope: (\S+)", line)
    where = re.search(r"# (\S+?):(\d+):\d+\s*$", line)
    # scope segments are Type::attr from the export wrapper down; drop the wrapper itself
    parts = [seg.split("::") for seg in scope.group(1).split("/")[1:]] if scope else []
    names = [attr for _, attr in parts[1:]]
    kind = parts[-1][0].rsplit(".", 1)[-1] if parts else "?"
    layer = f"layer {'.'.join(names) or '<root>'} ({kind})"
    return layer + (f", {Path(where.group(1)).name}:{where.group(2)}" if where else "")


#: T of a whole-utterance graph whose recurrent cells are traced as matmuls (1 s of 10 ms hops)
WHOLE_FRAMES = 100


def export_onnx(model: torch.nn.Module, path: Path, mode: str, exporter: str = "ONNX",
                frames: int | None = None) -> None:
    """Write the ONNX graph of `model` to exactly `path` (no atomicity: callers stage). A
    whole-utterance graph has a dynamic T, or `frames` fixed: the recurrent cells traced as
    matmuls (`_trace.explicit_cells`) unroll over the traced T, so such a graph runs that T only
    (with a dynamic axis it failed at any other: a Reshape to the traced length)."""
    import torch

    from hwcompress.export import _trace

    check_mode(mode)
    spec, state = _trace.sample_inputs(model, 1 if mode == "stream" else frames or 7)
    n = len(state)
    dynamic = {g.SPEC: {1: "frames"}, g.OUT: {1: "frames"}} if mode == "whole" and not frames else None
    wrapper = _trace.Positional(model)
    with _trace.eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # nn.LSTM/GRU shape checks on traced sizes: shapes are fixed per export, so harmless
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # "batch_size other than 1 with LSTM": our batch is 1 and h0/c0 are inputs
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        try:
            # on failure the TorchScript exporter dumps the whole graph to fd 1 (torch 2.13
            # leaves its ONNX log switch on): parsed for the failing node's layer, not shown
            with captured_fd(1) as dump:
                torch.onnx.export(
                    wrapper, (spec, *state), str(path), input_names=g.input_names(n),
                    output_names=g.output_names(n), opset_version=OPSET, dynamic_axes=dynamic,
                    dynamo=False, do_constant_folding=True,
                )
        except Exception as exc:  # exporter errors come as many types (UnsupportedOperatorError, RuntimeError...)
            op = re.search(r"operator '([\w:.]+)'", str(exc))
            raise g.unsupported(exporter, exc, _layer_of(op.group(1), dump.getvalue()) if op else None) from None
    if callable(getattr(model, "analyze", None)):  # its own front end (DeepFilterNet3): the file says which
        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = g.FRONT_END_KEY, json.dumps(model.front_end.to_dict())
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


#: per weight input of each op quantize_dynamic quantizes, the channel axis it uses (MatMul: the
#: output column; LSTM: W and R reshaped to [4H, in]); None: one scale per tensor (ConvInteger)
_INT8_WEIGHT_AXES: dict[str, dict[int, int | None]] = {"MatMul": {1: 1}, "Conv": {1: None}, "LSTM": {1: 0, 2: 0}}


def grid_overrides(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """quantize_dynamic's TensorQuantOverrides that store each weight lying on a symmetric 8-bit
    grid (a `.hwc` codebook held on its runtime grid: compress.cluster.grid_step) with that grid's
    step as every channel's scale and zero point 0, so its int8 weights dequantize to exactly the
    `.hwc` values (its own choice, absmax/127 per channel, would not)."""
    from onnx import numpy_helper

    from hwcompress.compress.cluster import grid_step

    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, list[dict]] = {}
    for node in model.graph.node:
        for index, axis in _INT8_WEIGHT_AXES.get(node.op_type, {}).items():
            name = node.input[index] if index < len(node.input) else ""
            if name in inits and name not in out:
                d = grid_step(numpy_helper.to_array(inits[name]), 8)
                if d is not None:
                    out[name] = [{"scale": np.float32(d), "zero_point": np.int8(0),
                                  **({} if axis is None else {"axis": axis})}]
    return out


def quantize_int8(src: Path, dst: Path, exclude: list[str] | None = None) -> None:
    """onnxruntime dynamic quantization: int8 per-channel weights (MatMulInteger,
    DynamicQuantizeLSTM, ConvInteger), activations quantized on the fly per call; the nodes
    named in `exclude` keep their float weights. Weights on an 8-bit grid are stored exactly
    (`grid_overrides`)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # its "consider pre-processing" advice is logged at WARNING on every call
    logging.getLogger().setLevel(logging.ERROR)
    overrides = grid_overrides(onnx.load(str(src)))
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=list(exclude or []),
                         extra_options={"TensorQuantOverrides": overrides} if overrides else None)
    except Exception as exc:  # quantizer failures come as many types
        raise g.unsupported("onnxruntime int8 quantization", exc) from None
    model = onnx.load(str(dst))
    if weight_only_int8(model, set(exclude or [])):
        onnx.save(model, str(dst))


#: ops quantize_dynamic leaves in float (no integer kernel): their constant weights (input index ->
#: the output-channel axis of the weight) are stored as int8 behind a DequantizeLinear instead, so
#: the file holds 8 bits per weight while the op still computes in float
_WEIGHT_ONLY_AXES: dict[str, dict[int, int]] = {"ConvTranspose": {1: 1}, "GRU": {1: 1, 2: 1}}


def weight_only_int8(model: onnx.ModelProto, exclude: set[str] = frozenset()) -> list[str]:
    """Store the float constant weights of `_WEIGHT_ONLY_AXES` ops as int8 (symmetric, per output
    channel; the grid's step where the weight lies on the 8-bit grid, so exactly) feeding a
    DequantizeLinear, in place; returns the nodes changed. Written here: onnxruntime's dynamic
    quantizer has no ConvTranspose or GRU, and its static QDQ path would quantize activations too."""
    from onnx import helper, numpy_helper

    from hwcompress.compress.cluster import grid_step

    inits = {i.name: i for i in model.graph.initializer}
    changed, new_nodes = [], []
    for node in model.graph.node:
        for index, axis in _WEIGHT_ONLY_AXES.get(node.op_type, {}).items() if node.name not in exclude else ():
            name = node.input[index] if index < len(node.input) else ""
            if name not in inits or inits[name].data_type != onnx.TensorProto.FLOAT:
                continue
            w = numpy_helper.to_array(inits[name])
            step = grid_step(w, 8)
            moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            scale = (np.full(w.shape[axis], step, dtype=np.float32) if step is not None else
                     np.where(np.abs(moved).max(axis=1) > 0, np.abs(moved).max(axis=1) / 127.0, 1.0).astype(np.float32))
            shape = [1] * w.ndim
            shape[axis] = w.shape[axis]
            q = np.clip(np.rint(w.astype(np.float64) / scale.reshape(shape)), -127, 127).astype(np.int8)
            model.graph.initializer.remove(inits[name])
            model.graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                            numpy_helper.from_array(scale, name + "_int8_scale")])
            new_nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_int8_scale"], [name],
                                              name=name + "_dequantize", axis=axis))
            changed.append(node.name)
    if new_nodes:
        # constants first: the graph stays topologically sorted
        nodes = new_nodes + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed


#: MatMulNBits block: 128 input weights share one fp32 scale (0.25 bit per weight on top of the 4;
#: symmetric, so a pruned 0 stays 0), the group nncf INT4_ASYM uses on OpenVINO; a matmul with
#: fewer inputs gets a smaller block (see `quantize`)
INT4_BLOCK = 128
#: model metadata naming the layers whose matmuls an int4/mixed file stores at 4 bits
INT4_LAYERS_KEY = "hwcompress.int4_layers"


def layer_widths(path: Path) -> dict[str, str]:
    """Per layer, "int4" for those whose matmuls the file's MatMulNBits nodes hold (named in its
    metadata when it was quantized); {} for a file without 4-bit nodes."""
    model = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type == "MatMulNBits" for n in model.graph.node):
        return {}
    props = {p.key: p.value for p in model.metadata_props}
    return {layer: "int4" for layer in props.get(INT4_LAYERS_KEY, "").split(",") if layer}


def model_layer_widths(path: Path, net: torch.nn.Module) -> dict[str, str]:
    """Per weight layer of `net`, the width the file stores: "int4" for the layers its MatMulNBits
    nodes hold (`layer_widths`), "int8" for the rest (Capabilities.layer_widths)."""
    from hwcompress.export import distinct_weights

    four = layer_widths(Path(path))
    return {layer: four.get(layer, "int8") for layer in distinct_weights(net)}


def _gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm nodes with a constant weight (B) rewritten as MatMul (+ Add of the bias): the
    explicit recurrent cells trace each gate matmul as Gemm(transB=1), and onnxruntime's 4-bit
    weight op (MatMulNBits) replaces MatMul nodes only. Exact: B is transposed once, offline."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        name = node.input[1] + ("_t" if attrs.get("transB", 0) else "_mm")
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB", 0) else w), name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + ("_mm" if has_bias else "")
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [mm_out], name=node.name + "_mm"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def weight_matmuls(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Node name -> constant weight of every MatMul whose second input is an initializer."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    return {n.name: numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits}


def matmul_layers(model: onnx.ModelProto, net: torch.nn.Module) -> dict[str, str]:
    """MatMul node -> layer (models.cost.layer_paths) whose weight matrix it holds, matched by
    value: the exporter's node names keep only the module that ran the matmul (a stacked
    recurrent layer's cells all trace inside it), while the weights are the parameters
    themselves, transposed. A matrix two layers share, or none holds, is left out."""
    from hwcompress.models.cost import layer_paths

    params = {n: p.detach().numpy() for n, p in net.named_parameters() if p.dim() == 2}
    owner = {n: layer for n in params for layer, path in layer_paths(net).items() if n.startswith(path + ".")}
    out = {}
    for node, w in weight_matmuls(model).items():
        hits = {owner[n] for n, p in params.items() if n in owner and p.shape == w.T.shape and np.array_equal(p, w.T)}
        if len(hits) == 1:
            out[node] = hits.pop()
    return out


def pack_nbits(w: np.ndarray, step: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' 4-bit B and scales for the [K, N] weight `w` lying on the 4-bit grid of
    `step` (compress.cluster.GRID_Q[4]): every block's scale is the step and q + 8 is stored (the
    op's implicit zero point for symmetric 4 bits), low nibble first, K padded with zeros to whole
    blocks; B is [N, blocks, block / 2] uint8, scales [N, blocks]. Written here because
    MatMulNBitsQuantizer picks each block's scale from its own absmax, which puts a grid layer's
    weights off their values. The op dequantizes (q - 8) * scale, exactly the grid's values."""
    k, n = w.shape
    blocks = -(-k // block)
    q = np.zeros((n, blocks * block), dtype=np.uint8)
    q[:, :k] = (np.rint(w.T.astype(np.float64) / step) + 8).astype(np.uint8)
    q = q.reshape(n, blocks, block)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, np.full((n, blocks), step, dtype=np.float32)


def _exact_nbits(model: onnx.ModelProto, originals: dict[str, np.ndarray]) -> None:
    """Rewrite the B and scales of every MatMulNBits node whose original MatMul weight (by output
    name) lies on the 4-bit grid with `pack_nbits`, in place."""
    from onnx import helper, numpy_helper

    from hwcompress.compress.cluster import grid_step

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        w = originals.get(node.output[0])
        if node.op_type != "MatMulNBits" or w is None:
            continue
        step = grid_step(w, 4)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if step is None or attrs.get("bits") != 4 or len(node.input) > 3 and node.input[3]:
            continue
        packed, scales = pack_nbits(w, step, int(attrs["block_size"]))
        for name, value in ((node.input[1], packed), (node.input[2], scales)):
            old = inits[name]
            if tuple(old.dims) != value.shape and int(np.prod(old.dims)) != value.size:
                raise HwcError(f"onnxruntime MatMulNBits: {name} has shape {list(old.dims)}, expected {list(value.shape)}")
            old.CopyFrom(numpy_helper.from_array(value.reshape(tuple(old.dims)), name))


def quantize(src: Path, dst: Path, weights: str, net: torch.nn.Module | None = None,
             int4_layers: list[str] | None = None) -> None:
    """int8: `quantize_int8`. int4: every constant-weight MatMul (the explicit recurrent cells'
    gate matmuls and the Linear layers) as MatMulNBits, 4-bit symmetric in blocks of INT4_BLOCK,
    then the rest (convolutions) int8 by quantize_dynamic. mixed: 4 bits only for the MatMuls of
    `int4_layers` (default: the layers of `net` on the 4-bit grid, `export.mixed_layers`). Weights
    on an integer grid are stored exactly (`grid_overrides`, `pack_nbits`)."""
    if weights == "int8":
        return quantize_int8(src, dst)
    import logging

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise HwcError(f"onnxruntime 4-bit export needs {exc.name}: pip install onnx-ir") from None
    logging.getLogger().setLevel(logging.ERROR)
    model = _gemm_to_matmul(onnx.load(str(src)))
    originals = weight_matmuls(model)
    shapes = {n: w.shape for n, w in originals.items()}
    by_output = {n.output[0]: originals[n.name] for n in model.graph.node if n.name in originals}
    layer_of = matmul_layers(model, net) if net is not None else {}
    if weights == "mixed":
        from hwcompress.export import mixed_layers

        chosen = set(mixed_layers(net) if int4_layers is None else int4_layers)
        nodes = [n for n, layer in layer_of.items() if layer in chosen]
    else:
        nodes = list(shapes)
    staged = Path(dst).with_name("matmul-" + Path(dst).name)
    onnx.save(model, str(staged))
    # the other weights (convolutions, unchosen matmuls) int8 first: quantize_dynamic cannot
    # type the outputs of MatMulNBits (a com.microsoft op), so those come second
    int8 = staged.with_name("int8-" + Path(dst).name)
    quantize_int8(staged, int8, exclude=nodes)
    model = onnx.load(str(int8))
    staged.unlink()
    int8.unlink()
    # blocks pad the input dimension to a multiple of their size, and each block adds a 32-bit
    # scale: per matmul, the power-of-two block (16, MatMulNBits' least, to INT4_BLOCK) that
    # stores its column in the fewest bits (161 inputs: 64; 256: 128)
    by_block: dict[int, list[str]] = {}
    for n in nodes:
        k = shapes[n][0]
        block = min((b for b in (16, 32, 64, 128) if b <= INT4_BLOCK), key=lambda b: (-(-k // b) * (4 * b + 32), -b))
        by_block.setdefault(block, []).append(n)
    for block, group in sorted(by_block.items()):
        try:
            # it quantizes every MatMul it is not told to exclude (nodes_to_include only adds to that)
            others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in group]
            # accuracy_level 4: activations quantized to int8 on the fly, as the int8 path does;
            # its int8 kernels ran the cortex-m7-fitted default CRN in 0.335 ms per hop vs 0.404 ms
            # with the default fp32 compute (int8 file 0.356 ms; one process, side by side)
            q = MatMulNBitsQuantizer(model, bits=4, block_size=block, is_symmetric=True, nodes_to_exclude=others,
                                     accuracy_level=4)
            q.process()
            model = q.model.model
        except Exception as exc:  # quantizer failures come as many types
            raise g.unsupported("onnxruntime MatMulNBits quantization", exc) from None
    _exact_nbits(model, by_output)
    # what the 4-bit nodes hold, for the report (the packed weights no longer match by value)
    layers = sorted({layer_of.get(n, "?") for n in nodes})
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        INT4_LAYERS_KEY: ",".join(layers)})
    onnx.save(model, str(dst))


def stored_weight_values(path: Path) -> dict[str, np.ndarray]:
    """The weights an int8/int4 ONNX file holds, dequantized as the runtime does (q * scale per
    channel, a constant DequantizeLinear's output, MatMulNBits' (q - 8) * scale per block, padding
    dropped): weight name -> float32 array in the file's own layout. For checking a file against
    the model it was exported from."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for name, q in arrays.items():
        base = name.removesuffix("_quantized")
        if base != name and q.dtype == np.int8 and base + "_scale" in arrays:
            scale = arrays[base + "_scale"].astype(np.float32)
            shape = [1] * q.ndim
            if scale.size > 1:  # per channel: along the axis of that length (MatMul: columns)
                axis = next(a for a in ([1, 0] if q.ndim == 2 else range(q.ndim)) if q.shape[a] == scale.size)
                shape[axis] = scale.size
            zp = arrays.get(base + "_zero_point", np.zeros(1, np.int8)).astype(np.float32).reshape(shape if scale.size > 1 else [1])
            out[base] = ((q.astype(np.float32) - zp) * scale.reshape(shape)).astype(np.float32)
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "DequantizeLinear" and node.input[0] in arrays and node.input[1] in arrays:
            q, scale = arrays[node.input[0]].astype(np.float32), arrays[node.input[1]].astype(np.float32)
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[int(attrs.get("axis", 1))] = scale.size
            zp = arrays[node.input[2]].astype(np.float32).reshape(shape) if len(node.input) > 2 and node.input[2] else 0.0
            out[node.output[0]] = ((q - zp) * scale.reshape(shape)).astype(np.float32)
            continue
        if node.op_type != "MatMulNBits":
            continue
        k, n, block = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
        b = arrays[node.input[1]].reshape(n, -1)
        q = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, -1)[:, : -(-k // block) * block].astype(np.float32)
        scales = arrays[node.input[2]].reshape(n, -1).astype(np.float32)
        w = (q - 8.0).reshape(n, scales.shape[1], block) * scales[..., None]
        out[node.input[1]] = np.ascontiguousarray(w.reshape(n, -1)[:, :k].T)
    return out


def exact_weights(path: Path, net: torch.nn.Module) -> dict[str, bool]:
    """Per weight matrix of `net`, whether the ONNX file holds exactly its values
    (`stored_weight_values`, or a float initializer): element by element in torch's layout or
    transposed (Conv, MatMul, MatMulNBits), or as the same multiset (ONNX LSTM/GRU reorder gates)."""
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    from hwcompress.export.probe import weights_held

    held = list(stored_weight_values(path).values()) + [
        numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    return weights_held(net, held, gate_order_free=True)


def layer_times(path: Path, session: OnnxSession, frames: np.ndarray, runs: int, threads: int, tmp: Path,
                warmup: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-node ms of each profiled hop from ONNX Runtime's profiler (`enable_profiling`), after
    `warmup` unprofiled hops (Capabilities.layer_profiler; profile.measure reads it)."""
    from collections import defaultdict

    # the same options as OnnxSession, plus profiling into our scratch folder
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tmp) / "ort-profile")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    inputs = [i.name for i in sess.get_inputs()]
    state = [np.zeros((1, *s), dtype=np.float32) for s in session.state_shapes]
    for i in range(warmup + runs):
        out = sess.run(names, {inputs[0]: frames[i % len(frames)], **dict(zip(inputs[1:], state))})
        state = list(out[1:])
    trace = json.loads(Path(sess.end_profiling()).read_text())
    # the trace covers every run since the session opened: skip node events of warm-up runs
    run_starts = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    cutoff = run_starts[warmup] if len(run_starts) > warmup else 0
    per_run: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, str] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < cutoff:
            continue
        node = e["name"][: -len("_kernel_time")]
        per_run[node].append(e.get("dur", 0) / 1e3)  # dur is in microseconds
        kinds[node] = e.get("args", {}).get("op_name", "?")
    return per_run, kinds


class OnnxSession(g.PairedStateSession):
    def __init__(self, path: Path, threads: int = 1) -> None:
        path = g.require_file(path)
        opts = ort.SessionOptions()
        # one request at a time, as a device would: parallelism only inside operators
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise g.corrupt(path, "ONNX", exc) from None
        inputs = {i.name: i.shape for i in self.sess.get_inputs()}
        if g.SPEC not in inputs:
            raise HwcError(f"{path}: not a hwcompress graph (no '{g.SPEC}' input)")
        n = len(inputs) - 1
        self.state_shapes = [tuple(inputs[g.state_name(i)][1:]) for i in range(n)]
        t = inputs[g.SPEC][1]
        self.frames = t if isinstance(t, int) else None
        #: the front end the graph was exported with, when it is the model's own (ONNX metadata)
        self.front_end = g.front_end_of(self.sess.get_modelmeta().custom_metadata_map, path)
        self._outputs = g.output_names(n)
        self._bind(inputs, n)

    def _bind(self, inputs: dict, n: int) -> None:
        """A streaming graph has static shapes, so every input and output is bound once to a
        numpy buffer of this session (IOBinding, one binding per set of the state pair:
        `g.PairedStateSession`) and onnxruntime neither wraps new inputs nor allocates outputs
        per hop as `InferenceSession.run` does (benchmarks/hop_overhead.md measures the paths
        side by side). Unbound (plain `run`) when some shape is dynamic."""
        outputs = {o.name: o.shape for o in self.sess.get_outputs()}
        shapes = [inputs[name] for name in g.input_names(n)] + [outputs.get(name) for name in self._outputs]
        if not all(shape and all(isinstance(d, int) for d in shape) for shape in shapes):
            return
        self._pair_buffers(shapes[0], shapes[n + 1], shapes[1:n + 1])
        self._bindings = []
        for k in (0, 1):
            binding = self.sess.io_binding()
            binding.bind_cpu_input(g.SPEC, self._spec_buf)
            for name, buf in zip(g.input_names(n)[1:], self._pair[k]):
                binding.bind_cpu_input(name, buf)
            for name, buf in zip(self._outputs, [self._out_buf, *self._pair[1 - k]]):
                binding.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            self._bindings.append(binding)

    def _invoke(self, k: int) -> None:
        self.sess.run_with_iobinding(self._bindings[k])

    def run(self, spec: np.ndarray, state: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        spec, state = self.checked_inputs(spec, state)
        if self._paired and self.fast_path:
            return self._run_paired(spec, state)
        feed = {g.SPEC: spec, **{g.state_name(i): s for i, s in enumerate(state)}}
        out = self.sess.run(self._outputs, feed)
        return out[0], list(out[1:])


class OnnxBackend:
    name = "onnxruntime"
    suffix = ".onnx"

    def export(self, model: torch.nn.Module, out_dir: Path, mode: str = "stream", *,
               frames: int | None = None, stem: str | None = None, weights: str = "fp32",
               int4_layers: list[str] | None = None) -> Path:
        """The whole-utterance graph has a dynamic T, or with int4/mixed weights (the recurrent cells
        traced as matmuls) a fixed one, `frames` (default WHOLE_FRAMES). `int4_layers`
        (weights="mixed"): the layers to store at 4 bits (default: those on the 4-bit grid, `export.mixed_layers`)."""
        check_mode(mode, weights, self.name)
        if weights == "mixed" and int4_layers is not None:
            check_int4_layers(self.name, model, int4_layers)
        # 4-bit weights exist for MatMul only: the recurrent cells are traced as matmuls
        explicit = weights in ("int4", "mixed")
        fixed = int(frames or WHOLE_FRAMES) if explicit and mode == "whole" else None
        dst = Path(out_dir) / (g.artifact_stem(stem, mode, fixed, weights=weights) + self.suffix)
        with g.staging(Path(out_dir)) as tmp:
            staged = tmp / dst.name
            from hwcompress.export._trace import explicit_cells

            with explicit_cells(model) if explicit else contextlib.nullcontext():
                export_onnx(model, staged, mode, frames=fixed)
            g.publish([(g.with_weights(staged, weights, lambda a, b: quantize(a, b, weights, model, int4_layers)), dst)])
        return dst

    def load(self, path: Path, threads: int = 1, precision: str | None = None) -> OnnxSession:
        g.check_precision(self.name, precision)
        return OnnxSession(path, threads)


BACKEND = OnnxBackend()
