"""Search: allocation logic on synthetic curves, and `hwcompress fit` end to end on a tiny
model with the small corpus (measured on this machine's onnxruntime)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hwcompress.models.io import load_model
from hwcompress.search import allocate as alloc
from hwcompress.targets import load_target


@pytest.fixture(scope="module")
def crn_oracle():
    return alloc.CostOracle(load_model("crn-small"), load_target("raspberrypi4"), weight_bits=8)


def _curves(oracle, expensive: set[str]) -> dict:
    # loss grows with the ratio; groups in `expensive` lose 10x more
    return {g: [(0.0, 0.0)] + [(r, r * r * (10.0 if g in expensive else 1.0)) for r in (0.25, 0.5, 0.75)]
            for g in oracle.sizes}


def test_allocation_meets_budget_and_spares_sensitive_groups(crn_oracle) -> None:
    dense = crn_oracle.latency_ms({})
    budget = 0.6 * dense
    curves = _curves(crn_oracle, expensive={"rnn.0"})
    a = alloc.allocate(curves, crn_oracle, budget)
    assert a.predicted_ms <= budget < dense
    assert a.predicted_ms == pytest.approx(crn_oracle.latency_ms(a.ratios))
    # with the LSTM 10x more sensitive the search prunes elsewhere first
    flipped = alloc.allocate(_curves(crn_oracle, expensive=set(crn_oracle.sizes) - {"rnn.0"}), crn_oracle, budget)
    assert a.ratios["rnn.0"] < flipped.ratios["rnn.0"]
    assert a.predicted_loss == pytest.approx(sum(alloc.interpolate(curves[g], r) for g, r in a.ratios.items()))


def test_allocation_leaves_a_model_alone_when_it_fits(crn_oracle) -> None:
    a = alloc.allocate(_curves(crn_oracle, set()), crn_oracle, crn_oracle.latency_ms({}) * 1.01)
    assert not any(a.ratios.values()) and a.steps == []


def test_infeasible_budget_names_best_reachable(crn_oracle) -> None:
    floor = crn_oracle.latency_ms({g: alloc.MAX_RATIO for g in crn_oracle.sizes})
    with pytest.raises(alloc.Infeasible, match="reaches"):
        alloc.allocate(_curves(crn_oracle, set()), crn_oracle, floor * 0.5)


def test_size_budget_is_met(crn_oracle) -> None:
    dense = crn_oracle.params({})
    a = alloc.allocate(_curves(crn_oracle, set()), crn_oracle, None, budget_params=dense // 3)
    assert a.params <= dense // 3


def test_oracle_matches_a_real_shrink() -> None:
    from hwcompress.compress.prune import apply_masks, structured_masks
    from hwcompress.compress.shrink import shrink
    from hwcompress.models.cost import count_params
    from hwcompress.profile.latency_model import predict_latency

    model = load_model("crn-small")
    ratios = {"rnn.0": 0.5, "enc.3": 0.25, "proj": 0.125}
    oracle = alloc.CostOracle(model, load_target("raspberrypi4"), weight_bits=8)
    apply_masks(model, structured_masks(model, ratios))
    small = shrink(model)
    assert oracle.params(ratios) == count_params(small)
    assert oracle.latency_ms(ratios) == pytest.approx(predict_latency(small, load_target("raspberrypi4"), 8).latency_ms)


def test_codebooks_trade_bits_for_loss() -> None:
    curves = {"big": [(0, 0), (4, 0.05), (16, 0.01)], "small": [(0, 0), (4, 0.001), (16, 0.0)]}
    weights = {"big": 10**6, "small": 10**3}
    loose = alloc.choose_codebooks(curves, weights, tolerance=1.0)
    assert loose == {"big": 4, "small": 4}
    tight = alloc.choose_codebooks(curves, weights, tolerance=0.02)
    assert tight["big"] == 16  # K=4 on the big layer alone would cost 0.05 > 0.02
    assert alloc.choose_codebooks(curves, weights, tolerance=0.0) == {"big": 256, "small": 16}


def test_codebook_curves_keep_each_k_its_own_loss() -> None:
    """The harsher codebook is the smaller K: a K=16 that costs little must not inherit
    K=8's loss (it did, so fits chose only K=8 or 256)."""
    k_sens = {"base": -1.0, "scores": {"gru": {8: -1.3, 16: -1.01, 32: -1.02}}}
    curve = dict(alloc.codebook_curves(k_sens)["gru"])
    assert curve[8.0] == pytest.approx(0.3) and curve[16.0] == pytest.approx(0.02)
    assert curve[32.0] == pytest.approx(0.02)  # a dip at a larger K is noise: the envelope
    ks = alloc.choose_codebooks(alloc.codebook_curves(k_sens), {"gru": 10**6}, tolerance=0.05)
    assert ks == {"gru": 16}


