"""Pruning masks, the cubic schedule, masks surviving optimiser steps, and sensitivity."""

from __future__ import annotations

import json

import pytest
import torch

from hwcompress.compress.groups import group_sq_norms, model_groups
from hwcompress.compress.prune import (
    GradualPruner,
    apply_masks,
    cubic_sparsity,
    kept_units,
    layer_sizes,
    magnitude_masks,
    mask_hook,
    prune_schedule,
    ratios_from_sensitivity,
    select_units,
    sensitivity,
    structured_masks,
    weight_sparsity,
)
from hwcompress.errors import HwcError
from hwcompress.models.io import load_model


def _model(name: str = "tiny-crn"):
    torch.manual_seed(0)
    return load_model(name)


def _zero_fraction(model, masks) -> float:
    params = dict(model.named_parameters())
    return sum(int((params[k] == 0).sum()) for k in masks) / sum(m.numel() for m in masks.values())


def test_magnitude_masks_per_layer_and_global() -> None:
    model = _model()
    masks = magnitude_masks(model, 0.6)
    assert all(k.endswith("weight") or "weight_" in k for k in masks)  # biases are not pruned
    for k, m in masks.items():
        assert abs(1 - m.mean().item() - 0.6) < 0.02, k
    # the smallest weights go
    w = dict(model.named_parameters())["enc.2.conv.weight"].detach().abs()
    m = masks["enc.2.conv.weight"].bool()
    assert w[~m].max() <= w[m].min()
    only = magnitude_masks(model, {"rnn.0": 0.5})
    assert set(only) == {"rnn.layers.0.weight_ih_l0", "rnn.layers.0.weight_hh_l0"}
    glob = magnitude_masks(model, 0.5, scope="global")
    total = sum(m.numel() for m in glob.values())
    assert abs(sum(int((m == 0).sum()) for m in glob.values()) / total - 0.5) < 1e-3
    with pytest.raises(HwcError, match="unknown layer"):
        magnitude_masks(model, {"nope": 0.5})
    with pytest.raises(HwcError, match="between 0 and 1"):
        magnitude_masks(model, 1.5)


