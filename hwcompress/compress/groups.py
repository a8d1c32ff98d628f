"""Structured groups: units that can only be removed together.

A unit is an output neuron of a Linear, a hidden unit of an LSTM/GRU layer or an output
channel of a (transposed) convolution. Removing it touches its producer (rows in every
gate, bias, its own recurrent column) and every consumer (the matching input columns of
the layers that read it). How weights are laid out per layer type lives in one handler
class per type (`HANDLERS`); who consumes whom lives in one wiring function per
architecture (`WIRING`). Pruning, regularisation and shrinking all go through these two,
so a unit is always the same set of weights everywhere.

Group names: `enc.i`, `dec.j`, `dec_imag.j` (channels; for the gated model a channel is a
value/gate pair), `rnn.k` (hidden units), `proj` (bottleneck channels of C*F features).
The model's final layer (the mask) never forms a group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from hwcompress.errors import HwcError
from hwcompress.models.cost import named_layers
from hwcompress.models.zoo import CRN, GCRN, RnnMasker, SEModel

Params = Mapping[str, torch.Tensor]


# --- per layer type: where a unit's weights sit -------------------------------------------


class LayerHandler:
    """Weight layout of one layer type. `outputs`/`inputs` list (parameter, axis, gates):
    unit u of n occupies index g*n + u along `axis` for every gate block g."""

    outputs: tuple[tuple[str, int, int], ...] = ()
    inputs: tuple[tuple[str, int, int], ...] = ()

    def n_outputs(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def n_inputs(self, layer: nn.Module) -> int:
        raise NotImplementedError

    @staticmethod
    def _expand(idx: torch.Tensor, n: int, gates: int) -> torch.Tensor:
        return torch.cat([g * n + idx for g in range(gates)])

    def _select(self, spec, params: Params, keep: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        out = dict(params)
        for name, axis, gates in spec:
            out[name] = out[name].index_select(axis, self._expand(keep, n, gates))
        return out

    def prune_outputs(self, params: Params, keep: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """Parameters with only the kept output units (of n) left."""
        return self._select(self.outputs, params, keep, n)

    def prune_inputs(self, params: Params, keep: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """Parameters with only the kept input features (of n) left."""
        return self._select(self.inputs, params, keep, n)

    def _zero(self, spec, masks: dict[str, torch.Tensor], drop: torch.Tensor, n: int) -> None:
        for name, axis, gates in spec:
            masks[name].index_fill_(axis, self._expand(drop, n, gates), 0.0)

    def mask_outputs(self, masks: dict[str, torch.Tensor], drop: torch.Tensor, n: int) -> None:
        """Zero, in place, the mask entries of the dropped output units."""
        self._zero(self.outputs, masks, drop, n)

    def mask_inputs(self, masks: dict[str, torch.Tensor], drop: torch.Tensor, n: int) -> None:
        self._zero(self.inputs, masks, drop, n)

    @staticmethod
    def _per_index(spec, params: Params, n: int) -> torch.Tensor:
        total = None
        for name, axis, gates in spec:
            sq = params[name].pow(2)
            dims = [d for d in range(sq.dim()) if d != axis]
            per = (sq.sum(dims) if dims else sq).reshape(gates, n).sum(0)
            total = per if total is None else total + per
        return total

    def output_sq_norms(self, params: Params, n: int) -> torch.Tensor:
        """Squared L2 norm of each output unit's weights (differentiable); on all-ones
        tensors this counts the unit's weights."""
        return self._per_index(self.outputs, params, n)

    def input_sq_norms(self, params: Params, n: int) -> torch.Tensor:
        return self._per_index(self.inputs, params, n)


class LinearHandler(LayerHandler):
    outputs = (("weight", 0, 1), ("bias", 0, 1))
    inputs = (("weight", 1, 1),)

    def n_outputs(self, layer: nn.Module) -> int:
        return layer.out_features

    def n_inputs(self, layer: nn.Module) -> int:
        return layer.in_features


class Conv2dHandler(LayerHandler):
    # weight [out, in, kt, kf]
    outputs = (("weight", 0, 1), ("bias", 0, 1))
    inputs = (("weight", 1, 1),)

    def n_outputs(self, layer: nn.Module) -> int:
        return layer.out_channels

    def n_inputs(self, layer: nn.Module) -> int:
        return layer.in_channels


