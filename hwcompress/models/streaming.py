"""Streaming derived from a whole-sequence core: the same code for T frames and for one.

A user's core is written for whole utterances, `core(features [B, T, ...]) -> output
[B, T, ...]`. `derive` turns it into `step(features, state) -> (output, new_state)`, one
graph that runs a whole utterance from a zero state and one frame from a carried state,
and that torch.onnx's tracing exporter writes with the state as graph inputs/outputs:

- every nn.LSTM / nn.GRU / nn.RNN whose sequence axis is time takes its initial state from
  the state list and returns its final one (state [B, layers, hidden]); an RNN whose time
  axis is folded into its batch (one recurrence per frame, e.g. across frequency) is left
  alone;
- every left padding of time becomes a context buffer: F.pad / nn.ConstantPad*d /
  nn.ZeroPad*d with (k-1, 0) on time, and Conv1d/Conv2d/Conv3d with padding p on time whose
  last p output frames are sliced off (the "chomp" causal convolution) are rewritten as
  concat(previous context, x) along time, new context = its last k-1 (or p) frames. A zero
  context is exactly the whole-utterance zero padding, so both paths agree to rounding;
- what cannot stream is refused in one line naming the layer and its source line:
  bidirectional RNNs, right or symmetric padding of time, reductions / softmax / cumulative
  ops / sorting / flips over time, matmuls contracting time or building [T, T] matrices
  (attention), norms over time, changes of the frame rate (strided or pooled time).

`verify` then runs the derived step on random features both ways and compares: whole
utterance vs the core itself, and frame by frame vs the whole utterance (max |diff| at most
1e-4 of the output's scale); a mismatch is one line naming the first node that differs.

Why torch.fx (symbolic_trace) and not torch.export:
- fx keeps the user's nn.Module layers (nn.LSTM, nn.Conv1d, nn.Linear...) as call_module
  nodes and as attributes of the GraphModule under their own names: the rewrite is a few
  node edits, the state_dict keeps the user's names, and pruning tools still find layers;
- torch.export lowers to ATen (a flat graph without modules, parameters lifted to inputs),
  specialises the sequence length of nn.LSTM/nn.GRU (see export/onnx.py: the dynamic-T graph
  fails) and costs seconds per model; its advantage, tracing some Python control flow on
  shapes, matters little for SE cores, which are straight-line code;
- an fx GraphModule is plain Python that torch.onnx's tracing exporter (the one the zoo
  uses) exports like any module.
Its limit: Python control flow on tensor values (`if x.sum() > 0`, `for t in
range(x.shape[1])`) cannot be traced; that is refused naming the construct and line, and
such a core can define `step(features, state)` and `state_shapes()` itself.

Written here rather than found in a library: no maintained package derives stateful
streaming from an arbitrary whole-sequence PyTorch module (torch.fx gives the graph, the
rewrite rules are SE-specific: time axis, context buffers, the zoo's state layout).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import operator
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from hwcompress.errors import HwcError

#: frames and batches of the shape-propagation runs: two frame counts locate the time axis
#: of every tensor, a second batch size its batch axis
_T_A, _T_B, _B_A, _B_B = 7, 11, 2, 3
#: frames of the numerical check (whole utterance vs frame by frame)
VERIFY_FRAMES = 9
#: largest |whole - streamed| allowed, relative to max(1, max |whole output|)
TOLERANCE = 1e-4

#: torch's own frames are not the user's (as imported and as resolved)
_TORCH_DIR = (str(Path(torch.__file__).parent), str(Path(torch.__file__).resolve().parent))
_RNN = (nn.LSTM, nn.GRU, nn.RNN)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PAD_MODULES = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
                nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
                nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.LPPool1d, nn.LPPool2d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
         nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ATTENTION = (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
              nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_INSTANCE_NORM = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
#: shape-keeping ops whose `dim` argument (position, keyword) must not be the time axis
_DIM_OPS: dict[str, tuple[int, str, str]] = {
    "softmax": (1, "dim", "normalises over"), "log_softmax": (1, "dim", "normalises over"),
    "softmin": (1, "dim", "normalises over"), "normalize": (2, "dim", "normalises over"),
    "cumsum": (1, "dim", "accumulates over"), "cumprod": (1, "dim", "accumulates over"),
    "cummax": (1, "dim", "accumulates over"), "cummin": (1, "dim", "accumulates over"),
    "logcumsumexp": (1, "dim", "accumulates over"), "sort": (1, "dim", "sorts over"),
    "argsort": (1, "dim", "sorts over"), "flip": (1, "dims", "reverses"), "roll": (2, "dims", "rolls"),
    "diff": (2, "dim", "differences over"),
}
#: ops whose result takes only the input's dtype/device, not its values
_SHAPE_ONLY = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"}
_MATMUL = {"matmul", "bmm", "mm", "baddbmm", "addmm", "addbmm", "einsum", "scaled_dot_product_attention",
           "multi_head_attention_forward", "__matmul__"}


@dataclass(frozen=True)
class Axes:
    """Where time and batch are in one node's tensor (from the shape-propagation runs)."""

    shape: tuple[int, ...]  # in the first run (batch _B_A, _T_A frames)
    time: tuple[int, ...]  # axes whose size follows T (alone)
    batch: tuple[int, ...]  # axes whose size follows B (alone)
    folded: tuple[int, ...]  # axes that follow both (time or batch reshaped together)
    #: growth of each `time` axis when T grows by _T_B - _T_A (that many: the frame rate is kept)
    growth: tuple[int, ...]

    @property
    def t(self) -> int | None:
        return self.time[0] if len(self.time) == 1 else None

    @property
    def b(self) -> int | None:
        return self.batch[0] if len(self.batch) == 1 else None

    @property
    def has_time(self) -> bool:
        return bool(self.time or self.folded)

    @property
    def offset(self) -> int:
        """Frames beyond T on the time axis (k-1 after a left padding, 0 for a frame-rate op)."""
        return self.shape[self.t] - _T_A


