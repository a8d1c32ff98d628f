"""Import a frame-wise speech-enhancement network from an ONNX file into torch.

`import_onnx(path)` returns a `torch.fx.GraphModule` whose forward takes the ONNX graph's
inputs (for an SE model: features [B, T, F], the whole utterance) and returns its outputs.
Every weight layer becomes a real torch module, an attribute of the result with a readable
name: MatMul(+Add) / Gemm with a constant weight -> `nn.Linear`, GRU -> `nn.GRU`, LSTM ->
`nn.LSTM`, Conv -> `nn.Conv1d/2d`, ConvTranspose -> `nn.ConvTranspose1d/2d`, so the
compression stages find and prune them like any zoo model's. The rest of the graph is
plain torch calls in the fx graph, so `torch.fx.symbolic_trace` and `torch.onnx.export`
of the result work.

Written by hand on purpose: onnx2torch (the maintained converter) has no GRU or LSTM
converter, which every recurrent SE model needs, and it depends on torchvision, whose
install upgrades the pinned torch. The subset SE graphs use is small, and an interpreter
we own can map ONNX recurrences onto nn.GRU/nn.LSTM exactly (gate order, bias layout,
linear_before_reset, sequence layout) and refuse anything it cannot map in one line.

The file is data: it is parsed with `onnx` (external-data files refused, sizes bounded)
and interpreted op by op; nothing in it is executed. Subgraphs computed only from
constants are folded at import time with torch (sizes checked on the meta device first).
`Shape` is kept dynamic (`x.size(i)` in the graph), so reshapes derived from it follow
the input's batch and length. A recurrence's initial state that is provably zero (a
`ConstantOfShape` of 0, possibly sliced) becomes torch's default zero state.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from hwcompress.errors import HwcError

#: bounds on what a file may ask for (an SE network is a few MB; these are 100x that)
MAX_FILE_BYTES = 1 << 30
MAX_NODES = 20_000
MAX_PARAMS = 200_000_000  # elements in initializers and constants, all together
MAX_FOLDED = 1 << 26  # elements in one tensor computed at import time
MAX_INPUTS = 64

_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
_BIG = 1 << 62  # Slice bounds at or beyond this mean "to the end"


@dataclass
class _V:
    """What one ONNX value is while importing: a runtime tensor (`node`), a constant
    (`const`), or a shape vector whose elements are ints or runtime sizes (`dims`)."""

    node: fx.Node | None = None
    const: torch.Tensor | None = None
    dims: list | None = None
    scalar: bool = False  # `dims` holds the one element of a 0-d shape value
    rank: int | None = None
    dtype: torch.dtype = torch.float32
    zero: bool = False  # known to be all zeros (ConstantOfShape of 0 and its reshapes)
    unsq: tuple | None = None  # (axis, _V): this tensor is that one unsqueezed at axis

    @property
    def r(self) -> int | None:
        if self.const is not None:
            return self.const.dim()
        if self.dims is not None:
            return 0 if self.scalar else 1
        return self.rank


def _is_int_dtype(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _has_node(obj: Any) -> bool:
    found = []
    fx.node.map_arg(obj, lambda n: found.append(n) or n)
    return bool(found)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _ident(text: str) -> str:
    name = re.sub(r"\W", "_", text).strip("_").lower()
    return name if name and not name[0].isdigit() else ""


class _Importer:
    def __init__(self, model, origin: str) -> None:
        import onnx

        self.onnx = onnx
        self.model = model
        self.origin = origin
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.root = nn.Module()
        self.g = fx.Graph()
        self.vals: dict[str, _V] = {}
        self.buffers: dict[int, str] = {}
        self.kind_count: Counter = Counter()
        self.fused: dict[int, str] = {}  # node index -> the value its output is (Add folded into a Linear)
        self.consumers: dict[str, list[int]] = {}
        self.node_index = -1
        self.node = None
        self.ref: fx.Node | None = None  # any runtime input, to create tensors on
        self.inferred: dict[str, list] = {}
        self.loaded = 0  # elements of initializers and constants decoded so far

    # ------------------------------------------------------------------ errors
    def fail(self, why: str) -> HwcError:
        n = self.node
        where = f"{n.op_type} node {n.name or '#' + str(self.node_index)!r}: " if n is not None else ""
        return HwcError(f"{self.origin}: {where}{why}")

    # ------------------------------------------------------------------ values
    def tensor(self, t: torch.Tensor) -> _V:
        return _V(const=t, dtype=t.dtype)

    def shape(self, dims: list, scalar: bool = False) -> _V:
        if all(isinstance(d, int) for d in dims):
            t = torch.tensor(dims, dtype=torch.int64)
            return self.tensor(t.reshape(()) if scalar else t)
        return _V(dims=list(dims), scalar=scalar, dtype=torch.int64)

    def result(self, out: Any, rank: int | None, dtype: torch.dtype, **kw) -> _V:
        if isinstance(out, fx.Node):
            return _V(node=out, rank=rank, dtype=dtype, **kw)
        if isinstance(out, torch.Tensor):
            return _V(const=out, dtype=out.dtype, zero=kw.get("zero", False))
        raise self.fail(f"internal: unexpected folded value {type(out).__name__}")

    def from_proto(self, proto) -> torch.Tensor:
        from onnx import numpy_helper

        n = 1
        for d in proto.dims:
            n *= d
        self.loaded += n
        if n > MAX_FOLDED or self.loaded > MAX_PARAMS:
            raise self.fail(f"tensor {proto.name!r} has {n:,} elements ({self.loaded:,} so far; limits "
                            f"{MAX_FOLDED:,} per tensor, {MAX_PARAMS:,} in all)")
        if proto.data_type not in _DTYPES:
            raise self.fail(f"tensor {proto.name!r} has an unsupported element type {proto.data_type}")
        try:
            arr = numpy_helper.to_array(proto)
        except Exception as exc:  # malformed raw data comes as several numpy/onnx errors
            raise self.fail(f"tensor {proto.name!r} is unreadable ({_first_line(exc)})") from None
        return torch.from_numpy(arr.copy())

    def arg(self, v: _V) -> Any:
        """The value as an fx argument: a node, or (folded) the constant itself."""
        if v.node is not None:
            return v.node
        if v.const is not None:
            return v.const
        raise self.fail("a shape value is used as a tensor (not supported)")

    def const(self, v: _V | None, what: str) -> torch.Tensor:
        if v is None or v.const is None:
            raise self.fail(f"{what} must be a constant")
        return v.const

    def ints(self, v: _V | None, what: str) -> list:
        """A 1-D int64 value as a list of ints and runtime sizes."""
        if v is None:
            raise self.fail(f"{what} is missing")
        if v.dims is not None:
            return list(v.dims)
        t = self.const(v, what)
        if not _is_int_dtype(t.dtype) or t.dim() > 1:
            raise self.fail(f"{what} must be a 1-D integer tensor")
        return [int(x) for x in t.reshape(-1).tolist()]

    def buffer(self, t: torch.Tensor) -> fx.Node:
        name = self.buffers.get(id(t))
        if name is None:
            name = f"const{len(self.buffers)}"
            self.root.register_buffer(name, t)
            self.buffers[id(t)] = name
        return self.g.get_attr(name)

    def call(self, op: str, target: Any, *args, **kwargs) -> Any:
        """A graph node, or the value itself when every argument is a constant (folding)."""
        if not _has_node((args, kwargs)):
            return self.fold(op, target, args, kwargs)
        args, kwargs = fx.node.map_aggregate((args, kwargs),
                                             lambda a: self.buffer(a) if isinstance(a, torch.Tensor) else a)
        if op == "call_function":
            return self.g.call_function(target, tuple(args), kwargs)
        if op == "call_method":
            return self.g.call_method(target, tuple(args), kwargs)
        return self.g.call_module(target, tuple(args), kwargs)

    def fold(self, op: str, target: Any, args: tuple, kwargs: dict) -> Any:
        def run(a, k):
            if op == "call_function":
                return target(*a, **k)
            if op == "call_method":
                return getattr(a[0], target)(*a[1:], **k)
            return self.root.get_submodule(target)(*a, **k)

        try:
            if op != "call_module":  # size first: a constant subgraph must not allocate without bound
                meta = fx.node.map_aggregate((args, kwargs),
                                             lambda a: a.to("meta") if isinstance(a, torch.Tensor) else a)
                probe = run(*meta)
                for t in probe if isinstance(probe, (tuple, list)) else [probe]:
                    if isinstance(t, torch.Tensor) and t.numel() > MAX_FOLDED:
                        raise self.fail(f"a constant of {t.numel():,} elements (limit {MAX_FOLDED:,})")
            with torch.no_grad():
                return run(args, kwargs)
        except (RuntimeError, ValueError, IndexError, NotImplementedError) as exc:
            raise self.fail(f"cannot evaluate ({_first_line(exc)})") from None

    def module(self, kind: str, mod: nn.Module, hint: str = "") -> str:
        name = _ident(hint)
        if not name or hasattr(self.root, name):
            name = f"{kind}{self.kind_count[kind]}"
            self.kind_count[kind] += 1
            while hasattr(self.root, name):
                name = f"{kind}{self.kind_count[kind]}"
                self.kind_count[kind] += 1
        self.root.add_module(name, mod)
        return name

    def hint(self, *names: str) -> str:
        """A readable module name from a torch-style parameter name (`fc_in.0.bias` -> fc_in_0)."""
        for n in names:
            m = re.fullmatch(r"(.+)\.(weight|bias)(_\w+)?", n or "")
            if m:
                return m.group(1)
        return ""

    def check_size(self, dims: list, what: str) -> None:
        """Refuse a tensor the graph would create whose constant sizes alone are absurd."""
        n = 1
        for d in dims:
            if isinstance(d, int):
                if d < 0:
                    raise self.fail(f"{what} has a negative size {d}")
                n *= d
        if n > MAX_FOLDED:
            raise self.fail(f"{what} of shape {dims} is too large (limit {MAX_FOLDED:,} elements)")

    def axis(self, a: int, rank: int | None, what: str = "axis") -> int:
        if a < 0:
            if rank is None:
                raise self.fail(f"negative {what} {a} on a tensor of unknown rank")
            a += rank
        if rank is not None and not 0 <= a < rank:
            raise self.fail(f"{what} {a} out of range for rank {rank}")
        return a

    # ------------------------------------------------------------------ driver
    def build(self) -> fx.GraphModule:
        graph = self.graph
        if len(graph.node) > MAX_NODES:
            raise HwcError(f"{self.origin}: {len(graph.node):,} nodes (limit {MAX_NODES:,})")
        for t in graph.initializer:
            self.vals[t.name] = self.tensor(self.from_proto(t))
        inputs = [i for i in graph.input if i.name not in self.vals]
        if not inputs:
            raise HwcError(f"{self.origin}: the graph has no runtime input")
        if len(inputs) > MAX_INPUTS:
            raise HwcError(f"{self.origin}: {len(inputs)} inputs (limit {MAX_INPUTS})")
        used = set()
        for k, inp in enumerate(inputs):
            tt = inp.type.tensor_type
            if not inp.type.HasField("tensor_type") or not tt.HasField("shape"):
                raise HwcError(f"{self.origin}: input {inp.name!r} is not a tensor of known rank")
            name = _ident(inp.name) or f"input_{k}"
            while name in used:
                name += "_"
            used.add(name)
            ph = self.g.placeholder(name)
            if self.ref is None:
                self.ref = ph
            self.vals[inp.name] = _V(node=ph, rank=len(tt.shape.dim), dtype=_DTYPES.get(tt.elem_type, torch.float32))
        for i, node in enumerate(graph.node):
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.outputs = {o.name for o in graph.output}
        self.infer_shapes()
        for i, node in enumerate(graph.node):
            self.node_index, self.node = i, node
            self.step(i, node)
        self.node = None
        outs = []
        for o in graph.output:
            v = self.vals.get(o.name)
            if v is None:
                raise HwcError(f"{self.origin}: output {o.name!r} is not computed by any node")
            a = self.arg(v)
            outs.append(self.buffer(a) if isinstance(a, torch.Tensor) else a)
        self.g.output(outs[0] if len(outs) == 1 else tuple(outs))
        gm = fx.GraphModule(self.root, self.g, class_name="OnnxImported")
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        gm.graph.lint()
        for name in list(self.buffers.values()):  # folded-away constants
            if hasattr(gm, name) and not any(n.op == "get_attr" and n.target == name for n in gm.graph.nodes):
                delattr(gm, name)
        gm.meta["onnx"] = {  # GraphModule.meta survives deepcopy
            "opset": self.opset, "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
            "inputs": [i.name for i in inputs], "outputs": [o.name for o in graph.output],
            "ops": dict(Counter(n.op_type for n in graph.node)),
        }
        return gm

    def infer_shapes(self) -> None:
        """Static shapes from onnx's shape inference (used only by Squeeze without axes)."""
        try:
            inferred = self.onnx.shape_inference.infer_shapes(self.model).graph
        except Exception:  # inference is a convenience: a model it cannot handle still imports
            return
        for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                self.inferred[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                          for d in vi.type.tensor_type.shape.dim]

    def step(self, i: int, node) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise self.fail(f"op {node.op_type} of domain {node.domain!r} is not supported")
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            raise self.fail(f"op {node.op_type} is not supported by the ONNX importer "
                            f"(supported: {', '.join(sorted(_HANDLERS))})")
        ins = []
        for name in node.input:
            if not name:
                ins.append(None)
            elif name in self.vals:
                ins.append(self.vals[name])
            else:
                raise self.fail(f"input {name!r} is not produced by an earlier node")
        attrs = {}
        for a in node.attribute:
            if a.type in (self.onnx.AttributeProto.GRAPH, self.onnx.AttributeProto.GRAPHS):
                raise self.fail("subgraph attributes are not supported")
            v = self.onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, self.onnx.TensorProto):
                v = self.from_proto(v)
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [x.decode("utf-8", "replace") for x in v]
            attrs[a.name] = v
        if i in self.fused:
            outs = [self.vals[self.fused[i]]]
        else:
            outs = handler(self, node, ins, attrs)
        for name, v in zip(node.output, outs):
            if name:
                self.vals[name] = v


