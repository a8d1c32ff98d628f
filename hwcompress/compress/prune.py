"""Pruning: masks per parameter, unstructured (magnitude) and structured (whole units),
a gradual cubic schedule, and per-layer sensitivity analysis to pick per-layer ratios.

Masks are a dict `parameter name -> 0/1 tensor` of the parameter's shape. Applying them
after every optimiser step (`after_step=mask_hook(masks)` in hwcompress.train.train) keeps
pruned weights exactly zero while the rest are fine-tuned.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from hwcompress.compress.groups import (
    dropped_units,
    group_sq_norms,
    group_weight_counts,
    handler_for,
    layer_params,
    model_groups,
)
from hwcompress.errors import HwcError
from hwcompress.models.cost import layer_paths, named_layers
from hwcompress.models.zoo import SEModel  # the type of the zoo's models; any nn.Module of the contract works
from hwcompress.workdir import check_writable, model_digest, read_keyed, write_keyed

Masks = dict[str, torch.Tensor]


# --- applying masks ------------------------------------------------------------------------


@torch.no_grad()
def apply_masks(model: SEModel, masks: Mapping[str, torch.Tensor]) -> None:
    """Multiply parameters by their masks in place (parameters without a mask are untouched)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise HwcError(f"mask for unknown parameter {name!r}")
        params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))


def mask_hook(masks: Mapping[str, torch.Tensor]) -> Callable[[SEModel], None]:
    """An `after_step` hook for hwcompress.train.train that re-applies `masks`."""
    return lambda model: apply_masks(model, masks)


def combine_masks(*all_masks: Mapping[str, torch.Tensor]) -> Masks:
    """Element-wise product: a weight survives only if every mask keeps it."""
    out: Masks = {}
    for masks in all_masks:
        for name, m in masks.items():
            out[name] = out[name] * m if name in out else m.clone()
    return out


def weight_sparsity(model: SEModel) -> float:
    """Fraction of exactly-zero weights among the weight matrices/kernels of all layers."""
    weights = [p for p in _prunable_weights(model).values()]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


# --- unstructured --------------------------------------------------------------------------


