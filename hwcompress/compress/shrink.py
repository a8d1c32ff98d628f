"""Physical shrinking: turn structurally pruned units into a genuinely smaller dense model.

Masked weights still cost memory and compute on a device; removing the units does not.
Each removed unit disappears from its producer (rows in every gate, bias, its recurrent
column) and from all consumers (input columns), the zoo config records the new widths,
and the result is an ordinary zoo model of the same class: save/load, streaming and
export work unchanged, and its output equals the masked model's.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from hwcompress.compress.groups import dropped_units, handler_for, layer_params, model_groups
from hwcompress.compress.prune import kept_units
from hwcompress.errors import HwcError
from hwcompress.models import zoo
from hwcompress.models.cost import count_params, layer_paths, named_layers


def _shrunk_config(model: zoo.SEModel, width: Mapping[str, int]) -> dict:
    """The model's config with every group's width replaced by its kept unit count."""
    cfg = dict(model.config)
    cfg["hidden"] = [width[f"rnn.{k}"] for k in range(len(model.hidden))]
    if isinstance(model, zoo.CRN):
        n = len(model.channels)
        cfg["channels"] = [width[f"enc.{i}"] for i in range(n)]
        cfg["proj_channels"] = width["proj"]
        cfg["dec_channels"] = [width[f"dec.{j}"] for j in range(n - 1)]
        if isinstance(model, zoo.GCRN):
            cfg["dec_imag_channels"] = [width[f"dec_imag.{j}"] for j in range(n - 1)]
    return cfg


def shrink(model: zoo.SEModel, keep: Mapping[str, Sequence[int] | torch.Tensor] | None = None,
           masks: Mapping[str, torch.Tensor] | None = None) -> zoo.SEModel:
    """A smaller model of the same class without the removed units.

    keep: {group name: kept unit indices}; groups not listed keep all units. Without
    `keep`, units are read from `masks` (e.g. prune.structured_masks) or, with neither,
    from the weights (units whose producer weights are all exactly zero are removed).
    The returned model holds the kept weights as they are in `model`: with `keep` or
    structured masks it computes what the masked model computes.
    """
    groups = model_groups(model)
    by_name = {g.name: g for g in groups}
    if keep is None:
        keep = kept_units(model, masks)
    unknown = [k for k in keep if k not in by_name]
    if unknown:
        raise HwcError(f"unknown group {', '.join(map(repr, unknown))}; known: {', '.join(by_name)}")
    layers, paths = named_layers(model), layer_paths(model)

    # dropped indices per layer side; one layer can take inputs from several groups
    drops: dict[tuple[str, str], list[torch.Tensor]] = {}
    width = {}
    for g in groups:
        dropped = dropped_units(g, keep[g.name]) if g.name in keep else torch.zeros(0, dtype=torch.long)
        width[g.name] = g.size - len(dropped)
        drops.setdefault((g.producer.layer, "out"), []).append(g.producer.indices(dropped))
        for slot in g.consumers:
            drops.setdefault((slot.layer, "in"), []).append(slot.indices(dropped))

    small = zoo.build(model.arch, _shrunk_config(model, width))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, layer in layers.items():
        h = handler_for(layer)
        params = {k: v.detach() for k, v in layer_params(layer).items()}
        for side, n, prune in (("out", h.n_outputs(layer), h.prune_outputs), ("in", h.n_inputs(layer), h.prune_inputs)):
            lost = torch.cat(drops.get((name, side), [torch.zeros(0, dtype=torch.long)]))
            if len(lost):
                alive = torch.ones(n, dtype=torch.bool)
                alive[lost] = False
                params = prune(params, alive.nonzero().reshape(-1), n)
        for k, v in params.items():
            state[f"{paths[name]}.{k}"] = v.clone()
    small.load_state_dict(state)
    small.meta = {**getattr(model, "meta", {}), "shrunk": {"params_before": count_params(model),
                                                            "params_after": count_params(small)}}
    return small.train(model.training)


def shrink_summary(before: zoo.SEModel, after: zoo.SEModel) -> list[dict]:
    """Per group: units before and after (for reports)."""
    old = {g.name: g.size for g in model_groups(before)}
    return [{"group": g.name, "before": old.get(g.name), "after": g.size} for g in model_groups(after)]

