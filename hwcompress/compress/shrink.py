"""Physical shrinking: turn structurally pruned units into a genuinely smaller dense model.

Masked weights still cost memory and compute on a device; removing the units does not.
For any model (the zoo's or one of the pipeline contract from elsewhere), each removed
unit disappears from its producers (rows in every gate, bias, its recurrent column), from
all consumers (input columns) and from the per-channel layers in between (PReLU, norms):
every touched layer is replaced, in a copy of the model, by a smaller one of the same type
holding the kept weights, with its size attributes (in_features, hidden_size, in_channels,
num_features, ...) updated. Models that read their widths from their layers (the zoo's
`config`, `state_shapes()`) then describe the smaller model, so save/load, streaming and
export work unchanged, and its output equals the masked model's.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from hwcompress.compress.graph import Group, discover
from hwcompress.compress.groups import dropped_units, handler_for, layer_params, unit_handler_for
from hwcompress.compress.prune import apply_masks, kept_units, unit_masks
from hwcompress.errors import HwcError
from hwcompress.models.cost import count_params

_EMPTY = torch.zeros(0, dtype=torch.long, device="cpu")


def _drops(groups: list[Group], keep: Mapping[str, Sequence[int] | torch.Tensor]) -> dict[tuple[str, str], list]:
    """Dropped positions per (layer, side); one layer can lose positions to several groups."""
    by_name = {g.name: g for g in groups}
    unknown = [k for k in keep if k not in by_name]
    if unknown:
        raise HwcError(f"unknown group {', '.join(map(repr, unknown))}; known: {', '.join(by_name)}")
    drops: dict[tuple[str, str], list[torch.Tensor]] = {}
    for g in groups:
        dropped = dropped_units(g, keep[g.name]) if g.name in keep else _EMPTY
        if not len(dropped):
            continue
        for side, slots in (("out", g.producers), ("in", g.consumers), ("unit", g.attached)):
            for slot in slots:
                drops.setdefault((slot.layer, side), []).append(slot.indices(dropped))
    return drops


def _alive(n: int, lost: list[torch.Tensor]) -> torch.Tensor:
    alive = torch.ones(n, dtype=torch.bool)
    alive[torch.cat(lost)] = False
    return alive.nonzero().reshape(-1)


def _surgery(model: nn.Module, groups: list[Group], paths: Mapping[str, str],
             keep: Mapping[str, Sequence[int] | torch.Tensor]) -> nn.Module:
    """A copy of `model` whose touched layers hold only the kept units."""
    drops = _drops(groups, keep)
    small = copy.deepcopy(model)
    for name in dict.fromkeys(layer for layer, _side in drops):
        if name not in paths:
            raise HwcError(f"group layer {name!r} is not a module of the model")
        layer = small.get_submodule(paths[name])
        if (name, "unit") in drops:
            h = unit_handler_for(layer)
            h.select(layer, _alive(h.n_positions(layer), drops[name, "unit"]).to(_device(layer)))
            continue
        h = handler_for(layer)
        params = {k: v.detach() for k, v in layer_params(layer).items()}
        for side, n, prune in (("out", h.n_outputs(layer), h.prune_outputs), ("in", h.n_inputs(layer), h.prune_inputs)):
            if (name, side) in drops:
                params = prune(params, _alive(n, drops[name, side]).to(_device(layer)), n)
        h.resize(layer, params)
    return small


def _device(layer: nn.Module) -> torch.device:
    p = next(layer.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def shrink(model: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor] | None = None,
           masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A smaller model of the same class without the removed units.

    keep: {group name: kept unit indices}; groups not listed keep all units. Without
    `keep`, units are read from `masks` (e.g. prune.structured_masks) or, with neither,
    from the weights (units whose producer and consumer weights are all exactly zero are
    removed). The returned model holds the kept weights as they are in `model`: with `keep`
    or structured masks it computes what the masked model computes.
    """
    found = discover(model)
    if keep is None:
        keep = kept_units(model, masks)
    small = _surgery(model, found.groups, found.paths, keep)
    _verify(model, small, keep)
    small.meta = {**getattr(model, "meta", {}), "shrunk": {"params_before": count_params(model),
                                                            "params_after": count_params(small)}}
    return small.train(model.training)