@dataclass(frozen=True)
class StateSpec:
    """Where one state tensor of a derived graph comes from, so its shape can be read again
    after the layers change (pruning replaces layers by narrower ones)."""

    kind: str  # "rnn" (h or c of a recurrent layer) or "context" (frames before a left padding)
    target: str = ""  # rnn: the layer's module path
    part: str = "h"  # rnn: "h" or "c"
    node: str = ""  # context: the graph node whose frames are kept
    time: int = 0  # context: its time axis
    batch: int = 0  # context: its batch axis
    frames: int = 0  # context: frames kept


@dataclass(frozen=True)
class Derived:
    """What `derive` hands to the model wrapper."""

    module: nn.Module  # GraphModule: forward(features, state) -> (out, new_state); or the user's core
    state_shapes: list[tuple[int, ...]]
    user_step: bool  # the core's own step(features, state) is used
    specs: tuple[StateSpec, ...] = ()  # derived graphs: one per state tensor


def state_shapes(gm: fx.GraphModule, specs: tuple[StateSpec, ...], x: torch.Tensor) -> list[tuple[int, ...]]:
    """The state shapes of a derived graph as its layers are now: one step on one frame `x`
    [1, 1, ...], each state read where the graph takes it (recurrent layers from their sizes,
    contexts from the tensor they extend)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    state = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == "state")
    shapes: list[tuple[int, ...] | None] = [None] * len(specs)

    class Probe(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            if n.op == "call_function" and n.target is operator.getitem and n.args[0] is state:
                i = n.args[1]
                spec = specs[i]
                if spec.kind == "rnn":
                    m = gm.get_submodule(spec.target)
                    size = m.hidden_size if spec.part == "c" or not isinstance(m, nn.LSTM) else (m.proj_size or m.hidden_size)
                    shape = [m.num_layers, size]
                else:
                    shape = list(self.env[by_name[spec.node]].shape)
                    shape[spec.time] = spec.frames
                    del shape[spec.batch]
                shapes[i] = tuple(int(d) for d in shape)
                return torch.zeros(1, *shape, device=x.device)
            return super().run_node(n)

    with torch.no_grad():
        Probe(gm).run(x, [None] * len(specs))
    return [s for s in shapes if s is not None]


# ------------------------------------------------------------------ naming nodes


def _location(node: fx.Node) -> str:
    """'net.py:12' of the user's line that created `node` (noted by _Tracer)."""
    return node.meta.get("hwc_where", "")


class _Tracer(fx.Tracer):
    """fx's tracer noting each node's source line. By hand rather than fx's
    record_stack_traces, whose first use imports ~5 s of torch internals."""

    def create_node(self, *args, **kwargs) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None:
            path = frame.f_code.co_filename
            if not (path.startswith(_TORCH_DIR) or path == __file__ or path.startswith("<")):
                node.meta["hwc_where"] = f"{Path(path).name}:{frame.f_lineno}"
                break
            frame = frame.f_back
        return node


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def describe(node: fx.Node, gm: fx.GraphModule | None = None) -> str:
    """'layer lstm (LSTM) at net.py:14' / 'torch.softmax at net.py:20'."""
    where = _location(node)
    at = f" at {where}" if where else ""
    if node.op == "call_module":
        kind = type(gm.get_submodule(node.target)).__name__ if gm is not None else "module"
        return f"layer {node.target} ({kind}){at}"
    if node.op == "call_method":
        return f".{node.target}(){at}"
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", "") or ""
        prefix = "F." if mod.startswith("torch.nn.functional") else "torch." if mod.startswith("torch") else ""
        return f"{prefix}{_op_name(node)}{at}"
    return f"{node.op} {node.target}{at}"


