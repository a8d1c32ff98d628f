"""How much quality each layer loses when it alone is pruned structurally or clustered.

Quality here is the training objective on a few validation mixtures (lower loss is
better): one forward pass per candidate, cheap enough to measure every group at several
ratios and every layer at several codebook sizes, and it tracks PESQ/STOI closely enough to
rank layers. Results are cached in JSON files next to the run, keyed by the exact weights and
the validation items (evaluation_key), so a resumed or repeated fit (e.g. several budgets)
measures nothing twice and a changed model or corpus measures afresh.

Scores are computed where the model lives (the fit's `--device`: hwcompress.device); a cache of
scores computed on a GPU is keyed by it (evaluation_key), so it never mixes with CPU scores.

Determinism: for given weights and items every score is bit-identical run to run (fixed
items, deterministic clustering, no sampling). Untrained zoo presets are a different
model on every load unless their initialisation is seeded, which is what made two
"identical" tiny fits choose different codebook sizes (issue 16.9).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hwcompress.compress.cluster import apply_clustering, cluster_model
from hwcompress.compress.prune import _fingerprint, sensitivity
from hwcompress.data.loader import eval_set
from hwcompress.device import device_key, device_of
from hwcompress.models.cost import layer_paths
from hwcompress.models.zoo import SEModel
from hwcompress.progress import progress_bar
from hwcompress.train import analysis, validation_loss
from hwcompress.workdir import check_writable, read_keyed, write_keyed

STRUCTURED_RATIOS = (0.25, 0.5, 0.75)
CODEBOOKS = (8, 16, 32)  # 2-bit codebooks cost the big layers too much; the small ones are too small to matter


def validation_items(data: Path, n: int = 8, seconds: float = 4.0) -> list[dict]:
    """The first `n` fixed validation mixtures, cropped to `seconds` (speed; they are long)."""
    items = eval_set(data, "valid", limit=n)
    keep = int(seconds * 16000)
    return [{**it, "noisy": it["noisy"][:keep].astype(np.float32), "clean": it["clean"][:keep].astype(np.float32)}
            for it in items]


def with_teacher(items: list[dict], teacher: SEModel, weight: float) -> list[dict]:
    """`items` scored against the fine-tuning objective: with `weight` > 0 each item also
    holds the dense model's output on its noisy mixture, and a score is then
    weight x distance to that output + (1 - weight) x distance to the clean speech.

    Why: a pretrained model (NSNet2) was trained on other data with another loss, and its
    loss against this corpus's clean speech does not track what clustering costs it:
    NSNet2's gru0 at K=8 scored a slightly *lower* clean loss than dense while PESQ-WB fell
    by 0.03 on the test split (runs of 2026-12-02, benchmarks/fit_nsnet2_*.md). Distance to
    the dense model's output, the same target the fine-tuning distils to, ranked it."""
    if weight <= 0.0:
        return items
    was_training = teacher.training
    teacher.eval()
    device = device_of(teacher)  # run where the teacher lives; the outputs are kept on the CPU
    out = []
    with torch.no_grad():
        for it in items:
            spec = analysis(teacher, torch.from_numpy(it["noisy"])[None].to(device))
            target, _ = teacher(spec, [s.to(device) for s in teacher.initial_state(1)])
            out.append({**it, "teacher": target[0].cpu().numpy().astype(np.float32), "teacher_weight": float(weight)})
    teacher.train(was_training)
    return out


def score_fn(items: list[dict]) -> Callable[[SEModel], float]:
    """Higher is better: minus the objective (validation loss, or distance to the teacher)."""
    return lambda model: -validation_loss(model, items)


def _objective(items: list[dict]) -> str:
    w = {float(it.get("teacher_weight", 0.0)) for it in items if "teacher" in it}
    return "-validation_loss" if not w else f"-objective(teacher weight {max(w):g})"


SCORE_VERSION = 3  # bump when score_fn or validation_loss change what a score means


def items_digest(items: list[dict]) -> str:
    """Fingerprint of validation items: their ids and every sample (so the corpus, the
    number of items and the crop are all part of it)."""
    h = hashlib.sha256()
    for it in items:
        noisy, clean = np.ascontiguousarray(it["noisy"]), np.ascontiguousarray(it["clean"])
        h.update(f"{it.get('id')}|{noisy.dtype.str}|{noisy.size}|{clean.size}|".encode())
        h.update(noisy.tobytes())
        h.update(clean.tobytes())
        if "teacher" in it:
            h.update(f"teacher|{it['teacher_weight']!r}|".encode())
            h.update(np.ascontiguousarray(it["teacher"]).tobytes())
    return h.hexdigest()[:16]


def evaluation_key(items: list[dict], device: torch.device | str = "cpu") -> dict:
    """What a score depends on besides the weights: the cache key part for score_fn(items) run
    on `device` (the key of a CPU score is what it always was; another device rounds otherwise,
    and the noise floor is measured on one)."""
    key = {"score": _objective(items), "score_version": SCORE_VERSION, "items": items_digest(items),
           "n_items": len(items), "samples": sorted({int(np.asarray(it["noisy"]).size) for it in items})}
    where = device_key(device)
    return {**key, "device": where} if where is not None else key


