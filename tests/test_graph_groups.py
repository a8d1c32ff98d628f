"""Structured groups discovered from the model's computation (hwcompress.compress.graph):
equal to the hand wiring the zoo used to have, and found for models written elsewhere
(residual skips, PReLU, causal Conv1d with explicit state, LayerNorm, GLU, BatchNorm,
GroupNorm, ConvTranspose1d, GRU), where structured pruning + shrinking then give a smaller
model with the masked model's output and smaller state."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hwcompress.compress.cluster import clusterable
from hwcompress.compress.graph import discover
from hwcompress.compress.groups import group_weight_counts, model_groups
from hwcompress.compress.prune import apply_masks, magnitude_masks, select_units, structured_masks, unit_masks
from hwcompress.compress.regularize import l1_penalty
from hwcompress.compress.shrink import shrink
from hwcompress.errors import HwcError
from hwcompress.models import zoo
from hwcompress.models.cost import count_params, layer_costs, named_layers, non_weight_params, total_macs
from hwcompress.models.io import load_model

# --- the hand wiring the zoo had before discovery (hwcompress.compress.groups.WIRING) ----


@dataclass(frozen=True)
class OldSlot:
    """Unit u covers offset + copy + u*stride + [0, stride) for each copy offset."""

    layer: str
    offset: int = 0
    stride: int = 1
    copies: tuple[int, ...] = (0,)

    def indices(self, units: list[int]) -> list[int]:
        return sorted(self.offset + c + u * self.stride + s
                      for c in self.copies for u in units for s in range(self.stride))


def old_rnn_groups(model):
    n = len(model.hidden)
    return [(f"rnn.{k}", OldSlot(f"rnn.{k}"), [OldSlot(f"rnn.{k + 1}" if k + 1 < n else "out")], h)
            for k, h in enumerate(model.hidden)]


def old_crn_groups(model):
    n, f_last = len(model.channels), model.freqs[-1]
    gated = isinstance(model, zoo.GCRN)
    decoders = {"dec": model.dec_channels}
    if gated:
        decoders["dec_imag"] = model.dec_imag_channels

    def produced(layer, units):
        return OldSlot(layer, copies=(0, units) if gated else (0,))

    groups = []
    for i, c in enumerate(model.channels):
        j = n - 1 - i
        consumers = [OldSlot(f"enc.{i + 1}") if i + 1 < n else OldSlot("rnn.0", stride=f_last)]
        for dec, widths in decoders.items():
            consumers.append(OldSlot(f"{dec}.{j}", offset=model.proj_channels if j == 0 else widths[j - 1]))
        groups.append((f"enc.{i}", produced(f"enc.{i}", c), consumers, c))
    for k, h in enumerate(model.hidden):
        nxt = OldSlot(f"rnn.{k + 1}") if k + 1 < len(model.hidden) else OldSlot("proj")
        groups.append((f"rnn.{k}", OldSlot(f"rnn.{k}"), [nxt], h))
    groups.append(("proj", OldSlot("proj", stride=f_last), [OldSlot(f"{d}.0") for d in decoders], model.proj_channels))
    for dec, widths in decoders.items():
        for j, c in enumerate(widths):
            groups.append((f"{dec}.{j}", produced(f"{dec}.{j}", c), [OldSlot(f"{dec}.{j + 1}")], c))
    return groups


def _per_unit(slot, size: int) -> dict[int, list[int]]:
    return {u: sorted(int(i) for i in slot.indices([u])) for u in range(size)}


WIRED = [("tiny-crn", None), ("tiny-gcrn", None), ("tiny-lstm", None), ("tiny-gru", None),
         ("crn", {}), ("gcrn", {}), ("rnn", {"cell": "gru", "hidden": [64, 48, 32]}),
         ("gcrn", {"channels": [4, 4, 8], "hidden": [16, 8], "cell": "gru", "kt": 3, "proj_channels": 5,
                   "dec_channels": [3, 2], "dec_imag_channels": [2, 1]})]


@pytest.mark.parametrize("name,config", WIRED, ids=lambda v: v if isinstance(v, str) else None)
def test_discovered_groups_equal_the_old_wiring(name: str, config: dict | None) -> None:
    if config is None:
        model = zoo.build_preset(name)
    else:  # default sizes: built on the meta device, nothing is allocated
        with torch.device("meta"):
            model = zoo.build(name, config)
    old = old_rnn_groups(model) if isinstance(model, zoo.RnnMasker) else old_crn_groups(model)
    found = discover(model)
    assert [(g.name, g.size) for g in found.groups] == [(n, size) for n, _p, _c, size in old]
    for g, (_name, producer, consumers, size) in zip(found.groups, old):
        assert [p.layer for p in g.producers] == [producer.layer]
        assert _per_unit(g.producer, size) == _per_unit(producer, size), g.name
        assert sorted(c.layer for c in g.consumers) == sorted(c.layer for c in consumers), g.name
        by_layer = {c.layer: c for c in g.consumers}
        for c in consumers:
            assert _per_unit(by_layer[c.layer], size) == _per_unit(c, size), (g.name, c.layer)
        assert g.attached == ()
    # the mask layers, and only they, are left out, with the reason
    last = len(model.channels) - 1 if isinstance(model, zoo.CRN) else None
    masks = {"rnn": ["out"], "crn": [f"dec.{last}"], "gcrn": [f"dec.{last}", f"dec_imag.{last}"]}[model.arch]
    assert [u.layer for u in found.ungrouped] == masks
    assert all("model output" in u.reason for u in found.ungrouped)


# --- a model from elsewhere, in the pipeline contract with explicit state ----------------


class SkipSE(nn.Module):
    """features -> Linear -> PReLU -> causal Conv1d (context state on time) -> LayerNorm ->
    two single-layer LSTMs, a residual Linear skip added to their output -> Linear -> mask."""

    arch = "test-skip"
    n_bins = 161

    def __init__(self, width: int = 12, channels: int = 10, hidden: int = 8, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.inp = nn.Linear(self.n_bins, width)
        self.act = nn.PReLU(width)
        self.conv = nn.Conv1d(width, channels, k)
        self.norm = nn.LayerNorm(channels)
        self.rnn = nn.ModuleList([nn.LSTM(channels, hidden, batch_first=True),
                                  nn.LSTM(hidden, hidden, batch_first=True)])
        self.skip = nn.Linear(channels, hidden)
        self.head = nn.Linear(hidden, self.n_bins)

    def state_shapes(self) -> list[tuple[int, ...]]:
        shapes = [(self.conv.in_channels, self.k - 1)]
        for lstm in self.rnn:
            shapes += [(1, lstm.hidden_size)] * 2
        return shapes

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        return [torch.zeros(batch, *s) for s in self.state_shapes()]

    def forward(self, spec: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = torch.log(spec.pow(2).sum(-1) + 1e-10)  # [B, T, F]
        x = self.act(self.inp(feats).transpose(1, 2))  # [B, W, T]
        full = torch.cat([state[0], x], dim=2)
        new_state = [full[:, :, full.shape[2] - (self.k - 1):]]
        y = self.norm(self.conv(full).transpose(1, 2))  # [B, T, C]
        h, i = y, 1
        for lstm in self.rnn:
            h, (hn, cn) = lstm(h, (state[i].transpose(0, 1).contiguous(), state[i + 1].transpose(0, 1).contiguous()))
            new_state += [hn.transpose(0, 1), cn.transpose(0, 1)]
            i += 2
        h = h + self.skip(y)
        mask = torch.sigmoid(self.head(h))
        return spec * mask.unsqueeze(-1), new_state


class MixedSE(nn.Module):
    """GLU-gated Conv1d -> BatchNorm1d -> ConvTranspose1d -> GroupNorm(3 groups) -> GRU -> mask."""

    arch = "test-mixed"
    n_bins = 161

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(self.n_bins, 2 * 8, 1)
        self.glu = nn.GLU(dim=1)
        self.bn = nn.BatchNorm1d(8)
        self.up = nn.ConvTranspose1d(8, 12, 1)
        self.gn = nn.GroupNorm(3, 12)
        self.gru = nn.GRU(12, 6, batch_first=True)
        self.head = nn.Linear(6, self.n_bins)
        with torch.no_grad():  # running statistics that do something
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            for p in (self.bn.weight, self.bn.bias, self.gn.weight, self.gn.bias):
                p.uniform_(0.5, 1.5)

    def state_shapes(self) -> list[tuple[int, ...]]:
        return [(1, self.gru.hidden_size)]

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        return [torch.zeros(batch, *s) for s in self.state_shapes()]

    def forward(self, spec: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = torch.log(spec.pow(2).sum(-1) + 1e-10).transpose(1, 2)  # [B, F, T]
        x = self.gn(self.up(self.bn(self.glu(self.conv(feats)))))
        h, hn = self.gru(torch.relu(x).transpose(1, 2), state[0].transpose(0, 1).contiguous())
        return spec * torch.sigmoid(self.head(h)).unsqueeze(-1), [hn.transpose(0, 1)]


def _spec(frames: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, frames, 161, 2, generator=torch.Generator().manual_seed(seed))


def _run(model: nn.Module, spec: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(spec, model.initial_state(spec.shape[0]))[0]


def _streamed(model: nn.Module, spec: torch.Tensor) -> torch.Tensor:
    state, outs = model.initial_state(spec.shape[0]), []
    with torch.no_grad():
        for t in range(spec.shape[1]):
            out, state = model(spec[:, t : t + 1], state)
            outs.append(out)
    return torch.cat(outs, 1)


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


def test_skip_model_groups() -> None:
    model = _seeded(SkipSE)
    found = discover(model)
    groups = {g.name: g for g in found.groups}
    assert list(groups) == ["inp", "rnn.0", "rnn.1"]
    inp, rnn0, rnn1 = groups["inp"], groups["rnn.0"], groups["rnn.1"]
    # the input projection's features: read by the conv (and carried in its context state),
    # the PReLU weight of each feature goes with it
    assert inp.size == 12 and [c.layer for c in inp.consumers] == ["conv"]
    assert inp.consumers[0].table == tuple(range(12)) and [a.layer for a in inp.attached] == ["act"]
    assert rnn0.size == 8 and [c.layer for c in rnn0.consumers] == ["rnn.1"]
    # the residual add couples the skip's outputs with the second LSTM's hidden units
    assert [p.layer for p in rnn1.producers] == ["rnn.1", "skip"] and rnn1.size == 8
    assert all(p.table == tuple(range(8)) for p in rnn1.producers)
    assert [c.layer for c in rnn1.consumers] == ["head"]
    reasons = {u.layer: u.reason for u in found.ungrouped}
    assert set(reasons) == {"conv", "head"}
    assert "model output" in reasons["head"]
    assert "LayerNorm norm normalises all its units together" in reasons["conv"]
    # a unit of rnn.1 is its LSTM rows, its recurrent column, the skip's row and the head's column
    counts = group_weight_counts(model)["rnn.1"]
    assert torch.all(counts == 4 * (8 + 8 + 2) + (4 * 8 - 4) + (10 + 1) + 161)


def test_skip_model_prunes_and_shrinks_to_the_masked_output() -> None:
    model = _seeded(SkipSE)
    masks = structured_masks(model, 0.5)
    params = dict(model.named_parameters())
    assert masks["skip.weight"].sum(1).eq(0).sum() == 4  # the skip loses the rows of rnn.1's removed units
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    small = shrink(model, masks=masks).eval()
    assert type(small) is SkipSE
    spec = _spec()
    assert (_run(masked, spec) - _run(model, spec)).abs().max() > 1e-4  # pruning did something
    torch.testing.assert_close(_run(small, spec), _run(masked, spec), atol=1e-5, rtol=0)
    torch.testing.assert_close(_streamed(small, spec), _run(small, spec), atol=1e-5, rtol=0)
    assert (small.inp.out_features, small.act.num_parameters, small.conv.in_channels) == (6, 6, 6)
    assert (small.rnn[0].hidden_size, small.rnn[1].input_size, small.rnn[1].hidden_size) == (4, 4, 4)
    assert (small.skip.out_features, small.head.in_features, small.conv.out_channels) == (4, 4, 10)
    assert model.state_shapes() == [(12, 2), (1, 8), (1, 8), (1, 8), (1, 8)]
    assert small.state_shapes() == [(6, 2), (1, 4), (1, 4), (1, 4), (1, 4)]
    _, state = small(spec[:, :1], small.initial_state(2))
    assert [tuple(s.shape[1:]) for s in state] == small.state_shapes()
    assert count_params(small) < 0.75 * count_params(model)
    assert total_macs(small) < total_macs(model)
    assert params["skip.weight"].shape == (8, 10)  # the original is untouched
    # shrinking again from the weights alone finds nothing more to remove
    assert count_params(shrink(small)) == count_params(small)


def test_mixed_layers_group_and_shrink() -> None:
    model = _seeded(MixedSE)
    found = discover(model)
    groups = {g.name: g for g in found.groups}
    assert [(n, g.size) for n, g in groups.items()] == [("conv", 8), ("up", 3), ("gru", 6)]
    # GLU: unit u is the value/gate pair of output channels u and u + 8; its BatchNorm channel follows
    assert groups["conv"].producer.indices([2]).tolist() == [2, 10]
    assert [a.layer for a in groups["conv"].attached] == ["bn"] and groups["conv"].consumers[0].layer == "up"
    # GroupNorm(3, 12) normalises 4 channels together: a unit is a whole norm group
    assert groups["up"].producer.indices([1]).tolist() == [4, 5, 6, 7]
    assert [a.layer for a in groups["up"].attached] == ["gn"]
    assert [u.layer for u in found.ungrouped] == ["head"]
    keep = {"conv": [0, 3, 5], "up": [0, 2], "gru": [1, 4]}
    masked = copy.deepcopy(model)
    apply_masks(masked, unit_masks(model, keep))
    small = shrink(model, keep=keep).eval()
    assert (small.conv.out_channels, small.bn.num_features, small.up.in_channels) == (6, 3, 3)
    assert (small.up.out_channels, small.gn.num_channels, small.gn.num_groups) == (8, 8, 2)
    assert (small.gru.input_size, small.gru.hidden_size, small.state_shapes()) == (8, 2, [(1, 2)])
    spec = _spec(frames=12)
    torch.testing.assert_close(_run(small, spec), _run(masked, spec), atol=1e-5, rtol=0)


class FixedWidth(nn.Module):
    """A width written into the forward: discovery cannot see it, shrinking finds it."""

    n_bins = 161

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(161, 8), nn.Linear(8, 161)

    def state_shapes(self) -> list[tuple[int, ...]]:
        return []

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        return []

    def forward(self, spec: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, t = spec.shape[:2]
        h = self.a(spec.pow(2).sum(-1)).reshape(b, t, 8)
        return spec * torch.sigmoid(self.b(h)).unsqueeze(-1), []


def test_shrink_checks_the_smaller_model_runs() -> None:
    model = _seeded(FixedWidth)
    assert [g.name for g in model_groups(model)] == ["a"]
    with pytest.raises(HwcError, match="the shrunk model does not run .*width fixed in its forward"):
        shrink(model, keep={"a": [0, 1, 2, 3]})


def test_prune_api_on_a_model_from_elsewhere() -> None:
    model = _seeded(SkipSE)
    keep = select_units(model, {"rnn.1": 0.25, "inp": 0.5})
    assert {k: len(v) for k, v in keep.items()} == {"inp": 6, "rnn.0": 8, "rnn.1": 6}
    assert [g.name for g in model_groups(model)] == ["inp", "rnn.0", "rnn.1"]


def test_layer_costs_of_conv1d_and_norms() -> None:
    model = _seeded(SkipSE)
    assert list(named_layers(model)) == ["inp", "conv", "rnn.0", "rnn.1", "skip", "head"]
    rows = {r["name"]: r for r in layer_costs(model)}
    # one streaming frame: the causal conv computes one output frame from k = 3 input frames
    assert rows["conv"]["macs_per_frame"] == 10 * 1 * 12 * 3
    assert rows["conv"]["params"] == 10 * 12 * 3 + 10
    assert rows["rnn.0"]["macs_per_frame"] == 4 * 8 * (10 + 8)
    # PReLU and LayerNorm parameters are not weights: counted apart, never pruned or clustered
    assert non_weight_params(model) == 12 + 2 * 10
    assert sum(r["params"] for r in rows.values()) + non_weight_params(model) == count_params(model)
    # ... and only the weight layers' weights are pruned, penalised and clustered (the conv's included)
    assert set(magnitude_masks(model, 0.5)) == set(clusterable(model)) == {
        "inp.weight", "conv.weight", "rnn.0.weight_ih_l0", "rnn.0.weight_hh_l0", "rnn.1.weight_ih_l0",
        "rnn.1.weight_hh_l0", "skip.weight", "head.weight"}
    assert l1_penalty(model).item() == pytest.approx(
        sum(dict(model.named_parameters())[n].abs().sum().item() for n in clusterable(model)), rel=1e-6)
    mixed = {r["name"]: r for r in layer_costs(_seeded(MixedSE))}
    assert mixed["up"]["kind"] == "ConvTranspose1d" and mixed["up"]["macs_per_frame"] == 8 * 1 * 12 * 1


# --- what cannot be followed is left out, with the reason -------------------------------


class Plain(nn.Module):
    """A plain core `core(x)` with what discovery must refuse, one case per layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(6, 8), nn.Linear(8, 5)  # a: a reshape mixing its units with input data
        self.f, self.g = nn.Linear(6, 8), nn.Linear(8, 5)  # f: concatenated with fixed data along time
        self.b, self.d, self.e = nn.Linear(6, 8), nn.Linear(8, 4), nn.Linear(4, 3)  # b: FFT; e: summed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = torch.cat([self.a(x), x, x[..., :2]], -1).reshape(b, 2 * t, 8)  # rows alternate a / input
        q = torch.cat([torch.cat([x, x[..., :2]], -1), self.f(x)], dim=1)
        s = self.e(torch.tanh(self.d(torch.fft.fft(self.b(x)).real))).sum(-1, keepdim=True)
        return self.c(h)[:, :t] + self.g(q)[:, t:] * s