# ------------------------------------------------------------------ tracing and shapes


def _trace(core: nn.Module, origin: str) -> fx.GraphModule:
    try:
        params = list(inspect.signature(core.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in params if p.kind in positional and p.default is p.empty]
    if len(required) != 1:
        raise HwcError(f"{origin}: the core's forward takes ({', '.join(required) or 'nothing'}); it must take one "
                       "tensor, the features [B, T, F] (or [B, T, F, 2]), and return the output for every frame")
    # optional arguments (e.g. hidden=None) are traced at their defaults
    concrete = {p.name: p.default for p in params[1:] if p.kind in positional and p.default is not p.empty}
    tracer = _Tracer()
    try:
        graph = tracer.trace(core, concrete_args=concrete or None)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... for untraceable code
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not str(Path(f.filename).resolve()).startswith(_TORCH_DIR)
                  and f.filename != __file__]
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({(frames[-1].line or '').strip()})" \
            if frames else ""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise HwcError(f"{origin}: cannot derive streaming: torch.fx cannot trace the core{where}: "
                       f"{type(exc).__name__}: {first}; write it without Python control flow on tensors, or give the "
                       "core its own step(features, state) and state_shapes()") from None
    gm = fx.GraphModule(tracer.root, graph, type(core).__name__)
    # unpacked but unused results (`y, (h, c) = self.lstm(x)`) are not uses of h and c
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


class _Recorder(fx.Interpreter):
    """Runs a GraphModule and keeps every node's value (shape propagation, localisation)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, object] = {}
        self.failed: fx.Node | None = None

    def run_node(self, n: fx.Node) -> object:
        try:
            v = super().run_node(n)
        except Exception:
            self.failed = n
            raise
        self.values[n] = v
        return v


def _record(gm: fx.GraphModule, *args: object) -> _Recorder:
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(*args)
    return rec


def _axes(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> Axes | None:
    """Axes of one tensor from its value in runs (B_A, T_A), (B_A, T_B), (B_B, T_A)."""
    if not (a.dim() == b.dim() == c.dim()):
        return None
    tdep = {d for d in range(a.dim()) if a.shape[d] != b.shape[d]}
    bdep = {d for d in range(a.dim()) if a.shape[d] != c.shape[d]}
    time = tuple(sorted(tdep - bdep))
    return Axes(shape=tuple(a.shape), time=time, batch=tuple(sorted(bdep - tdep)),
                folded=tuple(sorted(tdep & bdep)), growth=tuple(b.shape[d] - a.shape[d] for d in time))


def _propagate(gm: fx.GraphModule, make_input: Callable[[int, int], torch.Tensor], origin: str) -> dict[fx.Node, object]:
    """Run the core for three (batch, frames) and note each tensor node's axes in node.meta;
    return the first run's values (the checks read arguments from them)."""
    runs = []
    for batch, frames in ((_B_A, _T_A), (_B_A, _T_B), (_B_B, _T_A)):
        rec = _Recorder(gm)
        try:
            with torch.no_grad():
                rec.run(make_input(batch, frames))
        except Exception as exc:  # the user's code failing on another T or B
            at = f" in {describe(rec.failed, gm)}" if rec.failed is not None else ""
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise HwcError(f"{origin}: the core fails on a batch of {batch} x {frames} frames{at} "
                           f"({type(exc).__name__}: {first}); it must accept any batch size and number of frames") from None
        runs.append(rec.values)
    for n in gm.graph.nodes:
        va, vb, vc = (r.get(n) for r in runs)
        if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and isinstance(vc, torch.Tensor):
            ax = _axes(va, vb, vc)
            if ax is not None:
                n.meta["hwc_axes"] = ax
    return runs[0]


def _ax(n: object) -> Axes | None:
    return n.meta.get("hwc_axes") if isinstance(n, fx.Node) else None


def _tensor_inputs(n: fx.Node) -> list[fx.Node]:
    return [a for a in n.all_input_nodes if _ax(a) is not None]


def _arg(n: fx.Node, pos: int, name: str, default: object = None) -> object:
    if len(n.args) > pos:
        return n.args[pos]
    return n.kwargs.get(name, default)


def _dims(value: object, ndim: int) -> list[int] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(d, int) for d in items):
        return None
    return [d % ndim for d in items]


# ------------------------------------------------------------------ causality checks


def _refuse(origin: str, node: fx.Node, gm: fx.GraphModule, why: str, fix: str = "") -> HwcError:
    return HwcError(f"{origin}: {describe(node, gm)} {why}: not causal, so it cannot stream frame by frame"
                    + (f"; {fix}" if fix else ""))