def noise_floor(model: SEModel, score: Callable[[SEModel], float], base: float) -> dict:
    """How far apart two scores of the same weights may be, measured and bounded.

    Measured: the base model scored a second time (bit-identical in one process: the
    evaluation is fixed items, no sampling, no randomness). Bounded: scores are float32
    sums whose reduction order depends on the thread count; across 1 and 2 threads the
    base loss of tiny models differed by 2-5e-9 (~0.3 float32 ulp of a 0.1 loss). Loss
    changes within `floor` = max(measured repeat difference, 8 float32 ulps of the base)
    are treated as no change, so thread-count noise cannot flip a choice."""
    again = float(score(model))
    repeat = abs(again - base)
    resolution = abs(base) * 2.0**-20  # 8 float32 ulps (float32 epsilon is 2**-23)
    return {"floor": max(repeat, resolution), "repeat_abs_diff": repeat, "float32_resolution": resolution,
            "threads": torch.get_num_threads(),
            "how": "base scored twice in this process; floor = max(that difference, |base| * 2**-20)"}


def atomic_json(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: a crash never leaves half a cache
    (the temporary name is unique, so two writers never interleave their bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=1, default=float))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _quiet(msg: str) -> None:
    pass


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def part_path(folder: Path, name: str) -> Path:
    """The cache file of one group's or one layer's scores in `folder` (names such as enc.0)."""
    return Path(folder) / f"{name.replace('/', '_')}.json"


def structured_groups(model: SEModel) -> list[str]:
    from hwcompress.compress.groups import model_groups

    return [g.name for g in model_groups(model)]


def structured_part(model: SEModel, items: list[dict], cache: Path, group: str,
                    ratios: Sequence[float] = STRUCTURED_RATIOS, log: Callable[[str], None] | None = None,
                    base: float | None = None) -> dict:
    """One group's pruning scores, cached in its own file under `cache`'s parts folder
    (structured/<group>.json beside structured.json): groups are independent tasks, so several
    workers (search/multi.py) can score them at once without sharing a file."""
    # a stale part (other weights or items) is recomputed without a word: the merged file's
    # reader (structured) has said why once for all of them
    return sensitivity(model, score_fn(items), layers=[group], ratios=ratios, structured=True,
                       cache=part_path(Path(cache).with_suffix(""), group), key=evaluation_key(items, device_of(model)),
                       log=log or _quiet, base=base)


def structured(model: SEModel, items: list[dict], cache: Path, ratios: Sequence[float] = STRUCTURED_RATIOS,
               log: Callable[[str], None] | None = None) -> dict:
    """{"base", "scores": {group: {ratio: score}}} with one group pruned at a time.
    Each group's scores are cached in its own file (structured_part), keyed by the weights and
    the items (evaluation_key); a stale or corrupt file is measured again after one line to
    `log`. The merged result is also written to `cache` (what the report and a reader see)."""
    log = log or _warn
    check_writable(Path(cache), "file")
    groups = structured_groups(model)
    key = {"what": "pruning sensitivity (merged)", "weights": _fingerprint(model),
           "evaluation": evaluation_key(items, device_of(model)), "ratios": [float(r) for r in ratios]}
    cached = read_keyed(Path(cache), key, log)
    try:
        if cached is not None and set(cached["scores"]) == set(groups):
            return {"base": float(cached["base"]), "structured": True,
                    "scores": {g: {float(r): float(v) for r, v in per.items()} for g, per in cached["scores"].items()}}
    except (KeyError, TypeError, ValueError, AttributeError):
        log(f"{cache}: malformed cache contents; recomputing it")
    base = None
    merged: dict[str, dict] = {}
    with progress_bar() as bar:
        task = bar.add_task("pruning sensitivity", total=len(groups))
        for name in groups:
            r = structured_part(model, items, cache, name, ratios, None, base)
            base = r["base"] if base is None else base
            merged.update(r["scores"])
            bar.advance(task)
    if base is None:
        base = float(score_fn(items)(model))
    write_keyed(Path(cache), key, {"base": base, "scores": {g: {f"{r:g}": v for r, v in per.items()}
                                                            for g, per in merged.items()}})
    return {"base": base, "structured": True, "scores": merged}


def _codebook_store(path: Path, key: dict, log: Callable[[str], None]) -> dict:
    stored = read_keyed(path, key, log)
    if stored is None:
        return {}
    base, scores, noise = stored.get("base"), stored.get("scores"), stored.get("noise")
    finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    ok = (finite(base) and isinstance(scores, dict) and all(isinstance(k, str) and finite(v) for k, v in scores.items())
          and (noise is None or (isinstance(noise, dict) and finite(noise.get("floor")))))
    if not ok:
        log(f"{path}: malformed cache contents; recomputing it")
        return {}
    scale = stored.get("scale")
    return {"base": float(base), "scores": dict(scores), "noise": noise, "scale": float(scale) if finite(scale) else None}


