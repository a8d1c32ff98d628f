"""LiteRT (.tflite) export with litert-torch and the ai-edge-litert interpreter session.

Two packages, installed differently:
  - ai-edge-litert (runtime, ~60 MB) lives in the main environment;
  - litert-torch (converter) would downgrade typing_extensions and pydantic there and
    weighs ~1 GB more, so `HWC_EXTRAS=tflite tools/setup.sh` installs it into
    .venv-tflite (a .pth file there adds the project .venv's site-packages after its own:
    it reuses that torch and hwcompress), and
    export runs the conversion in that interpreter. Override the interpreter with
    $HWC_LITERT_PYTHON; if litert-torch imports in the current process, it is used
    directly.
litert-torch unrolls nn.LSTM/nn.GRU over time (torch.export fixes their sequence
length), so every .tflite has a fixed T: 1 for streaming, `frames` (default
WHOLE_FRAMES) for whole-utterance.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ai_edge_litert.interpreter import Interpreter

import hwcompress
from hwcompress.errors import HwcError
from hwcompress.export import _graph as g
from hwcompress.export import check_int4_layers, check_mode

if TYPE_CHECKING:  # the converter side (torch, _litert_convert) loads on export only
    import torch

REPO = Path(hwcompress.__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
ENV_PYTHON = "HWC_LITERT_PYTHON"
#: T of the whole-utterance .tflite: 1 s of 10 ms hops
WHOLE_FRAMES = 100


def converter_python() -> str | None:
    """The interpreter that converts: None means this process can (litert-torch imports)."""
    explicit = os.environ.get(ENV_PYTHON)
    if explicit:
        return explicit
    if importlib.util.find_spec("litert_torch") is not None:
        return None
    if VENV_PYTHON.exists():
        return str(VENV_PYTHON)
    raise HwcError(
        "LiteRT export needs the optional converter litert-torch: "
        f"HWC_EXTRAS=tflite tools/setup.sh (installs it into {VENV_PYTHON.parent.parent.name}) or set ${ENV_PYTHON}"
    )


def _convert_in_subprocess(python: str, program: torch.export.ExportedProgram,
                           kwargs: dict[str, torch.Tensor], dst: Path, tmp: Path) -> None:
    import torch

    from hwcompress.export import _litert_convert as conv

    program_file, inputs_file = tmp / "model.pt2", tmp / "inputs.pt"
    torch.export.save(program, program_file)
    torch.save(kwargs, inputs_file)
    env = dict(os.environ, LITERT_TORCH_SHOW_PROGRESS="n")
    # this very source tree first, not another installed copy of hwcompress
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    try:
        proc = subprocess.run(
            [python, "-m", "hwcompress.export._litert_convert", str(program_file), str(inputs_file), str(dst)],
            capture_output=True, text=True, env=env, cwd=tmp,
        )
    except OSError as exc:
        raise HwcError(f"LiteRT converter interpreter {python} cannot run: {exc.strerror or exc}") from None
    if proc.returncode == 0 and dst.is_file():
        return
    tagged = [ln for ln in proc.stderr.splitlines() if ln.startswith(conv.ERROR_TAG)]
    if tagged:
        raise HwcError(tagged[-1][len(conv.ERROR_TAG):])
    last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit code {proc.returncode}")
    raise HwcError(f"LiteRT converter ({python}) failed: {last.strip()[:200]}")


#: the op whose weights LiteRT stores and runs at 4 bits here: FULLY_CONNECTED, which is every
#: LSTM/GRU gate matmul and Linear as litert-torch lowers them (XNNPACK has dynamic-range int4
#: fully-connected kernels; ai-edge-quantizer's int4 recipes also take CONV_2D, but these models'
#: convolutions hold under 3% of their weights, so they stay int8)
INT4_OP = "FULLY_CONNECTED"
def quantize(src: Path, dst: Path, weights: str = "int8", int4_scopes: list[str] | None = None) -> None:
    """LiteRT dynamic-range quantization (per-channel integer weights, float activations;
    XNNPACK runs the FULLY_CONNECTED/CONV ops with dynamically quantized inputs) by
    ai-edge-quantizer, Google's post-training quantizer for .tflite files. int8: every weight
    op 8-bit; int4: FULLY_CONNECTED ops 4-bit (symmetric per output channel), the rest 8-bit;
    mixed: 4-bit only for the FULLY_CONNECTED ops whose output tensor is in `int4_scopes`."""
    try:
        from ai_edge_quantizer import quantizer, recipe
        from ai_edge_quantizer.qtyping import TFLOperationName
    except ImportError:
        raise HwcError("LiteRT int8 export needs ai-edge-quantizer: pip install 'hwcompress[tflite]'") from None
    import re

    fc = TFLOperationName(INT4_OP)
    chosen = recipe.dynamic_wi8_afp32()  # the quantizer lets the last matching entry win
    if weights == "int4":
        chosen = chosen + recipe.dynamic_wi4c_afp32(operation_name=fc)
    for scope in (int4_scopes or []) if weights == "mixed" else []:
        # the quantizer matches an op by its output tensor names joined and closed with ";"
        chosen = chosen + recipe.dynamic_wi4c_afp32(regex=f"^{re.escape(scope)};$", operation_name=fc)
    try:
        # it prints a size summary on stdout and tqdm bars on stderr: ours carry tables/JSON
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            q = quantizer.Quantizer(str(src))
            q.load_quantization_recipe(chosen)
            q.quantize().export_model(str(dst), overwrite=True)
    except Exception as exc:  # the quantizer raises many types
        raise g.unsupported("ai-edge-quantizer", exc) from None
    exact_grid(src, dst)


def _unpack_int4(raw: np.ndarray, count: int) -> np.ndarray:
    """TFLite's packed INT4 tensor data: two signed values a byte, low nibble first."""
    b = raw.astype(np.uint8)
    q = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(-1)[:count].astype(np.int8)
    return np.where(q > 7, q - 16, q).astype(np.int8)


