"""OpenVINO IR export (.xml + .bin) and the OpenVINO CPU session.

The IR is converted from our ONNX graph rather than from the torch module: OpenVINO's
PyTorch frontend goes through torch tracing/torch.export, which fixes the sequence
length of nn.LSTM/nn.GRU (see export/onnx.py), while the ONNX graph keeps T dynamic
and is the very graph the onnxruntime backend is checked against.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints

from hwcompress.errors import HwcError
from hwcompress.export import _graph as g
from hwcompress.export import check_int4_layers, check_mode
from hwcompress.export.onnx import WHOLE_FRAMES, export_onnx

if TYPE_CHECKING:  # sessions load without torch
    import torch

PRECISIONS = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}


def compress_weights(ov_model: ov.Model, weights: str, ignored: list[str] | None = None) -> ov.Model:
    """nncf weight compression, float activations: int8 = per-channel asymmetric u8; int4 =
    asymmetric u4 in groups of 128 inputs (a row that 128 does not divide gets a smaller group,
    so pruned, oddly sized layers compress too). The ops named in `ignored` keep their weights."""
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode
    except ImportError:
        raise HwcError(f"OpenVINO {weights} export needs nncf: pip install 'hwcompress[openvino]'") from None
    nncf.set_log_level(logging.ERROR)
    if weights == "int8":
        kwargs: dict = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
    else:
        kwargs = {"mode": nncf.CompressWeightsMode.INT4_ASYM, "group_size": 128, "ratio": 1.0, "all_layers": True,
                  "advanced_parameters": AdvancedCompressionParameters(
                      group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=16)}
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored), validate=False)
    # nncf draws a rich progress bar on stdout; our stdout carries tables and JSON
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.compress_weights(ov_model, **kwargs)


#: ops whose input 1 is a weight, and whether the CPU plugin executes it compressed. Read from the
#: compiled model's runtime graph (`executed_widths`; OpenVINO 2026.4 CPU, f32 and bf16): a MatMul
#: becomes a FullyConnected that keeps u8/i8/u4/i4 weights and decompresses them inside its kernel
#: (benchmarks/openvino_compressed_matmul.md: a 4096x4096 MatMul with our i4 weights in 0.10x the
#: fp32 time, nncf's u4 0.11x), while (de)convolution weights are decompressed to f32 when the
#: model compiles, so a convolution stores integers in the file but computes in float
WEIGHT_OPS = {"MatMul": True, "Convolution": False, "GroupConvolution": False,
              "ConvolutionBackpropData": False, "GroupConvolutionBackpropData": False}
#: IR element type of each stored integer width (signed, no zero point: the symmetric grid)
_GRID_TYPES = {4: ov.Type.i4, 8: ov.Type.i8}
#: IR element types -> the width `layer_widths` reports
_WIDTH_OF = {"u4": "int4", "i4": "int4", "nf4": "int4", "u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp32"}


def _weight_ops(ov_model: ov.Model) -> list:
    return [op for op in ov_model.get_ordered_ops()
            if op.get_type_name() in WEIGHT_OPS and op.get_input_size() > 1
            and op.input_value(1).get_node().get_type_name() != "Parameter"]


def _source_constant(op):
    """The Constant a weight input is computed from (through a decompression subgraph: Convert,
    Subtract, Multiply, Reshape, each on input 0), or None."""
    node = op.input_value(1).get_node()
    for _ in range(8):
        if node.get_type_name() == "Constant":
            return node
        if node.get_input_size() == 0:
            return None
        node = node.input_value(0).get_node()
    return None


def _param_name(name: str) -> str:
    return name.split("#", 1)[0]


def _weight_constants(ov_model: ov.Model) -> list[tuple]:
    """(f32 Constant, the WEIGHT_OPS reading it as their weight) for every float weight of the IR,
    once per constant (a whole-utterance graph's unrolled cells share one)."""
    out = []
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() != "Constant" or node.get_element_type() != ov.Type.f32:
            continue
        users = [t.get_node() for t in node.output(0).get_target_inputs()
                 if t.get_index() == 1 and t.get_node().get_type_name() in WEIGHT_OPS]
        if users:
            out.append((node, users))
    return out


def name_weights(ov_model: ov.Model, net: torch.nn.Module) -> dict[str, str]:
    """Give every float weight constant of the IR the name of the `net` parameter it holds,
    matched by value (element by element as stored, reshaped or transposed: the converter folds
    a Linear's transpose into its constant and loses the name), so that the compressed constants
    keep it and `layer_widths` reads each layer's width back from the file; a second constant of
    one parameter gets "#2". Returns {weight op name: parameter name}; ambiguous or unmatched
    constants keep their names."""
    params = {n: p.detach().numpy() for n, p in net.named_parameters() if p.dim() >= 2}
    by_size: dict[int, list[str]] = {}
    for n, p in params.items():
        by_size.setdefault(p.size, []).append(n)
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for const, users in _weight_constants(ov_model):
        a = const.get_data()
        hits = [n for n in by_size.get(a.size, []) if np.array_equal(a.reshape(params[n].shape), params[n])
                or (a.ndim == 2 and a.T.shape == params[n].shape and np.array_equal(a.T, params[n]))]
        if len(hits) != 1:
            continue
        seen[hits[0]] = seen.get(hits[0], 0) + 1
        const.set_friendly_name(hits[0] + ("" if seen[hits[0]] == 1 else f"#{seen[hits[0]]}"))
        out.update({op.get_friendly_name(): hits[0] for op in users})
    return out


def _write_exact(const, step: float, bits: int) -> None:
    """Replace the float weight constant `const`, which lies on the `bits`-wide symmetric grid of
    `step` (compress.cluster.grid_step), by its integers (i4 or i8, no zero point), a Convert to
    f32 and a Multiply by the f32 step: the decompression subgraph the CPU plugin runs as a
    compressed FullyConnected weight, and whose value is float32(q * step), the `.hwc`'s exactly."""
    import openvino.opset13 as ops

    name = const.get_friendly_name()
    w = const.get_data()
    q = np.rint(w.astype(np.float64) / step).astype(np.int8)
    stored = ops.constant(q, dtype=_GRID_TYPES[bits], name=name)
    weight = ops.multiply(ops.convert(stored, ov.Type.f32), ops.constant(np.array(step, np.float32), name=name + "/scale"),
                          name=name + "/decompress")
    for target in list(const.output(0).get_target_inputs()):
        target.replace_source_output(weight.output(0))


def quantize(ov_model: ov.Model, net: torch.nn.Module, weights: str, int4_layers: list[str] | None = None) -> ov.Model:
    """int8/int4/mixed weights for the IR of `net`. Widths: int8, every weight 8-bit; int4, every
    MatMul weight (the recurrent cells traced as matmuls, Linear) 4-bit and the convolutions 8-bit;
    mixed, 4 bits only for the MatMuls of `int4_layers` (default: the layers of `net` on the 4-bit
    grid, `export.mixed_layers`). A weight lying on the symmetric integer grid of its width
    (compress.cluster.grid_step) is written exactly (`_write_exact`), the others by nncf (int8:
    INT8_ASYM per channel; int4: INT4_ASYM in groups of 128).

    Written here rather than through nncf alone: nncf takes no given scales (its symmetric int4
    scale is each row's or group's extreme / 8, its int8 one the row's range / 255) and writes
    f16 scales with f16 decompression arithmetic, which cannot hold a float32 step q * d exactly;
    nncf still compresses every weight that lies on no grid, so dense layers keep its tuned forms."""
    from hwcompress.compress.cluster import grid_step
    from hwcompress.export import mixed_layers
    from hwcompress.models.cost import layer_paths

    param_of = name_weights(ov_model, net)
    paths = layer_paths(net)
    layer_of = {op: next((layer for layer, path in paths.items() if p.startswith(path + ".")), None)
                for op, p in param_of.items()}
    chosen: set[str] = set()
    if weights == "mixed":
        chosen = set(mixed_layers(net) if int4_layers is None else int4_layers)
    bits: dict[str, int] = {}  # weight op -> its stored width
    exact = set()
    for const, users in _weight_constants(ov_model):
        four = any(WEIGHT_OPS[op.get_type_name()] and (weights == "int4" or (
            weights == "mixed" and layer_of.get(op.get_friendly_name()) in chosen)) for op in users)
        width = 4 if four else 8
        bits.update({op.get_friendly_name(): width for op in users})
        step = grid_step(const.get_data(), width)
        if step is not None:
            _write_exact(const, step, width)
            exact.update(op.get_friendly_name() for op in users)
    names = set(bits)
    for width, form in ((4, "int4"), (8, "int8")):
        rest = {n for n in names - exact if bits[n] == width}
        if rest:
            ov_model = compress_weights(ov_model, form, ignored=sorted(names - rest))
    return ov_model


def _read_ir(path: Path) -> ov.Model:
    return ov.Core().read_model(str(g.require_file(Path(path))))


def layer_widths(path: Path, net: torch.nn.Module) -> dict[str, str]:
    """Per layer of `net`, the width(s) the IR stores its weights at ("int4", "int8", "fp32", or
    several joined by "/"), read back from the file: the element type of each weight constant
    named after the layer's parameter (`name_weights`)."""
    from hwcompress.models.cost import layer_paths

    params = {n for n, p in net.named_parameters() if p.dim() >= 2}
    paths = layer_paths(net)
    out: dict[str, set] = {}
    for op in _weight_ops(_read_ir(path)):
        const = _source_constant(op)
        name = _param_name(const.get_friendly_name()) if const is not None else ""
        if name not in params:
            continue
        layer = next((layer for layer, p in paths.items() if name.startswith(p + ".")), "?")
        out.setdefault(layer, set()).add(_WIDTH_OF.get(const.get_element_type().get_type_name(),
                                                        const.get_element_type().get_type_name()))
    return {layer: "/".join(sorted(w)) for layer, w in out.items()}


def stored_weight_values(path: Path) -> dict[str, np.ndarray]:
    """The weights an IR computes with, as OpenVINO evaluates its decompression subgraphs
    (integers converted, zero point subtracted, scaled, in the IR's own element types: f16 for
    nncf's, f32 for the grid's), by constant folding: stored constant name -> float32 array in
    the IR's layout. For checking an IR against the model it was exported from."""
    from openvino import passes

    model = _read_ir(path)
    names = {}
    for op in _weight_ops(model):
        const = _source_constant(op)
        if const is not None:
            names[op.get_friendly_name()] = const.get_friendly_name()
    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(model)
    out = {}
    for op in _weight_ops(model):
        node = op.input_value(1).get_node()
        if node.get_type_name() == "Constant" and op.get_friendly_name() in names:
            out[names[op.get_friendly_name()]] = np.asarray(node.get_data(), dtype=np.float32)
    return out


def exact_weights(path: Path, net: torch.nn.Module) -> dict[str, bool]:
    """Per weight matrix of `net`, whether the IR computes with exactly its values
    (`stored_weight_values`): element by element as stored, reshaped or transposed."""
    from hwcompress.export.probe import weights_held

    return weights_held(net, list(stored_weight_values(path).values()))


def executed_widths(path: Path, threads: int = 1, precision: str = "f32") -> dict[str, str]:
    """What the CPU plugin runs each weight at once the IR is compiled: stored weight constant name
    (`name_weights`: the model's parameter) -> the runtime graph's precision of the constant its
    FullyConnected or (de)convolution reads ("i4", "u4", "i8", "u8" where the kernel reads the
    stored integers; "f32" where the plugin decompressed them when compiling)."""
    model = _read_ir(path)
    source = {}
    for op in _weight_ops(model):
        const = _source_constant(op)
        if const is not None:
            source[op.get_friendly_name()] = _param_name(const.get_friendly_name())
    compiled = ov.Core().compile_model(model, "CPU", {props.inference_num_threads: threads,
                                                      hints.inference_precision: PRECISIONS[precision]})
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) not in ("FullyConnected", "Convolution", "Deconvolution") or op.get_input_size() < 2:
            continue
        weight = op.input_value(1).get_node().get_rt_info()
        if weight["layerType"].astype(str) != "Const":
            continue
        # the plugin fuses ops and renames them (a MatMul and its bias Add become one
        # FullyConnected): the weight constant's own name tells, else one of the fused ops'
        names = [_param_name(n) for n in weight["originalLayersNames"].astype(str).split(",")]
        names += [source[n] for n in info["originalLayersNames"].astype(str).split(",") if n in source]
        known = [n for n in names if n in set(source.values())]
        if known:
            out[known[0]] = weight["outputPrecisions"].astype(str)
    return out


