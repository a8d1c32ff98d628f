"""`fit` under budgets that bind (issue 16, point 10), measured on this machine's onnxruntime.

The model (two 1024-unit LSTMs, 13.6 M weights, untrained; its int8 weights outgrow the cache)
measured ~0.6 ms per hop here and its 75%-pruned floor ~0.07 ms, near the Python harness's own
per-hop cost. Two 512-unit LSTMs were too close to that cost (dense 0.10-0.16 ms, floor 0.07-0.09:
CI found the floor over 60% of dense), so a budget of 60% of the dense latency here can only be
met by pruning and is met with room. Everything runs for real: export, the timed subprocess, fine-tuning, the .hwc, the
final measured verification. Where a test steers the loop into a branch (an optimistic
calibration, a first allocation that misjudges), it changes the search's own state; the
runtime and its timings are never replaced.
"""

from __future__ import annotations

import pytest
import torch

from hwcompress.models import zoo
from hwcompress.models.io import save_model

from hwcompress.search import fit as fitmod
from hwcompress.search.fit import MEASURE_MARGIN, FitConfig, Fitter

pytestmark = pytest.mark.slow

# PESQ-WB of the compressed model may not fall more than this below the dense model's (the
# model is untrained and fine-tuned for a few steps, so the bound only guards against
# compression that destroys the output, e.g. a wrong shrink or a broken export)
PESQ_DROP = 0.3


MODEL: dict[str, str] = {}


# verify retries: one hop of these models is 0.1-0.4 ms, and on a shared 2-core VM the same
# artifact measured 0.106 and 0.194 ms minutes apart (a verified 0.233 ms after a probe's
# 0.135 ms), so a run may miss a budget three times in a row by timing alone (CI once did,
# 0.174 ms against 0.162 ms); more retries keep the tests about the loop, not about luck
RETRIES = 6


def _cfg(out, data, budget_ms=None, **kw) -> FitConfig:
    kw.setdefault("retries", RETRIES)
    return FitConfig(target="generic-onnx", out=out, budgets_ms=[budget_ms] if budget_ms else [], model=MODEL["path"],
                     data=data, prune_steps=6, cluster_steps=2, batch=2, seconds=1.0, sensitivity_items=3,
                     eval_items=3, measure_runs=150, final_runs=300, emulate=False, dnsmos=False, **kw)


@pytest.fixture(scope="module")
def dense_ms(small_corpus, tmp_path_factory) -> tuple[float, object]:
    out = tmp_path_factory.mktemp("fit-binding")
    MODEL["path"] = str(out / "lstm1024.pt")
    torch.manual_seed(0)
    save_model(MODEL["path"], zoo.build("rnn", {"cell": "lstm", "hidden": [1024, 1024]}))
    f = Fitter(_cfg(out, small_corpus), log=print)
    f.calibrate()
    return f.calibration_log[0]["measured_ms"], out


def test_binding_budget_prunes_verifies_and_is_met(dense_ms, small_corpus) -> None:
    dense, out = dense_ms
    # the dense model timed again now: CI once measured it 0.73 ms in the fixture and then,
    # during the fit, within 0.6x of that (the budget was not binding); the lesser is the base
    f = Fitter(_cfg(out, small_corpus), log=print)
    f.calibrate()
    budget = 0.6 * min(dense, f._probe({})["measured_ms"])
    logged: list[str] = []
    report = fitmod.fit(_cfg(out, small_corpus, budget), log=logged.append)
    r = report["results"][0]
    assert r["latency_source"] == "measured" and r["runtime"] == "onnxruntime"
    if not any(v > 0 for v in r["allocation"]["ratios"].values()):
        # a search may keep the dense model only where it measured the dense model within the
        # budget itself, this run (the machine sped up since): anything else is a wrong result
        dense_trials = [t for t in r["allocation"]["measured_trials"] if not any(t["ratios"].values())]
        assert dense_trials and dense_trials[-1]["measured_ms"] <= budget * MEASURE_MARGIN, \
            ("a binding budget must prune", r["allocation"]["measured_trials"])
        assert r["latency_ms"] <= budget and r["budget_met"]
        return
    assert r["macs_per_frame"]["after"] < r["macs_per_frame"]["before"]
    assert r["allocation"]["measured_trials"], "the allocation was not timed"
    # the verified figure is the final artifact's own measurement, and it is within budget
    assert r["latency_ms"] <= budget and r["budget_met"] and r["parity_ok"] and not r["not_met_because"]
    q = r["quality"]
    assert q["compressed"]["pesq_wb"] >= q["baseline"]["pesq_wb"] - PESQ_DROP


def _calibrated_fitter(out, data) -> tuple[Fitter, dict]:
    """The search's state just before allocating: calibrated here, sensitivities measured."""
    f = Fitter(_cfg(out, data), log=print)
    f.calibrate()
    f.check_feasible()
    f.data = data
    s_sens, _ = f.sensitivities(data)
    return f, fitmod.alloc.loss_curves(s_sens)


