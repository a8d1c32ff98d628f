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
from hwcompress.export import check_mode
from hwcompress.export.onnx import export_onnx

if TYPE_CHECKING:  # sessions load without torch
    import torch

PRECISIONS = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}


def compress_weights(ov_model: ov.Model, weights: str) -> ov.Model:
    """nncf weight compression, float activations: int8 = per-channel asymmetric u8; int4 =
    asymmetric u4 in groups of 128 inputs (a row that 128 does not divide gets a smaller group,
    so pruned, oddly sized layers compress too)."""
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
    # nncf draws a rich progress bar on stdout; our stdout carries tables and JSON
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.compress_weights(ov_model, **kwargs)


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
               frames: int | None = None, stem: str | None = None, weights: str = "fp32") -> Path:
        """`frames` is ignored: the whole-utterance IR has a dynamic T."""
        check_mode(mode, weights, self.name)
        xml = Path(out_dir) / (g.artifact_stem(stem, mode, weights=weights) + self.suffix)
        with g.staging(Path(out_dir)) as tmp:
            onnx_path = tmp / "graph.onnx"
            # nncf leaves the weights of a fused LSTMSequence/GRUSequence in fp32 (measured:
            # 11 of the default model's layers compressed, its two LSTMs not), so int8 IRs
            # trace the recurrent cells as matmuls, which the CPU plugin runs with u8 weights
            from hwcompress.export._trace import explicit_cells

            cells = explicit_cells(model) if weights != "fp32" else contextlib.nullcontext()
            with cells:
                export_onnx(model, onnx_path, mode, exporter="OpenVINO (via ONNX)")
            try:
                ov_model = ov.convert_model(str(onnx_path))
            except Exception as exc:
                raise g.unsupported("OpenVINO", exc) from None
            if weights != "fp32":
                ov_model = compress_weights(ov_model, weights)
            staged = tmp / xml.name
            # keep fp32 weights: fp16 compression is a compression decision, not an export one
            ov.save_model(ov_model, str(staged), compress_to_fp16=False)
            g.publish([(staged.with_suffix(".bin"), xml.with_suffix(".bin")), (staged, xml)])
        return xml

    def load(self, path: Path, threads: int = 1, precision: str | None = None) -> OpenVinoSession:
        return OpenVinoSession(path, threads, precision or "f32")


BACKEND = OpenVinoBackend()
