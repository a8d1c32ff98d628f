from __future__ import annotations

import math
import os

import numpy as np
import pytest
import soundfile as sf

from hwcompress import audio as audio_mod
from hwcompress.audio import AudioError, load_audio, save_audio
from hwcompress.errors import HwcError


def _stereo(sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 1000 * t + 1.0)
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.mark.parametrize("sr", [44100, 48000, 8000, 16000])
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_resamples_stereo_to_16k_mono(tmp_path, sr, fmt):
    seconds = 1.2345  # not a whole number of output samples at every rate
    data = _stereo(sr, seconds)
    path = tmp_path / f"in_{sr}.{fmt}"
    sf.write(path, data, sr)

    out = load_audio(path)

    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == math.ceil(len(data) * 16000 / sr)
    # First channel kept: a 440 Hz tone at 0.5 amplitude, not the 1 kHz right channel.
    spec = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(len(out), 1 / 16000)
    assert abs(freqs[np.argmax(spec)] - 440) < 5
    assert 0.45 < np.max(np.abs(out[100:-100])) < 0.55


def test_reads_ogg_and_custom_rate(tmp_path):
    path = tmp_path / "x.ogg"
    sf.write(path, _stereo(48000, 0.5), 48000, format="OGG", subtype="VORBIS")
    out = load_audio(path, sample_rate=8000)
    assert len(out) == 4000


def _write(path, data, sr=16000, **kw):
    sf.write(path, np.asarray(data), sr, **kw)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: file not found"):
        load_audio(tmp_path / "nope.wav")


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + os.urandom(200))
    with pytest.raises(AudioError, match=r"corrupt\.wav: cannot read audio") as exc:
        load_audio(path)
    assert "\n" not in str(exc.value)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"zero\.wav: file is empty"):
        load_audio(path)


def test_empty_wav(tmp_path):
    path = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match=r"empty\.wav: audio is empty \(0 samples\)"):
        load_audio(path)


def test_silent_wav(tmp_path):
    path = _write(tmp_path / "noisy.wav", np.zeros(16000, dtype=np.float32))
    with pytest.raises(AudioError, match=r"noisy\.wav: audio is silent \(peak 0\)"):
        load_audio(path)


def test_nan_wav(tmp_path):
    data = 0.1 * np.sin(np.arange(16000) / 10).astype(np.float32)
    data[100:103] = np.nan
    path = _write(tmp_path / "nan.wav", data, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: audio contains 3 NaN/Inf samples"):
        load_audio(path)


def test_too_short(tmp_path):
    path = _write(tmp_path / "short.wav", 0.1 * np.ones(800, dtype=np.float32))
    with pytest.raises(AudioError, match=r"short\.wav: audio is too short \(0\.050 s"):
        load_audio(path)


def test_audio_error_is_user_error():
    assert issubclass(AudioError, HwcError)


def test_save_roundtrip_clips_and_creates_dirs(tmp_path):
    dest = tmp_path / "a" / "b" / "out.wav"
    x = np.linspace(-2, 2, 16000).astype(np.float32)
    save_audio(dest, x)

    info = sf.info(dest)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)
    back, _ = sf.read(dest, dtype="float32")
    assert back.max() <= 1.0 and back.min() >= -1.0
    assert back[0] == -1.0 and back[-1] > 0.999
    np.testing.assert_allclose(back[6000:10000], x[6000:10000], atol=1 / 32768 + 1e-6)
    assert os.listdir(dest.parent) == ["out.wav"]  # no temp file left behind


def test_save_accepts_torch_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    dest = tmp_path / "t.wav"
    save_audio(dest, torch.full((1, 1600), 0.25, requires_grad=True))
    back, _ = sf.read(dest, dtype="float32")
    assert back.shape == (1600,) and abs(back[0] - 0.25) < 1e-4


def test_failed_save_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    dest = tmp_path / "out.wav"
    save_audio(dest, 0.5 * np.ones(1600, dtype=np.float32))
    before = dest.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # an interrupted run, mid-write

    monkeypatch.setattr(audio_mod.sf, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        save_audio(dest, np.zeros(1600, dtype=np.float32))
    assert dest.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.wav"]


def test_save_rejects_nan(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        save_audio(tmp_path / "x.wav", np.array([0.0, np.nan], dtype=np.float32))
    assert os.listdir(tmp_path) == []