def test_optimistic_calibration_is_tightened_by_measurement(dense_ms, small_corpus) -> None:
    dense, out = dense_ms
    f, curves = _calibrated_fitter(out, small_corpus)
    # the dense model timed again now: one slow calibration measurement must not make the
    # dense model itself look within budget
    now = f._probe({})["measured_ms"]
    budget = 0.6 * min(dense, now)
    # believes the device ~3x faster than it is *now* (relative to this measurement, not to the
    # calibration's, which a loaded machine may have made slow): under-prunes at first
    f.oracle.calibration = 0.35 * now / (f.oracle.latency_ms({}) / f.oracle.calibration)
    chosen, trials = f.allocate(curves, budget)
    assert trials[0]["measured_ms"] > budget * MEASURE_MARGIN  # the first try missed...
    assert len(trials) >= 2
    fitting = [t for t in trials if t["ratios"] == chosen.ratios]
    assert fitting and fitting[-1]["measured_ms"] <= budget * MEASURE_MARGIN  # ...and was tightened


def _assert_allocates_on_the_floor(f: Fitter, curves: dict, budget: float) -> None:
    """`allocate` keeps a measured fit, trusting the floor's measurement (it says so)."""
    logged: list[str] = []
    f.log = logged.append
    chosen, trials = f.allocate(curves, budget)
    kept = [t for t in trials if t["ratios"] == chosen.ratios and "peak_memory_bytes" in t][-1]
    assert kept["measured_ms"] <= budget * MEASURE_MARGIN
    assert any("re-anchored" in m or "most pruned model" in m for m in logged), logged


def test_rescale_that_contradicts_the_floor_is_reanchored(dense_ms, small_corpus) -> None:
    """A re-scale from one measured allocation can make the latency model call even the
    floor over budget although the floor measured within it (CI once saw: 'budget 0.197 ms
    cannot be met ... the best reachable is about 0.0948 ms'). The search must trust the
    floor's measurement, not contradict it."""
    dense, out = dense_ms
    f, curves = _calibrated_fitter(out, small_corpus)
    budget = 0.6 * dense
    assert f.floor_ms <= budget * MEASURE_MARGIN, "the floor must fit for this test to mean anything"
    f.oracle.calibration *= 0.35  # the first allocation misses...
    real_probe = f._probe

    steered = []

    def rescale_overshoots(ratios):
        result = real_probe(ratios)
        if not steered:
            # ...and the re-scale after it is steered so pessimistic that even the floor
            # looks over budget (the search's own state, not the timing: it stays real)
            steered.append(ratios)
            f.oracle.calibration *= 1e6
        return result

    f._probe = rescale_overshoots
    _assert_allocates_on_the_floor(f, curves, budget)


def test_allocation_that_starts_contradicting_the_floor_is_reanchored(dense_ms, small_corpus) -> None:
    """A verified miss re-scales the latency model before `allocate` is called again, so the
    very first allocation of the retry can find even the floor over budget although it
    measured within it (CI once failed so: 'budget 0.174 ms cannot be met ... the best
    reachable is about 0.126 ms'). With no trial yet, the floor's measurement still wins."""
    dense, out = dense_ms
    f, curves = _calibrated_fitter(out, small_corpus)
    budget = 0.6 * dense
    assert f.floor_ms <= budget * MEASURE_MARGIN, "the floor must fit for this test to mean anything"
    f.oracle.calibration *= 1e6  # what an over-correcting verified miss leaves behind
    _assert_allocates_on_the_floor(f, curves, budget)


def test_pessimistic_calibration_is_loosened_by_measurement(dense_ms, small_corpus) -> None:
    dense, out = dense_ms
    f, curves = _calibrated_fitter(out, small_corpus)
    budget = 0.7 * dense
    # believes the device slower than it is, so that the most pruned model only just fits in
    # its eyes: the first allocation prunes (nearly) everything it may
    floor = {g: fitmod.alloc.MAX_RATIO for g in f.oracle.sizes}
    f.oracle.calibration *= 0.9 * budget * MEASURE_MARGIN / f.oracle.latency_ms(floor)
    chosen, trials = f.allocate(curves, budget)
    assert trials[0]["measured_ms"] < fitmod.LOOSEN_BELOW * budget and len(trials) >= 2
    # the loop tried a looser allocation next (whether it then fits depends on the timing;
    # the one kept is a measured fit either way)
    assert sum(trials[1]["ratios"].values()) < sum(trials[0]["ratios"].values())
    chosen_trial = [t for t in trials if t["ratios"] == chosen.ratios][-1]
    assert chosen_trial["measured_ms"] <= budget * MEASURE_MARGIN