def _prunable_weights(model: SEModel, layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Weight matrices/kernels (not biases) by full parameter name, optionally of some layers."""
    paths = layer_paths(model)
    chosen = paths if layers is None else {name: paths[name] for name in layers}
    out = {}
    for path in chosen.values():
        module = model.get_submodule(path)
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                out[f"{path}.{pname}"] = p
    return out


def _check_names(given: Iterable[str], known: Iterable[str], what: str) -> None:
    known = list(known)
    unknown = [n for n in given if n not in known]
    if unknown:
        raise HwcError(f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


def _check_ratio(name: str, r: float) -> float:
    r = float(r)
    if not 0.0 <= r <= 1.0:
        raise HwcError(f"pruning ratio for {name} must be between 0 and 1, got {r}")
    return r


def _smallest_mask(weights: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """Masks removing the `sparsity` fraction of smallest-magnitude entries, ranked jointly."""
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    n_drop = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat)
    if n_drop:
        # stable sort: ties (e.g. already-zero weights) are broken reproducibly
        keep[torch.argsort(flat, stable=True)[:n_drop]] = 0.0
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].reshape(w.shape).clone()
        start += w.numel()
    return masks


def magnitude_masks(model: SEModel, sparsity: float | Mapping[str, float], scope: str = "layer") -> Masks:
    """Unstructured magnitude pruning of weight matrices/kernels (biases are kept).

    sparsity: one fraction for every layer, or {layer name: fraction} (other layers kept).
    scope: "layer" ranks weights within each layer; "global" ranks all weights together
    (one fraction only), so layers with many small weights lose more.
    """
    layers = list(named_layers(model))
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise HwcError("global magnitude pruning takes one sparsity, not one per layer")
        return _smallest_mask(_prunable_weights(model), _check_ratio("global", sparsity))
    if scope != "layer":
        raise HwcError(f"unknown pruning scope {scope!r} (use 'layer' or 'global')")
    per_layer = {name: sparsity for name in layers} if not isinstance(sparsity, Mapping) else dict(sparsity)
    _check_names(per_layer, layers, "layer")
    masks: Masks = {}
    for name, s in per_layer.items():
        s = _check_ratio(name, s)
        if s > 0:
            masks.update(_smallest_mask(_prunable_weights(model, [name]), s))
    return masks


# --- structured ----------------------------------------------------------------------------


def select_units(model: SEModel, ratios: float | Mapping[str, float] | None = None,
                 threshold: float | None = None) -> dict[str, torch.Tensor]:
    """Units to keep per group (sorted indices): drop the `ratio` fraction with the smallest
    group norm (producer rows and consumer columns together), and/or every unit whose RMS
    weight is below `threshold` (what remains after group-lasso training). At least one
    unit per group always stays, so no layer vanishes."""
    groups = model_groups(model)
    names = [g.name for g in groups]
    per_group = {n: ratios for n in names} if isinstance(ratios, (int, float)) else dict(ratios or {})
    _check_names(per_group, names, "group")
    with torch.no_grad():
        norms = group_sq_norms(model, groups)
        counts = group_weight_counts(model, groups) if threshold is not None else {}
    keep = {}
    for g in groups:
        order = torch.argsort(norms[g.name], stable=True)
        n_drop = int(round(_check_ratio(g.name, per_group.get(g.name, 0.0)) * g.size))
        if threshold is not None:
            rms = (norms[g.name] / counts[g.name].clamp_min(1)).sqrt()
            n_drop = max(n_drop, int((rms < threshold).sum()))
        n_drop = min(n_drop, g.size - 1)
        keep[g.name] = torch.sort(order[n_drop:]).values.cpu()  # unit indices: bookkeeping, on the CPU
    return keep


def unit_masks(model: SEModel, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> Masks:
    """Masks zeroing every removed unit in its producer and all its consumers."""
    groups = {g.name: g for g in model_groups(model)}
    _check_names(keep, groups, "group")
    layers, paths = named_layers(model), layer_paths(model)
    layer_masks: dict[str, dict[str, torch.Tensor]] = {}

    def masks_of(name: str) -> dict[str, torch.Tensor]:
        if name not in layer_masks:
            layer_masks[name] = {k: torch.ones_like(v, requires_grad=False) for k, v in layer_params(layers[name]).items()}
        return layer_masks[name]

    for name, kept in keep.items():
        g = groups[name]
        dropped = dropped_units(g, kept)
        if not len(dropped):
            continue
        for slot in g.producers:
            layer = layers[slot.layer]
            h = handler_for(layer)
            h.mask_outputs(masks_of(slot.layer), slot.indices(dropped), h.n_outputs(layer))
        for slot in g.consumers:
            layer = layers[slot.layer]
            handler_for(layer).mask_inputs(masks_of(slot.layer), slot.indices(dropped), handler_for(layer).n_inputs(layer))
    return {f"{paths[layer]}.{p}": m.detach() for layer, ms in layer_masks.items() for p, m in ms.items()}


def structured_masks(model: SEModel, ratios: float | Mapping[str, float]) -> Masks:
    """Masks removing, per group, the `ratio` fraction of units with the smallest group norm."""
    return unit_masks(model, select_units(model, ratios))


def kept_units(model: SEModel, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Units still alive per group: those whose producer or consumer weights are not all
    masked out (or, without masks, not all exactly zero). A dead unit's value reaches
    nothing (its consumer columns are zero) and it feeds nothing back (its recurrent column
    is zero), so removing it does not change the model's output. Producer weights alone
    would not do for any model: after a BatchNorm shift or a sigmoid a zero row is no zero
    input to the consumer."""
    paths = layer_paths(model)

    def values(name: str, layer: torch.nn.Module) -> dict[str, torch.Tensor]:
        params = layer_params(layer)
        if masks is None:
            return params
        return {p: masks.get(f"{paths[name]}.{p}", torch.ones_like(v)) for p, v in params.items()}

    with torch.no_grad():
        norms = group_sq_norms(model, params_of=values, consumers=True)
    keep = {}
    for name, n in norms.items():
        alive = (n > 0).nonzero().reshape(-1)
        keep[name] = (alive if alive.numel() else n.argmax().reshape(1)).cpu()  # unit indices, on the CPU
    return keep


# --- gradual schedule ----------------------------------------------------------------------


def cubic_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f)(1 - t/T)^3; prunes fast early, when
    redundancy is high, and slowly near the end."""
    if total_steps <= 0:
        return final
    t = min(max(step, 0), total_steps) / total_steps
    return final + (initial - final) * (1.0 - t) ** 3


def prune_schedule(final: float, n_steps: int, initial: float = 0.0) -> list[float]:
    """Target sparsity after each of `n_steps` prune-then-fine-tune rounds (last = final)."""
    return [cubic_sparsity(t, n_steps, final, initial) for t in range(1, n_steps + 1)]


class GradualPruner:
    """`after_step` hook pruning gradually to `final` over `total_steps` optimiser steps:
    every `every` steps (after `start`) masks are recomputed at the cubic schedule's
    current fraction of the final ratios; in between the current masks are re-applied.

    final: one ratio or {layer/group name: ratio}. structured=True prunes whole units
    (names are groups), otherwise weights by magnitude (names are layers, `scope` as in
    magnitude_masks). Pruned weights stay zero, so they rank first at the next round and
    the masks only ever grow.
    """

    def __init__(self, final: float | Mapping[str, float], total_steps: int, every: int = 100, start: int = 0,
                 structured: bool = False, scope: str = "layer") -> None:
        if total_steps <= 0 or every <= 0:
            raise HwcError("gradual pruning needs total_steps > 0 and every > 0")
        self.final, self.total, self.every, self.start = final, total_steps, every, start
        self.structured, self.scope = structured, scope
        self.step = 0
        self.masks: Masks = {}

    def ratios_at(self, step: int) -> float | dict[str, float]:
        frac = cubic_sparsity(step - self.start, self.total, 1.0)
        if isinstance(self.final, Mapping):
            return {k: v * frac for k, v in self.final.items()}
        return self.final * frac

    def __call__(self, model: SEModel) -> None:
        self.step += 1
        t = self.step - self.start
        if 0 < t <= self.total and (t % self.every == 0 or t == self.total):
            ratios = self.ratios_at(self.step)
            self.masks = (structured_masks(model, ratios) if self.structured
                          else magnitude_masks(model, ratios, self.scope))
        if self.masks:
            apply_masks(model, self.masks)


# --- sensitivity ---------------------------------------------------------------------------


def layer_sizes(model: SEModel, structured: bool = True) -> dict[str, int]:
    """Weights each prunable unit set holds: per group (producer rows + consumer columns;
    groups overlap, so the sum exceeds the model size) or per layer (weight tensors)."""
    if structured:
        return {k: int(v.sum()) for k, v in group_weight_counts(model).items()}
    return {name: sum(w.numel() for w in _prunable_weights(model, [name]).values()) for name in named_layers(model)}


def _fingerprint(model: SEModel) -> str:
    """Identifies the weights, so cached sensitivities of another model are not reused:
    architecture and every tensor's exact bytes (two models agree only when bit-identical)."""
    return model_digest(model)