class ConvTranspose2dHandler(LayerHandler):
    # weight [in, out, kt, kf]: the axes are swapped relative to Conv2d
    outputs = (("weight", 1, 1), ("bias", 0, 1))
    inputs = (("weight", 0, 1),)

    def n_outputs(self, layer: nn.Module) -> int:
        return layer.out_channels

    def n_inputs(self, layer: nn.Module) -> int:
        return layer.in_channels


class _RecurrentHandler(LayerHandler):
    gates = 1

    def __init__(self) -> None:
        g = self.gates
        # a hidden unit is its rows in every gate plus its column in the recurrent matrix
        self.outputs = (("weight_ih_l0", 0, g), ("weight_hh_l0", 0, g), ("weight_hh_l0", 1, 1),
                        ("bias_ih_l0", 0, g), ("bias_hh_l0", 0, g))
        self.inputs = (("weight_ih_l0", 1, 1),)

    def n_outputs(self, layer: nn.Module) -> int:
        return layer.hidden_size

    def n_inputs(self, layer: nn.Module) -> int:
        return layer.input_size

    def output_sq_norms(self, params: Params, n: int) -> torch.Tensor:
        # rows and the recurrent column share the weights W_hh[g*n+u, u]: count them once
        diag = params["weight_hh_l0"].reshape(self.gates, n, n).diagonal(dim1=1, dim2=2).pow(2).sum(0)
        return super().output_sq_norms(params, n) - diag


class LSTMHandler(_RecurrentHandler):
    gates = 4


class GRUHandler(_RecurrentHandler):
    gates = 3


HANDLERS: dict[type[nn.Module], LayerHandler] = {
    nn.Linear: LinearHandler(),
    nn.Conv2d: Conv2dHandler(),
    nn.ConvTranspose2d: ConvTranspose2dHandler(),
    nn.LSTM: LSTMHandler(),
    nn.GRU: GRUHandler(),
}


def handler_for(layer: nn.Module) -> LayerHandler:
    handler = HANDLERS.get(type(layer))
    if handler is None:
        raise HwcError(f"no structured-pruning handler for {type(layer).__name__}")
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and layer.groups != 1:
        raise HwcError("grouped convolutions cannot be pruned structurally")
    if isinstance(layer, (nn.LSTM, nn.GRU)) and (layer.num_layers != 1 or layer.bidirectional
                                                  or getattr(layer, "proj_size", 0)):
        raise HwcError("only single-layer unidirectional recurrent layers can be pruned structurally")
    return handler


def layer_params(layer: nn.Module) -> dict[str, torch.Tensor]:
    return dict(layer.named_parameters(recurse=False))