def _mirror_config(session: OpenVinoSession) -> dict:
    """The measured session's compile settings (threads, hint, precision, streams), read
    back from it so the profiled model is compiled the same way, plus PERF_COUNT."""
    config: dict = {}
    for key in ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "NUM_STREAMS"):
        try:
            config[key] = session.compiled.get_property(key)
        except Exception:  # a key this plugin version does not report: leave it to the default
            continue
    config[props.enable_profiling()] = True
    return config


def layer_times(path: Path, session: OpenVinoSession, frames: np.ndarray, runs: int, threads: int, tmp: Path,
                warmup: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-node ms of each profiled hop from OpenVINO's performance counters (PERF_COUNT), after
    `warmup` unprofiled hops, compiled as `session` was (Capabilities.layer_profiler; profile.measure
    reads it; `threads` and `tmp` are unused: the session's settings say the threads)."""
    from collections import defaultdict

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", _mirror_config(session))
    request = compiled.create_infer_request()
    outs = {p.get_any_name(): p for p in compiled.outputs}
    n_state = len(compiled.inputs) - 1
    state = [np.zeros((1, *s), dtype=np.float32) for s in session.state_shapes]
    per_run: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, str] = {}
    for i in range(warmup + runs):
        res = request.infer({g.SPEC: frames[i % len(frames)], **{g.state_name(k): s for k, s in enumerate(state)}})
        state = [np.array(res[outs[g.state_out_name(k)]]) for k in range(n_state)]
        if i < warmup:
            continue
        # get_profiling_info() describes the last inference only, so collect it every call
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            per_run[info.node_name].append(info.real_time.total_seconds() * 1e3)
            kinds[info.node_name] = f"{info.node_type} ({info.exec_type})"
    return per_run, kinds


class OpenVinoSession(g.PairedStateSession):
    def __init__(self, path: Path, threads: int = 1, precision: str = "f32") -> None:
        path = g.require_file(path)
        if precision not in PRECISIONS:
            raise HwcError(f"unknown OpenVINO precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        core = ov.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        # asked for a precision the CPU lacks, the plugin silently runs f32: refuse instead
        if precision != "f32" and {"bf16": "BF16", "f16": "FP16"}[precision] not in capabilities:
            raise HwcError(f"this CPU cannot run {precision} activations in OpenVINO (its CPU plugin offers "
                           f"{', '.join(c.lower() for c in capabilities if c in ('FP32', 'BF16', 'FP16'))})")
        try:
            # an IR is XML: checking that first keeps OpenVINO from trying every other
            # frontend on garbage (each logs its own parse error to stderr)
            if not path.read_bytes()[:512].lstrip().startswith((b"<?xml", b"<net")):
                raise ValueError("not an OpenVINO IR .xml")
            model = core.read_model(str(path))
        except Exception as exc:
            raise g.corrupt(path, "OpenVINO IR", exc) from None
        config = {
            props.inference_num_threads: threads,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            # the CPU plugin silently runs bf16 on AVX512-BF16/AMX hosts (this Zen 4 one
            # included): ~1e-3 max error on the tiny presets, not a deployment of the fp32 model
            hints.inference_precision: PRECISIONS[precision],
        }
        self.precision = precision
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise HwcError(f"{path}: OpenVINO cannot compile this model ({str(exc).strip().splitlines()[0][:200]})") from None
        names = {p.get_any_name(): p for p in self.compiled.inputs}
        if g.SPEC not in names:
            raise HwcError(f"{path}: not a hwcompress graph (no '{g.SPEC}' input)")
        n = len(names) - 1
        self.state_shapes = [tuple(names[g.state_name(i)].get_partial_shape().to_shape())[1:] for i in range(n)]
        t = names[g.SPEC].get_partial_shape()[1]
        self.frames = t.get_length() if t.is_static else None
        self._outputs = [self.compiled.output(name) for name in g.output_names(n)]
        # Streaming IRs have static shapes, so every tensor a hop touches can be made once and
        # handed to the requests (set_tensor): the spectrum and output frame are shared
        # numpy-backed tensors, and the state is a ping-pong pair of sets, request k reading
        # set k and writing set 1-k, so a `hop` keeps the state in place and copies only the
        # spectrum in and the frame out (benchmarks/hop_overhead.md times the paths side by
        # side). Handing infer() a dict instead makes the Python binding wrap every array as a
        # new tensor and the plugin re-bind its memory on every call, which measured 0.2-0.3 ms
        # per hop here (more than the whole compressed model) and made our per-hop figure
        # 50-80% above benchmark_app's.
        self.request = self.compiled.create_infer_request()
        self.last_runtime_ms: float | None = None
        if self.frames is not None and all(p.get_partial_shape().is_static for p in self.compiled.inputs):
            ports = [names[name] for name in g.input_names(n)]
            self._pair_buffers(_shape(ports[0]), _shape(self._outputs[0]), [_shape(p) for p in ports[1:]])
            self._requests = [self.request, self.compiled.create_infer_request()]
            for k, request in enumerate(self._requests):
                request.set_tensor(ports[0], ov.Tensor(self._spec_buf, shared_memory=True))
                request.set_tensor(self._outputs[0], ov.Tensor(self._out_buf, shared_memory=True))
                for port, buf in zip(ports[1:], self._pair[k]):
                    request.set_tensor(port, ov.Tensor(buf, shared_memory=True))
                for port, buf in zip(self._outputs[1:], self._pair[1 - k]):
                    request.set_tensor(port, ov.Tensor(buf, shared_memory=True))

    def run(self, spec: np.ndarray, state: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        spec, state = self.checked_inputs(spec, state)
        if self._paired and self.fast_path:
            return self._run_paired(spec, state)
        feed = {g.SPEC: spec, **{g.state_name(i): s for i, s in enumerate(state)}}
        # share_inputs: the call is synchronous and the arrays outlive it, so OpenVINO may
        # read them in place instead of copying every input
        res = self.request.infer(feed, share_inputs=True, share_outputs=True)
        outs = [np.array(res[port]) for port in self._outputs]
        return outs[0], outs[1:]

    def _invoke(self, k: int) -> None:
        request = self._requests[k]
        request.infer()
        # the runtime's own timing of this inference, without the Python call: the figure
        # benchmark_app reports, kept so profile can show both side by side
        self.last_runtime_ms = request.latency


def _shape(port) -> tuple[int, ...]:
    return tuple(port.get_partial_shape().to_shape())


class OpenVinoBackend:
    name = "openvino"
    suffix = ".xml"

    def export(self, model: torch.nn.Module, out_dir: Path, mode: str = "stream", *,
               frames: int | None = None, stem: str | None = None, weights: str = "fp32",
               int4_layers: list[str] | None = None) -> Path:
        """The whole-utterance IR has a dynamic T, or with integer weights (the recurrent cells traced
        as matmuls) a fixed one, `frames` (default onnx.WHOLE_FRAMES). `int4_layers`
        (weights="mixed"): the layers to store at 4 bits (default: those on the 4-bit grid,
        `export.mixed_layers`); only MatMul layers (LSTM, GRU, Linear) run 4-bit weights here."""
        check_mode(mode, weights, self.name)
        if weights == "mixed" and int4_layers is not None:
            check_int4_layers(self.name, model, int4_layers)
        fixed = int(frames or WHOLE_FRAMES) if weights != "fp32" and mode == "whole" else None
        xml = Path(out_dir) / (g.artifact_stem(stem, mode, fixed, weights=weights) + self.suffix)
        with g.staging(Path(out_dir)) as tmp:
            onnx_path = tmp / "graph.onnx"
            # nncf leaves the weights of a fused LSTMSequence/GRUSequence in fp32 (measured:
            # 11 of the default model's layers compressed, its two LSTMs not), so int8 IRs
            # trace the recurrent cells as matmuls, which the CPU plugin runs with u8 weights
            from hwcompress.export._trace import explicit_cells

            cells = explicit_cells(model) if weights != "fp32" else contextlib.nullcontext()
            with cells:
                export_onnx(model, onnx_path, mode, exporter="OpenVINO (via ONNX)", frames=fixed)
            try:
                ov_model = ov.convert_model(str(onnx_path))
            except Exception as exc:
                raise g.unsupported("OpenVINO", exc) from None
            if weights != "fp32":
                ov_model = quantize(ov_model, model, weights, int4_layers)
            staged = tmp / xml.name
            # keep fp32 weights: fp16 compression is a compression decision, not an export one
            ov.save_model(ov_model, str(staged), compress_to_fp16=False)
            g.publish([(staged.with_suffix(".bin"), xml.with_suffix(".bin")), (staged, xml)])
        return xml

    def load(self, path: Path, threads: int = 1, precision: str | None = None) -> OpenVinoSession:
        return OpenVinoSession(path, threads, precision or "f32")


BACKEND = OpenVinoBackend()
