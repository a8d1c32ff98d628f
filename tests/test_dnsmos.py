"""DNSMOS P.835 (speechmos, Microsoft's ONNX models) in metrics, eval and the fit report: real
speech from the test corpus, the real onnxruntime sessions, no network, bounded threads."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import cli
from hwcompress import metrics as M

# real speech of the test split's unseen speaker, long enough for PESQ (and one DNSMOS window each)
SPEECH = ("june-fr__0002.wav", "june-fr__0003.wav", "june-fr__0012.wav")
NOISES = ("white__test2.wav", "babble__test0.wav", "machinery__test0.wav")


def _in_range(s: M.DnsmosScore) -> bool:
    return all(math.isfinite(v) and 1.0 <= v <= 5.0 for v in (s.sig, s.bak, s.ovrl, s.p808))


@pytest.fixture(scope="module")
def clips(small_corpus) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(clean, the same speech at 0 dB SNR, noise kind): each speech clip with one noise kind."""
    from hwcompress.data.corpus import mix

    out = []
    for i, (speech, noise) in enumerate(zip(SPEECH, NOISES)):
        clean = sf.read(small_corpus / "clean" / "test" / speech, dtype="float32")[0]
        n = sf.read(small_corpus / "noise" / "test" / noise, dtype="float32")[0]
        noisy, scaled = mix(clean, n, 0.0, np.random.default_rng(i))
        out.append((scaled, noisy, noise.split("__")[0]))
    return out


def test_clean_speech_scores_higher_than_noisy_at_0db(clips) -> None:
    for clean, noisy, kind in clips:
        c, n = M.dnsmos(clean), M.dnsmos(noisy)
        assert _in_range(c) and _in_range(n), (c, n)
        # the noise is what BAK rates and what OVRL suffers from: a clear margin on every clip
        assert c.bak > n.bak + 0.5, (kind, c, n)
        assert c.ovrl > n.ovrl + 0.5, (kind, c, n)


def test_bounded_threads_and_no_network(clips, monkeypatch) -> None:
    attempts: list = []

    def refuse(self, address, *a, **k):  # any connection attempt is recorded and fails
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(M, "_DNSMOS_SESSIONS", {})  # build the sessions afresh, offline
    score = M.dnsmos(clips[0][0], threads=1)
    assert _in_range(score) and attempts == []
    model = M._DNSMOS_SESSIONS[1]
    for sess in (model.onnx_sess, model.p808_onnx_sess):
        opts = sess.get_session_options()
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
        assert sess.get_providers() == ["CPUExecutionProvider"]
    # two threads: a second pair of sessions, the same scores (the CNN is deterministic on CPU)
    two = M.dnsmos(clips[0][0], threads=2)
    assert M._DNSMOS_SESSIONS[2].onnx_sess.get_session_options().intra_op_num_threads == 2
    assert two.ovrl == pytest.approx(score.ovrl, abs=1e-4) and two.bak == pytest.approx(score.bak, abs=1e-4)


def test_input_handling(clips) -> None:
    clean = clips[0][0]
    nan = M.dnsmos(np.zeros(0, np.float32))  # speechmos would loop forever on an empty clip
    assert all(math.isnan(v) for v in nan.as_dict().values())
    bad = clean.copy()
    bad[100] = np.nan
    assert math.isnan(M.dnsmos(bad).ovrl)
    # louder than full scale: scored as its 16-bit WAV would hold it (clipped), not an error
    loud = 3.0 * clean
    assert M.dnsmos(loud) == M.dnsmos(np.clip(loud, -1, 1))
    with pytest.raises(ValueError, match="16 kHz"):
        M.dnsmos(clean, sr=8000)
    # a short clip is repeated by speechmos, not zero-padded: its score is that of the clip tiled
    short = clean[: int(16000 * 1.2)]
    assert M.dnsmos(short) == M.dnsmos(np.tile(short, 8))  # 1.2 s doubled to 9.6 s: the same window
    assert M.dnsmos_provenance(1) == "DNSMOS P.835 (speechmos 0.0.1.1, Microsoft, onnxruntime 1 thread)"


def test_score_many_summary_and_markdown(clips) -> None:
    items = [(clean, noisy, clean, {"utt": kind, "snr_db": 0}) for clean, noisy, kind in clips[:2]]
    rows = M.score_many(items, workers=1, dnsmos=True)
    for row in rows:
        for m in M.DNSMOS_METRICS:
            assert 1.0 <= row[f"noisy_{m}"] <= 5.0 and 1.0 <= row[f"enhanced_{m}"] <= 5.0
            assert row[f"delta_{m}"] == pytest.approx(row[f"enhanced_{m}"] - row[f"noisy_{m}"])
        assert row["delta_dnsmos_ovrl"] > 0.5  # "enhanced" is the clean speech here
    summ = M.summarize(rows)
    assert summ["overall"]["n_nan"]["noisy_dnsmos_ovrl"] == 0
    md = M.to_markdown(summ, "clean vs noisy")
    assert "DNSMOS P.835 (speechmos 0.0.1.1, Microsoft, onnxruntime 1 thread)" in md
    assert "| Condition | DNSMOS SIG noisy | DNSMOS SIG enhanced |" in md and "DNSMOS P.808 enhanced" in md
    # without DNSMOS: no such columns (the existing table is unchanged)
    plain = M.to_markdown(M.summarize(M.score_many(items, workers=1)), "plain")
    assert "DNSMOS" not in plain


