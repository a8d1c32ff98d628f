"""Corpus v2's generated training noise: seeded, finite, and each where its kind puts its energy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from hwcompress.data import sources as src

N = 3 * src.SR


def band_share(x: np.ndarray, lo: float, hi: float) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / src.SR)
    return float(power[(f >= lo) & (f < hi)].sum() / power.sum())


@pytest.mark.parametrize("kind", sorted(src.EXTRA_NOISES))
def test_seeded_finite_and_normalised(kind) -> None:
    make = src.EXTRA_NOISES[kind]
    a, b = make(np.random.default_rng(4), N), make(np.random.default_rng(4), N)
    c = make(np.random.default_rng(5), N)
    assert a.dtype == np.float32 and a.shape == (N,) and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.99 < np.abs(a).max() <= 1.0 and np.sqrt(np.mean(a**2)) > 0.01


def test_each_kind_has_its_own_spectrum() -> None:
    rng = np.random.default_rng(0)
    car, rain, vent = src.car(rng, N), src.rain(rng, N), src.ventilation(rng, N)
    assert band_share(car, 0, 500) > 0.8  # road rumble and engine: low frequencies
    assert band_share(rain, 1000, 8000) > 0.5  # drops and wash: high frequencies
    assert band_share(vent, 0, 2000) > 0.6


def test_clatter_is_impulsive() -> None:
    x = src.clatter(np.random.default_rng(1), N)
    frames = (x[: N // 160 * 160].reshape(-1, 160) ** 2).mean(1)
    # impacts: the loudest 10 ms frames are far above the typical one; for the steady
    # ventilation noise the same ratio is below 3
    assert np.percentile(frames, 99) > 8 * np.median(frames)
    steady = src.ventilation(np.random.default_rng(1), N)
    frames = (steady[: N // 160 * 160].reshape(-1, 160) ** 2).mean(1)
    assert np.percentile(frames, 99) < 3 * np.median(frames)


def test_espeak_speed_variant_changes_the_speech() -> None:
    text = "the quiet river carries a small letter"
    slow = src.synthesize("espeak-ng", "en-us+m3@s100p30", text)
    fast = src.synthesize("espeak-ng", "en-us+m3@s220p30", text)
    assert slow.size > 1.6 * fast.size


def test_alerts_are_tonal() -> None:
    """Bells, melodies, beeps and alarms: in the loud frames the power sits in a few narrow
    peaks (low spectral flatness), unlike broadband noise."""
    x = src.alerts(np.random.default_rng(2), N)
    f, t, spec = scipy.signal.stft(x, src.SR, nperseg=512)
    power = np.abs(spec) ** 2
    loud = power[:, power.sum(0) > 0.1 * power.sum(0).max()]
    flatness = np.exp(np.mean(np.log(loud + 1e-12), 0)) / loud.mean(0)
    assert np.median(flatness) < 0.05
    white = np.abs(scipy.signal.stft(np.random.default_rng(0).standard_normal(N), src.SR, nperseg=512)[2]) ** 2
    assert np.median(np.exp(np.mean(np.log(white + 1e-12), 0)) / white.mean(0)) > 0.3