# ---------------------------------------------------------------------- handlers
_HANDLERS: dict[str, Callable] = {}


def _op(*names: str):
    def register(fn):
        for n in names:
            _HANDLERS[n] = fn
        return fn
    return register


def _x(self: _Importer, v: _V | None, what: str = "input") -> _V:
    if v is None:
        raise self.fail(f"{what} is missing")
    return v


_UNARY = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
          "Sqrt": torch.sqrt, "Abs": torch.abs, "Neg": torch.neg, "Reciprocal": torch.reciprocal,
          "Softplus": F.softplus, "Erf": torch.erf}


@_op(*_UNARY)
def _unary(self, node, ins, attrs):
    x = _x(self, ins[0])
    return [self.result(self.call("call_function", _UNARY[node.op_type], self.arg(x)), x.r, x.dtype)]


@_op("Identity", "Dropout")
def _identity(self, node, ins, attrs):
    return [_x(self, ins[0])]


@_op("Elu")
def _elu(self, node, ins, attrs):
    x = _x(self, ins[0])
    return [self.result(self.call("call_function", F.elu, self.arg(x), float(attrs.get("alpha", 1.0))), x.r, x.dtype)]


@_op("LeakyRelu")
def _leaky(self, node, ins, attrs):
    x = _x(self, ins[0])
    return [self.result(self.call("call_function", F.leaky_relu, self.arg(x), float(attrs.get("alpha", 0.01))),
                        x.r, x.dtype)]