def _verify(model: nn.Module, small: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> None:
    """The shrunk model must run from its own (smaller) initial state and compute what the
    masked model computes. Discovery only sees one run: a width hard-coded in a forward
    (`torch.zeros(b, 64, t)`) or shape arithmetic it cannot see shows up here, as one line,
    instead of as a wrong model later."""
    if not (callable(getattr(model, "initial_state", None)) and isinstance(getattr(model, "n_bins", None), int)):
        return
    if any(p.is_meta for p in model.parameters()):
        return
    masked = copy.deepcopy(model)
    apply_masks(masked, unit_masks(model, keep))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    spec = torch.randn(1, 4, model.n_bins, 2, generator=torch.Generator().manual_seed(0), device="cpu").to(device)
    name = type(model).__name__
    flags = {m: m.training for m in small.modules()}
    try:
        masked.eval()
        small.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            want, _ = masked(spec, [s.to(device) for s in masked.initial_state(1)])
            try:
                got, state = small(spec, [s.to(device) for s in small.initial_state(1)])
            except Exception as exc:  # noqa: BLE001 - the user's forward on the smaller layers
                raise HwcError(f"{name}: the shrunk model does not run ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}); is a width fixed in its forward "
                               "instead of read from its layers?") from None
    finally:
        for m, flag in flags.items():
            m.training = flag
    shapes = [tuple(s.shape[1:]) for s in state]
    if shapes != [tuple(s) for s in small.state_shapes()]:
        raise HwcError(f"{name}: the shrunk model returns state of shapes {shapes} but declares "
                       f"{[tuple(s) for s in small.state_shapes()]}: state_shapes() must be read from its layers")
    scale = max(1.0, float(want.abs().max()))
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if not diff <= 1e-3 * scale:
        raise HwcError(f"{name}: the shrunk model computes something else than the masked one "
                       f"(max |diff| {diff:.3g}); its structure is not what group discovery followed")


def shrink_to_widths(model: nn.Module, widths: Mapping[str, int], groups: list[Group] | None = None,
                     paths: Mapping[str, str] | None = None) -> nn.Module:
    """The architecture `model` would have with `widths[g]` units left in group g (the
    first ones; other groups keep all). Works on the meta device too: nothing but shapes
    is needed, e.g. to predict latency (search/allocate.py). Pass `groups`/`paths` (of
    discover(model) on a real copy) for a model whose forward cannot run where it is."""
    if groups is None or paths is None:
        found = discover(model)
        groups, paths = found.groups, found.paths
    keep = {}
    for g in groups:
        w = int(widths.get(g.name, g.size))
        if not 1 <= w <= g.size:
            raise HwcError(f"group {g.name}: width {w} outside [1, {g.size}]")
        if w < g.size:
            keep[g.name] = torch.arange(w, device="cpu")
    return _surgery(model, groups, paths, keep)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device, made without copying any weight data."""
    memo: dict[int, object] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        ghost = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(ghost, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else ghost
    return copy.deepcopy(model, memo)


def _shrunk_config(model: nn.Module, width: Mapping[str, int]) -> dict:
    """The config of the model shrunk to `width` units per group (zoo models derive their
    config from their layers, so this is the shrunk architecture's own)."""
    found = discover(model)
    return shrink_to_widths(meta_copy(model), width, found.groups, found.paths).config


def shrink_summary(before: nn.Module, after: nn.Module) -> list[dict]:
    """Per group: units before and after (for reports)."""
    old = {g.name: g.size for g in discover(before).groups}
    return [{"group": g.name, "before": old.get(g.name), "after": g.size} for g in discover(after).groups]