def _check_node(n: fx.Node, gm: fx.GraphModule, origin: str) -> None:
    """Refuse constructs that mix future frames into the past (one line naming the node)."""
    inputs = _tensor_inputs(n)
    first = _ax(n.args[0]) if n.args else None
    module = gm.get_submodule(n.target) if n.op == "call_module" else None
    if isinstance(module, _RNN) and module.bidirectional:
        raise _refuse(origin, n, gm, "is bidirectional (its backward direction reads the frames to come)",
                      "use bidirectional=False")
    if isinstance(module, _ATTENTION) and any(_ax(a).has_time for a in inputs):
        raise _refuse(origin, n, gm, "attends over time (every frame sees the whole utterance)")
    if first is not None and first.t is not None:
        t = first.t
        nd = len(first.shape)
        if isinstance(module, nn.LayerNorm) and t >= nd - len(module.normalized_shape):
            raise _refuse(origin, n, gm, "normalises over the time axis")
        if isinstance(module, nn.GroupNorm) and t >= 1:
            raise _refuse(origin, n, gm, "normalises over the time axis (GroupNorm pools channels and time)")
        if isinstance(module, _INSTANCE_NORM) and t >= 2 and not (module.track_running_stats and not module.training):
            raise _refuse(origin, n, gm, "normalises over the time axis (instance statistics of the utterance)")
        if isinstance(module, _POOL):
            n_sp = int(type(module).__name__[-2])
            if t >= nd - n_sp:
                raise _refuse(origin, n, gm, "pools over time (it changes the frame rate or looks ahead)")
        if isinstance(module, _CONV):
            _check_conv(n, module, first, gm, origin)
        if isinstance(module, _CONV_T):
            n_sp = len(module.kernel_size)
            j = t - (nd - n_sp)
            if j >= 0 and (module.kernel_size[j] > 1 or module.stride[j] > 1):
                raise _refuse(origin, n, gm, "is a transposed convolution over time (it spreads each frame into "
                                             "later and earlier outputs)", "use a Conv with left padding")
        if n.op in ("call_function", "call_method"):
            name = _op_name(n)
            if name in _DIM_OPS:
                pos, kw, verb = _DIM_OPS[name]
                dims = _dims(_arg(n, pos, kw), nd)
                if dims is not None and t in dims:
                    raise _refuse(origin, n, gm, f"{verb} the time axis (dim {t})")
            if name in ("layer_norm", "group_norm", "instance_norm"):
                shape = _arg(n, 1, "normalized_shape" if name == "layer_norm" else "num_groups")
                if name != "layer_norm" or (isinstance(shape, (list, tuple)) and t >= nd - len(shape)):
                    raise _refuse(origin, n, gm, "normalises over the time axis")
    if n.op in ("call_function", "call_method") and _op_name(n) in _MATMUL and len(inputs) >= 1:
        name = _op_name(n)
        if name in ("einsum", "scaled_dot_product_attention", "multi_head_attention_forward"):
            if len([a for a in inputs if _ax(a).has_time]) >= 2:
                raise _refuse(origin, n, gm, "combines two time-varying tensors over time (attention-like)")
        else:
            ops = [a for a in n.args if isinstance(a, fx.Node)][-2:]
            if len(ops) == 2 and _ax(ops[0]) is not None and _ax(ops[1]) is not None:
                a, b = _ax(ops[0]), _ax(ops[1])
                ka = len(a.shape) - 1
                kb = len(b.shape) - 2 if len(b.shape) >= 2 else 0
                if ka in a.time or kb in b.time:
                    raise _refuse(origin, n, gm, "contracts over the time axis (a matmul over frames)")
    out = _ax(n)
    if out is not None and _op_name(n) not in _SHAPE_ONLY and any(_ax(a).has_time for a in inputs):
        if len(out.time) > 1:
            raise _refuse(origin, n, gm, f"builds a tensor with {len(out.time)} time axes (frames x frames, "
                                         "attention-like)")
        if not out.has_time:
            raise _refuse(origin, n, gm, "drops the time axis (it reduces or indexes over frames, so each output "
                                         "depends on the whole utterance)")
        if out.t is not None and out.growth[0] != _T_B - _T_A:
            raise _refuse(origin, n, gm, f"changes the frame rate ({_T_A} frames in -> {out.shape[out.t]} out)")


def _check_conv(n: fx.Node, m: nn.Module, x_ax: Axes, gm: fx.GraphModule, origin: str) -> None:
    """Strides and unpadded kernels over time (padding is checked where it is rewritten)."""
    n_sp = len(m.kernel_size)
    j = x_ax.t - (len(x_ax.shape) - n_sp)
    if j < 0:
        return
    recept = (m.kernel_size[j] - 1) * m.dilation[j]
    if m.stride[j] != 1:
        raise _refuse(origin, n, gm, f"strides time by {m.stride[j]} (it changes the frame rate)")
    out = _ax(n)
    if out is not None and out.t is not None and out.offset < 0 and not (
            isinstance(m.padding, tuple) and m.padding[j] > 0):
        raise HwcError(f"{origin}: {describe(n, gm)} sees {recept + 1} frames of time but its input is not padded "
                       f"on the left: it drops {recept} frame(s) of the utterance; pad it first with "
                       f"F.pad(x, ({recept}, 0))")