def test_verified_miss_tightens_and_compresses_again(dense_ms, small_corpus, tmp_path, monkeypatch) -> None:
    """The first allocation of each budget is the dense model (a search that misjudged the
    device); the final measured verification must catch the miss, tighten and rebuild."""
    dense, _ = dense_ms
    # the dense model timed again in this fit's own folder (the fit reuses this calibration):
    # CI saw the module's first measurement 0.82 ms and, minutes later, the dense model verify
    # under 0.49 ms, so that the first allocation never missed; the lesser of the two is the budget's base
    first = Fitter(_cfg(tmp_path / "fit", small_corpus), log=print)
    first.calibrate()
    budget = 0.6 * min(dense, first.calibration_log[0]["measured_ms"])
    real_allocate = Fitter.allocate
    calls = {"n": 0}

    def misjudged_first(self, curves, budget_ms):
        calls["n"] += 1
        if calls["n"] == 1:
            dense = {g: 0.0 for g in self.oracle.sizes}
            return fitmod.alloc.Allocation(ratios=dense, predicted_ms=0.0, params=self.oracle.params(dense),
                                           predicted_loss=0.0), []
        return real_allocate(self, curves, budget_ms)

    monkeypatch.setattr(Fitter, "allocate", misjudged_first)
    logged: list[str] = []
    report = fitmod.fit(_cfg(tmp_path / "fit", small_corpus, budget), log=logged.append)
    r = report["results"][0]
    assert any("verified" in m and "tightening and compressing again" in m for m in logged), logged
    assert calls["n"] >= 2
    assert r["latency_ms"] <= budget and r["budget_met"], (budget, logged, r["allocation"]["measured_trials"])
    assert any(v > 0 for v in r["allocation"]["ratios"].values())
    # a rerun resumes where the retry ended: the tightened allocation is reused, not the
    # first (missed) one re-made from the untightened calibration, and nothing is recompressed
    made = calls["n"]
    logged.clear()
    again = fitmod.fit(_cfg(tmp_path / "fit", small_corpus, budget), log=logged.append)
    assert calls["n"] == made, "the rerun allocated again"
    assert any("already built with these settings" in m for m in logged), logged
    # and the finished budget's timing is the one it measured, not a new (noisy) one
    assert any("verified measurement reused" in m for m in logged), logged
    assert again["results"][0]["latency_ms"] == r["latency_ms"]
    assert again["results"][0]["allocation"]["ratios"] == r["allocation"]["ratios"]


def test_ram_budget_prunes_until_the_measured_peak_fits(dense_ms, small_corpus) -> None:
    """--budget-mb-ram (issue 15 point 4): a RAM budget halfway between the most pruned and
    the dense model's measured peaks, with a latency budget the dense model meets, can only be
    met by pruning; the verified artifact's own measured peak is within it."""
    dense, out = dense_ms
    f = Fitter(_cfg(out, small_corpus), log=print)
    f.calibrate()
    f.check_feasible()
    fixed, per_weight, how = f.ram_model()
    assert how.startswith("measured peaks") and per_weight >= f.bytes_per_weight
    dense_peak = f.calibration_log[0]["peak_memory_bytes"]
    floor_peak, _ = f.ram_floor()
    assert floor_peak < dense_peak
    budget = int((dense_peak + floor_peak) / 2)
    report = fitmod.fit(_cfg(out, small_corpus, 3 * dense, budget_ram_bytes=budget), log=print)
    r = report["results"][0]
    assert r["memory_budget_bytes"] == budget and r["ram_model"]["how"].startswith("measured peaks")
    assert any(v > 0 for v in r["allocation"]["ratios"].values()), "a binding RAM budget must prune"
    assert r["peak_memory_source"] == "measured" and r["peak_memory_bytes"] <= budget, (r["peak_memory_bytes"], budget)
    assert r["budget_met"] and not r["not_met_because"]


def test_optimistic_ram_model_is_tightened_by_measurement(dense_ms, small_corpus) -> None:
    """A RAM model that believes every allocation fits (its state steered: the dense model's
    peak read as the floor's, 0.01 B per weight) first keeps the dense model; the probe's
    measured peak misses the RAM budget, the miss steepens the model's line, and the
    allocation kept is one whose measured peak fits. The runtime and its peaks stay real."""
    dense, out = dense_ms
    f, curves = _calibrated_fitter(out, small_corpus)
    dense_peak = f.calibration_log[0]["peak_memory_bytes"]
    floor_peak, _ = f.ram_floor()
    f.ram_budget = int((dense_peak + floor_peak) / 2)
    f.calibration_log[0] = {**f.calibration_log[0], "peak_memory_bytes": floor_peak + 1}
    f.bytes_per_weight = 0.01
    assert f.budget_params() >= f.oracle.params({}), "the steered RAM model must call the dense model within budget"
    logged: list[str] = []
    f.log = logged.append
    chosen, trials = f.allocate(curves, 3 * dense)
    assert not any(trials[0]["ratios"].values()) and trials[0]["peak_memory_bytes"] > f.ram_budget * MEASURE_MARGIN
    assert f.ram_misses and "missed the RAM budget" in f.ram_model()[2]
    assert any(chosen.ratios.values())
    kept = [t for t in trials if t["ratios"] == chosen.ratios]
    if kept:  # an allocation timed here; else the floor, whose peak check_feasible measured within the budget
        assert kept[-1]["peak_memory_bytes"] <= f.ram_budget * MEASURE_MARGIN, trials
    else:
        assert chosen.ratios == f.floor_ratios and floor_peak <= f.ram_budget * MEASURE_MARGIN