@pytest.mark.parametrize("name", ["tiny-crn", "tiny-gcrn", "tiny-lstm", "tiny-gru"])
def test_structured_masks_remove_weakest_groups(name: str) -> None:
    model = _model(name)
    norms = group_sq_norms(model)
    keep = select_units(model, 0.5)
    for g in model_groups(model):
        dropped = sorted(set(range(g.size)) - set(keep[g.name].tolist()))
        assert len(dropped) == round(0.5 * g.size)
        assert norms[g.name][dropped].max() <= norms[g.name][keep[g.name]].min()
    masks = structured_masks(model, 0.5)
    apply_masks(model, masks)
    alive = kept_units(model)  # read back from the weights
    assert {k: v.tolist() for k, v in alive.items()} == {k: v.tolist() for k, v in keep.items()}
    # a group can be pruned to one unit, never to none
    assert all(len(v) == 1 for v in select_units(model, 1.0).values())


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_pruned_weights_stay_zero_while_fine_tuning(kind: str) -> None:
    model = _model("tiny-gcrn")
    masks = magnitude_masks(model, 0.7) if kind == "unstructured" else structured_masks(model, 0.5)
    apply_masks(model, masks)
    hook = mask_hook(masks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(2, 6, 161, 2), torch.randn(2, 6, 161, 2)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    for _ in range(3):
        out, _ = model(x, model.initial_state(2))
        loss = (out - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook(model)
    params = dict(model.named_parameters())
    for k, m in masks.items():
        assert torch.all(params[k][m == 0] == 0), k
        assert not torch.equal(params[k][m == 1], before[k][m == 1]), k  # the rest did train


def test_train_loop_hooks(small_corpus, tmp_path) -> None:
    from hwcompress.compress.regularize import Regularizer
    from hwcompress.train import TrainConfig, train

    model = _model("tiny-lstm")
    masks = structured_masks(model, 0.5)
    apply_masks(model, masks)
    reg = Regularizer(l1=1e-5, group=1e-4)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch=2, seconds=0.5, valid_items=2)
    train(model, small_corpus, tmp_path, cfg, regularizer=reg, after_step=mask_hook(masks), log=lambda _: None)
    assert reg.step == 2
    params = dict(model.named_parameters())
    assert all(torch.all(params[k][m == 0] == 0) for k, m in masks.items())


def test_cubic_schedule() -> None:
    assert cubic_sparsity(0, 10, 0.8) == 0.0
    assert cubic_sparsity(10, 10, 0.8) == pytest.approx(0.8)
    assert cubic_sparsity(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(20, 10, 0.8) == pytest.approx(0.8)  # held after the end
    assert cubic_sparsity(0, 10, 0.8, initial=0.2) == pytest.approx(0.2)
    steps = prune_schedule(0.8, 4)
    assert steps == pytest.approx([0.8 * (1 - (1 - t / 4) ** 3) for t in range(1, 5)])
    assert steps[-1] == pytest.approx(0.8)
    increments = [b - a for a, b in zip([0.0, *steps], steps)]
    assert increments == sorted(increments, reverse=True)  # prunes fast first, slow last


def test_gradual_pruner_as_after_step_hook() -> None:
    model = _model("tiny-lstm")
    pruner = GradualPruner(0.6, total_steps=6, every=2)
    seen = []
    for _ in range(8):
        pruner(model)
        seen.append(weight_sparsity(model))
    assert seen[0] == 0.0
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(0.6, abs=0.01)
    structured = GradualPruner({"rnn.0": 0.5}, total_steps=4, every=1, structured=True)
    for _ in range(4):
        structured(model)
    assert len(kept_units(model)["rnn.0"]) == 8


def test_sensitivity_cache_and_ratios(tmp_path) -> None:
    model = _model("tiny-lstm")
    calls = []

    def score(m) -> float:
        # stands in for PESQ: rnn.1 matters 4x more than rnn.0
        calls.append(1)
        s = dict(m.named_parameters())
        return float(-(4 * (s["rnn.layers.1.weight_hh_l0"] == 0).float().mean()
                       + (s["rnn.layers.0.weight_hh_l0"] == 0).float().mean()))

    cache = tmp_path / "sens.json"
    sens = sensitivity(model, score, ratios=(0.25, 0.5, 0.75), cache=cache)
    assert len(calls) == 1 + 2 * 3
    assert sens["scores"]["rnn.1"][0.5] < sens["scores"]["rnn.0"][0.5] < sens["base"]
    # the model's weights were restored after each measurement
    assert weight_sparsity(model) == 0.0
    again = sensitivity(model, score, ratios=(0.25, 0.5, 0.75), cache=cache)
    assert len(calls) == 7 and again == sens
    assert json.loads(cache.read_text())["base"] == sens["base"]

    sizes = layer_sizes(model)
    ratios = ratios_from_sensitivity(sens, 0.4, sizes)
    assert ratios["rnn.0"] > ratios["rnn.1"]  # the sensitive layer is pruned less
    overall = sum(sizes[k] * r for k, r in ratios.items()) / sum(sizes[k] for k in ratios)
    assert overall == pytest.approx(0.4, abs=1e-3)
    with pytest.raises(HwcError, match="exceeds"):
        ratios_from_sensitivity(sens, 0.9, sizes)


def test_unstructured_sensitivity() -> None:
    model = _model("tiny-gru")
    sens = sensitivity(model, lambda m: -weight_sparsity(m), layers=["out"], ratios=(0.5,), structured=False)
    assert sens["scores"]["out"][0.5] < sens["base"]
    ratios = ratios_from_sensitivity(sens, 0.25, layer_sizes(model, structured=False))
    assert ratios["out"] == pytest.approx(0.25, abs=1e-3)