# ------------------------------------------------------------------ the rewrite


class _Rewriter:
    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, object], origin: str) -> None:
        self.gm, self.graph, self.values, self.origin = gm, gm.graph, values, origin
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        with self.graph.inserting_after(placeholders[0]):
            self.state = self.graph.placeholder("state")
        self.shapes: list[tuple[int, ...]] = []
        self.specs: list[StateSpec] = []
        self.new_state: list[fx.Node] = []

    def _state_in(self) -> fx.Node:
        return self.graph.call_function(operator.getitem, (self.state, len(self.shapes)))

    def context(self, n: fx.Node, x: fx.Node, x_ax: Axes, frames: int, value: float = 0.0) -> fx.Node:
        """Before `n`: concat(context, x) along time; the new context is its last `frames`."""
        t, b = x_ax.t, x_ax.b
        if b is None:
            raise HwcError(f"{self.origin}: {describe(n, self.gm)} pads time on a tensor whose batch axis cannot be "
                           f"found (shape {list(x_ax.shape)}): keep the batch as its own axis there")
        shape = list(x_ax.shape)
        shape[t] = frames
        del shape[b]
        ctx = self._state_in()
        self.shapes.append(tuple(shape))
        self.specs.append(StateSpec("context", node=x.name, time=t, batch=b, frames=frames))
        if b != 0:
            ctx = self.graph.call_method("movedim", (ctx, 0, b))
        if value:
            ctx = self.graph.call_function(operator.add, (ctx, float(value)))
        full = self.graph.call_function(torch.cat, ([ctx, x],), {"dim": t})
        index = tuple([slice(None)] * t + [slice(-frames, None)])
        new = self.graph.call_function(operator.getitem, (full, index))
        if value:
            new = self.graph.call_function(operator.sub, (new, float(value)))
        if b != 0:
            new = self.graph.call_method("movedim", (new, b, 0))
        self.new_state.append(new)
        return full

    # -- padding written as F.pad or a pad module
    def pad(self, n: fx.Node) -> None:
        x = n.args[0]
        x_ax = _ax(x)
        if n.op == "call_module":
            m = self.gm.get_submodule(n.target)
            pad = list(m.padding)
            if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d,
                              nn.ZeroPad3d)):
                mode, value = "constant", float(getattr(m, "value", 0.0))
            else:
                mode, value = type(m).__name__, 0.0
        else:
            pad = _arg(n, 1, "pad")
            mode, value = _arg(n, 2, "mode", "constant"), _arg(n, 3, "value", None) or 0.0
            if not isinstance(pad, (list, tuple)) or not all(isinstance(p, int) for p in pad):
                raise HwcError(f"{self.origin}: {describe(n, self.gm)} computes its padding from the input; give it "
                               "as constant integers, e.g. F.pad(x, (k - 1, 0))")
            pad = list(pad)
        if x_ax is None or x_ax.t is None:
            return
        i = len(x_ax.shape) - 1 - x_ax.t
        if 2 * i + 1 >= len(pad) or pad[2 * i] == pad[2 * i + 1] == 0:
            return
        left, right = pad[2 * i], pad[2 * i + 1]
        if right != 0 or left < 0:
            what = f"pads {right} future frame(s) on the time axis" if right > 0 else "crops the time axis"
            raise _refuse(self.origin, n, self.gm, f"{what} (padding {left}, {right})",
                          "pad time on the left only: (k - 1, 0)")
        if mode != "constant":
            raise _refuse(self.origin, n, self.gm, f"pads time in {mode} mode (it copies frames of the utterance)",
                          "use constant (zero) padding on time")
        rest = list(pad)
        rest[2 * i] = 0
        with self.graph.inserting_before(n):
            xx = x
            if any(rest):
                xx = self.graph.call_function(F.pad, (x, tuple(rest)), {"mode": "constant", "value": value})
            shape = list(x_ax.shape)
            for d in range(len(rest) // 2):
                shape[len(shape) - 1 - d] += rest[2 * d] + rest[2 * d + 1]
            full = self.context(n, xx, Axes(tuple(shape), x_ax.time, x_ax.batch, x_ax.folded, x_ax.growth), left,
                                value)
        n.replace_all_uses_with(full)
        self.graph.erase_node(n)

    # -- convolutions over time: plain (after a left pad) or padded-and-chomped
    def conv(self, n: fx.Node) -> None:
        m = self.gm.get_submodule(n.target)
        x = n.args[0]
        x_ax, out_ax = _ax(x), _ax(n)
        if x_ax is None or x_ax.t is None:
            return
        n_sp = len(m.kernel_size)
        j = x_ax.t - (len(x_ax.shape) - n_sp)
        if j < 0:
            return  # time in the batch or channel axis: the shape checks handle it
        recept = (m.kernel_size[j] - 1) * m.dilation[j]
        if isinstance(m.padding, str):
            p = 0 if m.padding == "valid" or recept == 0 else None
            if p is None:
                raise _refuse(self.origin, n, self.gm, "pads time 'same' (half its kernel reads future frames)",
                              "use padding 0 after F.pad(x, (k - 1, 0))")
        else:
            p = m.padding[j]
        if p == 0:
            return  # its context comes from a left padding before it (checked in _check_conv)
        if m.padding_mode != "zeros":
            raise _refuse(self.origin, n, self.gm, f"pads time in {m.padding_mode} mode")
        chomp = 2 * p - recept  # the frames to slice off the end for T outputs
        users = list(n.users)
        index = users[0].args[1] if len(users) == 1 and users[0].target is operator.getitem else None
        nd = len(out_ax.shape) if out_ax is not None else 0
        if p < recept or index is None or not _is_chomp(index, x_ax.t, chomp, nd):
            raise _refuse(self.origin, n, self.gm, f"pads {p} frame(s) on both sides of time, so it reads future frames",
                          f"slice off its last {p} output frame(s) (the causal \"chomp\": y[..., :-{p}]) or pad "
                          "time on the left only")
        # the same Parameter objects (and parametrizations, hooks), no time padding: the context
        # supplies it. Not copy.copy: parametrized modules (weight_norm) refuse to be pickled
        new = type(m).__new__(type(m))
        new.__dict__.update(m.__dict__)
        new._parameters, new._buffers, new._modules = dict(m._parameters), dict(m._buffers), dict(m._modules)
        padding = list(m.padding)
        padding[j] = 0
        new.padding = tuple(padding)
        *parent, field = str(n.target).split(".")
        setattr(self.gm.get_submodule(".".join(parent)) if parent else self.gm, field, new)
        with self.graph.inserting_before(n):
            full = self.context(n, x, x_ax, p)
        n.args = (full, *n.args[1:])
        chomped = users[0]
        extra = p - recept  # frames of delay the padding adds (0 for the usual p = (k-1)*dilation)
        if extra:
            with self.graph.inserting_after(n):
                y = self.graph.call_function(operator.getitem, (n, tuple([slice(None)] * x_ax.t + [slice(None, -extra)])))
            chomped.replace_all_uses_with(y)
        else:
            chomped.replace_all_uses_with(n)
        self.graph.erase_node(chomped)

    # -- recurrent layers over time
    def rnn(self, n: fx.Node) -> None:
        m = self.gm.get_submodule(n.target)
        x = n.args[0]
        x_ax = _ax(x)
        if x_ax is None or not x_ax.has_time:
            return
        if len(x_ax.shape) != 3:
            raise HwcError(f"{self.origin}: {describe(n, self.gm)} gets an unbatched {len(x_ax.shape)}-d input; give "
                           "it [batch, time, features] (batch_first=True) or [time, batch, features]")
        seq = 1 if m.batch_first else 0
        if seq not in x_ax.time:
            if seq in x_ax.folded or (x_ax.t is not None and x_ax.t != seq):
                raise HwcError(f"{self.origin}: {describe(n, self.gm)} runs its recurrence over axis {seq} of its "
                               f"input while time is axis {x_ax.t} (batch_first={m.batch_first}): give it "
                               "[batch, time, features] with batch_first=True, or [time, batch, features]")
            return  # time folded into the batch: one recurrence per frame, nothing to carry
        hx = _arg(n, 1, "hx")
        if isinstance(hx, (fx.Node, tuple, list)):
            held = self.values.get(hx) if isinstance(hx, fx.Node) else [self.values.get(h) for h in hx]
            tensors = held if isinstance(held, (tuple, list)) else [held]
            if any(isinstance(v, torch.Tensor) and bool(v.abs().max() > 0) for v in tensors):
                raise HwcError(f"{self.origin}: {describe(n, self.gm)} starts from a non-zero initial state; streaming "
                               "starts every utterance from zeros (drop the initial state or make it zero)")
        for u in n.users:
            if u.target is not operator.getitem or u.args[1] not in (0, 1):
                raise HwcError(f"{self.origin}: {describe(n, self.gm)}: its result is used whole by {describe(u, self.gm)}; "
                               "unpack it as `out, state = rnn(x)`")
            if u.args[1] == 1 and u.users:
                raise _refuse(self.origin, n, self.gm, f"has its final state used by {describe(next(iter(u.users)), self.gm)} "
                                                       "(a summary of the whole utterance)")
        lstm = isinstance(m, nn.LSTM)
        h_size = (m.proj_size or m.hidden_size) if lstm else m.hidden_size
        with self.graph.inserting_before(n):
            def state_in(size: int, part: str) -> fx.Node:
                s = self._state_in()
                self.shapes.append((m.num_layers, size))
                self.specs.append(StateSpec("rnn", target=str(n.target), part=part))
                return self.graph.call_method("contiguous", (self.graph.call_method("transpose", (s, 0, 1)),))

            hx_new = (state_in(h_size, "h"), state_in(m.hidden_size, "c")) if lstm else state_in(h_size, "h")
            call = self.graph.call_module(n.target, (x, hx_new))
            final = self.graph.call_function(operator.getitem, (call, 1))
            finals = [self.graph.call_function(operator.getitem, (final, i)) for i in range(2)] if lstm else [final]
            self.new_state += [self.graph.call_method("transpose", (f, 0, 1)) for f in finals]
        call.meta.update(n.meta)
        n.replace_all_uses_with(call)
        self.graph.erase_node(n)

    def finish(self) -> fx.GraphModule:
        out = next(n for n in self.graph.nodes if n.op == "output")
        out.args = ((out.args[0], list(self.new_state)),)
        self.graph.eliminate_dead_code()
        self.graph.lint()
        gm = fx.GraphModule(self.gm, self.graph, self.gm.__class__.__name__)
        return gm


def _is_chomp(index: object, t: int, chomp: int, ndim: int) -> bool:
    """Whether a getitem index is `[:, ..., :-chomp]` on axis t and whole elsewhere."""
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items = items[:k] + [slice(None)] * (ndim - len(items) + 1) + items[k + 1:]
    items += [slice(None)] * (ndim - len(items))
    if len(items) != ndim or not all(isinstance(s, slice) for s in items):
        return False
    whole = slice(None)
    for d, s in enumerate(items):
        if d == t:
            if s.start not in (None, 0) or s.step not in (None, 1) or s.stop != -chomp:
                return False
        elif (s.start, s.stop, s.step) != (whole.start, whole.stop, whole.step) and not (
                s.start in (None, 0) and s.stop is None and s.step in (None, 1)):
            return False
    return True


def _is_pad(n: fx.Node, gm: fx.GraphModule) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), _PAD_MODULES)
    return n.op == "call_function" and n.target in (F.pad, getattr(torch._C._nn, "pad", None))