@_op("PRelu")
def _prelu(self, node, ins, attrs):
    x = _x(self, ins[0])
    slope = self.const(ins[1] if len(ins) > 1 else None, "PRelu slope")
    dims = list(slope.shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    if slope.numel() == 1:
        out = self.call("call_function", F.leaky_relu, self.arg(x), float(slope.reshape(())))
    elif x.r is not None and slope.dim() <= x.r and dims and all(d == 1 for d in dims[1:]) and x.r - len(dims) == 1:
        # one slope per channel (axis 1): nn.PReLU, which the pruners know
        prelu = nn.PReLU(dims[0])
        with torch.no_grad():
            prelu.weight.copy_(slope.reshape(-1).to(torch.float32))
        out = self.call("call_module", self.module("prelu", prelu, self.hint(node.input[1])), self.arg(x))
    else:  # slope broadcasts numpy-style (from the right), unlike nn.PReLU's channel axis
        neg = self.call("call_function", operator.mul, self.call("call_function", torch.clamp, self.arg(x), None, 0.0),
                        slope)
        out = self.call("call_function", operator.add, self.call("call_function", torch.relu, self.arg(x)), neg)
    return [self.result(out, x.r, x.dtype)]


@_op("Clip")
def _clip(self, node, ins, attrs):
    x = _x(self, ins[0])
    lo, hi = attrs.get("min"), attrs.get("max")
    if len(ins) > 1 and ins[1] is not None:
        lo = float(self.const(ins[1], "Clip min").reshape(()))
    if len(ins) > 2 and ins[2] is not None:
        hi = float(self.const(ins[2], "Clip max").reshape(()))
    return [self.result(self.call("call_function", torch.clamp, self.arg(x), lo, hi), x.r, x.dtype)]


@_op("Softmax")
def _softmax(self, node, ins, attrs):
    x = _x(self, ins[0])
    axis = self.axis(int(attrs.get("axis", -1 if self.opset >= 13 else 1)), x.r)
    if self.opset < 13 and axis != x.r - 1:  # old Softmax flattens every axis from `axis` on
        raise self.fail(f"Softmax over axis {axis} of a rank-{x.r} tensor under opset {self.opset} is not supported")
    return [self.result(self.call("call_function", torch.softmax, self.arg(x), axis), x.r, x.dtype)]


_BINARY = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv, "Pow": torch.pow}
_PY = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.floordiv}


def _shape_arith(self, node, a: _V, b: _V) -> _V:
    """Element-wise arithmetic on shape vectors (e.g. batch * frames for a reshape)."""
    if node.op_type not in _PY:
        raise self.fail("this op on a shape value is not supported")
    la = self.ints(a, "operand") if a.dims is None else a.dims
    lb = self.ints(b, "operand") if b.dims is None else b.dims
    if len(la) != len(lb) and 1 not in (len(la), len(lb)):
        raise self.fail("shape operands do not broadcast")
    n = max(len(la), len(lb))
    la, lb = (la * n if len(la) == 1 else la), (lb * n if len(lb) == 1 else lb)
    out = []
    for p, q in zip(la, lb):
        if isinstance(p, int) and isinstance(q, int):
            out.append(_PY[node.op_type](p, q) if node.op_type != "Div" else int(p / q))
        else:  # sizes are non-negative, so floor division is ONNX's truncating division
            out.append(self.call("call_function", _PY[node.op_type], p, q))
    return self.shape(out, scalar=a.r == 0 and b.r == 0)


@_op(*_BINARY)
def _binary(self, node, ins, attrs):
    a, b = _x(self, ins[0], "first operand"), _x(self, ins[1] if len(ins) > 1 else None, "second operand")
    if (a.dims is not None or b.dims is not None) and a.node is None and b.node is None:
        return [_shape_arith(self, node, a, b)]
    dtype = a.dtype if a.const is None else b.dtype

    def operand(v: _V, other: _V):
        if v.const is not None and other.const is None and v.const.numel() == 1 and v.const.dim() <= (other.r or 0):
            s = v.const.reshape(())
            return int(s) if _is_int_dtype(s.dtype) else float(s)  # a scalar keeps the tensor's dtype
        return self.arg(v)

    x, y = operand(a, b), operand(b, a)
    if node.op_type == "Div" and _is_int_dtype(dtype):
        out = self.call("call_function", torch.div, x, y, rounding_mode="trunc")
    else:
        out = self.call("call_function", _BINARY[node.op_type], x, y)
    ranks = [r for r in (a.r, b.r) if r is not None]
    return [self.result(out, max(ranks) if len(ranks) == 2 else None, dtype)]


