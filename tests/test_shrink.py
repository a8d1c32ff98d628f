"""Structured groups, physical shrinking and per-layer cost: a shrunk model computes what
the masked model computes, whole-utterance and streaming, with fewer parameters and MACs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hwcompress.compress.groups import group_weight_counts, model_groups
from hwcompress.compress.prune import apply_masks, select_units, structured_masks, unit_masks
from hwcompress.compress.shrink import shrink
from hwcompress.enhance import enhance, enhance_streaming
from hwcompress.errors import HwcError
from hwcompress.models.cost import count_params, layer_costs, total_macs
from hwcompress.models.io import load_model, save_model

TINY = ["tiny-crn", "tiny-gcrn", "tiny-lstm", "tiny-gru"]
AUDIO = np.random.default_rng(1).standard_normal(6000).astype(np.float32) * 0.1


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_model(name).eval()


def _masked(model, masks):
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    return masked


def _same_output(a, b) -> None:
    whole = enhance(a, AUDIO)
    np.testing.assert_allclose(enhance(b, AUDIO), whole, atol=1e-5)
    np.testing.assert_allclose(enhance_streaming(b, AUDIO), whole, atol=1e-5)


def test_group_names_and_sizes() -> None:
    crn = {g.name: g.size for g in model_groups(_model("tiny-crn"))}
    assert crn == {"enc.0": 4, "enc.1": 4, "enc.2": 8, "enc.3": 8, "enc.4": 8, "rnn.0": 16, "proj": 8,
                   "dec.0": 8, "dec.1": 8, "dec.2": 4, "dec.3": 4}
    gcrn = [g.name for g in model_groups(_model("tiny-gcrn"))]
    assert "dec_imag.3" in gcrn and "dec.4" not in gcrn  # the mask layer is never a group
    assert [g.name for g in model_groups(_model("tiny-lstm"))] == ["rnn.0", "rnn.1"]


def test_gru_unit_weights_are_rows_column_and_consumer_column() -> None:
    model = _model("tiny-gru")
    counts = group_weight_counts(model)["rnn.0"]
    h, n_in = 16, 161
    # 3 gates x (input row + recurrent row + 2 biases) + own recurrent column (3 gate
    # entries already counted in the rows) + the output layer's input column
    assert torch.all(counts == 3 * (n_in + h + 2) + (3 * h - 3) + 161)


@pytest.mark.parametrize("name", TINY)
def test_half_pruned_then_shrunk_equals_masked(name: str) -> None:
    model = _model(name)
    masks = structured_masks(model, 0.5)
    masked = _masked(model, masks)
    small = shrink(model, masks=masks).eval()
    assert type(small) is type(model)
    assert np.abs(enhance(masked, AUDIO) - enhance(model, AUDIO)).max() > 1e-5  # pruning did something
    _same_output(masked, small)
    assert count_params(small) < 0.6 * count_params(model)
    assert total_macs(small) < 0.6 * total_macs(model)
    for g_small, g in zip(model_groups(small), model_groups(model)):
        assert g_small.size == g.size - round(0.5 * g.size)
    # streaming state follows the new widths
    assert small.state_shapes() != model.state_shapes()
    frame, state = small(torch.randn(1, 1, 161, 2), small.initial_state(1))
    assert [tuple(s.shape[1:]) for s in state] == small.state_shapes()


@pytest.mark.parametrize("name", TINY)
def test_uneven_keep_round_trips_through_save_load(tmp_path, name: str) -> None:
    model = _model(name)
    gen = torch.Generator().manual_seed(3)
    # random, different widths per group: the proj and decoder widths no longer mirror the encoder
    keep = {g.name: torch.sort(torch.randperm(g.size, generator=gen)[: int(torch.randint(1, g.size, (1,), generator=gen))]).values
            for g in model_groups(model)}
    small = shrink(model, keep=keep).eval()
    _same_output(_masked(model, unit_masks(model, keep)), small)
    save_model(tmp_path / "small.pt", small)
    again = load_model(str(tmp_path / "small.pt"))
    assert again.config == small.config
    for (k, a), (_, b) in zip(small.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    np.testing.assert_allclose(enhance_streaming(again, AUDIO), enhance(small, AUDIO), atol=1e-5)


def test_shrunk_config_keys_only_when_needed() -> None:
    model = _model("tiny-gcrn")
    assert set(model.config) == {"channels", "hidden", "cell", "kt", "n_bins"}
    keep = {"proj": [0, 1, 2], "dec.1": [5], "dec_imag.0": [0, 7]}
    small = shrink(model, keep=keep)
    assert small.config["proj_channels"] == 3
    assert small.config["dec_channels"] == [8, 1, 4, 4]
    assert small.config["dec_imag_channels"] == [2, 8, 4, 4]
    assert small.config["channels"] == model.config["channels"]


@pytest.mark.parametrize("name", ["tiny-crn", "tiny-lstm"])
def test_shrink_reads_dead_units_from_weights(name: str) -> None:
    model = _model(name)
    keep = select_units(model, 0.5)
    masked = _masked(model, unit_masks(model, keep))
    small = shrink(masked)  # no masks: units whose producer weights are all zero go
    assert [g.size for g in model_groups(small)] == [len(k) for k in keep.values()]
    _same_output(masked, small)


def test_shrink_rejects_bad_keep() -> None:
    model = _model("tiny-lstm")
    with pytest.raises(HwcError, match="unknown group"):
        shrink(model, keep={"rnn.7": [0]})
    with pytest.raises(HwcError, match="at least one unit"):
        shrink(model, keep={"rnn.0": []})
    with pytest.raises(HwcError, match="distinct indices"):
        shrink(model, keep={"rnn.0": [0, 0, 99]})


def test_layer_costs_are_analytic() -> None:
    model = _model("tiny-crn")
    rows = {r["name"]: r for r in layer_costs(model)}
    assert rows["enc.0"]["macs_per_frame"] == 4 * 80 * 1 * 2 * 3  # out_ch * out_f * in_ch * kt * kf
    assert rows["enc.0"]["in_shape"] == (1, 161) and rows["enc.0"]["out_shape"] == (4, 80)
    f_last = model.freqs[-1]
    assert rows["rnn.0"]["macs_per_frame"] == 4 * 16 * (8 * f_last + 16)
    assert rows["proj"]["macs_per_frame"] == 16 * 8 * f_last
    assert rows["dec.0"]["macs_per_frame"] == 16 * f_last * 8 * 2 * 3  # per input position
    assert rows["dec.4"]["out_shape"] == (1, 161)
    assert sum(r["params"] for r in rows.values()) == count_params(model)
    assert total_macs(model) == sum(r["macs_per_frame"] for r in rows.values())
    gru = {r["name"]: r for r in layer_costs(_model("tiny-gru"))}
    assert gru["rnn.0"]["macs_per_frame"] == 3 * 16 * (161 + 16) and gru["out"]["macs_per_frame"] == 16 * 161
