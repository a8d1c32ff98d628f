"""Run a model on audio: whole utterance (fast) or hop by hop with carried state (what
a device does). Both give the same samples; tests/test_streaming.py proves it."""

from __future__ import annotations

import numpy as np
import torch

from hwcompress.models.stft import StftConfig, StreamingStft, istft, stft
from hwcompress.models.zoo import SEModel

STFT = StftConfig()


@torch.no_grad()
def enhance(model: SEModel, audio: np.ndarray) -> np.ndarray:
    """Whole-utterance enhancement of 16 kHz mono float audio."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    spec, _ = model(stft(x, STFT), model.initial_state(1))
    return istft(spec, x.shape[-1], STFT)[0].numpy()


@torch.no_grad()
def enhance_streaming(model: SEModel, audio: np.ndarray) -> np.ndarray:
    """Hop-by-hop enhancement: one STFT frame in, state carried, one hop out. The output
    is realigned (the synthesis delay of win - hop samples removed) to match `enhance`."""
    hop, delay = STFT.hop, STFT.overlap
    n = audio.size
    n_frames = -(-(n + delay) // hop)
    padded = np.zeros(n_frames * hop, dtype=np.float32)
    padded[:n] = audio
    stream = StreamingStft(STFT)
    state = model.initial_state(1)
    out = []
    for t in range(n_frames):
        frame = stream.analyze(torch.from_numpy(padded[t * hop : (t + 1) * hop])[None])
        frame, state = model(frame, state)
        out.append(stream.synthesize(frame)[0].numpy())
    return np.concatenate(out)[delay : delay + n]
