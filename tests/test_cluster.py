"""Clustering-based quantisation: 1-D k-means quality, exact DP, tensors, models, tuning."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from torch import nn

from hwcompress.compress import cluster
from hwcompress.compress.cluster import (
    PRUNED,
    CentroidTuner,
    Clustered,
    apply_clustering,
    cluster_model,
    cluster_tensor,
    kmeans_1d,
    optimal_1d,
    quantization_error,
)
from hwcompress.errors import HwcError
from hwcompress.models.io import load_model

TINY = ["tiny-crn", "tiny-gcrn", "tiny-lstm", "tiny-gru"]


def fake_prune(model: nn.Module, frac: float = 0.5, seed: int = 1) -> nn.Module:
    """Zero a random `frac` of every weight matrix/kernel, as pruning would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.view(-1)[torch.randperm(p.numel(), generator=g)[: int(p.numel() * frac)]] = 0
    return model


def samples(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "laplace":
        return rng.laplace(size=n)
    return rng.standard_normal(n) if kind == "normal" else rng.random(n)


def brute_force_sse(x: np.ndarray, k: int) -> float:
    """Minimum SSE over every assignment of the points to k labels (no 1-D shortcut)."""
    best = np.inf
    for labels in itertools.product(range(k), repeat=x.size):
        lab = np.array(labels)
        best = min(best, sum(float(((x[lab == j] - x[lab == j].mean()) ** 2).sum()) for j in set(labels)))
    return best


@pytest.mark.parametrize("kind", ["normal", "laplace", "uniform"])
@pytest.mark.parametrize("k", [2, 4, 16, 64])
def test_kmeans_not_worse_than_uniform_quantisation(kind: str, k: int) -> None:
    x = samples(kind, 5000)
    uniform = np.linspace(x.min(), x.max(), k)
    err = quantization_error(x, kmeans_1d(x, k, init="linear"))
    assert err <= quantization_error(x, uniform) * (1 + 1e-12)
    # and clearly better for peaked distributions
    if kind != "uniform" and k >= 4:
        assert err < 0.9 * quantization_error(x, uniform)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_inits_give_sorted_centroids(init: str) -> None:
    x = samples("laplace", 3000)
    c = kmeans_1d(x, 8, init=init, seed=3)
    assert c.shape == (8,) and np.all(np.diff(c) >= 0)
    assert c.min() >= x.min() and c.max() <= x.max()
    assert quantization_error(x, c) < quantization_error(x, [x.mean()])


@pytest.mark.parametrize("k", [2, 3])
def test_optimal_matches_brute_force(k: int) -> None:
    x = samples("normal", 8, seed=5)
    assert quantization_error(x, optimal_1d(x, k)) == pytest.approx(brute_force_sse(x, k), rel=1e-9)


@pytest.mark.parametrize("kind", ["normal", "laplace", "uniform"])
@pytest.mark.parametrize("k", [2, 5, 16, 40])
def test_optimal_never_worse_than_kmeans(kind: str, k: int) -> None:
    x = samples(kind, 600, seed=k)
    opt = quantization_error(x, optimal_1d(x, k))
    for init in ("linear", "density", "random"):
        assert opt <= quantization_error(x, kmeans_1d(x, k, init=init)) * (1 + 1e-9) + 1e-12


def test_optimal_with_histogram_weights() -> None:
    # repeated values via weights must equal clustering the expanded data
    xs, counts = np.array([-1.0, -0.2, 0.1, 0.3, 2.0]), np.array([3, 1, 4, 1, 5])
    expanded = np.repeat(xs, counts)
    assert np.allclose(optimal_1d(xs, 2, weights=counts), optimal_1d(expanded, 2))


@pytest.mark.parametrize("bad", [1, 0, 257, -3, True, 2.5])
def test_k_bounds(bad) -> None:
    w = torch.randn(8, 8)
    with pytest.raises(HwcError, match="codebook size K must be between 2 and 256"):
        cluster_tensor(w, bad)
    with pytest.raises(HwcError, match="codebook size K must be between 2 and 256"):
        kmeans_1d(w.numpy(), bad)
    with pytest.raises(HwcError, match="codebook size K must be between 2 and 256"):
        cluster_model(load_model("tiny-gru"), {"*": bad})


def test_bad_init_and_method() -> None:
    with pytest.raises(HwcError, match="unknown clustering init"):
        cluster_tensor(torch.randn(8, 8), 4, init="kmeans++")
    with pytest.raises(HwcError, match="unknown clustering method"):
        cluster_tensor(torch.randn(8, 8), 4, method="fast")


@pytest.mark.parametrize("method", ["kmeans", "optimal", "auto"])
@pytest.mark.parametrize("k", [2, 16, 256])
def test_cluster_tensor_keeps_zeros_and_shares_values(method: str, k: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(40, 30)
    w[torch.rand_like(w) < 0.5] = 0
    c = cluster_tensor(w, k, method=method)
    dense = c.dense()
    assert dense.shape == w.shape and dense.dtype == torch.float32
    assert torch.equal(c.indices == PRUNED, w == 0)  # pruned exactly where zero
    assert torch.all(dense[w == 0] == 0)
    assert torch.all(dense[w != 0] != 0)
    nz = dense[dense != 0]
    assert nz.unique().numel() <= k and c.k <= k
    assert torch.equal(c.codebook, c.codebook.unique())  # canonical: ascending, distinct
    # every weight went to its nearest centroid
    dist = (w[w != 0].unsqueeze(1) - c.codebook.unsqueeze(0)).abs()
    assert torch.allclose(dist.min(1).values, (w[w != 0] - nz).abs())


def test_few_distinct_values_are_exact_and_reclustering_is_idempotent() -> None:
    w = torch.tensor([[0.0, 0.5, -0.25], [0.5, 0.0, 1.5], [3.0, -0.25, 0.0]])
    c = cluster_tensor(w, 8)
    assert torch.equal(c.dense(), w) and c.k == 4
    torch.manual_seed(1)
    big = torch.randn(64, 64)
    first = cluster_tensor(big, 16, method="kmeans")
    again = cluster_tensor(first.dense(), 16, method="kmeans")
    assert torch.equal(first.codebook, again.codebook) and torch.equal(first.indices, again.indices)


def test_all_zero_layer() -> None:
    c = cluster_tensor(torch.zeros(4, 5), 4)
    assert c.k == 0 and c.nnz == 0 and torch.equal(c.dense(), torch.zeros(4, 5))


def test_auto_picks_optimal_only_for_small_layers(monkeypatch) -> None:
    torch.manual_seed(2)
    w = torch.randn(30, 20)
    assert torch.equal(cluster_tensor(w, 8, method="auto").codebook, cluster_tensor(w, 8, method="optimal").codebook)
    monkeypatch.setattr(cluster, "AUTO_OPTIMAL_MAX_UNIQUE", 100)
    assert torch.equal(cluster_tensor(w, 8, method="auto").codebook, cluster_tensor(w, 8, method="kmeans").codebook)


def test_million_weight_layer_is_fast() -> None:
    torch.manual_seed(0)
    w = torch.randn(1024, 1024)
    w[torch.rand_like(w) < 0.3] = 0
    start = time.perf_counter()
    c = cluster_tensor(w, 256, method="auto")  # > 4096 distinct values: kmeans
    elapsed = time.perf_counter() - start
    assert c.nnz == int((w != 0).sum())
    assert elapsed < 10, f"clustering 1M weights took {elapsed:.1f}s"  # ~0.3 s unloaded


@pytest.mark.parametrize("name", TINY)
def test_cluster_model_only_weight_matrices(name: str) -> None:
    torch.manual_seed(0)
    model = fake_prune(load_model(name))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clustered = cluster_model(model, {"*": 8})
    weights = [n for n, p in model.named_parameters() if p.dim() >= 2]
    assert list(clustered) == weights
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # not modified
    apply_clustering(model, clustered)
    for key, value in model.state_dict().items():
        if key in clustered:
            assert torch.equal(value, clustered[key].dense())
            assert value[value != 0].unique().numel() <= 8
            assert torch.equal(value == 0, before[key] == 0)
        else:  # biases and buffers stay fp32, untouched
            assert torch.equal(value, before[key])


def test_cluster_model_per_layer_ks_and_errors() -> None:
    model = load_model("tiny-lstm")
    clustered = cluster_model(model, {"rnn.layers.0.weight_ih_l0": 4, "out.weight": 32})
    assert set(clustered) == {"rnn.layers.0.weight_ih_l0", "out.weight"}
    assert clustered["rnn.layers.0.weight_ih_l0"].k <= 4 and clustered["out.weight"].k <= 32
    mixed = cluster_model(model, {"*": 16, "out.weight": 2})
    assert len(mixed) == 5 and mixed["out.weight"].k <= 2
    with pytest.raises(HwcError, match="rnn.nope.weight"):
        cluster_model(model, {"rnn.nope.weight": 4, "*": 8})
    with pytest.raises(HwcError, match="out.bias"):
        cluster_model(model, {"out.bias": 4})
    with pytest.raises(HwcError, match="shape"):
        apply_clustering(model, {"out.weight": cluster_tensor(torch.randn(3, 3), 4)})


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def distinct_nonzero(t: torch.Tensor) -> int:
    return t[t != 0].unique().numel()


def test_centroid_tuning_reduces_loss_and_keeps_sharing() -> None:
    torch.manual_seed(0)
    teacher, student = Toy(), fake_prune(Toy())
    x = torch.randn(256, 12)
    y = teacher(x).detach()
    clustered = cluster_model(student, {"*": 4})
    zero_masks = {n: c.indices == PRUNED for n, c in clustered.items()}
    tuner = CentroidTuner(student, clustered)
    params = dict(student.named_parameters())
    opt = torch.optim.Adam(tuner.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(student(x), y)
        loss.backward()
        losses.append(loss.item())
        tuner.step(opt)
        for name, mask in zero_masks.items():
            assert torch.all(params[name][mask] == 0)
            assert distinct_nonzero(params[name]) <= 4
    assert losses[-1] < 0.8 * losses[0]
    tuned = tuner.clustered()
    for name, c in tuned.items():
        assert torch.equal(c.dense(), params[name].detach())
        assert c.k <= 4


def test_centroid_gradient_is_sum_of_shared_weight_gradients() -> None:
    torch.manual_seed(1)
    model = fake_prune(Toy())
    clustered = cluster_model(model, {"net.0.weight": 3})
    tuner = CentroidTuner(model, clustered)
    model(torch.randn(16, 12)).pow(2).sum().backward()
    weight = model.net[0].weight
    grad = weight.grad.clone()
    tuner.step_hook()
    idx = clustered["net.0.weight"].indices
    expected = torch.stack([grad[idx == j].sum() for j in range(clustered["net.0.weight"].k)])
    assert torch.allclose(tuner.codebooks["net.0.weight"].grad, expected, atol=1e-6)
    assert weight.grad is None  # a model-wide optimizer will not move the shared weights
    assert model.net[0].bias.grad is not None  # other parameters keep training normally


def test_centroid_tuning_on_recurrent_model() -> None:
    torch.manual_seed(0)
    model = fake_prune(load_model("tiny-gru"))
    clustered = cluster_model(model, {"*": 8})
    tuner = CentroidTuner(model, clustered)
    spec = torch.randn(2, 20, 161, 2)
    target = spec * 0.5
    opt = torch.optim.Adam(tuner.parameters(), lr=0.01)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        out, _ = model(spec, model.initial_state(2))
        loss = nn.functional.mse_loss(out, target)
        loss.backward()
        losses.append(loss.item())
        tuner.step(opt)
    assert losses[-1] < losses[0]
    for name, c in tuner.clustered().items():
        p = dict(model.named_parameters())[name]
        assert distinct_nonzero(p) <= 8 and torch.equal(p == 0, clustered[name].indices == PRUNED)


def test_clustered_dense_uses_exact_codebook_values() -> None:
    c = Clustered(torch.tensor([-0.5, 0.25]), torch.tensor([[0, -1], [1, 1]], dtype=torch.int16), (2, 2))
    assert torch.equal(c.dense(), torch.tensor([[-0.5, 0.0], [0.25, 0.25]]))
    assert c.k == 2 and c.nnz == 3


# ------------------------------------------------------------------ runtime integer grids


@pytest.mark.parametrize("bits, k", [(4, 16), (4, 6), (8, 256), (8, 40)])
def test_snap_to_grid_puts_every_centroid_on_one_step_and_keeps_pruning(bits: int, k: int) -> None:
    from hwcompress.compress.cluster import GRID_Q, grid_step, snap_to_grid

    torch.manual_seed(0)
    w = torch.randn(48, 70) * 0.1
    w[w.abs() < 0.02] = 0
    free = cluster_tensor(w, k)
    snapped = snap_to_grid(free, bits)
    qmin, qmax = GRID_Q[bits]
    assert grid_step(free.codebook, bits) is None  # k-means centroids lie on no grid...
    d = grid_step(snapped.codebook, bits)  # ...the snapped ones on one step's
    assert d is not None and d > 0
    q = snapped.codebook.numpy().astype(np.float64) / d
    assert np.abs(q - np.rint(q)).max() < 1e-5 and q.min() >= qmin - 1e-5 and q.max() <= qmax + 1e-5
    assert 0 not in np.rint(q)
    # exactly what a runtime computes from (q, step) in float32
    assert np.array_equal(np.rint(q).astype(np.float32) * np.float32(d), snapped.codebook.numpy())
    assert snapped.k <= min(k, qmax - qmin)
    assert torch.equal(snapped.indices < 0, free.indices < 0)  # kept weights stay kept, pruned stay 0
    # the step is fitted (least squares over the weights each centroid holds): no worse than the
    # absmax step a runtime would take, rounding the same centroids
    absmax = float(free.codebook.abs().max()) / max(-qmin, qmax)
    naive = torch.clamp(torch.round(free.dense() / absmax), qmin, qmax) * absmax
    assert float(((snapped.dense() - w) ** 2).sum()) <= float(((naive - w) ** 2).sum())
    assert snap_to_grid(snapped, bits) is snapped  # already on the grid: unchanged


def test_grid_step_rejects_off_grid_and_out_of_range_values() -> None:
    from hwcompress.compress.cluster import grid_step

    d = np.float32(0.01)
    on = np.array([-7, -3, 0, 1, 7], dtype=np.float32) * d
    assert grid_step(on, 4) == pytest.approx(float(d)) and grid_step(on, 8) is not None
    assert grid_step(np.array([-8, 1, 7], dtype=np.float32) * d, 4) is None  # -8 is off the 4-bit range
    assert grid_step(np.array([0.3, 1.0, 1.5, 2.0], dtype=np.float32), 8) is not None  # steps of 0.1 (or 0.05)
    assert grid_step(np.array([0.1, np.pi / 10]), 8) is None  # no common step
    assert grid_step(np.zeros(5), 4) is None
    with pytest.raises(HwcError, match="use one of 4, 8"):
        grid_step(on, 3)