SENSITIVITY_CACHE_VERSION = 2  # bump when what a cached score means changes


def sensitivity(model: SEModel, eval_fn: Callable[[SEModel], float], layers: Sequence[str] | None = None,
                ratios: Sequence[float] = (0.25, 0.5, 0.75), structured: bool = True,
                cache: str | Path | dict | None = None, key: Mapping | None = None,
                log: Callable[[str], None] | None = None, base: float | None = None) -> dict:
    """Score of the model with one layer (structured: one group) pruned at each ratio, the
    rest intact. eval_fn(model) -> score, higher is better (e.g. PESQ on a few
    utterances). Scores are cached in `cache` (a dict, or a JSON file updated after
    every evaluation, so an interrupted run resumes).

    A cache holds the scores of one model's exact weights under one evaluation: `key`
    (JSON-able) must name everything `eval_fn` depends on (data fingerprint, number and
    crop of the items, the metric); a file cache whose weights, mode or key differ, or that
    is corrupt, is rebuilt after one line to `log` (default: stderr).

    `base`: the intact model's score when the caller has it already (the same eval_fn on the
    same weights: several caches, one per group, need it once, not once each).

    Returns {"base": score, "structured": bool, "scores": {layer: {ratio: score}}}.
    """
    known = [g.name for g in model_groups(model)] if structured else list(named_layers(model))
    layers = list(layers) if layers is not None else known
    _check_names(layers, known, "group" if structured else "layer")
    path = Path(cache) if isinstance(cache, (str, Path)) else None
    full_key = {"what": "pruning sensitivity", "version": SENSITIVITY_CACHE_VERSION, "weights": _fingerprint(model),
                "structured": structured, "evaluation": json.loads(json.dumps(dict(key or {}), sort_keys=True))}
    if path is not None:
        check_writable(path, "file")
        store = _read_score_cache(path, full_key, log or _warn)
    else:
        store = cache if isinstance(cache, dict) else {}
        if store.get("key") != full_key:
            store.clear()
    if not store:
        store.update({"key": full_key, "base": None, "scores": {}})

    def save() -> None:
        if path is not None:
            write_keyed(path, full_key, {k: v for k, v in store.items() if k != "key"})

    if store["base"] is None:
        store["base"] = float(base) if base is not None else float(eval_fn(model))
        save()
    result: dict[str, dict[float, float]] = {}
    for layer in layers:
        result[layer] = {}
        for r in ratios:
            key_r = f"{layer}@{float(r):g}"
            if key_r not in store["scores"]:
                masks = structured_masks(model, {layer: r}) if structured else magnitude_masks(model, {layer: r})
                params = dict(model.named_parameters())
                saved = {k: params[k].detach().clone() for k in masks}
                try:
                    apply_masks(model, masks)
                    store["scores"][key_r] = float(eval_fn(model))
                finally:
                    with torch.no_grad():
                        for k, v in saved.items():
                            params[k].copy_(v)
                save()
            result[layer][float(r)] = store["scores"][key_r]
    return {"base": store["base"], "structured": structured, "scores": result}


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _read_score_cache(path: Path, key: dict, log: Callable[[str], None]) -> dict:
    """The cached {"base", "scores"} for `key`, or {} (a missing file says nothing; an
    unusable one says why in one line). Scores must be finite numbers keyed by strings."""
    stored = read_keyed(path, key, log)
    if stored is None:
        return {}
    base, scores = stored.get("base"), stored.get("scores")
    ok = (base is None or _finite(base)) and isinstance(scores, dict) and all(
        isinstance(k, str) and _finite(v) for k, v in scores.items())
    if not ok:
        log(f"{path}: malformed cache contents; recomputing it")
        return {}
    return {"key": key, "base": None if base is None else float(base), "scores": dict(scores)}


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ratio_within(curve: list[tuple[float, float]], tol: float) -> float:
    """Largest ratio whose (piecewise-linear, non-decreasing) loss stays <= tol."""
    for (r0, l0), (r1, l1) in zip(curve, curve[1:]):
        if l1 > tol:
            return r0 + (r1 - r0) * (tol - l0) / (l1 - l0)
    return curve[-1][0]