def test_plain_core_with_example_inputs() -> None:
    torch.manual_seed(0)
    found = discover(Plain(), (torch.randn(1, 5, 6),))
    groups = {g.name: g for g in found.groups}
    reasons = {u.layer: u.reason for u in found.ungrouped}
    assert list(groups) == ["d"] and [c.layer for c in groups["d"].consumers] == ["e"]
    assert list(reasons) == ["a", "c", "f", "g", "b", "e"]
    assert "share tensor slices with other data" in reasons["a"]
    assert "model output" in reasons["c"] and "model output" in reasons["g"]
    assert "share tensor slices with other data" in reasons["f"]
    assert "fft" in reasons["b"] and "does not follow" in reasons["b"]
    assert "reduced or normalised together" in reasons["e"]
    with pytest.raises(HwcError, match="give example inputs"):
        discover(Plain())


class Buffers(nn.Module):
    """Units written into a buffer: fine in one shaped like them, not in one of fixed size."""

    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.fixed = fixed
        self.a, self.b, self.c = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ha, hb = self.a(x), self.b(x)
        buf = torch.zeros(*x.shape[:2], 8) if self.fixed else torch.zeros_like(torch.cat([ha, hb], -1))
        buf[..., :4] = ha
        buf[..., 4:] = hb
        return self.c(torch.relu(buf))


