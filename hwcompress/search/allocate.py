"""Budgeted allocation of per-group structured sparsity and per-layer codebook size.

Latency and runtime size follow from the *widths* a structured-pruning choice leaves (dense
runtimes do not get faster from scattered zeros, see the notes in search/fit.py), so the
latency allocation works on unit ratios per group. It is a greedy Lagrangian descent in the
spirit of NetAdapt: start dense; at every step take the one-notch increase of one group's
ratio with the smallest predicted quality loss per unit of budget violation removed; stop
when every budget holds. Quality loss of a setting is the sum over groups of the loss
measured with that group alone pruned (search/sensitivity.py), interpolated between the
measured ratios; latency comes from the target's latency model times a calibration factor
that fit() fits to measurements where the target can be measured.

Codebook sizes only change the .hwc artifact (runtimes execute 8-bit weights for any K <=
256), so they are chosen separately: the smallest total bytes whose summed measured loss
stays within a tolerance, by bisection on the Lagrange multiplier of that constraint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from hwcompress.compress.graph import discover
from hwcompress.compress.shrink import meta_copy, shrink_to_widths
from hwcompress.errors import HwcError
from hwcompress.models import zoo
from hwcompress.models.cost import count_params
from hwcompress.profile.latency_model import predict_latency
from hwcompress.targets import Target

STEP = 0.125
MAX_RATIO = 0.75  # the largest measured sensitivity ratio: no extrapolation beyond it


def loss_curves(sens: Mapping) -> dict[str, list[tuple[float, float]]]:
    """Per layer/group: [(setting, loss increase)], starting at (0, 0), non-decreasing
    (a loss that dips at a harsher setting is measurement noise)."""
    base = float(sens["base"])
    curves = {}
    for name, scores in sens["scores"].items():
        points = {float(k): float(v) for k, v in scores.items()}  # JSON makes keys strings
        curve, worst = [(0.0, 0.0)], 0.0
        for r in sorted(points):
            worst = max(worst, base - points[r])
            curve.append((r, worst))
        curves[name] = curve
    return curves


def codebook_curves(sens: Mapping) -> dict[str, list[tuple[float, float]]]:
    """Per layer: [(0, 0)] + [(K, loss increase)] for codebook sensitivities, where the
    harsher setting is the *smaller* K: the envelope runs from the largest K down, so a
    K=16 keeps its own measured loss (loss_curves, ascending, would give it K=8's; that is
    what made every fit choose only K=8 or 256)."""
    base = float(sens["base"])
    curves = {}
    for name, scores in sens["scores"].items():
        points = {int(float(k)): float(v) for k, v in scores.items()}
        curve, worst = [], 0.0
        for k in sorted(points, reverse=True):
            worst = max(worst, base - points[k])
            curve.append((float(k), worst))
        curves[name] = [(0.0, 0.0)] + curve[::-1]
    return curves


def interpolate(curve: list[tuple[float, float]], r: float) -> float:
    for (r0, l0), (r1, l1) in zip(curve, curve[1:]):
        if r <= r1 + 1e-12:
            return l0 + (l1 - l0) * (r - r0) / (r1 - r0) if r1 > r0 else l1
    return curve[-1][1]


def width(size: int, ratio: float) -> int:
    """Units a group keeps at `ratio`: the rounding of prune.select_units."""
    return size - min(int(round(ratio * size)), size - 1)


class CostOracle:
    """Predicted per-hop latency (ms) and parameter count of the model a set of group
    ratios leaves, without touching weights: the model is shrunk on the meta device (the
    same surgery as compress.shrink, for any model) and given uninitialised storage,
    which is all the latency model needs."""

    def __init__(self, model: zoo.SEModel, target: Target, weight_bits: int, calibration: float = 1.0) -> None:
        self.model, self.target, self.bits = model, target, weight_bits
        self.calibration = calibration
        found = discover(model)
        self._groups, self._paths = found.groups, found.paths
        self._ghost = meta_copy(model)
        self.sizes = {g.name: g.size for g in found.groups}
        self._cache: dict[tuple, tuple[float, int]] = {}

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]:
        return {g: width(n, ratios.get(g, 0.0)) for g, n in self.sizes.items()}

    def architecture(self, ratios: Mapping[str, float]) -> zoo.SEModel:
        net = shrink_to_widths(self._ghost, self.widths(ratios), self._groups, self._paths)
        return net.to_empty(device="cpu")

    def _raw(self, ratios: Mapping[str, float]) -> tuple[float, int]:
        key = tuple(sorted(self.widths(ratios).items()))
        if key not in self._cache:
            net = self.architecture(ratios)
            self._cache[key] = (predict_latency(net, self.target, self.bits).latency_ms, count_params(net))
        return self._cache[key]

    def latency_ms(self, ratios: Mapping[str, float]) -> float:
        return self._raw(ratios)[0] * self.calibration

    def params(self, ratios: Mapping[str, float]) -> int:
        return self._raw(ratios)[1]


@dataclass
class Allocation:
    ratios: dict[str, float]
    predicted_ms: float
    params: int
    predicted_loss: float
    steps: list[dict] = field(default_factory=list)


class Infeasible(HwcError):
    pass


def allocate(curves: Mapping[str, list[tuple[float, float]]], oracle: CostOracle, budget_ms: float | None,
             budget_params: int | None = None, step: float = STEP, max_ratio: float = MAX_RATIO) -> Allocation:
    """Greedy descent described in the module docstring. `budget_params` bounds the
    weights the runtime artifact holds (bytes / bytes-per-weight)."""
    groups = [g for g in oracle.sizes if g in curves]
    ratios = {g: 0.0 for g in groups}

    def violation(r: Mapping[str, float]) -> float:
        v = 0.0
        if budget_ms is not None:
            v = max(v, oracle.latency_ms(r) / budget_ms)
        if budget_params is not None:
            v = max(v, oracle.params(r) / budget_params)
        return v

    def loss(r: Mapping[str, float]) -> float:
        return sum(interpolate(curves[g], r[g]) for g in groups)

    floor = {g: max_ratio for g in groups}
    if violation(floor) > 1.0:
        raise Infeasible(
            f"no setting meets the budget: the most this model can be pruned ({max_ratio:.0%} of every group's units, "
            f"int8 weights) reaches {oracle.latency_ms(floor):.3g} ms per hop and {oracle.params(floor)} weights"
            + (f" (budget {budget_ms:g} ms)" if budget_ms is not None else "")
            + (f" (budget {budget_params} weights)" if budget_params is not None else ""))
    steps = []
    current = violation(ratios)
    while current > 1.0:
        best = None
        for g in groups:
            if ratios[g] + step > max_ratio + 1e-9:
                continue
            trial = {**ratios, g: round(ratios[g] + step, 6)}
            gain = current - violation(trial)
            if gain <= 1e-12:
                continue
            cost = interpolate(curves[g], trial[g]) - interpolate(curves[g], ratios[g])
            key = (max(cost, 0.0) / gain, -gain)
            if best is None or key < best[0]:
                best = (key, g, trial)
        if best is None:  # cannot happen when the floor is feasible, kept as a guard
            raise Infeasible("no single pruning step reduces the budget violation any further")
        _, g, ratios = best
        current = violation(ratios)
        steps.append({"group": g, "ratio": ratios[g], "predicted_ms": oracle.latency_ms(ratios),
                      "params": oracle.params(ratios), "predicted_loss": loss(ratios)})
    return Allocation(dict(ratios), oracle.latency_ms(ratios), oracle.params(ratios), loss(ratios), steps)


def choose_codebooks(curves: Mapping[str, list[tuple[float, float]]], weights: Mapping[str, int],
                     tolerance: float, fallback: int = 256) -> dict[str, int]:
    """Per layer K among the measured sizes (plus `fallback`, taken as lossless: 256
    shared values are finer than the int8 grid the runtime uses anyway) minimising total
    index bits subject to summed measured loss <= tolerance."""
    options = {name: [(int(k), l) for k, l in curve[1:]] + [(fallback, 0.0)] for name, curve in curves.items()}

    def pick(mu: float) -> tuple[dict[str, int], float]:
        chosen, total = {}, 0.0
        for name, opts in options.items():
            k, l = min(opts, key=lambda kl: (weights[name] * math.log2(kl[0]) + mu * kl[1], -kl[0]))
            chosen[name] = k
            total += l
        return chosen, total

    lo, hi = 0.0, 1.0
    while pick(hi)[1] > tolerance and hi < 1e30:
        hi *= 10
    for _ in range(80):
        mid = (lo + hi) / 2
        if pick(mid)[1] <= tolerance:
            hi = mid
        else:
            lo = mid
    return pick(hi)[0]


def uniform(curves: Mapping[str, list[tuple[float, float]]], oracle: CostOracle, budget_ms: float | None,
            budget_params: int | None = None, max_ratio: float = MAX_RATIO) -> Allocation:
    """The baseline the search is compared with: one ratio for every group, the smallest
    that meets the budgets (bisection; widths round as in select_units)."""
    groups = [g for g in oracle.sizes if g in curves]

    def fits(r: float) -> bool:
        ratios = {g: r for g in groups}
        ok = budget_ms is None or oracle.latency_ms(ratios) <= budget_ms
        return ok and (budget_params is None or oracle.params(ratios) <= budget_params)

    if not fits(max_ratio):
        raise Infeasible(f"no uniform ratio up to {max_ratio:.0%} meets the budget")
    lo, hi = 0.0, max_ratio
    if fits(0.0):
        hi = 0.0
    for _ in range(30):
        if hi - lo < 1e-4:
            break
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    ratios = {g: round(hi, 4) for g in groups}
    loss = sum(interpolate(curves[g], hi) for g in groups)
    return Allocation(ratios, oracle.latency_ms(ratios), oracle.params(ratios), loss)