def derive(core: nn.Module, make_input: Callable[[int, int], torch.Tensor], out_frame: tuple[int, ...],
           origin: str) -> Derived:
    """Streaming step of `core`, refusing (one line) what cannot stream.

    `make_input(batch, frames)` gives random features; `out_frame` is the shape of one frame
    of the output without batch (e.g. (161,) for a magnitude mask)."""
    if callable(getattr(core, "step", None)) and callable(getattr(core, "state_shapes", None)):
        try:
            shapes = [tuple(int(d) for d in s) for s in core.state_shapes()]
        except (TypeError, ValueError) as exc:
            raise HwcError(f"{origin}: the core's state_shapes() must return a list of shapes (tuples of ints) "
                           f"({type(exc).__name__}: {exc})") from None
        return Derived(core, shapes, True)
    was_training = core.training
    core.eval()
    try:
        gm = _trace(core, origin)
        values = _propagate(gm, make_input, origin)
        for n in gm.graph.nodes:
            _check_node(n, gm, origin)
        out = next(n for n in gm.graph.nodes if n.op == "output")
        _check_output(out.args[0], values, out_frame, origin)
        rw = _Rewriter(gm, values, origin)
        for n in list(gm.graph.nodes):
            if _is_pad(n, gm):
                rw.pad(n)
            elif n.op == "call_module" and isinstance(gm.get_submodule(n.target), _CONV):
                rw.conv(n)
            elif n.op == "call_module" and isinstance(gm.get_submodule(n.target), _RNN):
                rw.rnn(n)
        step = rw.finish()
    finally:
        core.train(was_training)
    step.train(was_training)
    return Derived(step, rw.shapes, False, tuple(rw.specs))