@_op("Cast")
def _cast(self, node, ins, attrs):
    x = _x(self, ins[0])
    to = _DTYPES.get(int(attrs.get("to", 0)))
    if to is None:
        raise self.fail(f"Cast to element type {attrs.get('to')} is not supported")
    if x.dims is not None:
        if not _is_int_dtype(to):
            raise self.fail("casting a shape value to a non-integer type is not supported")
        return [x]
    return [self.result(self.call("call_method", "to", self.arg(x), to), x.r, to, zero=x.zero)]


@_op("Constant")
def _constant(self, node, ins, attrs):
    if "value" in attrs:
        return [self.tensor(attrs["value"])]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in attrs:
            return [self.tensor(torch.tensor(attrs[key], dtype=dtype))]
    raise self.fail(f"Constant without a supported value attribute ({', '.join(attrs) or 'none'})")


@_op("Shape")
def _shape(self, node, ins, attrs):
    x = _x(self, ins[0])
    if x.dims is not None:
        return [self.tensor(torch.tensor([] if x.scalar else [len(x.dims)], dtype=torch.int64))]
    if x.r is None:
        raise self.fail("Shape of a tensor of unknown rank")
    dims = [self.call("call_method", "size", self.arg(x), d) for d in range(x.r)]
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return [self.shape(dims[start:None if end is None else int(end)])]


@_op("ConstantOfShape")
def _constant_of_shape(self, node, ins, attrs):
    dims = self.ints(_x(self, ins[0], "shape"), "shape")
    value = attrs.get("value", torch.zeros(1))
    fill = value.reshape(-1)[0].item()
    zero = fill == 0
    self.check_size(dims, "ConstantOfShape")
    if all(isinstance(d, int) for d in dims):
        return [_V(const=torch.full(dims, fill, dtype=value.dtype), dtype=value.dtype, zero=zero)]
    if self.ref is None:
        raise self.fail("a runtime-sized constant needs a runtime input")
    out = self.call("call_method", "new_full", self.ref, dims, fill, dtype=value.dtype)
    return [_V(node=out, rank=len(dims), dtype=value.dtype, zero=zero)]


@_op("Expand")
def _expand(self, node, ins, attrs):
    x = _x(self, ins[0])
    dims = self.ints(_x(self, ins[1] if len(ins) > 1 else None, "shape"), "Expand shape")
    # ONNX Expand broadcasts both ways (a 1 in `shape` keeps x's size): adding zeros of `shape` does that
    self.check_size(dims, "Expand")
    zeros = (torch.zeros(dims, dtype=x.dtype) if all(isinstance(d, int) for d in dims)
             else self.call("call_method", "new_zeros", self.arg(x), dims))
    out = self.call("call_function", operator.add, self.arg(x), zeros)
    return [self.result(out, max(x.r or 0, len(dims)), x.dtype, zero=x.zero)]


@_op("Transpose")
def _transpose(self, node, ins, attrs):
    x = _x(self, ins[0])
    if x.r is None:
        raise self.fail("Transpose of a tensor of unknown rank")
    perm = [int(p) for p in attrs.get("perm", range(x.r - 1, -1, -1))]
    if sorted(perm) != list(range(x.r)):
        raise self.fail(f"perm {perm} is not a permutation of {x.r} axes")
    return [self.result(self.call("call_method", "permute", self.arg(x), *perm), x.r, x.dtype, zero=x.zero)]


@_op("Reshape")
def _reshape(self, node, ins, attrs):
    x = _x(self, ins[0])
    dims = self.ints(_x(self, ins[1] if len(ins) > 1 else None, "shape"), "Reshape shape")
    if not attrs.get("allowzero", 0):  # 0 copies the input's size at that axis
        dims = [self.call("call_method", "size", self.arg(x), k) if isinstance(d, int) and d == 0 else d
                for k, d in enumerate(dims)]
    if x.dims is not None:  # only between a one-element vector and a scalar, or [-1] / [n] of a vector
        n = len(x.dims)
        if dims == [] and n == 1 or dims in ([-1], [n]):
            return [self.shape(x.dims, scalar=dims == [])]
        raise self.fail("reshaping a shape value is not supported")
    return [self.result(self.call("call_method", "reshape", self.arg(x), dims), len(dims), x.dtype, zero=x.zero)]


@_op("Flatten")
def _flatten(self, node, ins, attrs):
    x = _x(self, ins[0])
    axis = self.axis(int(attrs.get("axis", 1)), (x.r or 0) + 1)
    if axis == 0:
        out = self.call("call_method", "reshape", self.arg(x), [1, -1])
    else:
        out = self.call("call_method", "flatten", self.call("call_method", "flatten", self.arg(x), axis), 0, axis - 1)
    return [self.result(out, 2, x.dtype, zero=x.zero)]


def _axes(self, node, ins, attrs, what: str) -> list[int] | None:
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(ins) > 1 and ins[1] is not None:
        return [int(a) for a in self.const(ins[1], f"{what} axes").reshape(-1).tolist()]
    return None


@_op("Squeeze")
def _squeeze(self, node, ins, attrs):
    x = _x(self, ins[0])
    axes = _axes(self, node, ins, attrs, "Squeeze")
    if axes is None:
        static = self.inferred.get(node.input[0])
        if x.const is not None:
            static = list(x.const.shape)
        if static is None or None in static:
            raise self.fail("Squeeze without axes needs a statically known shape")
        axes = [k for k, d in enumerate(static) if d == 1]
    if x.dims is not None:
        if x.scalar or [self.axis(a, 1) for a in axes] != [0] or len(x.dims) != 1:
            raise self.fail("this Squeeze of a shape value is not supported")
        return [self.shape(x.dims, scalar=True)]
    axes = sorted({self.axis(a, x.r) for a in axes})
    if x.unsq is not None and axes == [x.unsq[0]]:  # undo the [seq, dir, batch, hidden] unsqueeze of a recurrence
        return [x.unsq[1]]
    out = self.arg(x)
    for a in reversed(axes):
        out = self.call("call_method", "squeeze", out, a)
    return [self.result(out, None if x.r is None else x.r - len(axes), x.dtype, zero=x.zero)]


