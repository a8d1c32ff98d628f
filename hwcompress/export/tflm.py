"""TFLite Micro (.tflite for microcontrollers): fully integer 16x8 export and a session that runs
the real TFLM interpreter (PyPI `tflite-micro`, its Python build of the TFLM C++ runtime).

Export (streaming only: a microcontroller runs one 10 ms hop per call, state carried by the caller):
  1. the float .tflite from the LiteRT path (litert-torch, in .venv-tflite; see export/tflite.py);
  2. full-integer post-training quantization by ai-edge-quantizer's static `static_wi8_ai16` recipe
     (the "16x8" scheme: int8 symmetric per-channel weights, int16 symmetric per-tensor
     activations, inputs, outputs and recurrent state), calibrated on CALIBRATION_FRAMES streaming
     hops of `probe.speech_like_frames` (seed CALIBRATION_SEED, so the parity check's seed-0 frames
     are not the calibration data) with the state the torch model carries from hop to hop;
     `activations=8` gives the fully int8 alternative (static_wi8_ai8) for comparison: recurrent
     models lose most of their precision with it (issue 18, benchmarks/fit_cortex_m7.md);
  3. the float and then the quantized file are loaded and invoked by the TFLM interpreter before
     anything is published: an op TFLM has no kernel for at all fails the export with one line
     naming it; an op whose kernel has no int16 form (TFLM's DIV) is quantized again with that op
     left float (at most MAX_FLOAT_FALLBACKS of them); a SELECT whose inputs share one shape (how
     litert-torch lowers nn.ELU's torch.where) is rewritten to the equivalent SELECT_V2, which TFLM
     has a kernel for;
  4. LUT compression (`lut_compress`, TFLM's own compressor): every weight tensor with few enough
     distinct values per table (a clustered layer: K centroids are K int8 values of one per-tensor
     scale, or at most K per channel where one scale would cost weight precision, see
     `clustered_op_scopes`) is stored as ceil(log2 K)-bit indices into value tables and decoded by
     TFLM's DECODE kernel on every invoke; each encoded tensor is decoded back in numpy and
     compared before publishing.
The spectral features (a LOG or SQRT op and the ops it depends on: |X|^2, its sum, + eps) stay
float (`log_feature_tensors`, `float_ops`): a power spectrum spans more than int16 can hold. TFLM runs
them with its float reference kernels (161 bins per hop; the Cortex-M7 has an FPU). Measured on
tiny-gru: 43.5 dB parity vs torch with them float, 20.4 dB with them in int16. Measured (50 hops,
state carried, vs torch): tiny-gru 43.5 dB, tiny-lstm 41.5, tiny-crn 48.2 (ELU's EXP and
GREATER_EQUAL float), tiny-gcrn 31.4 (DIV float).

Session: `TflmSession.run(spec, state)` takes and gives float32 like every backend; the int16
edges are (de)quantized with each tensor's scale and zero point. `arena_bytes` is the smallest
tensor arena (to 16 bytes) in which the interpreter loads the model and invokes it, found by
bisection; `arena_recorded_bytes` is what TFLM's RecordingMicroAllocator reports after an invoke
(persistent tensors, scratch buffers and the planned activations), a little less, because the
memory planner also needs arena room while it plans. Both measured, not estimated.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hwcompress.errors import HwcError
from hwcompress.export import _graph as g
from hwcompress.export._capture import captured_fd

if TYPE_CHECKING:
    import torch

#: streaming hops (with their carried state) the activation ranges are calibrated on
CALIBRATION_FRAMES = 200
CALIBRATION_SEED = 1
#: arena the interpreter is first loaded in to measure what it uses (host memory only)
PROBE_ARENA_BYTES = 16 * 1024 * 1024
_SIGNATURE = "serving_default"
#: ops left float because TFLM has no int16 kernel for them, at most (each costs one quantization)
MAX_FLOAT_FALLBACKS = 8
#: ops whose weights (input 1, int8 constants) LUT compression applies to
LUT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")
#: widest index TFLM's LUT decoder takes
LUT_MAX_BITS = 7
_DCM_BYTES = 16  # DECODE common metadata header ahead of the value tables
#: ai-edge-quantizer's name of a LUT_OPS op where it differs from the .tflite builtin name
_QUANTIZER_OP_NAMES = {"TRANSPOSE_CONV": "CONV_2D_TRANSPOSE"}


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    return fb


def _read_model(data: bytes):
    fb = _schema()
    try:
        return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    except Exception as exc:
        raise HwcError(f"not a .tflite flatbuffer ({type(exc).__name__})") from None


_OP_NAMES: dict[int, str] | None = None
_TYPE_NAMES: dict[int, str] | None = None


def _names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _builtin(model, op) -> int:
    """An operator's builtin code (flatbuffers written before schema v2.3 keep it in the
    deprecated 8-bit field)."""
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def op_names(data: bytes) -> list[tuple[str, list[str]]]:
    """(builtin op name, dtypes of its non-constant inputs and outputs) of every operator of the
    main subgraph, in execution order, read from the flatbuffer (no code runs)."""
    global _OP_NAMES, _TYPE_NAMES
    fb = _schema()
    if _OP_NAMES is None:
        _OP_NAMES, _TYPE_NAMES = _names(fb.BuiltinOperator), _names(fb.TensorType)
    model = _read_model(data)
    sub = model.subgraphs[0]
    rows = []
    for op in sub.operators or []:
        builtin = _builtin(model, op)
        name = _OP_NAMES.get(builtin, str(builtin))
        if name == "CUSTOM":
            code = model.operatorCodes[op.opcodeIndex]
            name = f"CUSTOM {code.customCode.decode(errors='replace') if code.customCode else '?'}"
        types = []
        for t in [*(op.inputs if op.inputs is not None else []), *(op.outputs if op.outputs is not None else [])]:
            if t < 0:
                continue
            tensor = sub.tensors[t]
            if model.buffers[tensor.buffer].data is None:  # activations, not weights
                types.append(_TYPE_NAMES.get(tensor.type, str(tensor.type)))
        rows.append((name, types))
    return rows


def is_micro_file(path: Path) -> bool:
    """Whether a .tflite is a TFLite Micro file of ours: TFLM_DECODE operators (LUT weights), integer
    graph inputs (full-integer quantization) or int16 activations (the 16x8 scheme). Read with the
    flatbuffer's lazy accessors (no buffer copied: milliseconds for 20 MB); anything unreadable is
    not one (its loader says why)."""
    fb = _schema()
    try:
        data = Path(path).read_bytes()
        model = fb.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() == 0:
            return False
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i).CustomCode()
            if code is not None and code.decode(errors="replace") == "TFLM_DECODE":
                return True
        sub = model.Subgraphs(0)
        quantized = (fb.TensorType.INT16, fb.TensorType.INT8)  # fully integer graph inputs: 16x8 or int8
        return any(sub.Tensors(sub.Inputs(i)).Type() in quantized for i in range(sub.InputsLength())) or any(
            sub.Tensors(i).Type() == fb.TensorType.INT16 and model.Buffers(sub.Tensors(i).Buffer()).DataLength() == 0
            for i in range(sub.TensorsLength()))
    except Exception:  # not a flatbuffer, truncated: the runtime's loader gives the one-line reason
        return False


def _op_outputs(data: bytes, index: int) -> list[str]:
    """Output tensor names of operator `index` of the main subgraph."""
    sub = _read_model(data).subgraphs[0]
    ops = sub.operators or []
    if not 0 <= index < len(ops):
        return []
    return [sub.tensors[int(t)].name.decode() for t in ops[index].outputs]


#: left shift TFLM's ADD/SUB kernels apply to their inputs before rescaling, per activation type
_ADD_SUB_LEFT_SHIFT = {"INT8": 20, "INT16": 15}


def requant_overflows(data: bytes) -> list[tuple[int, str, float]]:
    """(operator index, op, multiplier) of every quantized ADD or SUB whose output rescale TFLM
    cannot represent. Its kernels compute the multiplier 2 * max(input scales) / (2**shift *
    output scale) and *abort the process* (TFLITE_CHECK in QuantizeMultiplierSmallerThanOneExp,
    no error returned) when it is 1 or more: an output range tiny beside its inputs'. Checked here,
    in Python, before a model reaches the interpreter; what the export does with such an op is to
    leave it float. Written by hand: the formula is TFLM's CalculateOpDataAdd/Sub, which the
    Python package does not expose."""
    fb = _schema()
    names, types = _names(fb.BuiltinOperator), _names(fb.TensorType)
    model = _read_model(data)
    sub = model.subgraphs[0]

    def scale(t: int) -> float | None:
        q = sub.tensors[t].quantization
        return None if q is None or q.scale is None or len(q.scale) == 0 else float(np.max(q.scale))

    rows = []
    for k, op in enumerate(sub.operators or []):
        name = names.get(_builtin(model, op), "")
        if name not in ("ADD", "SUB") or op.inputs is None or len(op.inputs) < 2 or op.outputs is None:
            continue
        out = int(op.outputs[0])
        shift = _ADD_SUB_LEFT_SHIFT.get(types.get(sub.tensors[out].type, ""))
        scales = [scale(int(t)) for t in op.inputs[:2]] + [scale(out)]
        if shift is None or None in scales or scales[2] <= 0:
            continue
        multiplier = 2 * max(scales[:2]) / ((1 << shift) * scales[2])
        if not multiplier < 1:
            rows.append((k, name, multiplier))
    return rows


def float_ops(data: bytes) -> list[str]:
    """Ops that compute in float (a float activation in or out), QUANTIZE/DEQUANTIZE excepted."""
    return sorted({name for name, types in op_names(data)
                   if name not in ("QUANTIZE", "DEQUANTIZE") and "FLOAT32" in types})


def _signature_positions(data: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """Signature names (spec, state_i / out, state_out_i) -> index among the subgraph's inputs
    and outputs, which is how the TFLM interpreter addresses them."""
    model = _read_model(data)
    sub = model.subgraphs[0]
    sigs = model.signatureDefs or []
    if not sigs:
        raise HwcError("not a hwcompress graph (no signature)")
    sig = sigs[0]
    ins = [int(i) for i in sub.inputs]
    outs = [int(i) for i in sub.outputs]

    def position(index: int, order: list[int]) -> int:
        if index in order:
            return order.index(index)
        # ai-edge-quantizer gives an output that two signature entries share (equal states) a
        # QUANTIZE op into '<name>_quantized' but leaves the signature on the float tensor
        renamed = sub.tensors[index].name + b"_quantized"
        for i, t in enumerate(order):
            if sub.tensors[t].name == renamed:
                return i
        raise HwcError(f"signature tensor {sub.tensors[index].name.decode(errors='replace')!r} is no graph input or output")

    def positions(entries, order):
        return {e.name.decode(): position(int(e.tensorIndex), order) for e in entries or []}

    return positions(sig.inputs, ins), positions(sig.outputs, outs)


_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '(\w+)'")
_FAILED_NODE = re.compile(r"Node (\w+) \(number (\d+)\) failed to (prepare|invoke)")


class KernelError(HwcError):
    """A kernel TFLM has refused at Prepare or Eval: `operator` is its index in the subgraph."""

    def __init__(self, message: str, op: str, operator: int, detail: str) -> None:
        super().__init__(message)
        self.op, self.operator, self.detail = op, operator, detail


def _tflm_error(text: str, exc: BaseException, where: str) -> HwcError:
    """One line from what TFLM printed: the op it has no kernel for, or the node that failed
    and the kernel's own complaint."""
    m = _MISSING_OP.search(text)
    if m:
        return HwcError(f"{where}: TFLite Micro has no kernel for op {m.group(1)}: the model cannot run on a "
                        "microcontroller with TFLM (replace the layer that produces it)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    node = next((_FAILED_NODE.search(ln) for ln in lines if _FAILED_NODE.search(ln)), None)
    if node:
        before = [ln for ln in lines if not _FAILED_NODE.search(ln)]
        why = f" ({before[-1][:160]})" if before else ""
        return KernelError(f"{where}: TFLite Micro cannot {node.group(3)} op {node.group(1)} "
                           f"(operator {node.group(2)}){why}", node.group(1), int(node.group(2)), why)
    first = lines[-1][:200] if lines else f"{type(exc).__name__}: {str(exc)[:160]}"
    return HwcError(f"{where}: TFLite Micro cannot load the model: {first}")


def _interpreter(data: bytes, arena: int, where: str):
    """A TFLM interpreter on `data`, invoked once on zeros (so Prepare and Eval of every kernel
    ran), and what it printed; a model it cannot run raises one HwcError line."""
    from tflite_micro import runtime

    with captured_fd(2) as printed:
        try:
            interp = runtime.Interpreter.from_bytes(data, arena_size=int(arena))
            n_in = len(_read_model(data).subgraphs[0].inputs)
            for i in range(n_in):
                d = interp.get_input_details(i)
                interp.set_input(np.zeros(d["shape"], dtype=d["dtype"]), i)
            interp.invoke()
            error = None
        except Exception as exc:  # the wrapper raises RuntimeError/ValueError with little text
            interp, error = None, exc
    if error is not None:
        raise _tflm_error(printed.getvalue(), error, where)
    return interp


_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
#: granularity of the smallest-arena search (TFLM aligns arena allocations to 16 bytes)
ARENA_STEP = 16


def _runs_in(data: bytes, arena: int) -> bool:
    try:
        _interpreter(data, arena, "model")
    except HwcError:
        return False
    return True


def measure_arena(data: bytes, where: str = "model") -> tuple[int, int]:
    """(smallest arena, recorded arena) in bytes for this model in the TFLM interpreter.

    recorded: RecordingMicroAllocator's total (head + tail) after one invoke in a large arena;
    smallest: the least arena size (to ARENA_STEP bytes) in which the interpreter loads the model
    and invokes it, found by bisection above the recorded figure. The smallest is the larger of the
    two: while it plans the activations the memory planner needs room for its own bookkeeping."""
    interp = _interpreter(data, PROBE_ARENA_BYTES, where)
    with captured_fd(2) as printed:
        interp.print_allocations()
    m = _ARENA_TOTAL.search(printed.getvalue())
    if not m:
        raise HwcError(f"{where}: TFLite Micro reported no arena allocation (its report read: "
                       f"{printed.getvalue().strip()[:120]!r})")
    recorded = int(m.group(1))
    lo, hi = recorded - 1, recorded  # lo fails (or is below what was allocated), hi runs
    while not _runs_in(data, hi):
        lo, hi = hi, min(2 * hi, PROBE_ARENA_BYTES)
        if lo == PROBE_ARENA_BYTES:
            raise HwcError(f"{where}: TFLite Micro needs more than {PROBE_ARENA_BYTES} bytes of arena")
    while hi - lo > ARENA_STEP:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _runs_in(data, mid) else (mid, hi)
    return hi, recorded


class TflmSession(g.SessionBase):
    """A fully integer .tflite run hop by hop in the TFLM Python interpreter (one thread: `threads`
    is taken for the Backend interface only). `arena_size` (default: the measured `arena_bytes`)
    is the arena the session runs in."""

    def __init__(self, path: Path, threads: int = 1, arena_size: int | None = None) -> None:
        path = g.require_file(path)
        self.path = path
        data = path.read_bytes()
        where = str(path)
        try:
            ins, outs = _signature_positions(data)
        except HwcError as exc:
            raise HwcError(f"{path}: {exc}") from None
        if g.SPEC not in ins or g.OUT not in outs:
            raise HwcError(f"{path}: not a hwcompress graph (no '{g.SPEC}' input)")
        n = len(ins) - 1
        #: tensor arena bytes TFLM needs for this model: the smallest it runs in, and what its
        #: recording allocator reported (both measured, see measure_arena)
        self.arena_bytes, self.arena_recorded_bytes = measure_arena(data, where)
        self.arena_size = int(arena_size) if arena_size is not None else self.arena_bytes
        self.model_bytes = len(data)
        self.float_ops = float_ops(data)
        #: the LUT-encoded weight tensors (index bits, bytes), read back from the file
        self.lut_layers = lut_layers(data)
        self.interpreter = _interpreter(data, self.arena_size, where)
        self._in = [ins[g.SPEC], *(ins[g.state_name(i)] for i in range(n))]
        self._out = [outs[g.OUT], *(outs[g.state_out_name(i)] for i in range(n))]
        in_details = [self.interpreter.get_input_details(i) for i in self._in]
        self._in_details = in_details
        self._out_details = [self.interpreter.get_output_details(i) for i in self._out]
        self.frames = int(in_details[0]["shape"][1])
        self.state_shapes = [tuple(int(d) for d in det["shape"][1:]) for det in in_details[1:]]
        self._n = n

    def run(self, spec: np.ndarray, state: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        spec, state = self.checked_inputs(spec, state)
        for index, det, value in zip(self._in, self._in_details, [spec, *state]):
            self.interpreter.set_input(_quantize(value, det), index)
        try:  # uncaptured: a dup2 and a temporary file per hop would be most of a small model's time
            self.interpreter.invoke()
        except Exception:
            # the same hop again under capture, only to read what the kernel printed
            with captured_fd(2) as printed:
                try:
                    self.interpreter.invoke()
                    error: Exception | None = RuntimeError("invoke failed once, then ran")
                except Exception as exc:
                    error = exc
            raise _tflm_error(printed.getvalue(), error, str(self.path)) from None
        res = [_dequantize(self.interpreter.get_output(i), det) for i, det in zip(self._out, self._out_details)]
        return res[0], res[1:]


def _affine(det: dict) -> tuple[float, int]:
    q = det.get("quantization_parameters") or {}
    scales, zeros = list(q.get("scales", [])), list(q.get("zero_points", []))
    if len(scales) != 1:
        raise HwcError(f"TFLM tensor of type {np.dtype(det['dtype']).name} without one per-tensor scale: "
                       "unsupported input/output quantization")
    return float(scales[0]), int(zeros[0])


def _quantize(value: np.ndarray, det: dict) -> np.ndarray:
    dtype = np.dtype(det["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(value, dtype=np.float32)
    scale, zero = _affine(det)
    info = np.iinfo(dtype)
    return np.clip(np.round(value / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(value: np.ndarray, det: dict) -> np.ndarray:
    dtype = np.dtype(det["dtype"])
    if dtype == np.float32:
        return np.asarray(value, dtype=np.float32)
    scale, zero = _affine(det)
    return ((value.astype(np.float32) - zero) * scale).astype(np.float32)


def select_as_select_v2(data: bytes) -> bytes:
    """The model with every SELECT whose condition and operands share one shape rewritten to
    SELECT_V2, the same function there (V2 only adds broadcasting): litert-torch lowers torch.where
    (nn.ELU, for one) to SELECT, which TFLM has no kernel for, while it runs SELECT_V2."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    fb = _schema()
    model = model_editor.read(data)
    changed = False
    for op in model.subgraphs[0].operators:
        if op.opcode != fb.BuiltinOperator.SELECT or len(op.inputs) != 3 or any(t is None for t in op.inputs):
            continue
        if len({tuple(t.shape) for t in op.inputs}) != 1:
            continue
        op.opcode = fb.BuiltinOperator.SELECT_V2
        op._fb.builtinOptionsType = fb.BuiltinOptions.SelectV2Options
        op._fb.builtinOptions = fb.SelectV2OptionsT()
        changed = True
    if not changed:
        return data
    return _aligned(bytes(model.build()))


def _aligned(data: bytes) -> bytes:
    """The flatbuffer re-laid with the schema's buffer alignment by TFLM's own C++ tool (the Python
    flatbuffers builder ignores force_align)."""
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.tflite", Path(tmp) / "out.tflite"
        src.write_bytes(data)
        tflite_flatbuffer_align_wrapper.align_tflite_model(str(src), str(dst))
        return dst.read_bytes()


def calibration_inputs(model: torch.nn.Module, frames: int = CALIBRATION_FRAMES, seed: int = CALIBRATION_SEED,
                       audio: list[np.ndarray] | None = None) -> list[dict[str, np.ndarray]]:
    """About `frames` streaming hops, each with the state torch carries into it: of `audio` (clips
    of 16 kHz speech, the state starting afresh in each; every clip is run through torch whole and
    every n-th hop kept, n spreading `frames` over all of them, since calibrating costs a float
    interpreter run per hop) when given, else `frames` hops of speech-like spectra."""
    import torch

    from hwcompress.export import _trace
    from hwcompress.export.probe import audio_frames, speech_like_frames

    clips = [audio_frames(a) for a in audio] if audio else [speech_like_frames(frames, seed=seed)]
    every = max(1, -(-sum(len(c) for c in clips) // frames))
    rows = []
    with _trace.eval_mode(model), torch.no_grad():
        for spec in clips:
            state = model.initial_state(1)
            for t, frame in enumerate(spec):
                if t % every == 0:
                    rows.append({g.SPEC: frame, **{g.state_name(i): s.numpy().astype(np.float32)
                                                   for i, s in enumerate(state)}})
                _, state = model(torch.from_numpy(frame), state)
    return rows


#: ops of a spectral front end that stay float with everything they depend on: LOG (log-power
#: features) and SQRT (magnitude), whose inputs are power spectra; TFLM's SQRT and LOG kernels are
#: float only besides
FLOAT_FEATURE_OPS = ("LOG", "SQRT")


def log_feature_tensors(data: bytes) -> list[str]:
    """Output tensor names of every FLOAT_FEATURE_OPS op and of the ops it depends on (back to the
    graph inputs): the power spectrum a log-magnitude or magnitude front end computes spans far
    more than int16's ~96 dB (a symmetric int16 grid sized for the loudest bin rounds every bin
    45 dB under it to zero, whose log is the floor), so these few elementwise ops on 161 bins stay
    float."""
    model = _read_model(data)
    sub = model.subgraphs[0]
    producer = {int(t): op for op in sub.operators or [] for t in (op.outputs if op.outputs is not None else [])}
    fb = _schema()
    roots = {getattr(fb.BuiltinOperator, name) for name in FLOAT_FEATURE_OPS}
    todo = [op for op in sub.operators or []
            if _builtin(model, op) in roots]
    seen: list = []
    while todo:
        op = todo.pop()
        if any(op is s for s in seen):
            continue
        seen.append(op)
        todo.extend(producer[int(t)] for t in (op.inputs if op.inputs is not None else []) if int(t) in producer)
    return [sub.tensors[int(t)].name.decode() for op in seen for t in op.outputs]


#: a clustered layer keeps per-channel int8 scales unless one scale for the whole tensor is at most
#: this much worse (weight SNR of the int8 values against the clustered float weights, dB)
PER_TENSOR_MAX_LOSS_DB = 3.0


def _int8_snr_db(w: np.ndarray, per_channel: bool) -> float:
    """Mean over output channels of each channel's SNR (dB) under symmetric int8 weights (scale
    max|w| / 127, per output channel or per tensor). Per channel, not pooled: a pooled SNR is the
    large rows' and hides small rows that one scale rounds away."""
    w = w.reshape(w.shape[0], -1).astype(np.float64)
    peak = np.abs(w).max(axis=1, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    err = np.sum((w - np.round(w / scale) * scale) ** 2, axis=1)
    power = np.sum(w ** 2, axis=1)
    live = power > 0  # pruned (all-zero) channels cost nothing either way
    if not live.any():
        return float("inf")
    return float(np.mean(10 * np.log10(power[live] / np.maximum(err[live], power[live] * 1e-12))))


def clustered_op_scopes(data: bytes, max_values: int = 2 ** LUT_MAX_BITS) -> list[tuple[str, str]]:
    """(op name, ai-edge-quantizer scope) of every LUT_OPS op of a float model whose weight tensor
    holds at most `max_values` distinct values (a clustered layer: K centroids, plus 0 where pruned)
    and loses at most PER_TENSOR_MAX_LOSS_DB of weight SNR to one int8 scale for the whole tensor.
    Those get that one scale, so the K centroids land on K int8 values (each snapped to the nearest
    multiple of scale = max|centroid| / 127) and one value table of K entries serves the tensor.
    The others keep per-channel scales: each channel's centroids are snapped to its own grid, still
    at most K values a channel, so LUT compression gives each channel its own table of up to K
    values (same index bits, a table per channel). Measured on NSNet2 fitted for cortex-m7: one
    scale per tensor for every clustered layer left 18.1 dB of output parity vs torch, per channel
    39.7 dB (GRU input and output matrices whose row scales differ: 26-35 dB weight SNR per tensor,
    38-41 per channel)."""
    model = _read_model(data)
    sub = model.subgraphs[0]
    fb = _schema()
    names = _names(fb.BuiltinOperator)
    out = []
    for op in sub.operators or []:
        name = names.get(_builtin(model, op), "")
        if name not in LUT_OPS or op.inputs is None or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        w = sub.tensors[int(op.inputs[1])]
        raw = model.buffers[w.buffer].data
        if w.type != fb.TensorType.FLOAT32 or raw is None or len(raw) == 0:
            continue
        values = np.frombuffer(np.asarray(raw, dtype=np.uint8).tobytes(), dtype=np.float32)
        if np.unique(values).size > max_values:
            continue
        w = values.reshape([int(d) for d in w.shape]) if w.shape is not None and len(w.shape) > 1 else values[None]
        if _int8_snr_db(w, per_channel=False) >= _int8_snr_db(w, per_channel=True) - PER_TENSOR_MAX_LOSS_DB:
            scope = "".join(sub.tensors[int(t)].name.decode() + ";" for t in op.outputs)
            out.append((name, scope))
    return out


def quantize_16x8(src: Path, dst: Path, samples: list[dict[str, np.ndarray]],
                  keep_float: tuple[str, ...] = (), activation_bits: int = 16) -> None:
    """Full-integer 16x8 quantization of a float .tflite by ai-edge-quantizer: its static_wi8_ai16
    scheme (int8 symmetric per-channel weights, int16 symmetric activations) on every op except the
    spectral feature ops (`log_feature_tensors`), which stay float; clustered layers
    (`clustered_op_scopes`) get per-tensor weight scales. Each tensor's range is the min and max
    over all `samples`: the calibrator's default, a moving average of per-sample ranges, suits
    batches of many frames, but here a sample is one hop, so it would clip louder hops (measured on
    tiny-gru: input range 0.41 for spectra that reach 6.4, 2.1 dB parity). `keep_float`: output
    tensor names of further ops to leave float. `activation_bits=8`: the fully int8 alternative
    (static_wi8_ai8), same weights, for comparing what the int16 activations buy."""
    if activation_bits not in (8, 16):
        raise HwcError(f"TFLite Micro activations are int8 or int16, not {activation_bits}-bit")
    try:
        from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe_manager
        from ai_edge_quantizer.utils import qsv_utils
    except ImportError:
        raise HwcError("TFLite Micro export needs ai-edge-quantizer: pip install 'hwcompress[tflm]'") from None
    try:
        # it prints a size summary on stdout, tqdm bars on stderr, its LiteRT calibration interpreter
        # logs on file descriptor 2 and warns about keeping every tensor: ours carry tables/JSON
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                captured_fd(2), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*experimental_preserve_all_tensors")
            data = Path(src).read_bytes()
            manager = recipe_manager.RecipeManager()
            everything = qtyping.TFLOperationName.ALL_SUPPORTED
            # what recipe.static_wi8_ai16() builds, then the float exceptions (later entries win)
            manager.add_static_config(regex=".*", operation_name=everything, activation_num_bits=activation_bits,
                                      weight_num_bits=8,
                                      algorithm_key=algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT)
            for op_name, scope in clustered_op_scopes(data):
                kind = getattr(qtyping.TFLOperationName, _QUANTIZER_OP_NAMES.get(op_name, op_name))
                manager.add_static_config(regex=f"^{re.escape(scope)}$", operation_name=kind,
                                          activation_num_bits=activation_bits, weight_num_bits=8,
                                          weight_granularity=qtyping.QuantGranularity.TENSORWISE,
                                          algorithm_key=algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT)
            for name in [*log_feature_tensors(data), *keep_float]:
                # an op's scope is its output names, each followed by ";"
                manager.add_quantization_config(regex=f"^{re.escape(name)};$", operation_name=everything,
                                                algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
            scheme = manager.get_quantization_recipe()
            calib = calibrator.Calibrator(data, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
            calib.calibrate({_SIGNATURE: samples}, manager)
            q = quantizer.Quantizer(str(src))
            q.load_quantization_recipe(scheme)
            q.quantize(calib.get_model_qsvs()).export_model(str(dst), overwrite=True)
    except Exception as exc:  # the quantizer raises many types
        raise g.unsupported(f"ai-edge-quantizer ({activation_bits}x8)", exc) from None
    Path(dst).write_bytes(inline_buffers(Path(dst).read_bytes()))


def inline_buffers(data: bytes) -> bytes:
    """The model with every buffer stored inside the flatbuffer. ai-edge-quantizer writes a model
    whose constants exceed 256 KiB with its buffers appended after the flatbuffer (Buffer.offset and
    .size into the file); the flatbuffer object API that TFLM's model_editor (LUT compression,
    SELECT_V2) and this module rewrite models with reads only inline data, so such a model came back
    with every weight empty and TFLM aborted loading it (the default CRN, issue 18)."""
    fb = _schema()
    model = _read_model(data)
    moved = False
    for buf in model.buffers or []:
        if buf.offset and buf.offset > 1:
            end = buf.offset + buf.size
            if end > len(data):
                raise HwcError(f"model file truncated: a buffer ends at byte {end} of {len(data)}")
            buf.data = np.frombuffer(data, dtype=np.uint8, count=buf.size, offset=buf.offset).copy()
            buf.offset, buf.size = 0, 0
            moved = True
    if not moved:
        return data
    import flatbuffers

    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return _aligned(bytes(builder.Output()))


@dataclass(frozen=True)
class LutLayer:
    """One weight tensor as LUT compression stores it: indices of `index_bits` into one value table
    per channel (or one for the tensor), each of at most 2**index_bits int8 values."""

    tensor: str
    op: str
    shape: tuple[int, ...]
    #: channel axis of the tables (the tensor's quantization axis), None for one table
    axis: int | None
    #: most distinct stored values in one table (= the layer's K when its clustering is kept exactly)
    values: int
    index_bits: int
    bytes_before: int
    #: packed indices + value tables + the 16-byte DECODE header
    bytes_after: int

    def to_dict(self) -> dict:
        return asdict(self)


def _lut_axis(tensor) -> int | None:
    q = tensor.quantization
    axis = getattr(q, "axis", None) if q is not None else None
    scales = np.atleast_1d(getattr(q, "scales", [])) if q is not None else []
    if axis is None or len(scales) <= 1 or axis not in (0, len(tensor.shape) - 1):
        return None
    return int(axis)


def _distinct_per_table(values: np.ndarray, axis: int | None) -> int:
    if axis is None:
        return int(np.unique(values).size)
    return max(int(np.unique(ch).size) for ch in np.moveaxis(values, axis, 0))


def lut_plan(data: bytes, max_bits: int = LUT_MAX_BITS) -> list[LutLayer]:
    """The weight tensors of a 16x8 model that LUT compression shrinks: int8 weights of LUT_OPS
    whose tables need at most `max_bits` index bits (ceil(log2 distinct values), at least 1) and
    whose indices + tables take fewer bytes than the int8 values. A dense layer has ~255 distinct
    values per channel and stays as it is; a layer clustered to K codewords has at most K (K + 1
    with pruned zeros) and is stored with ceil(log2 K)-bit indices."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    fb = _schema()
    names = _names(fb.BuiltinOperator)
    model = model_editor.read(data)
    rows, seen = [], set()
    for op in model.subgraphs[0].operators:
        name = names.get(op.opcode, "")
        if name not in LUT_OPS or len(op.inputs) < 2 or op.inputs[1] is None:
            continue
        w = op.inputs[1]
        if w.index in seen or w.dtype != fb.TensorType.INT8 or w.buffer is None or not w.buffer.data:
            continue
        seen.add(w.index)
        values = w.array
        axis = _lut_axis(w)
        distinct = _distinct_per_table(values, axis)
        bits = max(1, int(np.ceil(np.log2(distinct))))
        if bits > max_bits:
            continue
        tables = 1 if axis is None else values.shape[axis]
        after = -(-values.size * bits // 8) + tables * distinct + _DCM_BYTES
        if after >= values.size:
            continue
        rows.append(LutLayer(tensor=w.name or f"tensor {w.index}", op=name, shape=tuple(int(d) for d in values.shape),
                             axis=axis, values=distinct, index_bits=bits, bytes_before=int(values.size),
                             bytes_after=int(after)))
    return rows


def lut_compress(data: bytes, plan: list[LutLayer] | None = None) -> tuple[bytes, list[LutLayer]]:
    """TFLM's LUT compression (tflite_micro.compression) of the tensors in `plan` (default
    `lut_plan(data)`), with DECODE operators the interpreter runs ahead of their consumers.
    Every compressed tensor is decoded back (`lut_decode`) and must equal the int8 values it
    replaced, or this raises. Returns the new file and the plan applied (empty: `data` as it was)."""
    from tflite_micro.tensorflow.lite.micro.compression import compress, model_editor, spec

    plan = lut_plan(data) if plan is None else plan
    if not plan:
        return data, []
    model = model_editor.read(data)
    by_name = {t.name: t for t in model.subgraphs[0].tensors}
    specs = []
    for row in plan:
        if row.index_bits > LUT_MAX_BITS:
            raise HwcError(f"tensor {row.tensor!r}: {row.values} distinct values need {row.index_bits}-bit "
                           f"indices, TFLite Micro's LUT decoder takes at most {LUT_MAX_BITS}")
        mode = spec.PerTensor() if row.axis is None else spec.PerChannel(axis=row.axis)
        specs.append(spec.Tensor(subgraph=0, tensor=by_name[row.tensor].index,
                                 compression=[spec.LookUpTableCompression(index_bitwidth=row.index_bits, mode=mode)]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "resulted in expansion": lut_plan already left those out
            out = bytes(compress(data, specs))
    except Exception as exc:  # CompressionError and the flatbuffer tools' own
        raise HwcError(f"TFLite Micro LUT compression failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    decoded = lut_decode(out)
    for row in plan:
        want = by_name[row.tensor].array
        got = decoded.get(row.tensor)
        if got is None or got.shape != want.shape or not np.array_equal(got, want):
            raise HwcError(f"tensor {row.tensor!r}: its LUT encoding does not decode back to the int8 weights")
    return out, plan


def _unpack_indices(packed: bytes, bits: int, count: int) -> np.ndarray:
    """Big-endian bit fields of `bits` bits, the first at the most significant bit of byte 0."""
    as_bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))[: count * bits].reshape(count, bits)
    return as_bits.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def lut_decode(data: bytes) -> dict[str, np.ndarray]:
    """Every LUT-encoded tensor of a compressed model decoded in numpy from the file's bytes (the
    DECODE op's encoded indices and its ancillary DCM header + value tables), keyed by the name
    of the encoded tensor, which keeps the original weight tensor's name. Written
    from the format, not by calling TFLM's decoder, so it checks the file independently."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    model = model_editor.read(data)
    out = {}
    for op in model.subgraphs[0].operators:
        if op.custom_code != "TFLM_DECODE":
            continue
        for encoded, ancillary, target in zip(op.inputs[0::2], op.inputs[1::2], op.outputs):
            anc = bytes(ancillary.buffer.data)
            if anc[0] != 0:  # decode type 0: LUT
                continue
            params, stride = anc[5], anc[6]
            bits, axis = params & 0x07, params >> 4
            tables = np.frombuffer(anc[_DCM_BYTES:], dtype=target.numpy_dtype)
            shape = tuple(int(d) for d in target.shape)
            count = int(np.prod(shape))
            idx = _unpack_indices(bytes(encoded.buffer.data), bits, count).reshape(shape)
            if axis == 0xF:
                values = tables[:stride][idx]
            else:
                moved = np.moveaxis(idx, axis, 0)
                values = np.moveaxis(np.stack([tables[c * stride:(c + 1) * stride][ch] for c, ch in enumerate(moved)]),
                                     0, axis)
            out[encoded.name] = values
    return out


def lut_layers(data: bytes) -> list[dict]:
    """Index bits and bytes of every LUT-encoded weight tensor of a model file, read back from it."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    model = model_editor.read(data)
    rows = []
    for op in model.subgraphs[0].operators:
        if op.custom_code != "TFLM_DECODE":
            continue
        rows.extend(_lut_row(e, a, t) for e, a, t in zip(op.inputs[0::2], op.inputs[1::2], op.outputs))
    return rows


def _lut_row(encoded, ancillary, target) -> dict:
    """A DECODE op's encoded tensor: its name, decoded shape, index bits (DCM byte 5) and bytes."""
    anc = bytes(ancillary.buffer.data)
    return {"tensor": encoded.name, "shape": [int(d) for d in target.shape], "index_bits": anc[5] & 0x07,
            "bytes": len(encoded.buffer.data) + len(anc)}


def weight_tensors(data: bytes) -> list[dict]:
    """Every weight tensor of the LUT_OPS ops as the file stores it: LUT-encoded (`lut_layers`:
    index bits, bytes of indices + tables + header) or plain int8 (8 bits, one byte a weight), in
    execution order. Read back from the file."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    fb = _schema()
    names = _names(fb.BuiltinOperator)
    model = model_editor.read(data)
    decoded = {}  # decoded tensor index -> its LUT row
    for op in model.subgraphs[0].operators:
        if op.custom_code == "TFLM_DECODE":
            for encoded, ancillary, target in zip(op.inputs[0::2], op.inputs[1::2], op.outputs):
                decoded[target.index] = _lut_row(encoded, ancillary, target)
    rows, seen = [], set()
    for op in model.subgraphs[0].operators:
        name = names.get(op.opcode, "")
        if name not in LUT_OPS or len(op.inputs) < 2 or op.inputs[1] is None or op.inputs[1].index in seen:
            continue
        w = op.inputs[1]
        seen.add(w.index)
        if w.index in decoded:
            row = decoded[w.index]
            rows.append({"tensor": row["tensor"], "op": name, "shape": row["shape"], "storage": "lut",
                         "index_bits": row["index_bits"], "bytes": row["bytes"]})
        elif w.buffer is not None and w.buffer.data and w.dtype == fb.TensorType.INT8:
            rows.append({"tensor": w.name, "op": name, "shape": [int(d) for d in w.shape], "storage": "int8",
                         "index_bits": 8, "bytes": len(w.buffer.data)})
    return rows


def tensor_layers(names: list[str], model: torch.nn.Module, layers: dict[str, str]) -> dict[str, str]:
    """`_litert_convert.tensor_layers` (litert-torch's tensor naming, shared with the LiteRT
    mixed-width export), imported on use: this module loads without torch."""
    from hwcompress.export._litert_convert import tensor_layers as by_name

    return by_name(names, model, layers)


def _bounded_elu_forward(alpha: float):
    def forward(x):
        import torch

        return torch.where(x > 0, x, alpha * (torch.exp(torch.clamp(x, max=0.0)) - 1.0))

    return forward


@contextlib.contextmanager
def bounded_elu(model: torch.nn.Module):
    """Every nn.ELU of `model` computes where(x > 0, x, alpha * (exp(min(x, 0)) - 1)) while the
    block runs: the same function, but its EXP never sees the positive inputs. litert-torch lowers
    ELU to EXP over the whole tensor, whose int16 range then spans exp(max x) (beyond 1e20 on the
    default CRN): every negative input's exp rounds to zero and the SUB after it overflows TFLM's
    rescale (see requant_overflows)."""
    import torch

    elus = [m for m in model.modules() if isinstance(m, torch.nn.ELU)]
    for m in elus:
        m.forward = _bounded_elu_forward(float(m.alpha))
    try:
        yield
    finally:
        for m in elus:
            del m.forward


class TflmBackend:
    name = "tflite-micro"
    suffix = ".tflite"

    def export(self, model: torch.nn.Module, out_dir: Path, mode: str = "stream", *,
               frames: int | None = None, stem: str | None = None, weights: str = "int8",
               lut: bool = True, activations: int = 16, calibration_audio: list[np.ndarray] | None = None) -> Path:
        """The 16x8 .tflite of `model`; with `lut` (default), every weight tensor `lut_plan` finds
        few enough distinct values in (a clustered layer) is LUT-compressed and checked by decoding.
        `activations=8`: fully int8 (the faster, coarser alternative the 16x8 default is compared with).
        `calibration_audio`: clips of real 16 kHz audio the activation ranges are taken on (fit
        passes its corpus's validation mixtures); default: CALIBRATION_FRAMES speech-like hops."""
        if mode != "stream":
            raise HwcError(f"tflite-micro exports streaming graphs only (mode 'stream', one hop per call), "
                           f"not mode {mode!r}")
        if weights != "int8":
            raise HwcError(f"tflite-micro stores int8 weights with int16 activations (16x8) only, "
                           f"not {weights!r} weights: use int8")
        from hwcompress.export.tflite import BACKEND as LITERT

        if activations not in (8, 16):
            raise HwcError(f"tflite-micro activations are int8 or int16 (8 or 16), not {activations!r}")
        dst = Path(out_dir) / (g.artifact_stem(stem, mode, None, "int8") + f"-a{activations}" + self.suffix)
        with g.staging(Path(out_dir)) as tmp:
            with bounded_elu(model):
                flt = LITERT.export(model, tmp, "stream", stem="float")
            # an op TFLM lacks, named before quantizing (SELECT counts as the SELECT_V2 it becomes)
            _interpreter(select_as_select_v2(flt.read_bytes()), PROBE_ARENA_BYTES, dst.name)
            staged = tmp / dst.name
            samples, keep_float = calibration_inputs(model, audio=calibration_audio), ()
            for _ in range(MAX_FLOAT_FALLBACKS + 1):
                quantize_16x8(flt, staged, samples, keep_float, activation_bits=activations)
                quantized = select_as_select_v2(staged.read_bytes())
                staged.write_bytes(quantized)
                overflows = requant_overflows(quantized)
                if overflows:  # TFLM would abort loading it: those ops compute in float
                    outputs = [o for k, _, _ in overflows for o in _op_outputs(quantized, k)]
                    if set(outputs) <= set(keep_float) or len(keep_float) >= MAX_FLOAT_FALLBACKS:
                        k, op, mult = overflows[0]
                        raise HwcError(f"{dst.name}: op {op} (operator {k}) has an output range too narrow beside "
                                       f"its inputs' for TFLite Micro's integer kernel (rescale {mult:.3g} >= 1), "
                                       f"with {len(keep_float)} tensors already left float")
                    keep_float = (*keep_float, *outputs)
                    continue
                try:
                    _interpreter(quantized, PROBE_ARENA_BYTES, dst.name)
                    break
                except KernelError as exc:
                    # a kernel without an int16 form (TFLM's DIV, for one): that op computes in float
                    outputs = _op_outputs(quantized, exc.operator)
                    if f"INT{activations}" not in exc.detail or not outputs or set(outputs) <= set(keep_float) \
                            or len(keep_float) >= MAX_FLOAT_FALLBACKS:
                        raise
                    keep_float = (*keep_float, *outputs)
            else:
                raise HwcError(f"{dst.name}: no 16x8 form TFLite Micro runs after leaving {len(keep_float)} "
                               "tensors float")
            if lut:
                data, _ = lut_compress(staged.read_bytes())
                staged.write_bytes(data)
            _interpreter(staged.read_bytes(), PROBE_ARENA_BYTES, dst.name)  # every op runs in TFLM
            g.publish([(staged, dst)])
        return dst

    def load(self, path: Path, threads: int = 1, precision: str | None = None) -> TflmSession:
        g.check_precision(self.name, precision)
        return TflmSession(path, threads)


BACKEND = TflmBackend()