def ratios_from_sensitivity(sens: Mapping, target: float, sizes: Mapping[str, int]) -> dict[str, float]:
    """Per-layer ratios reaching overall sparsity `target` (weighted by `sizes`, e.g.
    layer_sizes(model)) with one common tolerance on the quality loss: each layer is
    pruned as far as its measured loss stays within the tolerance, so layers whose loss
    rises fast are pruned less. Losses are interpolated linearly between measured ratios
    (0 loss at ratio 0) and never beyond the largest measured ratio."""
    base = sens["base"]
    curves: dict[str, list[tuple[float, float]]] = {}
    for layer, scores in sens["scores"].items():
        if layer not in sizes:
            raise HwcError(f"no size for {layer!r}")
        points = {float(r): float(v) for r, v in scores.items()}  # JSON round trips make keys strings
        curve, worst = [(0.0, 0.0)], 0.0
        for r in sorted(points):
            # a loss that dips at a higher ratio is noise: keep the curve non-decreasing
            worst = max(worst, base - points[r])
            curve.append((r, worst))
        curves[layer] = curve
    total = sum(sizes[k] for k in curves)

    def overall(tol: float) -> tuple[float, dict[str, float]]:
        ratios = {k: _ratio_within(c, tol) for k, c in curves.items()}
        return sum(sizes[k] * r for k, r in ratios.items()) / total, ratios

    hi = max(c[-1][1] for c in curves.values())
    reachable, ratios = overall(hi)
    if reachable < target - 1e-9:
        raise HwcError(f"target sparsity {target:g} exceeds what the measured ratios reach ({reachable:.3f}); "
                       "measure larger ratios")
    lo = 0.0
    for _ in range(60):  # overall(tol) is continuous and non-decreasing: bisect the tolerance
        mid = (lo + hi) / 2
        if overall(mid)[0] >= target:
            hi = mid
        else:
            lo = mid
    return overall(hi)[1]