def _pack_int4(q: np.ndarray) -> np.ndarray:
    flat = q.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    u = (flat.astype(np.int16) & 0x0F).astype(np.uint8)
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def _keyed(pairs: list[tuple[str, int]]) -> dict[str, int]:
    """Weight ops (output tensor name, weight tensor index), in op order, keyed by the output name
    and, from its second use on, "#n": litert-torch gives the ops of one module the same output
    name (a CRN's four LSTM gate matmuls), and the quantizer keeps the op order, so the n-th op of
    a name is the same op in the fp32 and the quantized file."""
    seen: dict[str, int] = {}
    out = {}
    for name, t in pairs:
        seen[name] = seen.get(name, 0) + 1
        out[name if seen[name] == 1 else f"{name}#{seen[name]}"] = t
    return out


def _buffer_span(buf) -> tuple[int, int] | None:
    """(byte position, size) of a flatbuffer Buffer's contents in the file: inline data, or the
    offset/size form large models use (ai-edge-quantizer writes buffers after the flatbuffer);
    None for an empty buffer."""
    if buf.DataLength():
        return _vector_at(buf, _BUFFER_DATA), buf.DataLength()
    if buf.Offset() > 1 and buf.Size():
        return int(buf.Offset()), int(buf.Size())
    return None


def _weight_op_tensors(model) -> dict[str, int]:
    sub, pairs = model.Subgraphs(0), []
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        if op.InputsLength() > 1 and op.Inputs(1) >= 0 and op.OutputsLength():
            pairs.append((sub.Tensors(op.Outputs(0)).Name().decode(), op.Inputs(1)))
    return _keyed(pairs)


