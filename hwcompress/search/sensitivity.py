"""How much quality each layer loses when it alone is pruned structurally or clustered.

Quality here is the training objective on a few validation mixtures (lower loss is
better): one forward pass per candidate, cheap enough to measure every group at several
ratios and every layer at several codebook sizes, and it tracks PESQ/STOI closely enough to
rank layers. Results are cached in a JSON file next to the run and keyed by a fingerprint
of the weights, so a resumed or repeated fit (e.g. several budgets) measures nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hwcompress.compress.cluster import apply_clustering, cluster_model
from hwcompress.compress.prune import _fingerprint, sensitivity
from hwcompress.data.loader import eval_set
from hwcompress.models.cost import layer_paths
from hwcompress.models.zoo import SEModel
from hwcompress.progress import progress_bar
from hwcompress.train import validation_loss

STRUCTURED_RATIOS = (0.25, 0.5, 0.75)
CODEBOOKS = (8, 16, 32)  # 2-bit codebooks cost the big layers too much; the small ones are too small to matter


def validation_items(data: Path, n: int = 8, seconds: float = 4.0) -> list[dict]:
    """The first `n` fixed validation mixtures, cropped to `seconds` (speed; they are long)."""
    items = eval_set(data, "valid", limit=n)
    keep = int(seconds * 16000)
    return [{**it, "noisy": it["noisy"][:keep].astype(np.float32), "clean": it["clean"][:keep].astype(np.float32)}
            for it in items]


def score_fn(items: list[dict]) -> Callable[[SEModel], float]:
    """Higher is better: minus the validation loss."""
    return lambda model: -validation_loss(model, items)


def atomic_json(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: a crash never leaves half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    tmp.replace(path)


def structured(model: SEModel, items: list[dict], cache: Path, ratios: Sequence[float] = STRUCTURED_RATIOS) -> dict:
    """{"base", "scores": {group: {ratio: score}}} with one group pruned at a time."""
    from hwcompress.compress.groups import model_groups

    score = score_fn(items)
    groups = [g.name for g in model_groups(model)]
    with progress_bar() as bar:
        task = bar.add_task("pruning sensitivity", total=len(groups))
        for name in groups:  # one call per group: the bar moves, the cache file is shared
            sensitivity(model, score, layers=[name], ratios=ratios, structured=True, cache=cache)
            bar.advance(task)
    return sensitivity(model, score, layers=groups, ratios=ratios, structured=True, cache=cache)


def codebooks(model: SEModel, items: list[dict], cache: Path, ks: Sequence[int] = CODEBOOKS) -> dict:
    """{"base", "scores": {layer: {K: score}}} with one layer's weights clustered to K at a time."""
    score = score_fn(items)
    store = json.loads(cache.read_text()) if cache.exists() else {}
    fp = _fingerprint(model)
    if store.get("fingerprint") != fp:
        store = {"fingerprint": fp, "base": None, "scores": {}}
    if store["base"] is None:
        store["base"] = float(score(model))
        atomic_json(cache, store)
    params = dict(model.named_parameters())
    by_layer: dict[str, list[str]] = {}
    for layer, path in layer_paths(model).items():
        by_layer[layer] = [n for n, p in params.items() if n.startswith(path + ".") and p.dim() >= 2]
    todo = [(layer, k) for layer in by_layer for k in ks if f"{layer}@{k}" not in store["scores"]]
    with progress_bar() as bar:
        task = bar.add_task("codebook sensitivity", total=len(todo))
        for layer, k in todo:
            saved = {n: params[n].detach().clone() for n in by_layer[layer]}
            try:
                apply_clustering(model, cluster_model(model, {n: k for n in by_layer[layer]}))
                store["scores"][f"{layer}@{k}"] = float(score(model))
            finally:
                with torch.no_grad():
                    for n, v in saved.items():
                        params[n].copy_(v)
            atomic_json(cache, store)
            bar.advance(task)
    scores = {layer: {k: store["scores"][f"{layer}@{k}"] for k in ks} for layer in by_layer}
    return {"base": store["base"], "scores": scores}
