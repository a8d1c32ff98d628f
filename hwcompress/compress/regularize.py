"""Sparse regularisation added to the training loss (Tan & Wang 2021, sec. III-A).

L1 drives individual weights to zero (unstructured sparsity, helps only with sparse
kernels); group lasso drives whole units to zero: the penalty sum_g sqrt(p_g) * ||w_g||
is not differentiable at w_g = 0 for the group as a whole, so a group either keeps all
its weights or loses them together. Groups are the structured groups of
hwcompress.compress.groups (producer rows and consumer columns together), which are
exactly what shrinking removes. Sparse group lasso adds both.

Use with hwcompress.train.train(..., regularizer=Regularizer(l1=..., group=...)).
"""

from __future__ import annotations

import json
from typing import Callable

import torch

from hwcompress.compress.groups import Group, group_sq_norms, group_weight_counts, model_groups
from hwcompress.errors import HwcError
from hwcompress.models.cost import named_layers
from hwcompress.models.zoo import SEModel

# keeps the gradient of sqrt finite at an exactly-zero group (it is then 0, not NaN)
_EPS = 1e-12


def l1_penalty(model: SEModel, weight: float = 1.0) -> torch.Tensor:
    """weight * sum |w| over all weight matrices/kernels (biases are not penalised)."""
    total = sum(p.abs().sum() for layer in named_layers(model).values()
                for p in layer.parameters(recurse=False) if p.dim() >= 2)
    return weight * total


def group_lasso_penalty(model: SEModel, weight: float = 1.0, groups: list[Group] | None = None,
                        counts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """weight * sum over units of sqrt(p) * ||w||_2, where w are all the unit's weights
    (producer rows in every gate, bias, consumer columns) and p their number, so large
    units are not favoured. `groups`/`counts` may be passed precomputed (they depend only
    on the architecture)."""
    groups = groups if groups is not None else model_groups(model)
    counts = counts if counts is not None else group_weight_counts(model, groups)
    norms = group_sq_norms(model, groups)
    total = sum((counts[name].to(sq.dtype).sqrt() * (sq + _EPS).sqrt()).sum() for name, sq in norms.items())
    return weight * total


def sparse_group_lasso(model: SEModel, l1: float, group: float) -> torch.Tensor:
    """L1 plus group lasso (the paper's sparse group lasso)."""
    return l1_penalty(model, l1) + group_lasso_penalty(model, group)


SCHEDULES = ("constant", "linear")


class Regularizer:
    """Callable model -> penalty for the training loop, with a weight schedule.

    l1, group: strengths of the L1 and group-lasso terms. schedule: "constant", "linear"
    (ramps 0 -> 1 over `warmup_steps` calls, so the network first learns before being
    sparsified), or a callable step -> factor. Each call is one training step. The step
    counter is not checkpointed: a resumed run restarts the warm-up.
    """

    def __init__(self, l1: float = 0.0, group: float = 0.0, schedule: str | Callable[[int], float] = "constant",
                 warmup_steps: int = 0) -> None:
        if l1 < 0 or group < 0:
            raise HwcError("regularisation strengths must be >= 0")
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise HwcError(f"unknown regularisation schedule {schedule!r} (use {', '.join(SCHEDULES)})")
        if schedule == "linear" and warmup_steps <= 0:
            raise HwcError("a linear warm-up needs warmup_steps > 0")
        self.l1, self.group, self.schedule, self.warmup = l1, group, schedule, warmup_steps
        self.step = 0
        self._cache: tuple[str, list[Group], dict[str, torch.Tensor]] | None = None

    def factor(self, step: int) -> float:
        if callable(self.schedule):
            return float(self.schedule(step))
        if self.schedule == "linear":
            return min(1.0, (step + 1) / self.warmup)
        return 1.0

    def _groups(self, model: SEModel) -> tuple[list[Group], dict[str, torch.Tensor]]:
        # counting weights per unit walks all parameters: do it once per architecture
        # (the parameter names and shapes: any model, zoo config or not)
        key = json.dumps([[n, list(p.shape)] for n, p in model.named_parameters()])
        if self._cache is None or self._cache[0] != key:
            groups = model_groups(model)
            self._cache = (key, groups, group_weight_counts(model, groups))
        return self._cache[1], self._cache[2]

    def __call__(self, model: SEModel) -> torch.Tensor:
        f = self.factor(self.step)
        self.step += 1
        penalty = torch.zeros((), device=next(model.parameters()).device)  # where the model trains
        if self.l1 and f:
            penalty = penalty + l1_penalty(model, self.l1 * f)
        if self.group and f:
            groups, counts = self._groups(model)
            penalty = penalty + group_lasso_penalty(model, self.group * f, groups, counts)
        return penalty
