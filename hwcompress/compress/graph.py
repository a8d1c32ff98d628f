"""Structured groups discovered from a model's real computation, not wired by hand.

`discover(model)` runs the model once on example inputs (the pipeline contract
`model(spec, state)` with a short random spectrum and zero state, or any `example_inputs`
for a plain core such as `core(features)`) and follows where every unit goes. A unit is an
output feature of a Linear, an output channel of a (transposed) convolution or a hidden
unit of an LSTM/GRU; a group is a set of units that can only be removed together: their
producer rows (several producers when a residual addition or product couples them) and
the matching input columns of every consumer. What it finds is exactly what pruning,
group lasso and shrinking act on (hwcompress.compress.groups / prune / shrink).

How: every floating tensor of the traced run carries an integer label tensor of its own
shape saying which unit each element belongs to (`FIXED` for data that is no unit, such as
the input spectrum; `PAD` for constant filler made with the tensor's shape, such as
padding). Data-movement ops (reshape, permute, cat, slicing, chunk, pad, ...) are applied
to the labels themselves, so offsets of concatenations, strides of channel x frequency
flattening and slices along time come out of torch's own indexing, not out of rules
written here. Elementwise ops unite the units that meet at one position (residual adds,
GLU value/gate halves); a layer unites each of its input features with one persistent
"consumer" id, and its outputs get persistent "producer" ids, so a layer called twice
couples both calls. State inputs start with one free id per element: a causal conv that
concatenates its context with x along time unites them with x's channels, an LSTM its h/c
with its hidden units, and the returned state is united with the state it replaces.
Per-channel layers (PReLU, BatchNorm, InstanceNorm, GroupNorm) attach their parameters to
the unit of each channel; a normalisation unites what it normalises together (GroupNorm's
groups become units of C/G channels; LayerNorm over a layer's units makes them one unit,
which is reported as ungrouped with the reason).

After the run, the union-find classes that contain producer ids are the units; connected
producers form a group. A group is dropped to "ungrouped" (the layers still get
unstructured pruning and clustering) with the reason when any of its units: reaches the
model output (the mask layer), is reduced or normalised together with other units or
data, shares a tensor slice with other data (a reshape that mixes units, a concatenation
with fixed data along time), is combined elementwise with a tensor that would have to be
sliced but belongs to no layer, goes through an op this module does not know, or leaves
torch (`.numpy()`); also when its layer is a grouped conv, a multi-layer or bidirectional
RNN, when no layer consumes it, or when its weights are used outside their own module.

Why a TorchFunctionMode recorder on real tensors rather than the alternatives:
- torch.fx symbolic tracing fails on the pipeline contract itself (iterating and slicing
  the state *list* proxies, `zip(self.enc, state[:n])`) and on any data-dependent Python;
  a recorder runs the model's real code, so any Python control flow just runs;
- torch.export / make_fx work at ATen level: nn.LSTM/GRU are decomposed into per-step
  matmuls (T-dependent graphs, module identity lost), parameters become lifted inputs, and
  the shapes are specialised; the recorder sees F.linear / torch.lstm / F.glu / torch.cat
  with the module's own Parameter objects, which name the layer directly;
- torch-pruning 1.6.1's DependencyGraph (tried on the zoo): it builds on autograd nodes
  (the CPU LSTM shows up as MkldnnRnnLayerBackward0), has no GRU pruner (the GRU's
  weights come out as "unwrapped parameters", pruned along their last dimension: wrong),
  treats the state inputs as unrelated tensors and the returned state as plain outputs
  (so state_shapes would not follow), groups the mask layer like any other, and its
  groups are chains of index-mapping closures; registering a GRU pruner and mapping those
  closures onto Slot tables would cost as much as this and still miss the state.
Written here because no maintained library follows unit identity through a stateful
streaming contract (the time-axis state is what torch-pruning and NNCF's pruning miss).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from hwcompress.errors import HwcError
from hwcompress.models.cost import UNIT_LAYERS, WEIGHT_LAYERS, readable_names

FIXED = -1.0  # data that belongs to no unit (the input spectrum, constants)
PAD = -2.0  # constant filler made with the tensor's own shape: fits any unit
#: frames of the example spectrum for the pipeline contract (any T >= 1 runs the same code)
FRAMES = 3


# --- what discovery returns ---------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """Where a group's units sit along one layer's output (producer), input (consumer) or
    per-channel parameters (attached layer): `table[p]` is the unit at position p of that
    axis, or -1 for positions that belong to other groups (or to none)."""

    layer: str
    table: tuple[int, ...] = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_units", torch.tensor(self.table, dtype=torch.long, device="cpu"))

    @property
    def unit_of(self) -> torch.Tensor:
        """The table as a tensor (unit per position, -1 elsewhere)."""
        return self._units

    @property
    def positions(self) -> int:
        return len(self.table)

    def indices(self, units: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Positions (ascending) of the given units along this slot's axis."""
        units = torch.as_tensor(units, dtype=torch.long, device="cpu").reshape(-1)
        return torch.isin(self._units, units).nonzero().reshape(-1)


@dataclass(frozen=True)
class Group:
    """Units removed together: rows of every producer, columns of every consumer and the
    per-channel parameters of the attached (normalisation, PReLU) layers."""

    name: str
    producers: tuple[Slot, ...]
    consumers: tuple[Slot, ...]
    size: int  # number of units
    attached: tuple[Slot, ...] = ()

    @property
    def producer(self) -> Slot:
        """The first producer (the one the group is named after)."""
        return self.producers[0]


@dataclass(frozen=True)
class Ungrouped:
    layer: str
    reason: str