def _check_output(out: object, values: dict, out_frame: tuple[int, ...], origin: str) -> None:
    if not isinstance(out, fx.Node) or not isinstance(values.get(out), torch.Tensor):
        kind = type(values.get(out)).__name__ if isinstance(out, fx.Node) else type(out).__name__
        raise HwcError(f"{origin}: the core must return one tensor [B, T, {', '.join(map(str, out_frame))}], "
                       f"it returns a {kind}")
    ax = _ax(out)
    want = (_B_A, _T_A, *out_frame)
    if tuple(values[out].shape) != want or ax is None or ax.time != (1,) or ax.batch != (0,):
        raise HwcError(f"{origin}: the core returns {list(values[out].shape)} for {_B_A} x {_T_A} frames; its front end "
                       f"declares [B, T, {', '.join(map(str, out_frame))}] (batch first, then time)")


# ------------------------------------------------------------------ numerical check


def verify(step: Callable, derived: Derived, core: nn.Module | None, make_input: Callable[[int, int], torch.Tensor],
           origin: str, frames: int = VERIFY_FRAMES) -> float:
    """Check that the whole-utterance step equals `core` and frame-by-frame streaming equals
    the whole utterance on random features; return the max |diff| of streaming vs whole.
    `step(features, state)` runs the derived module (and wraps a user step)."""
    x = make_input(1, frames)
    zeros = [torch.zeros(1, *s, device=x.device) for s in derived.state_shapes]

    def run(feats: torch.Tensor, state: list[torch.Tensor], what: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        try:
            # a GraphModule prints its generated code to stderr when it raises: the line below says it all
            with contextlib.redirect_stderr(io.StringIO()):
                out, new_state = step(feats, state)
        except HwcError:
            raise
        except Exception as exc:  # the user's code (or step) failing on one frame, say where
            raise HwcError(f"{origin}: the streaming step fails on {what}{_failing_node(derived, feats, state)} "
                           f"({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]})") from None
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or tuple(out.shape[:2]) != (1, feats.shape[1]):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise HwcError(f"{origin}: the streaming step gives {shape} for {what} (expected [1, {feats.shape[1]}, ...])"
                           f"{_first_diff(derived, x, zeros)}")
        if len(new_state) != len(derived.state_shapes):
            raise HwcError(f"{origin}: the step returns {len(new_state)} state tensors, state_shapes() declares "
                           f"{len(derived.state_shapes)}")
        return out, list(new_state)

    with torch.no_grad():
        whole, whole_state = run(x, zeros, f"{frames} frames from a zero state")
        if not bool(torch.isfinite(whole).all()):
            raise HwcError(f"{origin}: the core's output is not finite (NaN/Inf) on random features")
        scale = TOLERANCE * max(1.0, float(whole.abs().max()))
        if core is not None:
            ref = core(x)
            d = float((ref - whole).abs().max())
            if d > scale:
                raise HwcError(f"{origin}: the derived whole-utterance step differs from the core by {d:.2g} "
                               f"(tolerance {scale:.2g}){_first_diff(derived, x, zeros)}")
        state, outs = zeros, []
        for t in range(frames):
            o, state = run(x[:, t : t + 1], state, "one frame")
            outs.append(o)
        streamed = torch.cat(outs, dim=1)
    diff = float((streamed - whole).abs().max())
    if not diff <= scale:
        raise HwcError(f"{origin}: frame-by-frame streaming differs from the whole utterance by max |diff| {diff:.2g} "
                       f"(tolerance {scale:.2g}, {frames} random frames){_first_diff(derived, x, zeros)}")
    return diff


def _failing_node(derived: Derived, feats: torch.Tensor, state: list[torch.Tensor]) -> str:
    """' in .squeeze() at net.py:9': the node of a derived graph that raises on these inputs."""
    if derived.user_step or not isinstance(derived.module, fx.GraphModule):
        return ""
    rec = _Recorder(derived.module)
    try:
        with torch.no_grad():
            rec.run(feats, state)
    except Exception:  # expected: we are looking for where it raises
        pass
    return f" in {describe(rec.failed, derived.module)}" if rec.failed is not None else ""


def _first_diff(derived: Derived, x: torch.Tensor, zeros: list[torch.Tensor]) -> str:
    """'; first differing op: layer conv (Conv1d) at net.py:9' (derived graphs only)."""
    gm = derived.module
    if derived.user_step or not isinstance(gm, fx.GraphModule):
        return ""
    try:
        whole = _record(gm, x, zeros)
        output = next(n for n in gm.graph.nodes if n.op == "output")
        steps, state = [], zeros
        for t in range(x.shape[1]):
            rec = _record(gm, x[:, t : t + 1], state)
            steps.append(rec)
            state = rec.values[output][1]
        for n in gm.graph.nodes:
            ax = _ax(n)
            v = whole.values.get(n)
            if ax is None or ax.t is None or ax.offset != 0 or not isinstance(v, torch.Tensor):
                continue
            parts = [r.values.get(n) for r in steps]
            if not all(isinstance(p, torch.Tensor) and p.dim() == v.dim() and p.shape[ax.t] == 1 for p in parts):
                return f"; first differing op: {describe(n, gm)} (frame count)"
            s = torch.cat(parts, dim=ax.t)
            if s.shape != v.shape or float((s - v).abs().max()) > TOLERANCE * max(1.0, float(v.abs().max())):
                return f"; first differing op: {describe(n, gm)}"
    except Exception:  # localisation is a courtesy: the mismatch itself is already established
        return ""
    return ""
