"""Clustering-based quantisation (weight sharing), per layer, after Han et al. (Deep
Compression) as used by Tan & Wang (TASLP 2021).

Every weight matrix/kernel gets its own codebook of at most K float32 centroids; each
nonzero weight is replaced by its nearest centroid and stored as a small index. Pruned
weights (exact zeros) are excluded from clustering and stay exact zeros, so pruning and
clustering compose.

All 1-D clustering works on the sorted distinct values with their counts (a weighted
histogram): sorting once makes a Lloyd iteration a handful of `searchsorted` calls on
prefix sums, O(K log n), and keeps the exact dynamic programme small.

Canonical form of a `Clustered` (what `cluster_tensor` returns and the .hwc file stores):
codebook sorted ascending, distinct, no zero centroid and no unused centroid. This makes
re-clustering an already clustered layer reproduce it exactly (same codebook, same
indices), which is what gives bit-identical files on load -> cluster -> save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from hwcompress.errors import HwcError
from hwcompress.models.cost import layer_paths

PRUNED = -1  # index sentinel for pruned (exactly zero) positions
K_MIN, K_MAX = 2, 256  # indices must fit one byte
INITS = ("linear", "density", "random")
METHODS = ("kmeans", "optimal", "auto")
# method="auto" runs the exact DP when a layer has at most this many distinct nonzero
# values (tens of milliseconds even at K=256), else Lloyd k-means from `init`.
AUTO_OPTIMAL_MAX_UNIQUE = 4096
KMEANS_ITERS = 300  # cheap: an iteration is O(K log n) once the values are sorted


@dataclass
class Clustered:
    """One clustered weight tensor.

    codebook: float32 [K] centroids (canonical: ascending, distinct, nonzero, all used).
    indices:  int16 tensor of the weight's shape; centroid index, or PRUNED (-1) where the
              weight is exactly zero.
    shape:    the weight's shape.
    """

    codebook: torch.Tensor
    indices: torch.Tensor
    shape: tuple[int, ...]

    @property
    def k(self) -> int:
        return int(self.codebook.numel())

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nnz(self) -> int:
        return int((self.indices >= 0).sum())

    def dense(self) -> torch.Tensor:
        """The float32 weight: codebook[indices], exact +0.0 at pruned positions."""
        idx = self.indices.long()
        if self.k == 0:
            return torch.zeros(self.shape, dtype=torch.float32)
        vals = self.codebook.to(torch.float32)[idx.clamp(min=0)]
        return torch.where(idx >= 0, vals, torch.zeros((), dtype=torch.float32)).reshape(self.shape)


# ---------------------------------------------------------------------------- 1-D k-means


def _histogram(values: np.ndarray | torch.Tensor, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values (float64) and their total weights."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise HwcError("cannot cluster NaN or infinite weights")
    if weights is None:
        xs, counts = np.unique(x, return_counts=True)
        return xs, counts.astype(np.float64)
    w = np.asarray(weights, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    xs, first = np.unique(x[order], return_index=True)
    return xs, np.add.reduceat(w[order], first) if xs.size else w[:0]


class _Prefix:
    """Prefix sums of w, w*x, w*x^2 over sorted values, centred on the weighted mean:
    centring keeps the SSE differences S2 - S1^2/W from cancelling catastrophically."""

    def __init__(self, xs: np.ndarray, ws: np.ndarray) -> None:
        self.shift = float(np.dot(xs, ws) / ws.sum())
        xc = xs - self.shift
        zero = np.zeros(1)
        self.w = np.concatenate([zero, np.cumsum(ws)])
        self.s1 = np.concatenate([zero, np.cumsum(ws * xc)])
        self.s2 = np.concatenate([zero, np.cumsum(ws * xc * xc)])

    def mean(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Weighted means of the segments xs[lo:hi] (segments must be nonempty)."""
        return (self.s1[hi] - self.s1[lo]) / (self.w[hi] - self.w[lo]) + self.shift

    def sse(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Weighted squared error of each segment xs[lo:hi] around its own mean."""
        w = self.w[hi] - self.w[lo]
        s1 = self.s1[hi] - self.s1[lo]
        with np.errstate(divide="ignore", invalid="ignore"):
            err = (self.s2[hi] - self.s2[lo]) - np.where(w > 0, s1 * s1 / np.where(w > 0, w, 1.0), 0.0)
        return np.maximum(err, 0.0)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not K_MIN <= int(k) <= K_MAX:
        raise HwcError(f"codebook size K must be between {K_MIN} and {K_MAX} (got {k!r})")
    return int(k)


def _init_centroids(xs: np.ndarray, ws: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    if init == "linear":
        # Han et al.'s recommendation: keeps centroids for the rare large-magnitude weights
        return np.linspace(xs[0], xs[-1], k)
    if init == "density":
        cdf = np.cumsum(ws) / ws.sum()
        return xs[np.minimum(np.searchsorted(cdf, (np.arange(k) + 0.5) / k), xs.size - 1)]
    if init == "random":  # Forgy: k distinct observations
        rng = np.random.default_rng(seed)
        return np.sort(xs[rng.choice(xs.size, size=min(k, xs.size), replace=False, p=ws / ws.sum())])
    raise HwcError(f"unknown clustering init {init!r}: use one of {', '.join(INITS)}")


def _boundaries(xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Segment edges [0, b1, ..., n] of the nearest-centroid partition of sorted xs
    (a value exactly on a midpoint goes to the lower centroid)."""
    mids = (centroids[:-1] + centroids[1:]) / 2
    return np.concatenate([[0], np.searchsorted(xs, mids, side="right"), [xs.size]])


def kmeans_1d(
    values: np.ndarray | torch.Tensor,
    k: int,
    init: str = "linear",
    iters: int = KMEANS_ITERS,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Lloyd's 1-D k-means on `values` (pass the nonzero weights; `cluster_tensor` does).

    Returns k centroids (float64, ascending). A cluster that empties keeps its centroid,
    as in Deep Compression; `cluster_tensor` drops unused centroids afterwards. With the
    linear init the result is never worse than uniform quantisation over [min, max]:
    that is the starting point and Lloyd iterations never increase the error.
    Cost: one sort, then O(K log n) per iteration via prefix sums.
    """
    k = _check_k(k)
    return _kmeans_hist(*_histogram(values, weights), k, init, iters, seed)


def _kmeans_hist(xs: np.ndarray, ws: np.ndarray, k: int, init: str, iters: int, seed: int) -> np.ndarray:
    if xs.size == 0:
        raise HwcError("cannot cluster an empty set of values")
    c = np.sort(_init_centroids(xs, ws, k, init, seed).astype(np.float64))
    if c.size < k:  # fewer distinct values than k (random init): pad with duplicates
        c = np.sort(np.concatenate([c, np.full(k - c.size, c[-1])]))
    pre = _Prefix(xs, ws)
    bounds = None
    for _ in range(iters):
        new_bounds = _boundaries(xs, c)
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        lo, hi = bounds[:-1], bounds[1:]
        full = hi > lo
        means = pre.mean(np.where(full, lo, 0), np.where(full, hi, 1))  # dummy segment for empty clusters
        c = np.sort(np.where(full, means, c))
    return c


def quantization_error(values: np.ndarray | torch.Tensor, centroids: np.ndarray) -> float:
    """Sum of squared errors of `values` rounded to their nearest centroid."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=np.float64).ravel()
    c = np.sort(np.asarray(centroids, dtype=np.float64).ravel())
    return float(np.sum((x - c[nearest(x, c)]) ** 2))


def nearest(x: np.ndarray, sorted_centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for every x; O(n log K). Ties go to the lower one."""
    c = sorted_centroids
    return np.searchsorted((c[:-1] + c[1:]) / 2, x, side="left")


# ------------------------------------------------------------------ exact 1-D k-means (DP)


def _dp_layer(prev: np.ndarray, pre: _Prefix, c: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cur[j] = min_{c-1 <= i < j} prev[i] + sse(i, j) for j in [c, n], by divide and
    conquer over j (the optimal split is monotone in j for 1-D squared error), with all
    subproblems of one recursion depth evaluated in a single vectorised pass."""
    cur = np.full(n + 1, np.inf)
    arg = np.zeros(n + 1, dtype=np.int32)
    jlo, jhi = np.array([c]), np.array([n])
    olo, ohi = np.array([c - 1]), np.array([n - 1])
    while jlo.size:
        mid = (jlo + jhi) // 2
        hi = np.minimum(ohi, mid - 1)
        lens = hi - olo + 1
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        seg = np.repeat(np.arange(mid.size), lens)
        i = np.arange(lens.sum()) - np.repeat(starts - olo, lens)
        val = prev[i] + pre.sse(i, mid[seg])
        mins = np.minimum.reduceat(val, starts)
        pos = np.where(val == mins[seg], np.arange(val.size), val.size)
        best = i[np.minimum.reduceat(pos, starts)]
        cur[mid], arg[mid] = mins, best
        left, right = mid - 1 >= jlo, mid + 1 <= jhi
        jlo, jhi, olo, ohi = (
            np.concatenate([jlo[left], mid[right] + 1]),
            np.concatenate([mid[left] - 1, jhi[right]]),
            np.concatenate([olo[left], best[right]]),
            np.concatenate([best[left], ohi[right]]),
        )
    return cur, arg


def optimal_1d(values: np.ndarray | torch.Tensor, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Globally optimal 1-D k-means (minimum squared error) by dynamic programming over
    the sorted distinct values, O(K n log n) time and O(K n) memory for n distinct values.

    Returns min(k, n) centroids (float64, ascending). Cheap up to a few thousand distinct
    values; `cluster_tensor(method="auto")` uses it up to AUTO_OPTIMAL_MAX_UNIQUE.
    """
    k = _check_k(k)
    return _optimal_hist(*_histogram(values, weights), k)


def _optimal_hist(xs: np.ndarray, ws: np.ndarray, k: int) -> np.ndarray:
    n = xs.size
    if n == 0:
        raise HwcError("cannot cluster an empty set of values")
    if n <= k:
        return xs.copy()
    pre = _Prefix(xs, ws)
    prev = np.full(n + 1, np.inf)
    prev[1:] = pre.sse(np.zeros(n, dtype=np.int64), np.arange(1, n + 1))
    args = []
    for c in range(2, k + 1):
        prev, arg = _dp_layer(prev, pre, c, n)
        args.append(arg)
    edges = [n]
    for arg in reversed(args):
        edges.append(int(arg[edges[-1]]))
    edges = np.array([0, *edges[::-1]])  # the c=2 layer's split is >= 1, so 0 is not in edges yet
    return pre.mean(edges[:-1], edges[1:])


# ---------------------------------------------------------------------- tensors and models


def _canonical(codebook: np.ndarray, labels: np.ndarray, mask: np.ndarray, shape: tuple[int, ...]) -> Clustered:
    """Clustered in canonical form from a float32 codebook and labels of the nonzero
    positions: merge equal centroids, turn a zero centroid into pruned, drop unused."""
    codebook = np.asarray(codebook, dtype=np.float32)
    used = np.zeros(codebook.size, dtype=bool)
    used[labels] = True
    keep = used & (codebook != 0)
    uniq, remap = np.unique(codebook, return_inverse=True)
    uniq_keep = np.zeros(uniq.size, dtype=bool)
    uniq_keep[remap[keep]] = True
    new_index = np.cumsum(uniq_keep) - 1
    label_map = np.where(keep, new_index[remap], PRUNED)
    indices = np.full(mask.size, PRUNED, dtype=np.int16)
    indices[mask] = label_map[labels]
    return Clustered(
        codebook=torch.from_numpy(uniq[uniq_keep].copy()),
        indices=torch.from_numpy(indices.reshape(shape)),
        shape=tuple(shape),
    )


def cluster_tensor(weight: torch.Tensor, k: int, init: str = "linear", method: str = "auto") -> Clustered:
    """Cluster one weight tensor's nonzero values into at most k shared float32 values.

    method: "kmeans" (Lloyd from `init`), "optimal" (exact DP; slow for huge layers) or
    "auto" = optimal when the layer has at most AUTO_OPTIMAL_MAX_UNIQUE distinct nonzero
    values, else kmeans. Note the exact optimum minimises squared error, which (like the
    density init) spends fewer centroids on rare large weights than the linear init the
    paper recommends; pass method="kmeans" to follow the paper strictly.
    A layer with at most k distinct nonzero values is represented exactly.
    """
    k = _check_k(k)
    if method not in METHODS:
        raise HwcError(f"unknown clustering method {method!r}: use one of {', '.join(METHODS)}")
    if init not in INITS:
        raise HwcError(f"unknown clustering init {init!r}: use one of {', '.join(INITS)}")
    w = weight.detach().cpu().to(torch.float32).numpy().ravel()
    if not np.all(np.isfinite(w)):
        raise HwcError("cannot cluster NaN or infinite weights")
    mask = w != 0
    # one sort serves clustering and assignment: work on distinct values, map back via `inverse`
    xs, inverse, counts = np.unique(w[mask].astype(np.float64), return_inverse=True, return_counts=True)
    ws = counts.astype(np.float64)
    if xs.size <= k:
        centroids = xs
    elif method == "optimal" or (method == "auto" and xs.size <= AUTO_OPTIMAL_MAX_UNIQUE):
        centroids = _optimal_hist(xs, ws, k)
    else:
        centroids = _kmeans_hist(xs, ws, k, init, KMEANS_ITERS, 0)
    codebook = np.unique(np.asarray(centroids, dtype=np.float32))
    # assign against the float32 centroids actually stored, so every weight gets the truly nearest one
    labels = nearest(xs, codebook.astype(np.float64))[inverse] if codebook.size else np.zeros(0, dtype=np.int64)
    return _canonical(codebook, labels, mask, tuple(weight.shape))


#: the symmetric integer grids a runtime stores weights on, per width: q * scale, q in this range
#: (int8 as TFLite's per-axis spec has it, [-127, 127]; int4 [-7, 7], as ai-edge-quantizer's own
#: symmetric int4 has it: the arm64 XNNPACK int4 kernels read -8 otherwise than the x86 ones, an
#: int4 LSTM holding -8 measured 6.5 dB output SNR emulated arm64 vs x86, 72.4 dB without -8).
#: Zero is on every grid: pruned weights stay exact.
GRID_Q: dict[int, tuple[int, int]] = {4: (-7, 7), 8: (-127, 127)}


def _grid_range(bits: int) -> tuple[int, int]:
    if bits not in GRID_Q:
        raise HwcError(f"no integer weight grid of {bits!r} bits: use one of {', '.join(map(str, GRID_Q))}")
    return GRID_Q[bits]


def grid_step(values: np.ndarray | torch.Tensor, bits: int) -> float | None:
    """The float32 scale d such that every nonzero value is exactly float32(q * d) with q an
    integer of the `bits`-wide grid (GRID_Q), as a runtime dequantizes q * scale in float32;
    None when no such d exists. A layer on such a grid is stored by that runtime without error."""
    qmin, qmax = _grid_range(bits)
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    v = np.unique(v.astype(np.float32).ravel())
    v = v[v != 0]
    if v.size == 0 or v.size > qmax - qmin:  # more distinct values than the grid has nonzero points
        return None
    smallest = float(np.min(np.abs(v)))
    for m in range(1, max(-qmin, qmax) + 1):  # the smallest magnitude is m steps from zero
        guess = np.float32(smallest / m)
        for d in (guess, np.nextafter(guess, np.float32(0)), np.nextafter(guess, np.float32(np.inf))):
            q = np.rint(v.astype(np.float64) / float(d))
            if q.min() >= qmin and q.max() <= qmax and np.array_equal(q.astype(np.float32) * d, v):
                return float(d)
    return None


def _fit_grid(xs: np.ndarray, ws: np.ndarray, qmin: int, qmax: int) -> tuple[np.float32, np.ndarray]:
    """Least-squares step d and grid integers q (never 0: a kept weight stays kept) for the
    weighted values xs: alternate nearest-level assignment and the closed-form d, from several
    starting steps (the loss in d is not convex). Written here: k-means libraries have no
    centroids tied to one shared step."""
    top = float(np.max(np.abs(xs)))
    best = None
    for frac in np.linspace(0.5, 1.0, 11):
        d = top * frac / max(-qmin if xs.min() < 0 else 0, qmax if xs.max() > 0 else 0, 1)
        for _ in range(30):
            q = np.clip(np.rint(xs / d), qmin, qmax)
            q = np.where(q == 0, np.where(xs < 0, -1.0, 1.0), q)
            new = float(np.dot(ws * q, xs) / np.dot(ws * q, q))
            if not new > 0 or abs(new - d) <= 1e-12 * d:
                break
            d = new
        d32 = np.float32(d)
        q = np.clip(np.rint(xs / float(d32)), qmin, qmax)
        q = np.where(q == 0, np.where(xs < 0, -1.0, 1.0), q)
        err = float(np.dot(ws, (xs - q * float(d32)) ** 2))
        if best is None or err < best[0]:
            best = (err, d32, q)
    return best[1], best[2]


def snap_to_grid(c: Clustered, bits: int) -> Clustered:
    """`c` with its codebook moved onto the `bits`-wide symmetric integer grid of one
    least-squares step per layer (each centroid weighted by the weights it holds): what a
    runtime with a scale per channel or block stores exactly when every scale is that step.
    At 4 bits a codebook keeps at most 14 nonzero centroids, at 8 bits at most 254; centroids
    that land on one grid point merge. Pruned weights stay pruned; a codebook already on
    the grid comes back unchanged."""
    qmin, qmax = _grid_range(bits)
    if c.k == 0 or grid_step(c.codebook, bits) is not None:
        return c
    book = c.codebook.numpy().astype(np.float64)
    idx = c.indices.reshape(-1).long().numpy()
    mask = idx >= 0
    ws = np.bincount(idx[mask], minlength=c.k).astype(np.float64)
    d, q = _fit_grid(book, np.maximum(ws, 1e-12), qmin, qmax)
    snapped = q.astype(np.float32) * d  # float32 product: what the runtime computes from (q, d)
    return _canonical(snapped, idx[mask], mask, c.shape)


def clusterable(model: nn.Module) -> list[str]:
    """Names of the parameters clustering applies to: weight matrices and kernels of the
    weight layers (hwcompress.models.cost.WEIGHT_LAYERS: Linear, Conv1d/2d and their
    transposes, LSTM, GRU). Normalisation and PReLU parameters are no weights, even a
    LayerNorm's over two axes."""
    weight_layers = set(layer_paths(model).values())
    return [name for name, p in model.named_parameters()
            if p.dim() >= 2 and (name.rpartition(".")[0] in weight_layers)]


def resolve_ks(model: nn.Module, ks: dict[str, int]) -> dict[str, int]:
    """Per-parameter K from `ks` (explicit names, plus "*" for every other weight matrix)."""
    names = clusterable(model)
    params = dict(model.named_parameters())
    unknown = sorted(n for n in ks if n != "*" and n not in params)
    if unknown:
        raise HwcError(f"unknown parameter(s) for clustering: {', '.join(unknown)}")
    not_weights = sorted(n for n in ks if n != "*" and n not in names)
    if not_weights:
        raise HwcError(f"only weight matrices/kernels can be clustered, not: {', '.join(not_weights)}")
    default = ks.get("*")
    chosen = {n: ks.get(n, default) for n in names if n in ks or default is not None}
    return {n: _check_k(k) for n, k in chosen.items()}


def cluster_model(
    model: nn.Module, ks: dict[str, int], init: str = "linear", method: str = "auto"
) -> dict[str, Clustered]:
    """Cluster each weight matrix/kernel named in `ks` (or all, via key "*"), keyed by
    parameter name in model order. The model itself is not modified (see apply_clustering)."""
    params = dict(model.named_parameters())
    return {n: cluster_tensor(params[n], k, init=init, method=method) for n, k in resolve_ks(model, ks).items()}


def _target(params: dict[str, nn.Parameter], name: str, c: Clustered) -> nn.Parameter:
    if name not in params:
        raise HwcError(f"clustered tensor {name!r} is not a parameter of this model")
    if tuple(params[name].shape) != tuple(c.shape):
        raise HwcError(f"clustered tensor {name!r} has shape {list(c.shape)}, model has {list(params[name].shape)}")
    return params[name]


@torch.no_grad()
def apply_clustering(model: nn.Module, clustered: dict[str, Clustered]) -> nn.Module:
    """Write every Clustered.dense() into the model's parameters (in place)."""
    params = dict(model.named_parameters())
    for name, c in clustered.items():
        _target(params, name, c).copy_(c.dense())
    return model


# ---------------------------------------------------------------- centroid fine-tuning


class CentroidTuner:
    """Fine-tunes shared centroids: the gradient of a centroid is the sum of the
    gradients of all weights sharing it (Deep Compression, sec. 3.1).

        tuner = CentroidTuner(model, clustered)
        opt = torch.optim.Adam(tuner.parameters(), lr=1e-4)
        for batch in data:
            opt.zero_grad()
            loss(model, batch).backward()
            tuner.step_hook()      # weight grads -> centroid grads
            opt.step()
            tuner.materialize()    # centroids -> weights (zeros stay zero)
        clustered = tuner.clustered()

    Other parameters (biases) may be trained alongside with any optimizer: step_hook
    clears the clustered weights' own grads, so a model-wide optimizer leaves them alone.
    """

    def __init__(self, model: nn.Module, clustered: dict[str, Clustered]) -> None:
        self.model = model
        params = dict(model.named_parameters())
        self._weights = {n: _target(params, n, c) for n, c in clustered.items()}
        self._shapes = {n: tuple(c.shape) for n, c in clustered.items()}
        # codebooks, positions and labels live where their weight does (a Clustered is on the CPU)
        dev = {n: w.device for n, w in self._weights.items()}
        self.codebooks = {n: nn.Parameter(c.codebook.detach().to(device=dev[n], dtype=torch.float32, copy=True))
                          for n, c in clustered.items()}
        flat = {n: c.indices.reshape(-1).long().to(dev[n]) for n, c in clustered.items()}
        self._positions = {n: torch.nonzero(f >= 0).squeeze(1) for n, f in flat.items()}
        self._labels = {n: flat[n][self._positions[n]] for n in flat}
        self.materialize()

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.codebooks.values())

    def step_hook(self) -> None:
        """After loss.backward(): scatter-add each clustered weight's grad into its
        codebook's grad, then clear the weight grad."""
        for name, weight in self._weights.items():
            book = self.codebooks[name]
            grad = torch.zeros_like(book)
            if weight.grad is not None:
                g = weight.grad.reshape(-1)[self._positions[name]].to(grad.dtype)
                grad.index_add_(0, self._labels[name], g)
            book.grad = grad if book.grad is None else book.grad + grad
            weight.grad = None

    @torch.no_grad()
    def materialize(self) -> None:
        """Rewrite the model's clustered weights from the codebooks; pruned stay 0."""
        for name, weight in self._weights.items():
            flat = torch.zeros(weight.numel(), dtype=weight.dtype, device=weight.device)
            flat[self._positions[name]] = self.codebooks[name].detach().to(weight.dtype)[self._labels[name]]
            weight.copy_(flat.reshape(weight.shape))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """step_hook + optimizer.step + materialize, for the common loop."""
        self.step_hook()
        optimizer.step()
        self.materialize()

    def clustered(self) -> dict[str, Clustered]:
        """The tuned clustering in canonical form (centroids that met are merged; one
        that reached exactly 0 turns its weights into pruned zeros)."""
        out = {}
        for name in self._weights:
            shape = self._shapes[name]
            mask = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=bool)
            mask[self._positions[name].cpu().numpy()] = True
            book = self.codebooks[name].detach().to(torch.float32).cpu().numpy()
            out[name] = _canonical(book, self._labels[name].cpu().numpy(), mask, shape)
        return out
