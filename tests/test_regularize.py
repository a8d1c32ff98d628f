"""Sparse regularisation: penalty values, schedules, and group lasso collapsing whole units."""

from __future__ import annotations

import pytest
import torch

from hwcompress.compress.groups import group_sq_norms, model_groups
from hwcompress.compress.prune import apply_masks, unit_masks
from hwcompress.compress.regularize import Regularizer, group_lasso_penalty, l1_penalty, sparse_group_lasso
from hwcompress.errors import HwcError
from hwcompress.models.io import load_model


def _model(name: str):
    torch.manual_seed(0)
    return load_model(name)


def test_penalty_values_by_hand() -> None:
    model = _model("tiny-gru")
    gru, out = model.rnn.layers[0], model.out
    assert l1_penalty(model, 0.5).item() == pytest.approx(
        0.5 * sum(p.abs().sum().item() for p in (gru.weight_ih_l0, gru.weight_hh_l0, out.weight)), rel=1e-5)
    h, expected = 16, 0.0
    for u in range(h):
        rows = [u + g * h for g in range(3)]
        # rows in every gate, biases, own recurrent column (minus entries already in the rows), consumer column
        parts = [gru.weight_ih_l0[rows], gru.weight_hh_l0[rows], gru.bias_ih_l0[rows], gru.bias_hh_l0[rows],
                 _column_without_rows(gru.weight_hh_l0, u, rows), out.weight[:, u]]
        flat = torch.cat([p.reshape(-1) for p in parts])
        expected += flat.numel() ** 0.5 * flat.norm().item()
    assert group_lasso_penalty(model, 2.0).item() == pytest.approx(2 * expected, rel=1e-5)
    both = sparse_group_lasso(model, 0.5, 2.0).item()
    assert both == pytest.approx(l1_penalty(model, 0.5).item() + group_lasso_penalty(model, 2.0).item(), rel=1e-6)


def _column_without_rows(w: torch.Tensor, u: int, rows: list[int]) -> torch.Tensor:
    keep = [r for r in range(w.shape[0]) if r not in rows]
    return w[keep, u]


def test_penalty_gradient_is_finite_for_dead_units() -> None:
    model = _model("tiny-crn")
    keep = {g.name: list(range(g.size // 2)) for g in model_groups(model)}
    apply_masks(model, unit_masks(model, keep))
    group_lasso_penalty(model).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_regularizer_schedules() -> None:
    model = _model("tiny-lstm")
    full = sparse_group_lasso(model, 1e-3, 1e-2).item()
    ramp = Regularizer(l1=1e-3, group=1e-2, schedule="linear", warmup_steps=4)
    values = [ramp(model).item() for _ in range(6)]
    assert values == pytest.approx([full * f for f in (0.25, 0.5, 0.75, 1, 1, 1)], rel=1e-5)
    const = Regularizer(l1=1e-3)
    assert const(model).item() == pytest.approx(l1_penalty(model, 1e-3).item(), rel=1e-6)
    custom = Regularizer(group=1.0, schedule=lambda step: 0.0 if step < 1 else 2.0)
    assert custom(model).item() == 0.0
    assert custom(model).item() == pytest.approx(2 * group_lasso_penalty(model).item(), rel=1e-5)
    with pytest.raises(HwcError, match="schedule"):
        Regularizer(l1=1.0, schedule="cosine")
    with pytest.raises(HwcError, match="warmup_steps"):
        Regularizer(l1=1.0, schedule="linear")


def _weak_unit_survival(name: str, penalty, steps: int = 30, lam: float = 0.02) -> dict[str, tuple[float, float]]:
    """Weaken a quarter of every group's units to 20 %, then take SGD steps on a random
    regression plus the penalty; return (weak, strong) norm survival per group."""
    model = _model(name)
    weak = {g.name: torch.arange(g.size // 4) for g in model_groups(model)}
    strong = {g.name: torch.arange(g.size // 4, g.size) for g in model_groups(model)}
    apply_masks(model, {k: 0.2 + 0.8 * m for k, m in unit_masks(model, strong).items()})
    with torch.no_grad():
        before = {k: v.sqrt() for k, v in group_sq_norms(model).items()}
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 10, 161, 2, generator=gen), 0.1 * torch.randn(2, 10, 161, 2, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        out, _ = model(x, model.initial_state(2))
        loss = (out - y).pow(2).mean() + penalty(model, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = {k: v.sqrt() for k, v in group_sq_norms(model).items()}
    return {k: (float(after[k][weak[k]].sum() / before[k][weak[k]].sum()),
                float(after[k][strong[k]].sum() / before[k][strong[k]].sum())) for k in before}


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-crn"])
def test_group_lasso_collapses_weak_units_faster_than_l1(name: str) -> None:
    # Same strength = same total penalty-gradient norm (sqrt(#weights) * lam for both).
    # L1 moves every weight by the same step, so a unit only dies once its largest weight
    # is gone; group lasso shrinks the unit's weights together and kills it much sooner.
    lasso = _weak_unit_survival(name, group_lasso_penalty)
    l1 = _weak_unit_survival(name, l1_penalty)
    weak_lasso = sum(v[0] for v in lasso.values()) / len(lasso)
    weak_l1 = sum(v[0] for v in l1.values()) / len(l1)
    assert weak_lasso < 0.1 and weak_lasso < 0.5 * weak_l1
    if name == "tiny-lstm":  # recurrent groups: clear per group, and selective
        for k in lasso:
            assert lasso[k][0] < 0.5 * l1[k][0]
            assert lasso[k][0] / lasso[k][1] < 0.5 * l1[k][0] / l1[k][1]