# ---------------------------------------------------------------- CLI end to end


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=900)


def _user_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("calibrate", "sensitivity"))]
    assert "Traceback" not in proc.stderr
    assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr


FAST = ["--model", "tiny-crn", "--prune-steps", "4", "--cluster-steps", "2", "--eval-items", "3", "--measure-runs", "50",
        "--no-dnsmos"]  # DNSMOS in the report: test_report_html / test_dnsmos


@pytest.fixture(scope="module")
def fitted(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    # two budgets on the measurable onnxruntime target: a generous one and the dense latency
    proc = run("fit", "--target", "generic-onnx", "--budget-ms", "5,2", "--data", str(small_corpus),
               "--out", str(out), "--json", *FAST)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout), proc


def test_fit_report_schema_and_files(fitted) -> None:
    out, report, _ = fitted
    assert report["target"] == "generic-onnx" and len(report["results"]) == 2
    # torch's device (--device auto): the CPU here, a CUDA GPU where there is one
    assert report["settings"]["device"] == "auto"
    assert report["torch_device"] == "cpu" or (torch.cuda.is_available() and report["torch_device"].startswith("cuda:"))
    for r in report["results"]:
        assert r["latency_source"] == "measured" and r["runtime"] == "onnxruntime" and r["threads"] == 1
        assert r["budget_met"] is (r["latency_ms"] <= r["budget_ms"] and r["runtime_artifact_bytes"] <= r["budget_bytes"])
        assert r["budget_met"]  # a tiny model runs far under 2 ms
        for key in ("pesq_wb", "stoi", "si_sdr"):
            assert key in r["quality"]["compressed"] and key in r["quality"]["baseline"]
        for layer in r["layers"]:
            assert {"name", "params", "structured_sparsity", "unstructured_sparsity", "k", "hwc_bytes"} <= set(layer)
        hwc = out / f"budget-{r['budget_ms']:g}ms" / "model.hwc"
        assert hwc.stat().st_size == r["size_bytes"]
        assert sum((out / f"budget-{r['budget_ms']:g}ms" / "export" / f.split("/")[-1]).stat().st_size
                   for f in r["files"]["runtime"]) == r["runtime_artifact_bytes"]
    for name in ("report.json", "report.md", "report.html", "command.txt"):
        assert (out / name).stat().st_size > 0
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "--budget-ms 5,2" in (out / "command.txt").read_text()


def test_fit_resumes_without_recomputing(fitted, small_corpus) -> None:
    out, first, _ = fitted
    proc = run("fit", "--target", "generic-onnx", "--budget-ms", "5,2", "--data", str(small_corpus),
               "--out", str(out), "--json", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "already built with these settings" in proc.stderr
    again = json.loads(proc.stdout)
    assert [r["size_bytes"] for r in again["results"]] == [r["size_bytes"] for r in first["results"]]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--target", "generic-onnx", "--budget-ms", "0"], "latency budget must be a finite positive number"),
        (["--target", "generic-onnx", "--budget-ms", "-3"], "latency budget must be a finite positive number"),
        (["--target", "generic-onnx", "--budget-ms", "fast"], "--budget-ms takes numbers"),
        (["--target", "generic-onnx", "--budget-kb", "0"], "size budget must be a finite positive number"),
        (["--target", "generic-onnx", "--budget-mb-ram", "0"], "RAM budget must be a finite positive number"),
        (["--target", "generic-onnx", "--budget-mb-ram", "nan"], "RAM budget must be a finite positive number"),
        (["--target", "pdp11"], "unknown target"),
    ],
)
def test_fit_bad_input(tmp_path, args, fragment) -> None:
    _user_error(run("fit", *args, "--out", str(tmp_path), *FAST), fragment)