@_op("Unsqueeze")
def _unsqueeze(self, node, ins, attrs):
    x = _x(self, ins[0])
    axes = _axes(self, node, ins, attrs, "Unsqueeze")
    if axes is None:
        raise self.fail("Unsqueeze without axes")
    if x.dims is not None:
        if not x.scalar or len(axes) != 1 or axes[0] not in (0, -1):
            raise self.fail("this Unsqueeze of a shape value is not supported")
        return [self.shape(x.dims)]
    if x.r is None:
        raise self.fail("Unsqueeze of a tensor of unknown rank")
    rank = x.r + len(axes)
    out = self.arg(x)
    for a in sorted({self.axis(a, rank) for a in axes}):
        out = self.call("call_method", "unsqueeze", out, a)
    return [self.result(out, rank, x.dtype, zero=x.zero)]


@_op("Concat")
def _concat(self, node, ins, attrs):
    vs = [v for v in ins if v is not None]
    if not vs:
        raise self.fail("Concat without inputs")
    if any(v.dims is not None for v in vs) and all(v.node is None for v in vs):
        dims = []
        for v in vs:
            dims.extend(self.ints(v, "Concat input"))
        return [self.shape(dims)]
    rank = next((v.r for v in vs if v.r is not None), None)
    axis = self.axis(int(attrs.get("axis", 0)), rank)
    out = self.call("call_function", torch.cat, [self.arg(v) for v in vs], axis)
    return [self.result(out, rank, vs[0].dtype, zero=all(v.zero for v in vs))]


@_op("Slice")
def _slice(self, node, ins, attrs):
    x = _x(self, ins[0])
    if "starts" in attrs:  # opset < 10: attributes
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes, steps = attrs.get("axes"), None
    else:
        starts = self.ints(ins[1] if len(ins) > 1 else None, "Slice starts")
        ends = self.ints(ins[2] if len(ins) > 2 else None, "Slice ends")
        axes = self.ints(ins[3], "Slice axes") if len(ins) > 3 and ins[3] is not None else None
        steps = self.ints(ins[4], "Slice steps") if len(ins) > 4 and ins[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise self.fail("starts, ends, axes and steps differ in length")
    if any(not isinstance(s, int) or s == 0 for s in steps):
        raise self.fail("Slice steps must be non-zero constants")
    if x.const is not None and all(isinstance(v, int) for v in starts + ends + axes):
        return [self.tensor(_slice_const(self, x.const, starts, ends, axes, steps))]
    if any(s < 0 for s in steps):
        raise self.fail("a negative Slice step on a runtime tensor is not supported")

    def bound(v):
        return None if isinstance(v, int) and abs(v) >= _BIG else v

    if x.dims is not None:
        if axes not in ([0], [-1]) or x.scalar or not all(isinstance(v, int) for v in starts + ends):
            raise self.fail("this Slice of a shape value is not supported")
        return [self.shape(x.dims[bound(starts[0]):bound(ends[0]):steps[0]])]
    rank = x.r
    index = {}
    for s, e, a, st in zip(starts, ends, axes, steps):
        if not isinstance(a, int):
            raise self.fail("Slice axes must be constant")
        index[self.axis(a, rank)] = slice(bound(s), bound(e), None if st == 1 else st)
    key = tuple(index.get(k, slice(None)) for k in range(max(index) + 1))
    return [self.result(self.call("call_function", operator.getitem, self.arg(x), key), rank, x.dtype, zero=x.zero)]


def _slice_const(self, t: torch.Tensor, starts, ends, axes, steps) -> torch.Tensor:
    """ONNX Slice on a constant, any step (exporters reverse pad lists with step -1)."""
    arr = t.numpy()
    key = [slice(None)] * arr.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = self.axis(a, arr.ndim)
        n = arr.shape[a]
        s, e = (s + n if s < 0 else s), (e + n if e < 0 else e)
        if st > 0:
            s, e = min(max(s, 0), n), min(max(e, 0), n)
            key[a] = slice(s, e, st)
        else:  # clamped to [0, n-1] and [-1, n-1]; -1 means "past the first element"
            s, e = min(max(s, 0), n - 1), min(max(e, -1), n - 1)
            key[a] = slice(s, None if e == -1 else e, st)
    return torch.from_numpy(arr[tuple(key)].copy())


@_op("Gather")
def _gather(self, node, ins, attrs):
    x = _x(self, ins[0])
    idx = self.const(ins[1] if len(ins) > 1 else None, "Gather indices (a computed index is not supported)")
    if idx.dim() > 1 or not _is_int_dtype(idx.dtype):
        raise self.fail("Gather indices must be a 0-D or 1-D integer constant")
    picks = [int(i) for i in idx.reshape(-1).tolist()]
    if x.dims is not None:
        if x.scalar:
            raise self.fail("Gather from a 0-D shape value")
        try:
            got = [x.dims[i] for i in picks]
        except IndexError:
            raise self.fail(f"Gather index out of range for a shape of {len(x.dims)}") from None
        return [self.shape(got, scalar=idx.dim() == 0)]
    axis = self.axis(int(attrs.get("axis", 0)), x.r)
    sel = picks[0] if idx.dim() == 0 else picks
    out = self.call("call_function", operator.getitem, self.arg(x), (slice(None),) * axis + (sel,))
    return [self.result(out, None if x.r is None else x.r - 1 + idx.dim(), x.dtype, zero=x.zero)]


@_op("Pad")
def _pad(self, node, ins, attrs):
    """Constant, edge or reflect padding (torch exports F.pad, e.g. causal time padding, as Pad)."""
    x = _x(self, ins[0])
    mode = attrs.get("mode", "constant")
    if "pads" in attrs:  # opset < 11
        pads, value = [int(p) for p in attrs["pads"]], float(attrs.get("value", 0.0))
    else:
        pads = self.ints(ins[1] if len(ins) > 1 else None, "Pad pads")
        value = float(self.const(ins[2], "Pad value").reshape(())) if len(ins) > 2 and ins[2] is not None else 0.0
    if any(not isinstance(p, int) or abs(p) > MAX_FOLDED for p in pads):
        raise self.fail("Pad pads must be constants of sensible size")
    rank = x.r
    if rank is None:
        raise self.fail("Pad of a tensor of unknown rank")
    axes = list(range(rank))
    if len(ins) > 3 and ins[3] is not None:
        axes = [self.axis(int(a), rank) for a in self.const(ins[3], "Pad axes").reshape(-1).tolist()]
    if len(pads) != 2 * len(axes):
        raise self.fail(f"{len(pads)} pads for {len(axes)} axes")
    begin = dict(zip(axes, pads[:len(axes)]))
    end = dict(zip(axes, pads[len(axes):]))
    padded = [a for a in range(rank) if begin.get(a, 0) or end.get(a, 0)]
    if not padded:
        return [x]
    torch_mode = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}.get(mode)
    if torch_mode is None:
        raise self.fail(f"Pad mode {mode!r} is not supported")
    if torch_mode != "constant" and (min(padded) < 2 or rank - 2 > 3 or rank < 3):
        raise self.fail(f"Pad mode {mode!r} only on the spatial axes of a [N, C, ...] tensor")
    first = min(padded) if torch_mode == "constant" else 2
    spec = [p for a in reversed(range(first, rank)) for p in (begin.get(a, 0), end.get(a, 0))]
    kw = {"value": value} if torch_mode == "constant" else {"mode": torch_mode}
    out = self.call("call_function", F.pad, self.arg(x), spec, **kw)
    return [self.result(out, rank, x.dtype)]