def test_eval_shows_dnsmos_columns(small_corpus, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    proc = cli(capsys, "eval", "--model", "tiny-gru", "--data", str(small_corpus), "--limit", "2", "--workers", "1",
               "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "DNSMOS OVRL noisy" in proc.stdout and "DNSMOS BAK enhanced" in proc.stdout, proc.stdout
    assert "DNSMOS P.835 (speechmos 0.0.1.1, Microsoft, onnxruntime 1 thread)" in proc.stdout
    result = json.loads(out.read_text())
    assert result["dnsmos"]["what"].startswith("DNSMOS P.835 (speechmos 0.0.1.1")
    for row in result["rows"]:
        for c in ("noisy", "enhanced"):
            for m in M.DNSMOS_METRICS:
                assert 1.0 <= row[f"{c}_{m}"] <= 5.0, (c, m, row)
    mean = result["summary"]["overall"]["mean"]
    assert 1.0 <= mean["noisy_dnsmos_ovrl"] <= 5.0
    proc = cli(capsys, "eval", "--model", "tiny-gru", "--data", str(small_corpus), "--limit", "1", "--workers", "1",
               "--no-dnsmos")
    assert proc.returncode == 0 and "DNSMOS" not in proc.stdout, proc.stdout


def _report(q: dict, note: str | None) -> dict:
    """The fields of a fit report that the quality tables read (the rest of a fit is not run here)."""
    result = {
        "budget_ms": 5.0, "latency_ms": 1.0, "latency_source": "measured", "latency_how": "median of hops",
        "budget_met": True, "runtime_artifact_bytes": 1000, "size_bytes": 500, "dense_fp32_bytes": 4000,
        "predicted_ms": 1.1, "peak_memory_bytes": 2000, "peak_memory_source": "measured", "peak_memory_method": "rss",
        "parity_vs_torch": {"max_abs_diff": 1e-4, "snr_db": 40.0}, "macs_per_frame": {"before": 10, "after": 5},
        "files": {"runtime": ["model.onnx"], "hwc": "model.hwc"}, "layers": [], "runtime": "onnxruntime",
        "runtime_version": "1", "threads": 1, "device": "here",
        "quality": {**q, "set": "test", "n": 1, "dnsmos": note},
    }
    return {"model": "m", "target": "t", "target_description": "d", "command": None, "seconds": 1.0,
            "results": [result], "calibration": {"factor": 1.0, "log": []}, "settings": {"weights": "int8"}}


def test_fit_report_quality_rows_show_dnsmos(clips) -> None:
    from hwcompress.search import html, report as rep

    clean, noisy, _ = clips[0]
    ref, est = clean, 0.5 * (clean + noisy)  # "enhanced": half the noise gone
    row = lambda x: {**M.score(ref, x), **M.dnsmos(x).as_dict()}  # noqa: E731
    q = {"noisy": row(noisy), "baseline": row(clean), "compressed": row(est)}
    note = M.dnsmos_provenance()
    r = _report(q, note)
    md = rep.markdown(r)
    assert "| DNSMOS OVRL | DNSMOS SIG | DNSMOS BAK | DNSMOS P.808 |" in md
    budget_row = next(ln for ln in md.splitlines() if ln.startswith("| 5 |"))
    assert budget_row.endswith(f"| {q['compressed']['dnsmos_p808']:.2f} |") and f"| {q['compressed']['dnsmos_ovrl']:.2f} |" in budget_row
    assert f"DNSMOS OVRL {q['noisy']['dnsmos_ovrl']:.2f}" in md and f"DNSMOS OVRL {q['baseline']['dnsmos_ovrl']:.2f}" in md
    assert note in md and "MIT" in md
    summary, refs = html._summary(r), html._references(r)
    for part in (summary, refs):
        assert "<th class=\"num\">DNSMOS OVRL</th>" in part and "onnxruntime 1 thread" in part
    assert f">{q['noisy']['dnsmos_bak']:.2f}<" in refs and f">{q['baseline']['dnsmos_bak']:.2f}<" in refs
    assert f">{q['compressed']['dnsmos_ovrl']:.2f}<" in summary
    assert rep.summary_rows(r)[0]["dnsmos_ovrl"] == q["compressed"]["dnsmos_ovrl"]
    # a report without DNSMOS (dnsmos=False, or one written before it) renders as before
    plain = {k: {m: v for m, v in d.items() if not m.startswith("dnsmos")} for k, d in q.items()}
    r = _report(plain, None)
    assert "DNSMOS" not in rep.markdown(r) and "DNSMOS" not in html._summary(r) + html._references(r)
