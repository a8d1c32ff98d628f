"""Acceptance of the shipped default model (slow: builds the full offline corpus once).

The default model must be over the Raspberry Pi 4 target's budget (so hardware-aware
compression has work to do there) and must clearly enhance real recorded speech of a speaker it never
heard, through the same `hwcompress enhance` a user runs.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hwcompress.audio import load_audio
from hwcompress.metrics import pesq_wb, stoi
from hwcompress.models.io import load_model
from hwcompress.profile.latency_model import predict_latency
from hwcompress.targets import load_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus():
    from hwcompress.data.corpus import ensure_default_corpus

    return ensure_default_corpus()


def test_default_model_is_large_for_the_pi() -> None:
    model = load_model("default")
    assert model.meta.get("trained") is True
    pi = load_target("raspberrypi4")
    predicted = predict_latency(model, pi).latency_ms
    # dense per-hop latency over the Pi's default budget (issue 14's rule for the default: `fit`
    # has compression work to do), and within 4x of it (the budget stays reachable)
    assert pi.latency_budget_ms < predicted <= 4 * pi.latency_budget_ms


def test_enhance_cli_improves_unseen_real_speech(corpus, tmp_path) -> None:
    import json

    rows = json.loads((corpus / "mix" / "test.json").read_text())
    assert {r["speaker"] for r in rows} == {"june-fr"}  # never in training
    picked = [r for r in rows if r["snr_db"] in (0, 5)][:8]
    gains = []
    for row in picked:
        noisy_path = corpus / "mix" / "test" / f"{row['id']}_noisy.wav"
        out = tmp_path / f"{row['id']}.wav"
        proc = subprocess.run([sys.executable, "-m", "hwcompress", "enhance", str(noisy_path), str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        clean = load_audio(corpus / "mix" / "test" / f"{row['id']}_clean.wav")
        noisy, enhanced = load_audio(noisy_path), load_audio(out)
        gains.append((pesq_wb(clean, enhanced) - pesq_wb(clean, noisy), stoi(clean, enhanced) - stoi(clean, noisy)))
    pesq_gain, stoi_gain = np.nanmean(np.array(gains), axis=0)
    # measured on these 8 files: PESQ +0.201, STOI +0.064 (the nsnet2-wide default of issue 14;
    # the CRN before it: +0.087, +0.028, which these bounds reject)
    assert pesq_gain > 0.12, gains
    assert stoi_gain > 0.035, gains