# ------------------------------------------------------------ weight layers
def _weight(self, v: _V | None, what: str) -> torch.Tensor:
    t = self.const(v, f"{what} (a weight)")
    if not t.dtype.is_floating_point:
        raise self.fail(f"{what} must be floating point, got {t.dtype}")
    return t.to(torch.float32)


def _bias_of(self, v: _V | None, n: int, rank: int | None) -> torch.Tensor | None:
    """A constant that adds to the last axis only ([n], [1, ..., n] or one value), as a bias."""
    if v is None or v.const is None or not v.const.dtype.is_floating_point:
        return None
    c = v.const
    if rank is None or c.dim() > rank:  # it would add axes
        return None
    if c.numel() == n and (c.dim() == 0 or c.shape[-1] == n) or c.numel() == 1:
        return c.to(torch.float32).reshape(-1).expand(n).clone()
    return None


def _linear(self, x: _V, w: torch.Tensor, b: torch.Tensor | None, hint: str) -> _V:
    k, n = w.shape
    lin = nn.Linear(k, n, bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w.t())
        if b is not None:
            lin.bias.copy_(b)
    name = self.module("linear", lin, hint)
    return self.result(self.call("call_module", name, self.arg(x)), x.r, torch.float32)


@_op("MatMul")
def _matmul(self, node, ins, attrs):
    a, b = _x(self, ins[0]), _x(self, ins[1] if len(ins) > 1 else None)
    if a.const is None and b.const is not None and b.const.dim() == 2 and b.const.dtype.is_floating_point:
        w = _weight(self, b, "MatMul weight")
        bias, after = None, self.consumers.get(node.output[0], [])
        if len(after) == 1 and node.output[0] not in self.outputs:
            nxt = self.graph.node[after[0]]
            other = [n for n in nxt.input if n != node.output[0]]
            if nxt.op_type == "Add" and len(nxt.input) == 2 and len(other) == 1 and other[0] in self.vals:
                bias = _bias_of(self, self.vals[other[0]], w.shape[1], a.r)
                if bias is not None:
                    self.fused[after[0]] = node.output[0]
        hint = self.hint(other[0]) if bias is not None else ""
        return [_linear(self, a, w, bias, hint or self.hint(node.input[1]))]
    out = self.call("call_function", torch.matmul, self.arg(a), self.arg(b))
    ra, rb = a.r, b.r
    if None in (ra, rb):
        rank = None
    else:  # numpy matmul: a 1-D operand loses its axis
        rank = 0 if ra == rb == 1 else rb - 1 if ra == 1 else ra - 1 if rb == 1 else max(ra, rb)
    return [self.result(out, rank, a.dtype)]


@_op("Gemm")
def _gemm(self, node, ins, attrs):
    a, b = _x(self, ins[0]), _x(self, ins[1] if len(ins) > 1 else None)
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    if b.const is not None and not ta and a.const is None:
        w = _weight(self, b, "Gemm weight")
        w = (w.t() if tb else w) * alpha  # [K, N]
        bias = _bias_of(self, c, w.shape[1], 2) if c is not None else None
        hint = self.hint(*(node.input[2:3] + node.input[1:2]))
        out = _linear(self, a, w, None if bias is None else bias * beta, hint)
        if c is not None and bias is None:
            cc = self.call("call_function", operator.mul, self.arg(c), beta)
            out = self.result(self.call("call_function", operator.add, out.node, cc), 2, torch.float32)
        return [out]
    x = self.call("call_method", "t", self.arg(a)) if ta else self.arg(a)
    y = self.call("call_method", "t", self.arg(b)) if tb else self.arg(b)
    out = self.call("call_function", operator.mul, self.call("call_function", torch.matmul, x, y), alpha)
    if c is not None:
        out = self.call("call_function", operator.add, out, self.call("call_function", operator.mul, self.arg(c), beta))
    return [self.result(out, 2, a.dtype)]


def _einsum_grouped(eq: str) -> tuple[str, str, str, str] | None:
    """(prefix, g, i, h) of a grouped-linear equation `PREFIXgi,gih->PREFIXgh`, else None."""
    eq = eq.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    a, comma, b = lhs.partition(",")
    if not (arrow and comma) or len(b) != 3 or not b.isalpha() or len(set(b)) != 3:
        return None
    g, i, h = b
    prefix = a[:-2]
    if a[-2:] != g + i or out != prefix + g + h:
        return None
    if prefix != "..." and (not prefix.isalpha() and prefix != "" or set(prefix) & {g, i, h}
                            or len(set(prefix)) != len(prefix)):
        return None
    return prefix, g, i, h


@_op("Einsum")
def _einsum(self, node, ins, attrs):
    """A grouped linear layer, `...gi,gih->...gh` with a constant weight [G, I, H] (DeepFilterNet's
    GroupedLinearEinsum): imported as `nn.Conv1d(G*I, G*H, 1, groups=G, bias=False)` over the
    flattened leading axes, exactly the same products, so compression finds a weight layer it
    knows (pruned, clustered, counted, quantized by every runtime) instead of an einsum."""
    eq = str(attrs.get("equation", ""))
    parsed = _einsum_grouped(eq)
    if parsed is None or len(ins) != 2:
        raise self.fail(f"equation {eq!r} is not supported (only the grouped linear '...gi,gih->...gh' with a "
                        "constant weight [G, I, H])")
    prefix = parsed[0]
    x = _x(self, ins[0])
    w = _weight(self, ins[1], "Einsum weight")
    if w.dim() != 3:
        raise self.fail(f"Einsum weight of shape {list(w.shape)} is not [G, I, H]")
    if x.const is not None:
        raise self.fail("an Einsum of two constants should have been folded by the exporter")
    rank = x.r
    if rank is None or rank < 2 or (prefix != "..." and rank != len(prefix) + 2):
        raise self.fail(f"input of rank {rank} does not match the equation {eq!r}")
    g, i, h = (int(d) for d in w.shape)
    conv = nn.Conv1d(g * i, g * h, 1, groups=g, bias=False)
    with torch.no_grad():  # conv.weight[gg * H + hh, ii, 0] = w[gg, ii, hh]
        conv.weight.copy_(w.permute(0, 2, 1).reshape(g * h, i, 1))
    name = self.module("grouped_linear", conv, self.hint(node.input[1]))
    lead = [self.call("call_method", "size", self.arg(x), d) for d in range(rank - 2)]
    flat = self.call("call_method", "reshape", self.arg(x), [-1, g * i, 1])
    y = self.call("call_module", name, flat)
    out = self.call("call_method", "reshape", y, [*lead, g, h])
    return [self.result(out, rank, torch.float32)]