def test_fit_impossible_budget_fails_fast_with_best_reachable(tmp_path, small_corpus) -> None:
    proc = run("fit", "--target", "generic-onnx", "--budget-ms", "0.0001", "--data", str(small_corpus),
               "--out", str(tmp_path), *FAST)
    _user_error(proc, "cannot be met on generic-onnx: the best reachable is about")
    assert not (tmp_path / "sensitivity").exists()  # failed before any expensive stage


def test_fit_impossible_size_fails_before_the_dense_export(tmp_path, small_corpus) -> None:
    """A size budget that even the most pruned model's weights exceed is refused in seconds,
    before the calibration exports the dense model (TFLite Micro aborted on a file that large)."""
    proc = run("fit", "--target", "generic-onnx", "--budget-kb", "0.25", "--data", str(small_corpus),
               "--out", str(tmp_path), *FAST)
    _user_error(proc, "size budget 256 B cannot be met on generic-onnx: even with 75% of every group pruned")
    assert not (tmp_path / "calibration.json").exists()


def test_fit_impossible_ram_fails_before_the_search(tmp_path, small_corpus) -> None:
    """A RAM budget the most pruned model's measured peak exceeds is refused once that floor
    is measured, before the sensitivities."""
    proc = run("fit", "--target", "generic-onnx", "--budget-mb-ram", "0.01", "--data", str(small_corpus),
               "--out", str(tmp_path), *FAST)
    _user_error(proc, "RAM budget 10485 B cannot be met on generic-onnx: with 75% of every group pruned the runtime "
                      "still needs about")
    assert "(measured here;" in proc.stderr, proc.stderr
    assert not (tmp_path / "sensitivity").exists()


def test_uniform_baseline_uses_one_ratio_and_costs_more_loss(crn_oracle) -> None:
    curves = _curves(crn_oracle, expensive={"rnn.0"})
    budget = 0.6 * crn_oracle.latency_ms({})
    u = alloc.uniform(curves, crn_oracle, budget)
    assert len(set(u.ratios.values())) == 1 and u.predicted_ms <= budget
    # one notch less pruning misses the budget: the smallest uniform ratio was found
    r = next(iter(u.ratios.values()))
    assert crn_oracle.latency_ms({g: max(0.0, r - 0.01) for g in u.ratios}) > budget
    assert alloc.allocate(curves, crn_oracle, budget).predicted_loss < u.predicted_loss


def test_measured_allocation_loosens_after_a_pessimistic_calibration(crn_oracle) -> None:
    """The control loop of Fitter.allocate, fed timings from a stand-in device whose true
    speed is the latency model's prediction: a calibration that was 2x too slow (a noisy
    first measurement) over-prunes at first; the loop must loosen and keep the feasible
    allocation that loses least, not stop at the first one that fits."""
    from hwcompress.search.fit import MEASURE_MARGIN, FitConfig, Fitter

    oracle, truth = _scaled(crn_oracle, 2.0), _scaled(crn_oracle, 1.0)
    f = Fitter.__new__(Fitter)
    f.cfg, f.oracle, f.measurable, f.log = FitConfig(target="raspberrypi4", out="unused", retries=4), oracle, True, print
    f.floor_ms, f.floor_how = 0.0, "-"
    f.budget_params = lambda: 10**12
    f._probe = lambda ratios: {"measured_ms": truth.latency_ms(ratios), "bytes": 0, "params": 0}
    budget = 0.7 * truth.latency_ms({})
    curves = _curves(crn_oracle, expensive={"rnn.0"})
    chosen, trials = f.allocate(curves, budget)
    assert len(trials) >= 2 and trials[0]["measured_ms"] < 0.8 * budget  # first try over-pruned
    assert truth.latency_ms(chosen.ratios) <= budget * MEASURE_MARGIN
    first = alloc.allocate(curves, _scaled(crn_oracle, 2.0), budget * MEASURE_MARGIN)
    assert chosen.predicted_loss < first.predicted_loss


def _scaled(oracle, factor: float):
    o = alloc.CostOracle(oracle.model, oracle.target, weight_bits=8)
    o.calibration = factor
    return o
