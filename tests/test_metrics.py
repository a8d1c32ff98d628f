from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import lfilter

from hwcompress import metrics as M

SR = 16000


def speech_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Deterministic stand-in for speech that PESQ's voice-activity detector accepts:
    a gliding harmonic source (f0 ~120 Hz), vowel-like formant resonances that change
    every 250 ms, and a 4 Hz syllabic envelope with pauses."""
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    t = np.arange(n) / SR
    f0 = 120 + 15 * np.sin(2 * np.pi * 0.7 * t) + 8 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    src = sum(np.sin(k * phase) / k for k in range(1, 46)) + 0.05 * rng.standard_normal(n)
    vowels = [(700, 1200, 2600), (300, 2300, 3000), (500, 900, 2500), (400, 1900, 2600)]
    seg = SR // 4
    out = np.zeros(n)
    for i, start in enumerate(range(0, n, seg)):
        y = src[start:start + seg]
        for fc, bw in zip(vowels[i % len(vowels)], (80, 100, 150)):
            r = np.exp(-np.pi * bw / SR)
            y = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / SR), r * r], y)
        out[start:start + seg] = y
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 0.7
    env *= (t > 0.2) & (t < seconds - 0.2)
    out *= env
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


CLEAN = speech_like()
_NOISE = np.random.default_rng(1).standard_normal(CLEAN.size).astype(np.float32)


def at_snr(snr_db: float) -> np.ndarray:
    gain = np.sqrt(np.mean(CLEAN**2) / np.mean(_NOISE**2) / 10 ** (snr_db / 10))
    return (CLEAN + gain * _NOISE).astype(np.float32)


def test_identical_signals_score_perfectly():
    s = M.score(CLEAN, CLEAN)
    assert set(s) == {"pesq_wb", "stoi", "estoi", "si_sdr"}
    assert s["pesq_wb"] > 4.4
    assert s["stoi"] == pytest.approx(1.0, abs=1e-3)
    assert s["estoi"] == pytest.approx(1.0, abs=1e-3)
    assert s["si_sdr"] > 40 and math.isfinite(s["si_sdr"])


def test_noisier_copy_scores_lower_on_every_metric():
    cleaner = M.score(CLEAN, at_snr(30))
    noisier = M.score(CLEAN, at_snr(5))
    for m in M.METRICS:
        assert noisier[m] < cleaner[m], m


def test_si_sdr_matches_snr_and_is_scale_invariant():
    est = at_snr(10)
    assert M.si_sdr(CLEAN, est) == pytest.approx(10.0, abs=0.1)
    assert M.si_sdr(CLEAN, 0.1 * est + 0.3) == pytest.approx(M.si_sdr(CLEAN, est), abs=1e-6)


def test_undefined_metrics_are_nan_not_errors():
    rng = np.random.default_rng(0)
    short_ref, short_est = rng.standard_normal(1600), rng.standard_normal(1600)
    assert math.isnan(M.pesq_wb(short_ref, short_est))
    assert math.isnan(M.stoi(short_ref, short_est, SR))  # pystoi's 1e-5 sentinel
    zeros = np.zeros(2 * SR)
    assert math.isnan(M.pesq_wb(zeros, zeros))


def test_length_mismatch_and_wrong_rate_raise():
    with pytest.raises(ValueError, match="lengths differ"):
        M.si_sdr(CLEAN, CLEAN[:-1])
    with pytest.raises(ValueError, match="16 kHz"):
        M.pesq_wb(CLEAN, CLEAN, sr=8000)


def _items():
    return [
        (CLEAN, at_snr(0), at_snr(10), {"utt": "a", "snr_db": 0}),
        (CLEAN, at_snr(5), at_snr(20), {"utt": "b", "snr_db": 5}),
    ]


def test_score_many_rows_in_process_and_parallel_agree():
    serial = M.score_many(_items(), workers=1)
    parallel = M.score_many(_items(), workers=2)
    assert [r["utt"] for r in serial] == ["a", "b"]
    for s_row, p_row in zip(serial, parallel):
        assert s_row.keys() == p_row.keys()
        for k, v in s_row.items():
            assert v == (pytest.approx(p_row[k]) if isinstance(v, float) else p_row[k])
    row = serial[0]
    for m in M.METRICS:
        assert row[f"delta_{m}"] == pytest.approx(row[f"enhanced_{m}"] - row[f"noisy_{m}"])
    assert row["delta_si_sdr"] == pytest.approx(10.0, abs=0.2)
    assert M.score_many([], workers=2) == []


def test_score_many_rejects_clashing_meta():
    with pytest.raises(ValueError, match="clash"):
        M.score_many([(CLEAN, CLEAN, CLEAN, {"noisy_stoi": 1})], workers=1)


def _row(snr, value, utt="u"):
    row = {"utt": utt, "snr_db": snr}
    for m in M.METRICS:
        row[f"noisy_{m}"] = value
        row[f"enhanced_{m}"] = value + 1
        row[f"delta_{m}"] = 1.0
    return row


def test_summarize_groups_by_snr_and_skips_nan():
    rows = [_row(5, 2.0), _row(-5, 1.0), _row(-5, 3.0), _row(0, 1.5)]
    rows[1]["enhanced_pesq_wb"] = float("nan")
    rows[1]["delta_pesq_wb"] = float("nan")
    summ = M.summarize(rows)

    assert list(summ["groups"]) == [-5, 0, 5]  # numeric order for per-SNR tables
    g = summ["groups"][-5]
    assert g["n"] == 2
    assert g["mean"]["noisy_pesq_wb"] == pytest.approx(2.0)
    assert g["mean"]["enhanced_pesq_wb"] == pytest.approx(4.0)  # NaN excluded
    assert g["n_nan"]["enhanced_pesq_wb"] == 1 and g["n_nan"]["noisy_pesq_wb"] == 0
    assert summ["overall"]["n"] == 4
    assert summ["overall"]["mean"]["noisy_stoi"] == pytest.approx(7.5 / 4)
    assert summ["overall"]["n_nan"]["delta_pesq_wb"] == 1


def test_summarize_all_nan_column_and_no_grouping():
    rows = [_row(0, 1.0), _row(0, 2.0)]
    for r in rows:
        r["noisy_pesq_wb"] = float("nan")
    summ = M.summarize(rows, group_by=None)
    assert summ["groups"] == {}
    assert math.isnan(summ["overall"]["mean"]["noisy_pesq_wb"])
    assert summ["overall"]["n_nan"]["noisy_pesq_wb"] == 2


def test_to_markdown_table():
    rows = [_row(-5, 1.0), _row(0, 2.0)]
    rows[0]["noisy_pesq_wb"] = float("nan")
    md = M.to_markdown(M.summarize(rows), "Baseline vs int8")
    lines = md.splitlines()
    assert lines[0] == "### Baseline vs int8"
    header = (
        "| Condition | PESQ-WB noisy | PESQ-WB enhanced | STOI noisy | STOI enhanced | "
        "ESTOI noisy | ESTOI enhanced | SI-SDR (dB) noisy | SI-SDR (dB) enhanced | n |"
    )
    assert header in lines
    table = [ln for ln in lines if ln.startswith("| ")]
    assert len(table) == 5  # header, alignment, overall, two SNR groups
    assert table[2].startswith("| Overall | 2.00 | 2.50 |") and table[2].endswith("| 2 |")
    assert table[3].startswith("| SNR -5 dB | n/a | 2.00 |")
    assert table[4].startswith("| SNR 0 dB |")
    assert "PESQ-WB noisy: 1 of 2" in md


def test_end_to_end_markdown_from_scores():
    md = M.to_markdown(M.summarize(M.score_many(_items(), workers=1)), "Eval")
    assert "| SNR 0 dB |" in md and "| SNR 5 dB |" in md
