"""Zoo models: shapes, streaming = whole utterance, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwcompress.enhance import enhance, enhance_streaming
from hwcompress.errors import HwcError
from hwcompress.models.io import load_model, save_model
from hwcompress.models.stft import StftConfig, istft, stft

TINY = ["tiny-crn", "tiny-gcrn", "tiny-lstm", "tiny-gru"]


def test_stft_reconstructs_exactly() -> None:
    x = torch.randn(2, 12345)
    assert torch.allclose(istft(stft(x), x.shape[-1]), x, atol=1e-5)
    assert stft(x).shape[-2] == StftConfig().n_bins


@pytest.mark.parametrize("name", TINY)
def test_streaming_equals_whole_utterance(name: str) -> None:
    torch.manual_seed(0)
    model = load_model(name).eval()
    audio = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    whole = enhance(model, audio)
    streamed = enhance_streaming(model, audio)
    assert whole.shape == audio.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    # the model really does something: output differs from the input
    assert np.abs(whole - audio).max() > 1e-4


@pytest.mark.parametrize("name", TINY)
def test_checkpoint_round_trip(tmp_path, name: str) -> None:
    model = load_model(name)
    save_model(tmp_path / "m.pt", model, {"note": "x"})
    again = load_model(str(tmp_path / "m.pt"))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert again.meta == {"note": "x"}


def test_bad_model_names_and_files(tmp_path) -> None:
    with pytest.raises(HwcError, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(HwcError, match="no such model file"):
        load_model(str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(HwcError, match="corrupt or unreadable"):
        load_model(str(corrupt))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(HwcError, match="not a hwcompress model"):
        load_model(str(foreign))