def _layer_params(model: SEModel) -> dict[str, list[str]]:
    """Per layer, the names of its weight matrices (parameters of 2 or more dims)."""
    params = dict(model.named_parameters())
    return {layer: [n for n, p in params.items() if n.startswith(path + ".") and p.dim() >= 2]
            for layer, path in layer_paths(model).items()}


def codebook_layers(model: SEModel) -> list[str]:
    return list(_layer_params(model))


def _codebook_key(model: SEModel, items: list[dict]) -> dict:
    return {"what": "codebook sensitivity", "weights": _fingerprint(model),
            "evaluation": evaluation_key(items, device_of(model))}


def codebook_part(model: SEModel, items: list[dict], cache: Path, layer: str, ks: Sequence[int] = CODEBOOKS,
                  log: Callable[[str], None] | None = None) -> dict[str, float]:
    """{"layer@K": score} with only `layer`'s weights clustered to each K, cached in the layer's
    own file under `cache`'s parts folder (codebooks/<layer>.json beside codebooks.json), so
    layers are independent tasks (search/multi.py). Clustering is deterministic (exact DP or
    k-means from a linear init), so every worker computes the same scores."""
    # a stale part is recomputed without a word (codebooks says why once, for the main file)
    log = log or _quiet
    path = part_path(Path(cache).with_suffix(""), layer)
    key = {**_codebook_key(model, items), "layer": layer}
    store = _codebook_store(path, key, log) or {"base": 0.0, "scores": {}, "noise": None, "scale": None}
    score = score_fn(items)
    params = dict(model.named_parameters())
    names = _layer_params(model)[layer]
    for k in ks:
        if f"{layer}@{k}" in store["scores"]:
            continue
        saved = {n: params[n].detach().clone() for n in names}
        try:
            apply_clustering(model, cluster_model(model, {n: k for n in names}))
            store["scores"][f"{layer}@{k}"] = float(score(model))
        finally:
            with torch.no_grad():
                for n, v in saved.items():
                    params[n].copy_(v)
        write_keyed(path, key, store)
    return {f"{layer}@{k}": store["scores"][f"{layer}@{k}"] for k in ks}


def codebooks(model: SEModel, items: list[dict], cache: Path, ks: Sequence[int] = CODEBOOKS,
              log: Callable[[str], None] | None = None) -> dict:
    """{"base", "scores": {layer: {K: score}}, "noise": noise_floor(...)} with one layer's
    weights clustered to K at a time. `cache` holds the base score, the noise floor and the
    scale (and, once all are in, every layer's scores); each layer's scores are cached in its
    own file (codebook_part). All keyed by the weights and the items (evaluation_key); a stale
    or corrupt file is measured again after one line to `log`."""
    log = log or _warn
    cache = Path(cache)
    store = codebook_header(model, items, cache, log)
    layers = codebook_layers(model)
    missing = [layer for layer in layers if any(f"{layer}@{k}" not in store["scores"] for k in ks)]
    with progress_bar() as bar:
        task = bar.add_task("codebook sensitivity", total=len(layers))
        bar.advance(task, len(layers) - len(missing))
        for layer in missing:
            store["scores"].update(codebook_part(model, items, cache, layer, ks))
            bar.advance(task)
    if missing:
        write_keyed(cache, _codebook_key(model, items), store)
    scores = {layer: {k: store["scores"][f"{layer}@{k}"] for k in ks} for layer in layers}
    return {"base": store["base"], "scores": scores, "noise": store["noise"], "scale": store["scale"]}


def codebook_header(model: SEModel, items: list[dict], cache: Path, log: Callable[[str], None] | None = None) -> dict:
    """The codebook cache's shared part: the intact model's score, the noise floor (scored
    twice) and the scale tolerances are relative to (computed once, before or beside the
    per-layer parts)."""
    log = log or _warn
    cache = Path(cache)
    check_writable(cache, "file")
    score = score_fn(items)
    key = _codebook_key(model, items)
    store = _codebook_store(cache, key, log)
    if not store:
        store = {"base": float(score(model)), "scores": {}, "noise": None, "scale": None}
        write_keyed(cache, key, store)
    if store["noise"] is None:
        store["noise"] = noise_floor(model, score, store["base"])
        write_keyed(cache, key, store)
    if store.get("scale") is None:
        # what a tolerance is relative to: the dense model's own clean validation loss (the
        # base itself when the score is that loss; a distance to the teacher starts at 0)
        store["scale"] = float(validation_loss(model, [{k: v for k, v in it.items() if k not in ("teacher", "teacher_weight")}
                                                       for it in items]))
        write_keyed(cache, key, store)
    return store


def within_noise(k_sens: dict) -> dict:
    """`k_sens` with every score within the noise floor of the base set to the base: a
    change the measurement cannot resolve counts as none, so it cannot decide a K."""
    base = float(k_sens["base"])
    floor = float((k_sens.get("noise") or {}).get("floor", 0.0))
    scores = {layer: {k: (base if abs(float(v) - base) <= floor else float(v)) for k, v in per.items()}
              for layer, per in k_sens["scores"].items()}
    return {**k_sens, "scores": scores}