def test_units_written_into_buffers() -> None:
    x = (torch.randn(1, 3, 6),)
    shaped = discover(Buffers(fixed=False), x)
    assert [(g.name, [c.layer for c in g.consumers]) for g in shaped.groups] == [("a", ["c"]), ("b", ["c"])]
    assert shaped.groups[1].consumers[0].table == (-1, -1, -1, -1, 0, 1, 2, 3)
    fixed = discover(Buffers(fixed=True), x)
    assert fixed.groups == [] and "size does not follow its units" in fixed.ungrouped[0].reason


def test_discovery_leaves_the_model_and_rng_alone() -> None:
    model = load_model("tiny-crn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    discover(copy.deepcopy(model))
    assert torch.equal(torch.rand(3), expected)
    model_groups(model)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.skipif(importlib.util.find_spec("hwcompress.models.wrap") is None,
                    reason="hwcompress/models/wrap.py (FrontEndModel) is not there yet")
def test_discovery_runs_on_a_front_end_model() -> None:
    from hwcompress.models.frontend import FrontEnd
    from hwcompress.models.wrap import FrontEndModel

    class Core(nn.Module):  # whole-sequence core: causal conv by padding + chomp, GRU, mask
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(161, 16)
            self.conv = nn.Conv1d(16, 12, 3, padding=2)
            self.gru = nn.GRU(12, 10, batch_first=True)
            self.out = nn.Linear(10, 161)

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            x = self.conv(torch.relu(self.lin(feats)).transpose(1, 2))[:, :, :-2]
            h, _ = self.gru(x.transpose(1, 2))
            return torch.sigmoid(self.out(h))

    torch.manual_seed(0)
    model = FrontEndModel(Core(), FrontEnd(), source="test_graph_groups.py:Core", kwargs={})
    found = discover(model)
    assert [(g.name, g.size, [c.layer for c in g.consumers]) for g in found.groups] == [
        ("core.lin", 16, ["core.conv"]), ("core.conv", 12, ["core.gru"]), ("core.gru", 10, ["core.out"])]
    assert [u.layer for u in found.ungrouped] == ["core.out"]
    masks = structured_masks(model, 0.5)
    assert masks["core.gru.weight_hh_l0"].sum(0).eq(0).sum() == 5  # five recurrent columns go