def stored_weight_values(path: Path, integer_only: bool = False) -> dict[str, np.ndarray]:
    """The weights of a .tflite's weight ops as the runtime holds them (integer ones dequantized,
    q * scale of their channel; float32 ones as stored): op output name -> float32 array in the
    file's layout (`_keyed`: "#n" from a name's second op on). Checks a quantized file element by
    element against the fp32 file of the same model (same ops, names and layouts)."""
    from ai_edge_litert import schema_py_generated as fb

    data = Path(path).read_bytes()
    model = fb.Model.GetRootAsModel(data, 0)
    sub, out = model.Subgraphs(0), {}
    for name, t in _weight_op_tensors(model).items():
        tensor = sub.Tensors(t)
        span = _buffer_span(model.Buffers(tensor.Buffer()))
        shape = tuple(int(v) for v in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        if span is None or not shape:
            continue
        count = int(np.prod(shape))
        raw = np.frombuffer(data, dtype=np.uint8, count=span[1], offset=span[0])
        if tensor.Type() == fb.TensorType.FLOAT32 and raw.size == 4 * count:
            if not integer_only:
                out[name] = raw.view(np.float32).reshape(shape).copy()
            continue
        qp = tensor.Quantization()
        if qp is None or not qp.ScaleLength() or tensor.Type() not in (fb.TensorType.INT8, fb.TensorType.INT4):
            continue
        q = _unpack_int4(raw, count) if tensor.Type() == fb.TensorType.INT4 else raw.view(np.int8)[:count]
        scale = qp.ScaleAsNumpy().astype(np.float32)
        bshape = [1] * len(shape)
        if scale.size > 1:
            bshape[int(qp.QuantizedDimension())] = scale.size
        zero = (qp.ZeroPointAsNumpy().astype(np.float32) if qp.ZeroPointLength() else np.zeros(1, np.float32))
        out[name] = ((q.reshape(shape).astype(np.float32) - zero.reshape(bshape if zero.size > 1 else [1] * len(shape)))
                     * scale.reshape(bshape)).astype(np.float32)
    return out


def exact_weights(path: Path, reference: Path) -> dict[str, bool]:
    """Per integer weight of the quantized .tflite `path`, whether it equals, element by element,
    the weight of the same op in `reference` (the fp32 .tflite of the same model)."""
    ours, theirs = stored_weight_values(path, integer_only=True), stored_weight_values(reference)
    return {op: op in theirs and np.array_equal(w, theirs[op]) for op, w in ours.items()}


def _vector_at(table, slot: int) -> int | None:
    """Byte position of the first element of a flatbuffer table's vector field (vtable `slot`)."""
    o = table._tab.Offset(slot)
    return table._tab.Vector(o) if o else None


#: vtable slots of the fields patched in place (schema order: Buffer.data; QuantizationParameters
#: min, max, scale, zero_point: slot = 4 + 2 * field index)
_BUFFER_DATA, _QUANT_SCALE, _QUANT_ZERO = 4, 8, 10


def exact_grid(src: Path, dst: Path) -> list[str]:
    """Rewrite, in the quantized `dst`, every integer weight whose float original in `src` (the
    fp32 .tflite it was quantized from, matched by op output name) lies on the symmetric integer
    grid of its stored width (compress.cluster.grid_step): every channel's scale becomes the grid's
    step, zero point 0, and the integers w / step, so the file dequantizes to exactly the `.hwc`
    values (ai-edge-quantizer's absmax scale per channel would not). Returns the ops rewritten.
    Written here: ai-edge-quantizer takes no given scales for weights. The bytes are patched in
    place (same sizes), which keeps the file's layout and buffer alignment as the quantizer wrote it."""
    from ai_edge_litert import schema_py_generated as fb

    from hwcompress.compress.cluster import grid_step

    fdata, data = Path(src).read_bytes(), bytearray(Path(dst).read_bytes())
    floats, model = fb.Model.GetRootAsModel(fdata, 0), fb.Model.GetRootAsModel(bytes(data), 0)
    f_sub, sub = floats.Subgraphs(0), model.Subgraphs(0)
    f_weights = _weight_op_tensors(floats)
    bits_of = {fb.TensorType.INT8: 8, fb.TensorType.INT4: 4}
    done, rewritten = set(), []
    for name, t in _weight_op_tensors(model).items():
        tensor = sub.Tensors(t)
        if t in done or name not in f_weights or tensor.Type() not in bits_of:
            continue
        ft = f_sub.Tensors(f_weights[name])
        shape = tuple(int(v) for v in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        qp = tensor.Quantization()
        fspan, span = _buffer_span(floats.Buffers(ft.Buffer())), _buffer_span(model.Buffers(tensor.Buffer()))
        if (ft.Type() != fb.TensorType.FLOAT32 or qp is None or not qp.ScaleLength() or not shape or fspan is None
                or span is None or tuple(int(v) for v in ft.ShapeAsNumpy()) != shape
                or fspan[1] != 4 * int(np.prod(shape))):
            continue
        w = np.frombuffer(fdata, dtype="<f4", count=fspan[1] // 4, offset=fspan[0]).reshape(shape)
        bits = bits_of[tensor.Type()]
        step = grid_step(w, bits)
        if step is None:
            continue
        q = np.rint(w.astype(np.float64) / step).astype(np.int8)
        packed = _pack_int4(q) if bits == 4 else q.view(np.uint8).reshape(-1)
        at, size = span
        if size != packed.size:
            continue
        data[at:at + size] = packed.tobytes()
        n = qp.ScaleLength()
        s_at = _vector_at(qp, _QUANT_SCALE)
        data[s_at:s_at + 4 * n] = np.full(n, step, dtype="<f4").tobytes()
        z_at = _vector_at(qp, _QUANT_ZERO)
        if z_at is not None:
            data[z_at:z_at + 8 * qp.ZeroPointLength()] = np.zeros(qp.ZeroPointLength(), dtype="<i8").tobytes()
        done.add(t)
        rewritten.append(name)
    if rewritten:
        Path(dst).write_bytes(bytes(data))
    return rewritten


def quantize_int8(src: Path, dst: Path) -> None:
    quantize(src, dst, "int8")


def weight_ops(path: Path) -> list[dict]:
    """Every weight-carrying op of a .tflite (FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D,
    TRANSPOSE_CONV, BATCH_MATMUL with a constant operand): op, output tensor name, weight shape
    and stored element type ("FLOAT32", "INT8", "INT4", ...), read from the flatbuffer (the
    interpreter reports int4 tensors as int8)."""
    from ai_edge_litert import schema_py_generated as fb

    ops = {getattr(fb.BuiltinOperator, n): n for n in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D",
                                                        "TRANSPOSE_CONV", "BATCH_MATMUL")}
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    model = fb.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    sub = model.Subgraphs(0)
    rows = []
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = ops.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if name is None:
            continue
        # the weights are input 1 of each (TRANSPOSE_CONV: output shape, weights, input)
        if op.InputsLength() < 2 or op.Inputs(1) < 0:
            continue
        w = sub.Tensors(op.Inputs(1))
        if model.Buffers(w.Buffer()).DataLength() == 0 and w.Type() not in (fb.TensorType.INT8, fb.TensorType.INT4):
            continue  # an activation operand (a BATCH_MATMUL of two activations); float weights behind a
            # DEQUANTIZE are read at that op's input
        rows.append({"op": name, "output": sub.Tensors(op.Outputs(0)).Name().decode(),
                     "shape": [int(w.Shape(j)) for j in range(w.ShapeLength())], "type": types.get(w.Type(), str(w.Type()))})
    return rows


def layer_widths(path: Path, model: torch.nn.Module) -> dict[str, str]:
    """Per layer of `model`, the width(s) the .tflite stores its weights at ("int8", "int4",
    "float32", or several joined by "/"), read back from the flatbuffer."""
    from hwcompress.export._litert_convert import tensor_layers
    from hwcompress.models.cost import layer_paths

    ops = weight_ops(path)
    layer_of = tensor_layers([o["output"] for o in ops], model, layer_paths(model))
    out: dict[str, set] = {}
    for o in ops:
        out.setdefault(layer_of.get(o["output"], "?"), set()).add(o["type"].lower())
    return {layer: "/".join(sorted(t)) for layer, t in out.items()}


def mixed_scopes(staged: Path, model: torch.nn.Module, int4_layers: list[str] | None = None) -> list[str]:
    """Output tensor names of the FULLY_CONNECTED ops of `staged` (an fp32 .tflite of `model`)
    that belong to `int4_layers` (default: `mixed_layers(model)`)."""
    from hwcompress.export import mixed_layers
    from hwcompress.export._litert_convert import tensor_layers
    from hwcompress.models.cost import layer_paths

    chosen = set(mixed_layers(model) if int4_layers is None else int4_layers)
    outputs = [r["output"] for r in weight_ops(staged) if r["op"] == INT4_OP]
    layer_of = tensor_layers([o.split(";")[0] for o in outputs], model, layer_paths(model))
    return [o for o in outputs if layer_of.get(o.split(";")[0]) in chosen]


class LiteRtSession(g.SessionBase):
    def __init__(self, path: Path, threads: int = 1) -> None:
        path = g.require_file(path)
        self._path, self._threads, self.preserve_all_tensors = path, threads, False
        try:
            self._open()
        except Exception as exc:
            raise g.corrupt(path, "LiteRT", exc) from None
        details = self._ins
        if g.SPEC not in details:
            raise HwcError(f"{path}: not a hwcompress graph (no '{g.SPEC}' input)")
        n = len(details) - 1
        self.state_shapes = [tuple(int(d) for d in details[g.state_name(i)]["shape"][1:]) for i in range(n)]
        self.frames = int(details[g.SPEC]["shape"][1])
        self._n = n
        # fully integer models (e.g. ai-edge-quantizer static int8) take and give int8 tensors:
        # (scale, zero point) per quantized input/output, so callers keep speaking float
        self._in_q = {k: _affine(d) for k, d in details.items() if d["dtype"] != np.float32}
        self._out_q = {k: _affine(d) for k, d in self._outs.items() if d["dtype"] != np.float32}

    def _open(self) -> None:
        self.interpreter = Interpreter(model_path=str(self._path), num_threads=self._threads,
                                       experimental_preserve_all_tensors=self.preserve_all_tensors)
        runner = self.interpreter.get_signature_runner()
        # The signature runner resizes every input and re-runs AllocateTensors on each call;
        # a streaming graph's shapes never change, so a hop sets the tensors by index on the
        # allocated interpreter instead (benchmarks/hop_overhead.md times both). The state
        # still round-trips through numpy: TFLite's arena may reuse an input's memory for later
        # tensors within an invoke, so inputs are rewritten before every invoke, after every
        # output has been read. A live runner holds the interpreter, which then refuses
        # set_tensor/invoke: the fast path keeps none.
        ins, outs = self._ins, self._outs = runner.get_input_details(), runner.get_output_details()
        n = len(ins) - 1
        self._in_idx = [ins[name]["index"] for name in g.input_names(n)] if g.SPEC in ins else []
        self._out_idx = [outs[name]["index"] for name in g.output_names(n)] if g.OUT in outs else []
        self._direct = bool(self._in_idx and self._out_idx) and getattr(runner, "_subgraph_index", 0) == 0 \
            and all(d["dtype"] == np.float32 for d in (*ins.values(), *outs.values()))
        self.runner = None if self._direct else runner
        del runner
        # allocated on the first fast hop, not here: an interpreter allocated by hand and then
        # driven by a signature runner (fast_path = False) fails to set XNNPACK up again on the
        # default CRN ("failed to setup XNNPACK runtime"); the runner's calls allocate on their own
        self._allocated = False
        if self._direct:
            self._spec_shape = tuple(int(d) for d in ins[g.SPEC]["shape"])

    def hop(self, spec: np.ndarray) -> np.ndarray:
        if not (self._direct and self.fast_path):
            return super().hop(spec)
        if getattr(spec, "shape", None) != self._spec_shape:
            raise HwcError(f"spec must be {list(self._spec_shape)}, got {list(np.shape(spec))}")
        self.runner = None
        it = self.interpreter
        if not self._allocated:
            it.allocate_tensors()
            self._allocated = True
        held = getattr(self, "_held", None)
        if held is None:
            held = [np.zeros((1, *s), np.float32) for s in self.state_shapes]
        it.set_tensor(self._in_idx[0], g.as_input(spec))
        for index, array in zip(self._in_idx[1:], held):
            it.set_tensor(index, array)
        it.invoke()
        try:
            # get_tensor copies: what is handed back and held survives the next invoke
            outs = [it.get_tensor(index) for index in self._out_idx]
        except ValueError as exc:
            if self.preserve_all_tensors or "null" not in str(exc):  # as in `run`: keep every tensor alive
                raise
            self.preserve_all_tensors = True
            self._open()
            return self.hop(spec)
        self._held = outs[1:]
        return outs[0]

    def run(self, spec: np.ndarray, state: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        spec, state = self.checked_inputs(spec, state)
        if self._direct and self.fast_path:
            self._held = state
            out = self.hop(spec)
            return out, list(self._held)
        feed = {g.SPEC: spec, **{g.state_name(i): s for i, s in enumerate(state)}}
        for name, (scale, zero, dtype) in self._in_q.items():
            info = np.iinfo(dtype)
            feed[name] = np.clip(np.round(feed[name] / scale) + zero, info.min, info.max).astype(dtype)
        if self.runner is None:
            self.runner = self.interpreter.get_signature_runner()
        try:
            res = self.runner(**feed)
            self._allocated = True
        except ValueError as exc:
            # seen with ai-edge-quantizer's static int8 output: LiteRT's memory planner leaves an
            # output unallocated ("Tensor data is null"); keeping every tensor alive fixes it
            if self.preserve_all_tensors or "null" not in str(exc):
                raise
            self.preserve_all_tensors = True
            self._open()
            self.runner = self.runner or self.interpreter.get_signature_runner()
            res = self.runner(**feed)
        for name, (scale, zero, _) in self._out_q.items():
            res[name] = ((res[name].astype(np.float32) - zero) * scale).astype(np.float32)
        return res[g.OUT], [res[g.state_out_name(i)] for i in range(self._n)]


def _affine(detail: dict) -> tuple[float, int, np.dtype]:
    q = detail.get("quantization_parameters") or {}
    scales, zeros = q.get("scales", []), q.get("zero_points", [])
    if len(scales) != 1:
        raise HwcError(f"LiteRT tensor {detail.get('name')!r} is {detail['dtype'].__name__} without one "
                       "per-tensor scale: unsupported input/output quantization")
    return float(scales[0]), int(zeros[0]), np.dtype(detail["dtype"])


class LiteRtBackend:
    name = "litert"
    suffix = ".tflite"

    def export(self, model: torch.nn.Module, out_dir: Path, mode: str = "stream", *,
               frames: int | None = None, stem: str | None = None, weights: str = "fp32",
               int4_layers: list[str] | None = None) -> Path:
        """`int4_layers` (weights="mixed"): the layers to store at 4 bits (the fit passes the ones it
        chose K <= 16 for, also for its unclustered probes); default: `export.mixed_layers`."""
        check_mode(mode, weights, self.name)
        if weights == "mixed" and int4_layers is not None:
            check_int4_layers(self.name, model, int4_layers)
        t = 1 if mode == "stream" else int(frames or WHOLE_FRAMES)
        dst = Path(out_dir) / (g.artifact_stem(stem, mode, t if mode == "whole" else None, weights) + self.suffix)
        from hwcompress.export import _litert_convert as conv

        python = converter_python()
        program, kwargs = conv.trace(model, t)
        with g.staging(Path(out_dir)) as tmp:
            staged = tmp / dst.name
            try:
                if python is None:
                    conv.convert_program(program, kwargs, staged)
                else:
                    _convert_in_subprocess(python, program, kwargs, staged, tmp)
            except HwcError as exc:
                raise HwcError(conv.locate(str(exc), program)) from None
            scopes = mixed_scopes(staged, model, int4_layers) if weights == "mixed" else None
            g.publish([(g.with_weights(staged, weights, lambda a, b: quantize(a, b, weights, scopes)), dst)])
        return dst

    def load(self, path: Path, threads: int = 1, precision: str | None = None) -> LiteRtSession:
        g.check_precision(self.name, precision)
        return LiteRtSession(path, threads)


BACKEND = LiteRtBackend()