@dataclass
class Discovery:
    groups: list[Group]
    ungrouped: list[Ungrouped]
    #: readable layer name -> module path, for every weight and attached layer
    paths: dict[str, str] = field(default_factory=dict)


# --- union-find over integer ids -----------------------------------------------------------


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def alloc(self, n: int) -> int:
        base = len(self.parent)
        self.parent.extend(range(base, base + n))
        return base

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.numel() == 0:
            return
        pairs = torch.unique(torch.stack([a.reshape(-1), b.reshape(-1)], 1).long(), dim=0)
        for x, y in pairs.tolist():
            if x != y:
                self.union(x, y)

    def roots(self) -> np.ndarray:
        arr = np.asarray(self.parent, dtype=np.int64)
        while True:
            nxt = arr[arr]
            if np.array_equal(nxt, arr):
                return arr
            arr = nxt


# --- op tables -----------------------------------------------------------------------------

_DUNDER = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add", "__sub__": "sub", "__rsub__": "sub", "__isub__": "sub",
    "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul", "__truediv__": "div", "__rtruediv__": "div",
    "__itruediv__": "div", "__div__": "div", "__rdiv__": "div", "__idiv__": "div", "__floordiv__": "div",
    "__rfloordiv__": "div", "__ifloordiv__": "div", "__mod__": "remainder", "__rmod__": "remainder",
    "__pow__": "pow", "__rpow__": "pow", "__ipow__": "pow", "__and__": "logical_and", "__rand__": "logical_and",
    "__iand__": "logical_and", "__or__": "logical_or", "__ror__": "logical_or", "__ior__": "logical_or",
    "__xor__": "logical_xor", "__rxor__": "logical_xor", "__ixor__": "logical_xor", "__eq__": "eq", "__ne__": "ne",
    "__lt__": "lt", "__le__": "le", "__gt__": "gt", "__ge__": "ge", "__neg__": "neg", "__pos__": "positive",
    "__abs__": "abs", "__invert__": "logical_not", "__matmul__": "matmul", "__rmatmul__": "matmul",
}

#: pointwise ops: every tensor argument is an operand broadcast to the output
_ELEMENTWISE = set("""
abs absolute acos arccos acosh arccosh asin arcsin asinh arcsinh atan arctan atanh arctanh ceil clamp clip clamp_min
clamp_max cos cosh deg2rad digamma erf erfc erfinv exp exp2 expm1 fix floor frac lgamma log log10 log1p log2 logit
i0 isnan isinf isfinite isposinf isneginf isreal nan_to_num neg negative positive rad2deg reciprocal round rsqrt
sigmoid sign sgn signbit sin sinc sinh sqrt square tan tanh trunc relu relu6 elu selu celu gelu silu mish softplus
softsign hardtanh hardsigmoid hardswish hardshrink softshrink tanhshrink leaky_relu rrelu logsigmoid _threshold
threshold dropout alpha_dropout feature_alpha_dropout dropout1d dropout2d dropout3d
add sub rsub subtract mul multiply div divide true_divide floor_divide remainder fmod pow float_power maximum
minimum fmax fmin atan2 arctan2 hypot copysign xlogy lerp addcmul addcdiv where masked_fill
eq ne lt le gt ge greater greater_equal less less_equal not_equal logical_and logical_or logical_xor logical_not
bitwise_not isclose heaviside
""".split())
#: dtype/device changes and copies: the labels pass unchanged from the first argument
_IDENTITY = set("to type_as float double half bfloat16 cpu cuda detach requires_grad clone contiguous "
                "data real".split())
#: data movement: applied to the labels themselves
_SHAPE = set("""
view reshape view_as reshape_as permute transpose swapaxes swapdims movedim moveaxis t T mT H mH unsqueeze squeeze
flatten unflatten __getitem__ narrow narrow_copy select index_select take_along_dim gather masked_select cat concat
concatenate stack hstack vstack dstack chunk split tensor_split split_with_sizes unbind expand expand_as
broadcast_to repeat repeat_interleave tile flip fliplr flipud roll rot90 unfold atleast_1d atleast_2d atleast_3d
ravel pad
""".split())
#: ops where only the first argument is data (the others are indices, masks or shapes)
_FIRST_ONLY = {"__getitem__", "index_select", "gather", "take_along_dim", "masked_select", "view_as", "reshape_as",
               "expand_as", "narrow", "select", "repeat_interleave"}
_REDUCE = set("sum nansum mean nanmean prod amax amin max min norm var std logsumexp all any argmax argmin median "
              "nanmedian count_nonzero".split())
_ALONG_DIM = set("softmax log_softmax softmin cumsum cumprod cummax cummin logcumsumexp normalize sort argsort "
                 "topk diff".split())
_LIKE = set("zeros_like ones_like empty_like full_like rand_like randn_like randint_like".split())
_NEW = set("new_zeros new_ones new_empty new_full new_tensor".split())
#: queries whose result is no tensor and carries no values out
_META = set("""
size dim ndimension numel nelement __len__ element_size is_contiguous is_floating_point is_complex stride
storage_offset get_device __format__ __repr__ __str__ __hash__ __bool__ item __float__ __int__ __index__
is_nonzero equal allclose is_same_size has_names data_ptr type __get__ __contains__ is_leaf is_set_to
""".split())
_LAYER_OPS = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
              "lstm", "gru", "layer_norm", "batch_norm", "group_norm", "instance_norm", "prelu", "glu"}


