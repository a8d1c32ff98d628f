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
from hwcompress.export import check_mode

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


def export_onnx(model: torch.nn.Module, path: Path, mode: str, exporter: str = "ONNX") -> None:
    """Write the ONNX graph of `model` to exactly `path` (no atomicity: callers stage)."""
    import torch

    from hwcompress.export import _trace

    check_mode(mode)
    spec, state = _trace.sample_inputs(model, 1 if mode == "stream" else 7)
    n = len(state)
    dynamic = {g.SPEC: {1: "frames"}, g.OUT: {1: "frames"}} if mode == "whole" else None
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
    onnx.checker.check_model(str(path))


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime dynamic quantization: int8 per-channel weights (MatMulInteger,
    DynamicQuantizeLSTM, ConvInteger), activations quantized on the fly per call."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # its "consider pre-processing" advice is logged at WARNING on every call
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    except Exception as exc:  # quantizer failures come as many types
        raise g.unsupported("onnxruntime int8 quantization", exc) from None


class OnnxSession(g.SessionBase):
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
        self._outputs = g.output_names(n)

    def run(self, spec: np.ndarray, state: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        spec, state = self.checked_inputs(spec, state)
        feed = {g.SPEC: spec, **{g.state_name(i): s for i, s in enumerate(state)}}
        out = self.sess.run(self._outputs, feed)
        return out[0], list(out[1:])


class OnnxBackend:
    name = "onnxruntime"
    suffix = ".onnx"

    def export(self, model: torch.nn.Module, out_dir: Path, mode: str = "stream", *,
               frames: int | None = None, stem: str | None = None, weights: str = "fp32") -> Path:
        """`frames` is ignored: the whole-utterance graph has a dynamic T."""
        check_mode(mode, weights, self.name)
        dst = Path(out_dir) / (g.artifact_stem(stem, mode, weights=weights) + self.suffix)
        with g.staging(Path(out_dir)) as tmp:
            staged = tmp / dst.name
            export_onnx(model, staged, mode)
            g.publish([(g.with_weights(staged, weights, quantize_int8), dst)])
        return dst

    def load(self, path: Path, threads: int = 1) -> OnnxSession:
        return OnnxSession(path, threads)


BACKEND = OnnxBackend()
