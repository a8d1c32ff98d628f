"""Structured groups: units that can only be removed together.

A unit is an output neuron of a Linear, a hidden unit of an LSTM/GRU layer or an output
channel of a (transposed) convolution. Removing it touches its producers (rows in every
gate, bias, its own recurrent column), every consumer (the matching input columns of the
layers that read it) and the per-channel parameters of the layers in between (PReLU,
BatchNorm, GroupNorm). How weights are laid out per layer type lives in one handler class
per type (`HANDLERS`, `UNIT_HANDLERS`); who consumes whom is discovered from the model's
real computation (hwcompress.compress.graph), for the zoo and any other model alike.
Pruning, regularisation and shrinking all go through these, so a unit is always the same
set of weights everywhere.

Group names are the first producer's layer name: `enc.i`, `dec.j`, `dec_imag.j`
(channels; for the gated model a channel is a value/gate pair), `rnn.k` (hidden units),
`proj` (bottleneck channels of C*F features). The model's final layer (the mask) never
forms a group; `discover(model).ungrouped` says why each such layer is not one.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from hwcompress.compress.graph import Discovery, Group, Slot, Ungrouped, discover
from hwcompress.errors import HwcError
from hwcompress.models.cost import named_layers

__all__ = ["Discovery", "Group", "Slot", "Ungrouped", "discover", "model_groups", "handler_for", "unit_handler_for",
           "group_sq_norms", "group_weight_counts", "dropped_units", "layer_params"]

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
            out[name] = out[name].index_select(axis, self._expand(keep, n, gates).to(out[name].device))
        return out

    def prune_outputs(self, params: Params, keep: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """Parameters with only the kept output units (of n) left."""
        return self._select(self.outputs, params, keep, n)

    def prune_inputs(self, params: Params, keep: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """Parameters with only the kept input features (of n) left."""
        return self._select(self.inputs, params, keep, n)

    def _zero(self, spec, masks: dict[str, torch.Tensor], drop: torch.Tensor, n: int) -> None:
        for name, axis, gates in spec:
            masks[name].index_fill_(axis, self._expand(drop, n, gates).to(masks[name].device), 0.0)

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

    def resize(self, layer: nn.Module, params: Params) -> None:
        """Physical surgery in place: `layer` takes the (smaller) `params` and the size
        attributes that describe them (in_features, hidden_size, in_channels, ...)."""
        for name, value in params.items():
            _set_parameter(layer, name, value)
        self._set_sizes(layer)

    def _set_sizes(self, layer: nn.Module) -> None:
        raise NotImplementedError


def _set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    # setattr (not _parameters[...]): nn.LSTM/GRU keep their flat weight list in step
    setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))


class LinearHandler(LayerHandler):
    outputs = (("weight", 0, 1), ("bias", 0, 1))
    inputs = (("weight", 1, 1),)

    def n_outputs(self, layer: nn.Module) -> int:
        return layer.out_features

    def n_inputs(self, layer: nn.Module) -> int:
        return layer.in_features

    def _set_sizes(self, layer: nn.Module) -> None:
        layer.out_features, layer.in_features = layer.weight.shape


class ConvHandler(LayerHandler):
    # weight [out, in/groups, *kernel] (Conv1d, Conv2d)
    outputs = (("weight", 0, 1), ("bias", 0, 1))
    inputs = (("weight", 1, 1),)

    def n_outputs(self, layer: nn.Module) -> int:
        return layer.out_channels

    def n_inputs(self, layer: nn.Module) -> int:
        return layer.in_channels

    def _set_sizes(self, layer: nn.Module) -> None:
        layer.out_channels, layer.in_channels = layer.weight.shape[0], layer.weight.shape[1] * layer.groups


class ConvTransposeHandler(LayerHandler):
    # weight [in, out/groups, *kernel]: the axes are swapped relative to Conv1d/Conv2d
    outputs = (("weight", 1, 1), ("bias", 0, 1))
    inputs = (("weight", 0, 1),)

    def n_outputs(self, layer: nn.Module) -> int:
        return layer.out_channels

    def n_inputs(self, layer: nn.Module) -> int:
        return layer.in_channels

    def _set_sizes(self, layer: nn.Module) -> None:
        layer.in_channels, layer.out_channels = layer.weight.shape[0], layer.weight.shape[1] * layer.groups


# kept under their old names: the axes of the 2-D layers are those of the 1-D ones
Conv2dHandler, ConvTranspose2dHandler = ConvHandler, ConvTransposeHandler


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

    def _set_sizes(self, layer: nn.Module) -> None:
        layer.input_size = layer.weight_ih_l0.shape[1]
        layer.hidden_size = layer.weight_hh_l0.shape[1]
        layer._init_flat_weights()


class LSTMHandler(_RecurrentHandler):
    gates = 4


class GRUHandler(_RecurrentHandler):
    gates = 3


HANDLERS: dict[type[nn.Module], LayerHandler] = {
    nn.Linear: LinearHandler(),
    nn.Conv1d: ConvHandler(),
    nn.Conv2d: ConvHandler(),
    nn.ConvTranspose1d: ConvTransposeHandler(),
    nn.ConvTranspose2d: ConvTransposeHandler(),
    nn.LSTM: LSTMHandler(),
    nn.GRU: GRUHandler(),
}


def handler_for(layer: nn.Module) -> LayerHandler:
    handler = next((h for cls, h in HANDLERS.items() if isinstance(layer, cls)), None)
    if handler is None:
        raise HwcError(f"no structured-pruning handler for {type(layer).__name__}")
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)) and layer.groups != 1:
        raise HwcError("grouped convolutions cannot be pruned structurally")
    if isinstance(layer, (nn.LSTM, nn.GRU)) and (layer.num_layers != 1 or layer.bidirectional
                                                  or getattr(layer, "proj_size", 0)):
        raise HwcError("only single-layer unidirectional recurrent layers can be pruned structurally")
    return handler


def layer_params(layer: nn.Module) -> dict[str, torch.Tensor]:
    return dict(layer.named_parameters(recurse=False))


# --- per-channel layers between a producer and its consumers ------------------------------


class UnitLayerHandler:
    """Per-channel parameters and buffers (all along axis 0) of a PReLU or normalisation
    layer; shrinking keeps the channels of the kept units and updates the size attributes."""

    tensors = ("weight", "bias", "running_mean", "running_var")

    def n_positions(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def select(self, layer: nn.Module, keep: torch.Tensor) -> None:
        n = self.n_positions(layer)
        for name in self.tensors:
            value = getattr(layer, name, None)
            if value is None or value.dim() == 0 or value.shape[0] != n:
                continue
            new = value.detach().index_select(0, keep.to(value.device)).clone()
            if isinstance(value, nn.Parameter):
                _set_parameter(layer, name, new)
            else:
                setattr(layer, name, new)  # a registered buffer stays one
        self._set_sizes(layer, n, len(keep))

    def _set_sizes(self, layer: nn.Module, before: int, after: int) -> None:
        raise NotImplementedError


class PReLUHandler(UnitLayerHandler):
    def n_positions(self, layer: nn.Module) -> int:
        return layer.num_parameters

    def _set_sizes(self, layer: nn.Module, before: int, after: int) -> None:
        layer.num_parameters = after


class NormHandler(UnitLayerHandler):  # BatchNorm*, InstanceNorm*
    def n_positions(self, layer: nn.Module) -> int:
        return layer.num_features

    def _set_sizes(self, layer: nn.Module, before: int, after: int) -> None:
        layer.num_features = after


class GroupNormHandler(UnitLayerHandler):
    def n_positions(self, layer: nn.Module) -> int:
        return layer.num_channels

    def _set_sizes(self, layer: nn.Module, before: int, after: int) -> None:
        per_group = before // layer.num_groups
        if after % per_group:  # discovery makes whole norm groups the units: a bug if it happens
            raise HwcError(f"GroupNorm keeps {after} channels, not a multiple of its {per_group} per group")
        layer.num_channels, layer.num_groups = after, after // per_group


class LayerNormHandler(UnitLayerHandler):
    def n_positions(self, layer: nn.Module) -> int:
        shape = layer.normalized_shape
        if len(shape) != 1:
            raise HwcError("only a LayerNorm over one axis can lose units")
        return shape[0]

    def _set_sizes(self, layer: nn.Module, before: int, after: int) -> None:
        layer.normalized_shape = (after,)


UNIT_HANDLERS: dict[type[nn.Module], UnitLayerHandler] = {
    nn.PReLU: PReLUHandler(),
    nn.modules.batchnorm._BatchNorm: NormHandler(),
    nn.modules.instancenorm._InstanceNorm: NormHandler(),
    nn.GroupNorm: GroupNormHandler(),
    nn.LayerNorm: LayerNormHandler(),
}


def unit_handler_for(layer: nn.Module) -> UnitLayerHandler:
    handler = next((h for cls, h in UNIT_HANDLERS.items() if isinstance(layer, cls)), None)
    if handler is None:
        raise HwcError(f"no per-channel handler for {type(layer).__name__}")
    return handler


# --- groups --------------------------------------------------------------------------------


def model_groups(model: nn.Module) -> list[Group]:
    """All structured groups of a model (the zoo's or any other of the pipeline
    contract), in layer order, as discovered from its computation (cached per model
    until its layers change)."""
    return discover(model).groups


def group_sq_norms(model: nn.Module, groups: list[Group] | None = None,
                   params_of: Callable[[str, nn.Module], Params] | None = None,
                   consumers: bool = True) -> dict[str, torch.Tensor]:
    """Per group, the squared L2 norm of each unit's weights across producer rows and
    consumer columns (differentiable). `params_of(layer_name, layer)` substitutes other
    tensors of the same shapes, e.g. masks or all-ones (to count weights per unit).
    With consumers=False only the producers count."""
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
        unit = slot.unit_of.to(values.device)
        if unit.numel() != values.numel():
            raise HwcError(f"group slot on {slot.layer} has {unit.numel()} positions, the layer {values.numel()}")
        m = unit >= 0
        return torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, unit[m], values[m])

    result = {}
    for g in groups if groups is not None else model_groups(model):
        total = sum(gather(per_index(p.layer, "out"), p, g.size) for p in g.producers)
        for slot in g.consumers if consumers else ():
            total = total + gather(per_index(slot.layer, "in"), slot, g.size)
        result[g.name] = total
    return result


def group_weight_counts(model: nn.Module, groups: list[Group] | None = None) -> dict[str, torch.Tensor]:
    """Number of weights belonging to each unit of each group."""
    ones = lambda _name, layer: {k: torch.ones_like(v) for k, v in layer_params(layer).items()}  # noqa: E731
    with torch.no_grad():
        return {k: v.round().long() for k, v in group_sq_norms(model, groups, ones).items()}


def dropped_units(group: Group, kept: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The group's units not in `kept` (validated: distinct, in range, at least one)."""
    kept = torch.as_tensor(kept, dtype=torch.long, device="cpu").reshape(-1)  # unit indices: on the CPU
    if kept.numel() == 0:
        raise HwcError(f"group {group.name}: at least one unit must be kept")
    if kept.min() < 0 or kept.max() >= group.size or kept.unique().numel() != kept.numel():
        raise HwcError(f"group {group.name}: kept units must be distinct indices in [0, {group.size})")
    flags = torch.ones(group.size, dtype=torch.bool)
    flags[kept] = False
    return flags.nonzero().reshape(-1)