def _is_property(func: Any) -> bool:
    return getattr(func, "__name__", None) == "__get__"


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # a property such as Tensor.shape or Tensor.T: its own name
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _base(name: str) -> str:
    if name.startswith("__"):
        return _DUNDER.get(name, name)
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def _arg(args: Sequence, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _is_data(t: object) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _dims(value: Any, ndim: int) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return sorted({v % ndim for v in value}) if ndim else []
    raise TypeError(f"unexpected dim {value!r}")


class _Follow(Exception):
    """Internal: an op could not be followed; its inputs' units are poisoned."""


# --- the recorder --------------------------------------------------------------------------


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.uf = _UnionFind()
        self.labels: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        names = readable_names(model, WEIGHT_LAYERS + UNIT_LAYERS)
        self.paths = {name: path for path, name in names.items()}
        self.modules = {name: model.get_submodule(path) for name, path in self.paths.items()}
        self.weight = {n for n, m in self.modules.items() if isinstance(m, WEIGHT_LAYERS)}
        self.name_of = {id(m): n for n, m in self.modules.items()}
        self.path_of = {id(m): p for p, m in model.named_modules()}
        self.owner: dict[int, str] = {}
        for n, m in self.modules.items():
            for p in m.parameters(recurse=False):
                self.owner[id(p)] = n
        self.order = list(self.modules)
        self.stack: list[nn.Module] = []
        self.pid: dict[str, tuple[int, int]] = {}  # layer -> (base id, n) of its output units
        self.cid: dict[str, tuple[int, int]] = {}  # layer -> (base id, n) of its input features
        self.records: list[tuple[str, torch.Tensor]] = []  # every label set: slab checks
        self.fixed_checks: list[tuple[str, torch.Tensor, list[tuple[torch.Tensor | None, tuple[int, ...]]]]] = []
        self.purity: list[tuple[str, torch.Tensor]] = []  # rows that must hold one unit each
        self.attach: list[tuple[str, torch.Tensor]] = []  # (layer, rows: param position -> input labels)
        self.coupled: list[tuple[str, torch.Tensor]] = []  # (what, ids) normalised together
        self.poisons: list[tuple[str, torch.Tensor]] = []  # (reason, ids)
        self.out_poisons: list[tuple[str, torch.Tensor]] = []
        self.layer_poison: dict[str, str] = {}
        self.opaque: list[str] = []

    # labels ------------------------------------------------------------------------------

    def label(self, t: object) -> torch.Tensor | None:
        entry = self.labels.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry[1] if entry is not None else None

    def full(self, t: torch.Tensor) -> torch.Tensor:
        lab = self.label(t)
        return lab if lab is not None else torch.full(tuple(t.shape), FIXED, dtype=torch.float64, device="cpu")

    def set(self, t: object, lab: torch.Tensor | None) -> None:
        if not isinstance(t, torch.Tensor):
            return
        if lab is None or not bool((lab != FIXED).any()):
            self.labels.pop(id(t), None)
            return
        if tuple(lab.shape) != tuple(t.shape):
            raise _Follow(f"label shape {tuple(lab.shape)} != tensor shape {tuple(t.shape)}")
        self.labels[id(t)] = (t, lab)
        if bool((lab >= 0).any()):
            self.records.append((self.where(), lab))

    def free(self, t: torch.Tensor) -> None:
        """Label every element of a state input with its own id."""
        base = self.uf.alloc(t.numel())
        self.set(t, (base + torch.arange(t.numel(), dtype=torch.float64, device="cpu")).reshape(t.shape))

    def where(self, op: str | None = None) -> str:
        inner = next((self.path_of.get(id(m)) for m in reversed(self.stack) if self.path_of.get(id(m))), None)
        what = op or getattr(self, "_op", "")
        return f"{what} in {inner}" if inner else what

    def poison_ids(self, reason: str, lab: torch.Tensor | None) -> None:
        if lab is not None:
            ids = lab[lab >= 0]
            if ids.numel():
                self.poisons.append((reason, ids.long()))

    def poison_tensors(self, reason: str, objs: Any) -> None:
        for t in tree_flatten(objs)[0]:
            self.poison_ids(reason, self.label(t))

    # ids of layers ---------------------------------------------------------------------------

    def _ids(self, table: dict, layer: str, n: int) -> int:
        if layer not in table:
            table[layer] = (self.uf.alloc(n), n)
        base, m = table[layer]
        if m != n:
            raise _Follow(f"{layer} seen with {m} and {n} units")
        return base

    def unite_axis(self, base: int, n: int, lab: torch.Tensor | None, axis: int) -> None:
        """Unite id base+k with every unit label at index k of `axis`."""
        if lab is None:
            return
        if lab.shape[axis] != n:
            raise _Follow(f"axis {axis} has {lab.shape[axis]} positions, the layer {n}")
        rows = lab.movedim(axis, 0).reshape(n, -1)
        k = torch.arange(n, dtype=torch.float64, device="cpu")[:, None].expand_as(rows)
        m = rows >= 0
        self.uf.union_pairs(base + k[m], rows[m])

    def consume(self, layer: str, x: torch.Tensor, axis: int, n: int) -> None:
        self.unite_axis(self._ids(self.cid, layer, n), n, self.label(x), axis)

    def produce(self, layer: str, out: object, axis: int, n: int) -> int:
        base = self._ids(self.pid, layer, n)
        for t in tree_flatten(out)[0]:
            if _is_data(t):
                shape = [1] * t.dim()
                shape[axis] = n
                lab = (base + torch.arange(n, dtype=torch.float64, device="cpu")).reshape(shape).expand(tuple(t.shape))
                self.set(t, lab)
        return base

    # the mode ---------------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _func_name(func)
        try:
            self._op = name
            self._follow(func, name, args, kwargs, out)
        except Exception as exc:  # noqa: BLE001 - anything not followed poisons, never breaks the forward
            reason = f"{self.where(name)} could not be followed ({exc})"
            self.poison_tensors(reason, (args, kwargs))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.labels.pop(id(t), None)
        return out

    def _follow(self, func, name: str, args: tuple, kwargs: dict, out: Any) -> None:  # noqa: ANN001
        flat = tree_flatten((args, kwargs))[0]
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        tagged = [t for t in tensors if id(t) in self.labels]
        owned = [self.owner[id(t)] for t in tensors if id(t) in self.owner]
        base = _base(name)
        out_tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not tagged and not owned:
            for t in out_tensors:  # an in-place write of fixed data over a labelled tensor
                self.labels.pop(id(t), None)
            return
        if not out_tensors and (base in _META or _is_property(func)):
            return
        if base == "__setitem__":
            self._setitem(args)
            return
        if base in _LAYER_OPS:
            return self._layer(base, func, args, kwargs, out)
        if owned:
            for layer in owned:
                if layer in self.weight:
                    self.layer_poison.setdefault(layer, f"its weights are used outside its module ({self.where(name)})")
            if not out_tensors or base not in (_IDENTITY | _SHAPE):
                self.poison_tensors(f"{self.where(name)} uses a layer's parameters directly", (args, kwargs))
                return
        if not out_tensors:
            self.poison_tensors(f"its values leave the traced computation ({self.where(name)})", (args, kwargs))
            return
        if base in _IDENTITY:
            self.set(out, self.label(args[0]) if args else None)
        elif base in _SHAPE:
            self._shape(func, base, args, kwargs, out)
        elif base in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
            self._combine(args, kwargs, out)
        elif base in _REDUCE:
            self._reduce(base, args, kwargs, out)
        elif base in _ALONG_DIM:
            self._along(base, args, kwargs, out)
        elif base in _ELEMENTWISE:
            self._combine(args, kwargs, out)
        elif base == "copy":  # dst.copy_(src): dst takes src's labels
            self.set(out, torch.broadcast_to(self.full(args[1]), tuple(out.shape)).clone())
        elif base in _LIKE:  # filler shaped like its source: it follows the source's units
            src = self.full(args[0])
            self.set(out, torch.where(src == FIXED, FIXED, PAD) if tuple(src.shape) == tuple(out.shape) else None)
        elif base in _NEW:
            self.set(out, None)
        else:
            self.poison_tensors(f"{self.where(name)} is an op the group discovery does not follow", (args, kwargs))
            for t in out_tensors:
                self.labels.pop(id(t), None)

    # categories -------------------------------------------------------------------------------

    def _sub(self, obj: Any) -> Any:
        return tree_map(lambda t: self.full(t) if _is_data(t) else t, obj)

    def _shape(self, func, base: str, args: tuple, kwargs: dict, out: Any) -> None:  # noqa: ANN001
        if base in _FIRST_ONLY:
            sargs, skw = (self._sub(args[0]), *args[1:]), kwargs
        else:
            sargs, skw = self._sub(args), self._sub(kwargs)
        if base == "pad":
            mode = _arg(args, kwargs, 2, "mode", "constant")
            sargs, skw = list(sargs), dict(skw)
            if mode == "constant":
                if len(sargs) > 3:
                    sargs[3] = PAD
                else:
                    skw["value"] = PAD
        lab = func(*sargs, **skw)
        self._assign(out, lab)

    def _assign(self, out: Any, lab: Any) -> None:
        outs, labs = tree_flatten(out)[0], tree_flatten(lab)[0]
        if len(outs) != len(labs):
            raise _Follow("outputs and labels differ in structure")
        for o, l in zip(outs, labs):
            if isinstance(o, torch.Tensor):
                if not isinstance(l, torch.Tensor):
                    raise _Follow("no label for an output")
                self.set(o, l if _is_data(o) else None)

    def _combine(self, args: tuple, kwargs: dict, out: Any) -> None:
        """Pointwise op: units meeting at one position are united."""
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs:
            return
        shape = tuple(outs[0].shape)
        operands = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        self._unite_pointwise([(self.label(t), tuple(t.shape)) for t in operands], shape, outs)

    def _unite_pointwise(self, operands: list[tuple[torch.Tensor | None, tuple[int, ...]]], shape: tuple[int, ...],
                         outs: list[torch.Tensor]) -> None:
        comb = None
        fixed: list[tuple[torch.Tensor | None, tuple[int, ...]]] = []
        untagged = False
        for lab, s in operands:
            big = math.prod(s) > 1
            if lab is None:
                untagged = True
                if big:
                    fixed.append((None, s))
                continue
            lab = torch.broadcast_to(lab, shape)
            if big and bool((lab == FIXED).any()):
                fixed.append((lab, s))
            if comb is None:
                comb = lab
            else:
                both = (comb >= 0) & (lab >= 0)
                self.uf.union_pairs(comb[both], lab[both])
                comb = torch.maximum(comb, lab)
        if comb is None:
            for o in outs:
                self.set(o, None)
            return
        if untagged:  # fixed data at every position where the others only had filler
            comb = torch.where(comb == PAD, FIXED, comb)
        if fixed and bool((comb >= 0).any()):
            self.fixed_checks.append((self.where(), comb, fixed))
        for o in outs:
            self.set(o, comb if tuple(o.shape) == shape else None)

    def _reduce(self, base: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        lab = self.full(x)
        nd = lab.dim()
        if base == "norm":
            dim = _arg(args, kwargs, 2, "dim")
        else:
            dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
        dims = _dims(dim, nd)
        dims = list(range(nd)) if dims is None else dims
        keep = [d for d in range(nd) if d not in dims]
        rows = lab.permute(*keep, *dims).reshape(math.prod(lab.shape[d] for d in keep), -1)
        self.purity.append((self.where(), rows))
        if rows.shape[1]:
            rep = rows.amax(1)
            # a reduction over several units yields data of none of them (they are poisoned at the end)
            lowest = torch.where(rows >= 0, rows, float("inf")).amin(1)
            rep = torch.where((rep >= 0) & (lowest != rep), FIXED, rep)
        else:
            rep = torch.full((rows.shape[0],), PAD, dtype=torch.float64, device="cpu")
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                if o.numel() != rep.numel():
                    raise _Follow(f"cannot tell which dims {base} reduced")
                self.set(o, rep.reshape(o.shape) if _is_data(o) else None)

    def _along(self, base: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        lab = self.full(x)
        pos = {"normalize": 2, "topk": 2, "diff": 2}.get(base, 1)
        default = 1 if base == "normalize" else -1
        dim = _arg(args, kwargs, pos, "dim", default)
        if not isinstance(dim, int):
            raise _Follow(f"{base} dim {dim!r}")
        dim %= max(lab.dim(), 1)
        rows = lab.movedim(dim, -1).reshape(-1, lab.shape[dim])
        self.purity.append((self.where(), rows))
        rep = lab.amax(dim, keepdim=True)
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                self.set(o, rep.expand(tuple(o.shape)).clone() if _is_data(o) else None)

    def _setitem(self, args: tuple) -> None:
        x, index, value = args[0], args[1], args[2]
        lab = self.full(x).clone()
        region = lab[index]
        new = (torch.broadcast_to(self.full(value), region.shape) if isinstance(value, torch.Tensor)
               else torch.full(region.shape, PAD, dtype=torch.float64, device="cpu"))
        # units written into a tensor of fixed size (torch.zeros(b, 64, t)): its size would not shrink
        self.poison_ids(f"written into a tensor whose size does not follow its units ({self.where()})",
                        new[(region == FIXED) & (new >= 0)])
        lab[index] = new
        self.set(x, lab)

    # layers -------------------------------------------------------------------------------------

    def _layer_named(self, t: object, types: tuple[type, ...], attr: str | None = None) -> str | None:
        name = self.owner.get(id(t)) if isinstance(t, torch.Tensor) else None
        if name is None:
            return None
        module = self.modules[name]
        if not isinstance(module, types) or (attr is not None and getattr(module, attr) is not t):
            return None
        return name

    def _current(self, types: tuple[type, ...]) -> str | None:
        """The innermost running module, when it is an attached layer of `types`."""
        if self.stack and isinstance(self.stack[-1], types):
            return self.name_of.get(id(self.stack[-1]))
        return None

    def _layer(self, base: str, func, args: tuple, kwargs: dict, out: Any) -> None:  # noqa: ANN001
        if base == "linear":
            x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
            layer = self._layer_named(w, (nn.Linear,), "weight")
            if layer is None:
                return self._unknown_layer(base, args, kwargs, out)
            self.consume(layer, x, -1, w.shape[1])
            self.produce(layer, out, -1, w.shape[0])
        elif base.startswith("conv"):
            transposed = "transpose" in base
            x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
            types = (nn.ConvTranspose1d, nn.ConvTranspose2d) if transposed else (nn.Conv1d, nn.Conv2d)
            layer = self._layer_named(w, types, "weight")
            if layer is None:
                return self._unknown_layer(base, args, kwargs, out)
            groups = _arg(args, kwargs, 6, "groups", 1)
            ch = x.dim() - (w.dim() - 2) - 1
            n_in = w.shape[0] if transposed else w.shape[1] * groups
            n_out = w.shape[1] * groups if transposed else w.shape[0]
            if groups != 1:
                reason = f"grouped convolution (groups={groups}): its channels cannot be removed one by one"
                self.layer_poison.setdefault(layer, reason)
                self.poison_ids(f"read by {layer}, a grouped convolution", self.label(x))
            self.consume(layer, x, ch, n_in)
            self.produce(layer, out, ch, n_out)
        elif base in ("lstm", "gru"):
            self._rnn(base, args, kwargs, out)
        elif base == "glu":
            x = args[0]
            lab = self.full(x)
            dim = _arg(args, kwargs, 1, "dim", -1)
            a, b = lab.chunk(2, dim)
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            self._unite_pointwise([(a, tuple(a.shape)), (b, tuple(b.shape))], tuple(a.shape), outs)
        else:
            self._norm(base, args, kwargs, out)

    def _unknown_layer(self, base: str, args: tuple, kwargs: dict, out: Any) -> None:
        for t in tree_flatten((args, kwargs))[0]:
            layer = self.owner.get(id(t)) if isinstance(t, torch.Tensor) else None
            if layer in self.weight:
                self.layer_poison.setdefault(layer, f"its weights are used outside its module ({self.where(base)})")
        self.poison_tensors(f"{self.where(base)} with a weight that is no layer's own", (args, kwargs))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.labels.pop(id(t), None)

    def _rnn(self, base: str, args: tuple, kwargs: dict, out: Any) -> None:
        params = next((a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)
                       and id(a[0]) in self.owner), None)
        layer = self.owner.get(id(params[0])) if params is not None else None
        module = self.modules.get(layer) if layer else None
        packed = len(args) > 1 and isinstance(args[1], torch.Tensor) and not args[1].is_floating_point()
        if module is None or not isinstance(module, (nn.LSTM, nn.GRU)) or packed:
            return self._unknown_layer(base, args, kwargs, out)
        if module.num_layers != 1 or module.bidirectional or getattr(module, "proj_size", 0):
            self.layer_poison.setdefault(layer, "only single-layer unidirectional recurrent layers without "
                                                "projection can lose hidden units")
        x, hx = args[0], args[1]
        n = module.hidden_size
        self.consume(layer, x, -1, module.input_size)
        pid = self._ids(self.pid, layer, n)
        for h in (list(hx) if isinstance(hx, (list, tuple)) else [hx]):
            # h0 / c0 hold the same hidden units: the recurrent state follows them
            self.unite_axis(pid, n, self.label(h), -1)
        self.produce(layer, out, -1, n)

    def _norm(self, base: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        lab = self.label(x)
        types = {"layer_norm": (nn.LayerNorm,), "batch_norm": (nn.modules.batchnorm._BatchNorm,),
                 "group_norm": (nn.GroupNorm,), "instance_norm": (nn.modules.instancenorm._InstanceNorm,),
                 "prelu": (nn.PReLU,)}[base]
        weight_pos = {"layer_norm": 2, "batch_norm": 3, "group_norm": 2, "instance_norm": 3, "prelu": 1}[base]
        weight = _arg(args, kwargs, weight_pos, "weight")
        layer = self._layer_named(weight, types) or self._current(types)
        bare = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, nn.Parameter) and id(t) not in self.owner]
        if bare:
            self.poison_ids(f"{self.where(base)} with parameters that belong to no {types[0].__name__}", lab)
        if base == "prelu" and weight is not None and weight.numel() == 1:
            self.set(out, lab)
            return
        if lab is None:
            return
        what = f"{types[0].__name__.lstrip('_')} {layer or self.where(base)}"
        ch = 1 if x.dim() >= 2 else 0
        channels = lab.movedim(ch, 0).reshape(lab.shape[ch], -1)
        if base == "layer_norm":
            shape = _arg(args, kwargs, 1, "normalized_shape")
            k = math.prod([shape] if isinstance(shape, int) else shape)
            self._couple(what, lab.reshape(-1, k))
            per_param = lab.reshape(-1, k).t()
        elif base == "batch_norm":
            self._couple(what, channels)
            per_param = channels
        elif base == "instance_norm":
            self._couple(what, lab.reshape(lab.shape[0] * lab.shape[1], -1) if x.dim() >= 3 else channels)
            per_param = channels
        elif base == "group_norm":
            g = _arg(args, kwargs, 1, "num_groups")
            self._couple(what, lab.reshape(lab.shape[0] * g, -1))
            per_param = channels
        else:  # prelu: one weight per channel, pointwise
            per_param = channels
        if layer is not None:
            self.attach.append((layer, per_param))
        self.set(out, lab)

    def _couple(self, what: str, rows: torch.Tensor) -> None:
        """Everything in one row is normalised together: one unit (or mixed with data)."""
        self.purity.append((what, rows))
        m = rows >= 0
        rep = torch.where(m, rows, -1.0).amax(1, keepdim=True).expand_as(rows)
        self.uf.union_pairs(rep[m], rows[m])
        if bool((m & (rows != rep)).any()):
            self.coupled.append((what, rows[m].long()))

    # hooks ------------------------------------------------------------------------------------

    def pre_hook(self, module: nn.Module, _args: Any) -> None:
        self.stack.append(module)

    def post_hook(self, module: nn.Module, _args: Any, _out: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    # after the run ----------------------------------------------------------------------------

    def model_output(self, out: Any, what: str = "the model output") -> None:
        for t in tree_flatten(out)[0]:
            lab = self.label(t)
            if lab is not None:
                ids = lab[lab >= 0]
                if ids.numel():
                    self.out_poisons.append((f"its units reach {what}", ids.long()))

    def state_output(self, state_in: Sequence[torch.Tensor], state_out: Any) -> None:
        if not isinstance(state_out, (list, tuple)) or len(state_out) != len(state_in):
            self.model_output(state_out, "a state output that does not match the state inputs")
            return
        for s_in, s_out in zip(state_in, state_out):
            if not isinstance(s_out, torch.Tensor) or tuple(s_out.shape) != tuple(s_in.shape):
                self.model_output(s_out, "a state output whose shape differs from its input")
                continue
            a, b = self.label(s_in), self.label(s_out)
            if a is not None and b is not None:
                both = (a >= 0) & (b >= 0)
                self.uf.union_pairs(a[both], b[both])
            if b is not None and (a is None or bool(((b >= 0) & (a < 0)).any())):
                self.model_output(s_out, "a state output in place of data the state input does not hold")

    def finish(self) -> Discovery:
        return _Assembler(self).run()


# --- from union-find classes to groups -------------------------------------------------------


class _Assembler:
    def __init__(self, tr: _Tracer) -> None:
        self.tr = tr
        roots = tr.uf.roots()
        unit_roots: list[int] = []
        for layer in tr.order:
            if layer in tr.pid:
                base, n = tr.pid[layer]
                unit_roots.extend(roots[base:base + n].tolist())
        compact = list(dict.fromkeys(unit_roots))  # unit classes in producer order
        self.n_units = len(compact)
        lookup = np.full(len(roots), -1, dtype=np.int64)
        lookup[np.asarray(compact, dtype=np.int64)] = np.arange(len(compact))
        self.table = torch.from_numpy(lookup[roots] if len(roots) else lookup)
        self.reasons: dict[int, list[str]] = {}

    def resolve(self, lab: torch.Tensor) -> torch.Tensor:
        ids = lab.long()
        res = ids.clone()
        m = ids >= 0
        res[m] = self.table[ids[m]]
        return res

    def bad(self, units: torch.Tensor, reason: str) -> None:
        for u in torch.unique(units[units >= 0]).tolist():
            got = self.reasons.setdefault(u, [])
            if reason not in got:
                got.append(reason)

    # checks on resolved labels --------------------------------------------------------------

    def check_slabs(self, what: str, r: torch.Tensor) -> None:
        """A unit must own whole slices along one axis (filler aside): removing it is then
        deleting indices of that axis, in every tensor it appears in."""
        units = r >= 0
        if not bool(units.any()):
            return
        big = torch.iinfo(torch.long).max
        valid = torch.zeros(self.n_units, dtype=torch.bool, device="cpu")
        present = torch.zeros(self.n_units, dtype=torch.bool, device="cpu")
        present[r[units]] = True
        for axis in range(r.dim()):
            moved = r.movedim(axis, 0).reshape(r.shape[axis], -1)
            filler = moved == PAD
            lo = torch.where(filler, big, moved).amin(1)
            hi = torch.where(filler, -big, moved).amax(1)
            pure = (lo == hi)[:, None].expand_as(moved)
            bad_here = torch.zeros(self.n_units, dtype=torch.bool, device="cpu")
            m = moved >= 0
            bad_here[moved[m & ~pure]] = True
            valid |= present & ~bad_here
        invalid = present & ~valid
        if bool(invalid.any()):
            self.bad(invalid.nonzero().reshape(-1), f"its units share tensor slices with other data ({what})")

    def check_fixed(self, what: str, comb: torch.Tensor, operands: list) -> None:
        """A unit combined pointwise with fixed data: that data would need slicing along the
        unit's axis, which nothing does for a tensor that belongs to no layer."""
        r = self.resolve(comb)
        for lab, s in operands:
            s = (1,) * (r.dim() - len(s)) + tuple(s)
            at_fixed = r[(lab == FIXED) & (r >= 0)] if lab is not None else r[r >= 0]
            units = torch.unique(at_fixed)
            if not units.numel():
                continue
            for axis, size in enumerate(s):
                if size <= 1:
                    continue
                moved = r.movedim(axis, 0).reshape(r.shape[axis], -1)
                cover = torch.zeros(self.n_units, r.shape[axis], dtype=torch.bool, device="cpu")
                m = moved >= 0
                idx = torch.arange(r.shape[axis], device="cpu")[:, None].expand_as(moved)
                cover[moved[m], idx[m]] = True
                partial = units[~cover[units].all(1)]
                if partial.numel():
                    self.bad(partial, f"combined pointwise with data that would need slicing ({what})")

    def check_purity(self, what: str, rows: torch.Tensor) -> None:
        r = self.resolve(rows)
        big = torch.iinfo(torch.long).max
        filler = r == PAD
        lo = torch.where(filler, big, r).amin(1, keepdim=True) if r.shape[1] else None
        if lo is None:
            return
        hi = torch.where(filler, -big, r).amax(1, keepdim=True)
        impure = (lo != hi).expand_as(r) & (r >= 0)
        if bool(impure.any()):
            self.bad(r[impure], f"reduced or normalised together with other units or data ({what})")

    # groups -----------------------------------------------------------------------------------

    def run(self) -> Discovery:
        tr = self.tr
        for reason, ids in tr.out_poisons:
            self.bad(self.resolve(ids.double()), reason)
        for reason, ids in tr.poisons:
            self.bad(self.resolve(ids.double()), reason)
        for what, rows in tr.purity:
            self.check_purity(what, rows)
        for what, comb, operands in tr.fixed_checks:
            self.check_fixed(what, comb, operands)
        for what, lab in tr.records:
            self.check_slabs(what, self.resolve(lab))

        unit_layers: dict[int, list[str]] = {}
        layer_units: dict[str, torch.Tensor] = {}
        for layer in tr.order:
            if layer in tr.pid:
                base, n = tr.pid[layer]
                units = self.table[base:base + n]
                layer_units[layer] = units
                for u in torch.unique(units).tolist():
                    unit_layers.setdefault(u, []).append(layer)
        comp = _UnionFind()
        index = {layer: comp.alloc(1) for layer in layer_units}
        for layers in unit_layers.values():
            for other in layers[1:]:
                comp.union(index[layers[0]], index[other])
        components: dict[int, list[str]] = {}
        for layer in layer_units:
            components.setdefault(comp.find(index[layer]), []).append(layer)
        coupled = {}
        for what, ids in tr.coupled:
            for u in torch.unique(self.table[ids]).tolist():
                if u >= 0:
                    coupled.setdefault(u, what)

        groups, ungrouped = [], {}
        first: dict[str, dict[int, int]] = {}
        for layer, units in layer_units.items():
            seen: dict[int, int] = {}
            for pos, u in enumerate(units.tolist()):
                seen.setdefault(u, pos)
            first[layer] = seen
        for layers in components.values():
            # unit order: by position in the first producer (then the next), as the layer numbers them
            units = sorted({u for layer in layers for u in first[layer]},
                           key=lambda u: [first[layer].get(u, 1 << 62) for layer in layers])
            local = torch.full((self.n_units,), -1, dtype=torch.long, device="cpu")
            local[torch.tensor(units, dtype=torch.long, device="cpu")] = torch.arange(len(units), device="cpu")
            reasons = [tr.layer_poison[layer] for layer in layers if layer in tr.layer_poison]
            reasons += [r for u in units for r in self.reasons.get(u, [])]
            consumers = self._slots(tr.cid, local)
            if not reasons and not consumers:
                reasons.append("no layer the discovery follows consumes its outputs")
            if not reasons and len(units) == 1 and units[0] in coupled:
                reasons.append(f"{coupled[units[0]]} normalises all its units together: none can be removed alone")
            if reasons:
                for layer in layers:
                    ungrouped[layer] = reasons[0]
                continue
            producers = tuple(Slot(layer, tuple(local[layer_units[layer]].tolist())) for layer in layers)
            groups.append(Group(layers[0], producers, consumers, len(units), self._attached(local)))
        for layer in tr.order:
            if layer in tr.weight and layer not in tr.pid:
                ungrouped[layer] = "not called in the traced forward pass"
        order = {layer: i for i, layer in enumerate(tr.order)}
        return Discovery(groups=sorted(groups, key=lambda g: order[g.name]),
                         ungrouped=[Ungrouped(layer, ungrouped[layer]) for layer in sorted(ungrouped, key=order.get)],
                         paths=dict(tr.paths))

    def _slots(self, ids: dict[str, tuple[int, int]], local: torch.Tensor) -> tuple[Slot, ...]:
        slots = []
        for layer in self.tr.order:
            if layer in ids:
                base, n = ids[layer]
                units = self.table[base:base + n]
                mapped = torch.where(units >= 0, local[units.clamp(min=0)], -1)
                if bool((mapped >= 0).any()):
                    slots.append(Slot(layer, tuple(mapped.tolist())))
        return tuple(slots)

    def _attached(self, local: torch.Tensor) -> tuple[Slot, ...]:
        tables: dict[str, torch.Tensor] = {}
        for layer, rows in self.tr.attach:
            r = self.resolve(rows)
            big = torch.iinfo(torch.long).max
            filler = r == PAD
            lo = torch.where(filler, big, r).amin(1)
            hi = torch.where(filler, -big, r).amax(1)
            unit = torch.where((lo == hi) & (lo >= 0), lo, -1)
            mapped = torch.where(unit >= 0, local[unit.clamp(min=0)], -1)
            if layer in tables:
                mapped = torch.maximum(tables[layer], mapped)
            tables[layer] = mapped
        return tuple(Slot(layer, tuple(t.tolist())) for layer, t in tables.items() if bool((t >= 0).any()))


# --- driver ----------------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple:
    """What the discovered structure depends on: modules, parameter and buffer shapes, and
    the plain settings a forward may branch on (e.g. Recurrent.explicit_cells)."""

    def settings(m: nn.Module) -> tuple:
        return tuple(sorted((k, v) for k, v in vars(m).items()
                            if k != "training" and not k.startswith("_") and isinstance(v, (bool, int, float, str))))

    return tuple((path, type(m), tuple((n, tuple(p.shape)) for n, p in m._parameters.items() if p is not None),
                  tuple((n, tuple(b.shape)) for n, b in m._buffers.items() if b is not None), settings(m))
                 for path, m in model.named_modules())


def discover(model: nn.Module, example_inputs: Sequence[Any] | None = None) -> Discovery:
    """Structured groups of `model`, found by running it once (see the module docstring).

    example_inputs: arguments of one forward call. None for a model of the pipeline
    contract (`model(spec, state)`, `n_bins`, `initial_state`): a random spectrum of
    FRAMES frames and zero state. For a pipeline model given explicitly, pass
    (spec, state_list): the state is followed as such. Anything else is a plain core
    (`core(features)`); all its outputs count as model outputs."""
    if not isinstance(model, nn.Module):
        raise HwcError(f"group discovery needs a torch.nn.Module, got {type(model).__name__}")
    pipeline_model = callable(getattr(model, "initial_state", None)) and isinstance(getattr(model, "n_bins", None), int)
    if example_inputs is None:
        if not pipeline_model:
            raise HwcError(f"{type(model).__name__} does not follow the pipeline contract model(spec, state): "
                           "give example inputs to discover its structured groups")
        sig = _signature(model)
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == sig:
            d = hit[1]
            return Discovery(list(d.groups), list(d.ungrouped), dict(d.paths))
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        gen = torch.Generator().manual_seed(0)
        spec = torch.randn(1, FRAMES, model.n_bins, 2, generator=gen, dtype=dtype, device="cpu").to(device)
        state = [s.to(device=device, dtype=dtype) for s in model.initial_state(1)]
        args: tuple = (spec, state)
        stateful = True
    else:
        args = tuple(example_inputs)
        sig = None
        stateful = pipeline_model and len(args) == 2 and isinstance(args[1], (list, tuple))
    tracer = _Tracer(model)
    if stateful:
        for s in args[1]:
            tracer.free(s)
    opaque = [p for p, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    handles = []
    training = {m: m.training for m in model.modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        for m in model.modules():
            if not isinstance(m, torch.jit.ScriptModule):
                handles.append(m.register_forward_pre_hook(tracer.pre_hook))
                handles.append(m.register_forward_hook(tracer.post_hook))
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]), tracer:
            result = model(*args)
    except HwcError:
        raise
    except Exception as exc:  # the user's forward failing on the example: one line
        raise HwcError(f"{type(model).__name__}: its forward pass failed on the example inputs while discovering "
                       f"its structured groups ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                       ) from None
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers and b.shape == buffers[name].shape:
                    b.copy_(buffers[name])
    if stateful:
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise HwcError(f"{type(model).__name__}: model(spec, state) must return (out, new_state)")
        tracer.model_output(result[0])
        tracer.state_output(args[1], result[1])
    else:
        tracer.model_output(result)
    found = tracer.finish()
    if opaque:
        note = f"the model holds TorchScript modules ({', '.join(opaque)}) whose computation cannot be followed"
        found = Discovery([], [Ungrouped(layer, note) for layer in tracer.order if layer in tracer.weight], found.paths)
    if sig is not None:
        _CACHE[model] = (sig, found)
        return Discovery(list(found.groups), list(found.ungrouped), dict(found.paths))
    return found