def _conv_common(self, node, ins, attrs, transpose: bool):
    x = _x(self, ins[0])
    w = _weight(self, ins[1] if len(ins) > 1 else None, f"{node.op_type} weight")
    b = _weight(self, ins[2], f"{node.op_type} bias") if len(ins) > 2 and ins[2] is not None else None
    s = w.dim() - 2
    if s not in (1, 2):
        raise self.fail(f"{s}-D convolutions are not supported (1-D and 2-D are)")
    if x.r is not None and x.r != s + 2:
        raise self.fail(f"input of rank {x.r} for a {s}-D convolution")
    kernel = list(w.shape[2:])
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != kernel:
        raise self.fail(f"kernel_shape {list(attrs['kernel_shape'])} does not match the weight's {kernel}")
    strides = [int(v) for v in attrs.get("strides", [1] * s)]
    dil = [int(v) for v in attrs.get("dilations", [1] * s)]
    group = int(attrs.get("group", 1))
    pads = [int(v) for v in attrs.get("pads", [0] * 2 * s)]
    auto = attrs.get("auto_pad", "NOTSET")
    if len(strides) != s or len(dil) != s or len(pads) != 2 * s or group < 1:
        raise self.fail("strides, dilations, pads or group do not match the kernel")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if transpose or any(st != 1 for st in strides):
            raise self.fail(f"auto_pad={auto} is supported only for stride-1 Conv")
        total = [d * (k - 1) for d, k in zip(dil, kernel)]
        first = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        pads = first + [t - f for t, f in zip(total, first)]
    elif auto == "VALID":
        pads = [0] * 2 * s
    elif auto != "NOTSET":
        raise self.fail(f"auto_pad={auto!r} is not supported")
    begin, end = pads[:s], pads[s:]
    return x, w, b, s, kernel, strides, dil, group, begin, end


@_op("Conv")
def _conv(self, node, ins, attrs):
    x, w, b, s, kernel, strides, dil, group, begin, end = _conv_common(self, node, ins, attrs, transpose=False)
    cin = w.shape[1] * group
    if w.shape[0] % group:
        raise self.fail(f"{w.shape[0]} output channels do not split into {group} groups")
    symmetric = begin == end
    cls = nn.Conv1d if s == 1 else nn.Conv2d
    conv = cls(cin, w.shape[0], kernel, stride=strides, padding=begin if symmetric else 0, dilation=dil,
               groups=group, bias=b is not None)
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b)
    inp = self.arg(x)
    if not symmetric:  # e.g. causal time padding: F.pad takes the last axis first
        pad = [p for k in reversed(range(s)) for p in (begin[k], end[k])]
        inp = self.call("call_function", F.pad, inp, pad)
    name = self.module(f"conv{s}d", conv, self.hint(*node.input[1:3]))
    return [self.result(self.call("call_module", name, inp), s + 2, torch.float32)]


@_op("ConvTranspose")
def _conv_transpose(self, node, ins, attrs):
    x, w, b, s, kernel, strides, dil, group, begin, end = _conv_common(self, node, ins, attrs, transpose=True)
    if "output_shape" in attrs:
        raise self.fail("ConvTranspose with output_shape is not supported (give pads instead)")
    outpad = [int(v) for v in attrs.get("output_padding", [0] * s)]
    if len(outpad) != s or any(not 0 <= op < max(st, d) for op, st, d in zip(outpad, strides, dil)):
        raise self.fail(f"output_padding {outpad} must be below the stride or dilation on each axis")
    # Unpadded, then cropped: the same values as padding + output_padding in the module (the pads
    # remove outputs at both ends, output_padding gives back some at the end), in a form every
    # converter gets right: litert-torch mis-converts a padded ConvTranspose2d with output_padding
    # (measured: a stride-2 (1, 3) kernel with padding 1 and output_padding 1 came out 14-21 dB from
    # torch, its unpadded form + this crop 143 dB; DeepFilterNet3's decoder has two)
    cls = nn.ConvTranspose1d if s == 1 else nn.ConvTranspose2d
    extra = [max(0, op - en) for op, en in zip(outpad, end)]  # past the unpadded output: bias only, as ONNX
    conv = cls(w.shape[0], w.shape[1] * group, kernel, stride=strides, padding=0, output_padding=extra,
               groups=group, bias=b is not None, dilation=dil)
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b)
    name = self.module(f"conv_transpose{s}d", conv, self.hint(*node.input[1:3]))
    out = self.call("call_module", name, self.arg(x))
    cut = [en - op + ex for en, op, ex in zip(end, outpad, extra)]  # trailing outputs the pads remove
    if any(begin) or any(cut):
        key = (slice(None), slice(None)) + tuple(slice(bg or None, -c if c else None) for bg, c in zip(begin, cut))
        out = self.call("call_function", operator.getitem, out, key)
    return [self.result(out, s + 2, torch.float32)]


def _rnn_checks(self, attrs, defaults: list[str]) -> tuple[int, int]:
    direction = attrs.get("direction", "forward")
    if direction != "forward":
        raise self.fail(f"direction={direction} is non-causal (it reads future frames); only forward "
                        "recurrences can run frame by frame")
    acts = attrs.get("activations")
    if acts is not None and [a.lower() for a in acts] != [d.lower() for d in defaults]:
        raise self.fail(f"activations {acts} are not supported (torch uses {defaults})")
    if "clip" in attrs:
        raise self.fail("cell clipping (clip) is not supported")
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise self.fail(f"layout={layout}")
    return layout, int(attrs["hidden_size"]) if "hidden_size" in attrs else -1