# --- groups --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """Where a group's units sit along one layer's output (producer) or input (consumer)
    axis: unit u covers offset + copy + u*stride + [0, stride) for each copy offset."""

    layer: str
    offset: int = 0
    stride: int = 1  # > 1 for flattened channel x frequency features
    copies: tuple[int, ...] = (0,)  # (0, n) for a GLU value/gate pair

    def indices(self, units: torch.Tensor) -> torch.Tensor:
        units = torch.as_tensor(units, dtype=torch.long)
        span = torch.arange(self.stride)
        # copy-major order keeps value and gate halves contiguous after slicing
        return torch.cat([(self.offset + c + units[:, None] * self.stride + span).reshape(-1) for c in self.copies])


@dataclass(frozen=True)
class Group:
    name: str
    producer: Slot
    consumers: tuple[Slot, ...]
    size: int  # number of units


def _rnn_groups(model: RnnMasker) -> list[Group]:
    n = len(model.hidden)
    return [Group(f"rnn.{k}", Slot(f"rnn.{k}"), (Slot(f"rnn.{k + 1}" if k + 1 < n else "out"),), h)
            for k, h in enumerate(model.hidden)]


def _crn_groups(model: CRN) -> list[Group]:
    n, f_last = len(model.channels), model.freqs[-1]
    gated = isinstance(model, GCRN)
    decoders = {"dec": model.dec_channels}
    if gated:
        decoders["dec_imag"] = model.dec_imag_channels

    def produced(layer: str, units: int) -> Slot:
        return Slot(layer, copies=(0, units) if gated else (0,))

    groups = []
    for i, c in enumerate(model.channels):
        j = n - 1 - i  # the decoder stage that reads encoder i as its skip input
        # the last encoder's channels reach the recurrent layer flattened as c*F + f
        consumers = [Slot(f"enc.{i + 1}") if i + 1 < n else Slot("rnn.0", stride=f_last)]
        for dec, widths in decoders.items():
            consumers.append(Slot(f"{dec}.{j}", offset=model.proj_channels if j == 0 else widths[j - 1]))
        groups.append(Group(f"enc.{i}", produced(f"enc.{i}", c), tuple(consumers), c))
    for k, h in enumerate(model.hidden):
        nxt = Slot(f"rnn.{k + 1}") if k + 1 < len(model.hidden) else Slot("proj")
        groups.append(Group(f"rnn.{k}", Slot(f"rnn.{k}"), (nxt,), h))
    groups.append(Group("proj", Slot("proj", stride=f_last), tuple(Slot(f"{d}.0") for d in decoders),
                        model.proj_channels))
    for dec, widths in decoders.items():
        for j, c in enumerate(widths):  # the final (mask) stage is not in widths
            groups.append(Group(f"{dec}.{j}", produced(f"{dec}.{j}", c), (Slot(f"{dec}.{j + 1}"),), c))
    return groups


# GCRN subclasses CRN; lookup walks the class hierarchy
WIRING: dict[type[SEModel], Callable[[SEModel], list[Group]]] = {RnnMasker: _rnn_groups, CRN: _crn_groups}


def model_groups(model: SEModel) -> list[Group]:
    """All structured groups of a zoo model, in layer order."""
    for cls in type(model).__mro__:
        if cls in WIRING:
            return WIRING[cls](model)
    raise HwcError(f"no structured-pruning wiring for architecture {getattr(model, 'arch', type(model).__name__)!r}")


def group_sq_norms(model: SEModel, groups: list[Group] | None = None,
                   params_of: Callable[[str, nn.Module], Params] | None = None,
                   consumers: bool = True) -> dict[str, torch.Tensor]:
    """Per group, the squared L2 norm of each unit's weights across producer rows and
    consumer columns (differentiable). `params_of(layer_name, layer)` substitutes other
    tensors of the same shapes, e.g. masks or all-ones (to count weights per unit).
    With consumers=False only the producer counts: a unit whose producer weights are all
    zero outputs exactly zero, so it can be removed whatever its consumers hold."""
    layers = named_layers(model)
    params_of = params_of or (lambda _name, layer: layer_params(layer))
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def per_index(name: str, side: str) -> torch.Tensor:
        if (name, side) not in cache:
            layer = layers[name]
            h = handler_for(layer)
            p = params_of(name, layer)
            cache[name, side] = (h.output_sq_norms(p, h.n_outputs(layer)) if side == "out"
                                 else h.input_sq_norms(p, h.n_inputs(layer)))
        return cache[name, side]

    def gather(values: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
        return values[slot.indices(torch.arange(size))].reshape(len(slot.copies), size, slot.stride).sum((0, 2))

    result = {}
    for g in groups if groups is not None else model_groups(model):
        total = gather(per_index(g.producer.layer, "out"), g.producer, g.size)
        for slot in g.consumers if consumers else ():
            total = total + gather(per_index(slot.layer, "in"), slot, g.size)
        result[g.name] = total
    return result


def group_weight_counts(model: SEModel, groups: list[Group] | None = None) -> dict[str, torch.Tensor]:
    """Number of weights belonging to each unit of each group."""
    ones = lambda _name, layer: {k: torch.ones_like(v) for k, v in layer_params(layer).items()}  # noqa: E731
    with torch.no_grad():
        return {k: v.round().long() for k, v in group_sq_norms(model, groups, ones).items()}


def dropped_units(group: Group, kept: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The group's units not in `kept` (validated: distinct, in range, at least one)."""
    kept = torch.as_tensor(kept, dtype=torch.long).reshape(-1)
    if kept.numel() == 0:
        raise HwcError(f"group {group.name}: at least one unit must be kept")
    if kept.min() < 0 or kept.max() >= group.size or kept.unique().numel() != kept.numel():
        raise HwcError(f"group {group.name}: kept units must be distinct indices in [0, {group.size})")
    flags = torch.ones(group.size, dtype=torch.bool)
    flags[kept] = False
    return flags.nonzero().reshape(-1)
