"""Sensitivity analysis: deterministic for given weights and items (issue 16.9), caches keyed
by what determines them and rebuilt with one line when corrupt or stale (issue 16.12).

Real evaluations of a seeded tiny-gru on two one-second validation mixtures of the small corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hwcompress.models import zoo
from hwcompress.models.io import load_model
from hwcompress.search import allocate as alloc
from hwcompress.search import sensitivity as sens
from hwcompress.search.fit import FitConfig, Fitter


def _model(seed: int = 0):
    if seed == 0:
        return load_model("tiny-gru").eval()  # a preset name is always the same (seed 0) model
    torch.manual_seed(seed)  # other weights of the same architecture
    return zoo.build_preset("tiny-gru").eval()


@pytest.fixture(scope="module")
def items(small_corpus) -> list[dict]:
    return sens.validation_items(small_corpus, n=2, seconds=1.0)


def _weights(model) -> dict[str, int]:
    from hwcompress.models.cost import layer_paths

    params = dict(model.named_parameters())
    return {layer: sum(p.numel() for n, p in params.items() if n.startswith(path + ".") and p.dim() >= 2)
            for layer, path in layer_paths(model).items()}


def test_two_fresh_runs_give_identical_scores_and_choices(items, tmp_path) -> None:
    runs = []
    for i in range(2):  # fresh caches, fresh model objects, the same seed
        model = _model()
        k = sens.codebooks(model, items, tmp_path / f"run{i}" / "codebooks.json", log=pytest.fail)
        s = sens.structured(model, items, tmp_path / f"run{i}" / "structured.json", log=pytest.fail)
        runs.append((k, s, alloc.choose_codebooks(alloc.codebook_curves(sens.within_noise(k)), _weights(model), 1e-3)))
    (k1, s1, c1), (k2, s2, c2) = runs
    assert k1 == k2 and s1 == s2 and c1 == c2  # bit-identical scores, same K per layer
    assert k1["noise"]["repeat_abs_diff"] == 0.0  # the same weights score bit-identically
    assert 0 < k1["noise"]["floor"] < 1e-5 * abs(k1["base"])
    # the measurement sees something: clustering to K=8 and pruning 75% both change the score
    assert any(v[8] != k1["base"] for v in k1["scores"].values())
    assert all(v[0.75] < s1["base"] for v in s1["scores"].values())


def test_cache_is_used_and_keyed_by_weights_and_items(items, small_corpus, tmp_path) -> None:
    cache = tmp_path / "codebooks.json"
    first = sens.codebooks(_model(), items, cache, log=pytest.fail)
    # the cached scores are what comes back: plant a value and see it returned
    stored = json.loads(cache.read_text())
    stored["scores"]["out@8"] = -123.0
    cache.write_text(json.dumps(stored))
    assert sens.codebooks(_model(), items, cache, log=pytest.fail)["scores"]["out"][8] == -123.0

    logs: list[str] = []  # other weights: measured again, one line says why
    other = sens.codebooks(_model(seed=1), items, cache, log=logs.append)
    assert len(logs) == 1 and "another model, data or settings" in logs[0]
    assert other["base"] != first["base"]

    logs.clear()  # other items (another crop): measured again too
    cropped = sens.validation_items(small_corpus, n=2, seconds=0.5)
    again = sens.codebooks(_model(), cropped, cache, log=logs.append)
    assert len(logs) == 1 and again["base"] != first["base"]
    assert sens.evaluation_key(cropped) != sens.evaluation_key(items)


@pytest.mark.parametrize("content", [b"{\"key\": ", b"[1, 2]", b"\x00\xff garbage"])
def test_corrupt_caches_are_rebuilt_with_one_line(items, tmp_path, content) -> None:
    fresh = sens.codebooks(_model(), items, tmp_path / "fresh" / "codebooks.json", log=pytest.fail)
    for name in ("codebooks.json", "structured.json"):
        (tmp_path / name).write_bytes(content)
    logs: list[str] = []
    got = sens.codebooks(_model(), items, tmp_path / "codebooks.json", log=logs.append)
    assert got == fresh
    sens.structured(_model(), items, tmp_path / "structured.json", log=logs.append)
    assert len(logs) == 2 and all("\n" not in m and "recomputing" in m for m in logs), logs
    assert all(("unreadable" in m or "another model" in m) for m in logs), logs
    # and the rebuilt files are valid caches again: nothing to say on the next read
    sens.codebooks(_model(), items, tmp_path / "codebooks.json", log=pytest.fail)
    sens.structured(_model(), items, tmp_path / "structured.json", log=pytest.fail)


def test_malformed_scores_are_rebuilt(items, tmp_path) -> None:
    cache = tmp_path / "codebooks.json"
    fresh = sens.codebooks(_model(), items, cache, log=pytest.fail)
    stored = json.loads(cache.read_text())
    stored["scores"]["out@8"] = "nan?"
    cache.write_text(json.dumps(stored))
    logs: list[str] = []
    assert sens.codebooks(_model(), items, cache, log=logs.append) == fresh
    assert len(logs) == 1 and "malformed" in logs[0]


def test_within_noise_treats_tiny_changes_as_none() -> None:
    k = {"base": -0.1, "noise": {"floor": 1e-7},
         "scores": {"a": {8: -0.1 - 5e-8, 16: -0.1 + 3e-8}, "b": {8: -0.1 - 1e-3, 16: -0.1 - 2e-7}}}
    snapped = sens.within_noise(k)["scores"]
    assert snapped == {"a": {8: -0.1, 16: -0.1}, "b": {8: -0.1 - 1e-3, 16: -0.1 - 2e-7}}
    # a noise-level "loss" no longer decides a K: layer a takes the smallest codebook
    ks = alloc.choose_codebooks(alloc.codebook_curves(sens.within_noise(k)), {"a": 100, "b": 100}, tolerance=1e-9)
    assert ks["a"] == 8 and ks["b"] == 256


def _fitter(tmp_path: Path, small_corpus: Path, model) -> Fitter:
    """The joint codebook stage of a fit, without its runtime setup (export, calibration)."""
    f = Fitter.__new__(Fitter)
    f.cfg = FitConfig(target="none", out=tmp_path, sensitivity_items=2, codebook_tolerance=0.02)
    f.out, f.model, f.data = tmp_path, model, small_corpus
    f.backend = None  # no runtime: codebooks on no backend's grid
    f.logs = []
    f.log = f.logs.append
    return f


def test_joint_codebook_check_is_deterministic_and_cached(small_corpus, tmp_path) -> None:
    # the fit's own items are 4 s crops of `sensitivity_items` mixtures
    results = []
    for i in range(2):
        model = _model()
        f = _fitter(tmp_path / f"fit{i}", small_corpus, model)
        k_sens = sens.codebooks(model, f.sensitivity_items(small_corpus), f.out / "sensitivity" / "codebooks.json",
                                log=pytest.fail)
        results.append((f.codebooks(k_sens), k_sens, f))
    (ks1, k1, f1), (ks2, k2, _) = results
    assert ks1 == ks2 and k1 == k2
    assert set(ks1) == {"rnn.0", "out"} and all(k in (8, 16, 32, 256) for k in ks1.values())
    joint = f1.out / "sensitivity" / "codebooks-joint.json"
    assert json.loads(joint.read_text())["ks"] == ks1

    # a second call reads the cache: it says nothing and measures nothing
    f1.logs.clear()
    assert f1.codebooks(k1) == ks1 and f1.logs == []
    # corrupt: recomputed with one line, same answer
    joint.write_text("{ truncated")
    assert f1.codebooks(k1) == ks1
    assert sum("codebooks-joint.json" in m for m in f1.logs) == 1
    # other sensitivities (e.g. of another corpus): recomputed, not reused
    f1.logs.clear()
    other = {**k1, "base": k1["base"] - 0.5}
    f1.codebooks(other)
    assert any("another model, data or settings" in m for m in f1.logs)


def test_teacher_objective_scores_distance_to_the_dense_output(items, tmp_path) -> None:
    """With the default fine-tuning target the sensitivities score how far a compressed
    model departs from the dense model's own output: the dense model scores exactly 0, a
    perturbed one less, and the cache key tells the two objectives apart."""
    dense = _model()
    taught = sens.with_teacher(items, dense, 1.0)
    assert sens.score_fn(taught)(dense) == 0.0
    assert sens.with_teacher(items, dense, 0.0) is items  # clean target: the clean validation loss
    other = _model(seed=1)
    assert sens.score_fn(taught)(other) < 0.0
    mixed = sens.with_teacher(items, dense, 0.5)
    # mix: half the distance to the teacher, half the clean loss
    expected = 0.5 * sens.score_fn(taught)(other) + 0.5 * sens.score_fn(items)(other)
    assert sens.score_fn(mixed)(other) == pytest.approx(expected, rel=1e-5)
    keys = {json.dumps(sens.evaluation_key(x), sort_keys=True) for x in (items, taught, mixed)}
    assert len(keys) == 3
    # the codebook tolerance's scale stays the dense model's clean loss under the teacher objective
    from hwcompress.train import validation_loss

    k = sens.codebooks(dense, taught, tmp_path / "codebooks.json", ks=(8,), log=pytest.fail)
    assert k["base"] == 0.0 and k["scale"] == validation_loss(dense, items) > 0