def _rnn_weights(self, node, ins, gates: int, order: list[int]):
    w = _weight(self, ins[1] if len(ins) > 1 else None, f"{node.op_type} W")
    r = _weight(self, ins[2] if len(ins) > 2 else None, f"{node.op_type} R")
    b = _weight(self, ins[3], f"{node.op_type} B") if len(ins) > 3 and ins[3] is not None else None
    if w.dim() != 3 or w.shape[0] != 1 or w.shape[1] % gates:
        raise self.fail(f"W of shape {list(w.shape)} is not [1, {gates}*hidden, input]")
    hidden = w.shape[1] // gates
    if list(r.shape) != [1, gates * hidden, hidden] or (b is not None and list(b.shape) != [1, 2 * gates * hidden]):
        raise self.fail(f"R {list(r.shape)} or B {None if b is None else list(b.shape)} do not match "
                        f"hidden size {hidden}")

    def reorder(t):  # ONNX gate blocks -> torch's order
        return torch.cat([t[g * hidden:(g + 1) * hidden] for g in order])

    bias = None if b is None else (reorder(b[0, :gates * hidden]), reorder(b[0, gates * hidden:]))
    return reorder(w[0]), reorder(r[0]), bias, hidden


def _state(self, v: _V | None, layout: int):
    """An initial state as torch wants it ([1, batch, hidden]); None when absent or zero."""
    if v is None or v.zero or (v.const is not None and not torch.any(v.const)):
        return None
    h = self.arg(v)
    return self.call("call_method", "transpose", h, 0, 1) if layout else h


def _rnn_outputs(self, out, n_states: int, layout: int, hidden: int) -> list[_V]:
    y = self.call("call_function", operator.getitem, out, 0)
    yv = _V(node=y, rank=3)
    full = self.result(self.call("call_method", "unsqueeze", y, 2 if layout else 1), 4, torch.float32,
                       unsq=(2 if layout else 1, yv))
    states = self.call("call_function", operator.getitem, out, 1)
    res = [full]
    for k in range(n_states):
        h = states if n_states == 1 else self.call("call_function", operator.getitem, states, k)
        if layout:
            h = self.call("call_method", "transpose", h, 0, 1)
        res.append(self.result(h, 3, torch.float32))
    return res


@_op("GRU")
def _gru(self, node, ins, attrs):
    layout, hidden_attr = _rnn_checks(self, attrs, ["Sigmoid", "Tanh"])
    if int(attrs.get("linear_before_reset", 0)) != 1:
        raise self.fail("linear_before_reset=0 is not supported: torch's nn.GRU computes the "
                        "linear_before_reset=1 form (re-export the model from torch or with that flag)")
    if len(ins) > 4 and ins[4] is not None:
        raise self.fail("sequence_lens (variable-length batches) is not supported")
    # ONNX gates z, r, h -> torch r, z, n
    w_ih, w_hh, bias, hidden = _rnn_weights(self, node, ins, 3, [1, 0, 2])
    if hidden_attr not in (-1, hidden):
        raise self.fail(f"hidden_size={hidden_attr} but the weights are for {hidden}")
    gru = _recurrent(nn.GRU, w_ih, w_hh, bias, hidden, layout)
    name = self.module("gru", gru, self.hint(*node.input[1:4]))
    x = _x(self, ins[0])
    h0 = _state(self, ins[5] if len(ins) > 5 else None, layout)
    out = self.call("call_module", name, self.arg(x), *([h0] if h0 is not None else []))
    return _rnn_outputs(self, out, 1, layout, hidden)


def _recurrent(cls: type[nn.RNNBase], w_ih: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor | None,
               hidden: int, layout: int) -> nn.RNNBase:
    """A one-layer torch GRU/LSTM holding the (already reordered) ONNX weights."""
    layer = cls(w_ih.shape[1], hidden, batch_first=bool(layout), bias=bias is not None)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(w_ih)
        layer.weight_hh_l0.copy_(w_hh)
        if bias is not None:
            layer.bias_ih_l0.copy_(bias[0])
            layer.bias_hh_l0.copy_(bias[1])
    return layer


@_op("LSTM")
def _lstm(self, node, ins, attrs):
    layout, hidden_attr = _rnn_checks(self, attrs, ["Sigmoid", "Tanh", "Tanh"])
    if int(attrs.get("input_forget", 0)):
        raise self.fail("input_forget=1 (coupled gates) is not supported")
    if len(ins) > 4 and ins[4] is not None:
        raise self.fail("sequence_lens (variable-length batches) is not supported")
    if len(ins) > 7 and ins[7] is not None:
        raise self.fail("peephole weights (P) are not supported")
    # ONNX gates i, o, f, c -> torch i, f, g, o
    w_ih, w_hh, bias, hidden = _rnn_weights(self, node, ins, 4, [0, 2, 3, 1])
    if hidden_attr not in (-1, hidden):
        raise self.fail(f"hidden_size={hidden_attr} but the weights are for {hidden}")
    lstm = _recurrent(nn.LSTM, w_ih, w_hh, bias, hidden, layout)
    name = self.module("lstm", lstm, self.hint(*node.input[1:4]))
    x = _x(self, ins[0])
    h0 = _state(self, ins[5] if len(ins) > 5 else None, layout)
    c0 = _state(self, ins[6] if len(ins) > 6 else None, layout)
    args = [self.arg(x)]
    if h0 is not None or c0 is not None:  # torch takes both or neither
        h0 = h0 if h0 is not None else self.call("call_function", torch.zeros_like, c0)
        c0 = c0 if c0 is not None else self.call("call_function", torch.zeros_like, h0)
        args.append((h0, c0))
    out = self.call("call_module", name, *args)
    return _rnn_outputs(self, out, 2, layout, hidden)


# ---------------------------------------------------------------------- entry point
def supported_ops() -> list[str]:
    return sorted(_HANDLERS)


def import_onnx_bytes(data: bytes, origin: str) -> fx.GraphModule:
    """`import_onnx` of a model held in memory (e.g. read from an archive); `origin` names it in errors."""
    import onnx
    from google.protobuf.message import DecodeError

    if len(data) > MAX_FILE_BYTES:
        raise HwcError(f"{origin}: {len(data):,} bytes is more than an SE model's ONNX file may be ({MAX_FILE_BYTES:,})")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise HwcError(f"{origin}: not a readable ONNX model ({_first_line(exc)})") from None
    return _import_model(model, origin)


def _import_model(model, origin: str) -> fx.GraphModule:
    import onnx

    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise HwcError(f"{origin}: weights in external data files are not supported (save the model as one file)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise HwcError(f"{origin}: invalid ONNX model ({_first_line(exc)})") from None
    return _Importer(model, origin).build()


def import_onnx(path: str | Path) -> fx.GraphModule:
    """The ONNX file at `path` as a torch module (see the module docstring); HwcError in one
    line for an unreadable file or anything the importer cannot map exactly."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise HwcError(f"{path}: no such ONNX file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise HwcError(f"{path}: {size:,} bytes is more than an SE model's ONNX file may be ({MAX_FILE_BYTES:,})")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise HwcError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    return _import_model(model, str(path))
