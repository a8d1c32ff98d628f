"""Speech-enhancement model zoo: the paper's three families, all causal and streamable.

Every model maps a noisy spectrum [B, T, F, 2] and a flat state list to an enhanced
spectrum and the next state. T may be a whole utterance (state = zeros) or one frame.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from hwcompress.models.layers import CausalConv2d, CausalConvTranspose2d, Recurrent

EPS = 1e-10


def _freqs(n_bins: int, depth: int) -> list[int]:
    freqs = [n_bins]
    for _ in range(depth):
        freqs.append((freqs[-1] - 3) // 2 + 1)
    return freqs


class SEModel(nn.Module):
    arch = ""

    def __init__(self, n_bins: int) -> None:
        super().__init__()
        # per-bin log-power normalisation, fitted on training data (see train.fit_normalizer)
        self.register_buffer("feat_mean", torch.zeros(n_bins))
        self.register_buffer("feat_std", torch.ones(n_bins))
        self.n_bins = n_bins

    @property
    def config(self) -> dict:
        raise NotImplementedError

    def state_shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        """Zero state on the model's device."""
        return [torch.zeros((batch, *s), device=self.feat_mean.device) for s in self.state_shapes()]

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        power = spec.pow(2).sum(-1)
        return (torch.log(power + EPS) - self.feat_mean) / self.feat_std


class RnnMasker(SEModel):
    """Recurrent T-F mask estimator (LSTM or GRU stack + linear + sigmoid mask)."""

    arch = "rnn"

    def __init__(self, hidden: list[int] = (1024, 1024, 1024, 1024), cell: str = "lstm", n_bins: int = 161) -> None:
        super().__init__(n_bins)
        self.cell = cell
        self.rnn = Recurrent(cell, [n_bins, *hidden])
        self.out = nn.Linear(list(hidden)[-1], n_bins)

    # Widths are read from the layers, never stored beside them: physical shrinking
    # (hwcompress.compress.shrink) replaces layers by smaller ones, and config,
    # state_shapes and export then describe the model that is really there.
    @property
    def hidden(self) -> list[int]:
        return [layer.hidden_size for layer in self.rnn.layers]

    @property
    def config(self) -> dict:
        return {"hidden": self.hidden, "cell": self.cell, "n_bins": self.n_bins}

    def state_shapes(self) -> list[tuple[int, ...]]:
        return self.rnn.state_shapes()

    def forward(self, spec: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, state = self.rnn(self.features(spec), state)
        mask = torch.sigmoid(self.out(h))
        return spec * mask.unsqueeze(-1), state


class CRN(SEModel):
    """Convolutional recurrent network (Tan & Wang 2018): conv encoder, recurrent
    bottleneck, transposed-conv decoder with skips, magnitude mask on the noisy STFT."""

    arch = "crn"
    #: encoder input planes: the log-magnitude (CRN) or magnitude, real and imaginary (GCRN)
    input_channels = 1
    #: GLU-gated convolutions (GCRN) instead of ELU
    gated = False

    def __init__(
        self,
        channels: list[int] = (16, 32, 64, 128, 256),
        hidden: list[int] = (1024, 1024),
        cell: str = "lstm",
        kt: int = 2,
        n_bins: int = 161,
        proj_channels: int | None = None,
        dec_channels: list[int] | None = None,
    ) -> None:
        super().__init__(n_bins)
        channels, hidden = [int(c) for c in channels], [int(h) for h in hidden]
        self.cell, self.kt = cell, kt
        self.freqs = _freqs(n_bins, len(channels))
        proj, dec = self._widths(channels, proj_channels, dec_channels)
        ins = [self.input_channels, *channels[:-1]]
        # gated layers produce value and gate halves: 2 * c_out channels, GLU over channels
        self.enc = nn.ModuleList(CausalConv2d(a, self._per_unit * b, kt) for a, b in zip(ins, channels))
        self.rnn = Recurrent(cell, [channels[-1] * self.freqs[-1], *hidden])
        self.proj = nn.Linear(hidden[-1], proj * self.freqs[-1])
        self.dec = self._decoder(channels, proj, dec, gated=self.gated)
        self.act = nn.GLU(dim=1) if self.gated else nn.ELU()

    @property
    def _per_unit(self) -> int:
        return 2 if self.gated else 1

    # Shrinking (hwcompress.compress.shrink) makes the bottleneck projection and the
    # decoder narrower than the mirrored encoder; these optional widths let the config
    # express that while old configs (without them) still build the mirrored model.
    @staticmethod
    def _widths(channels: list[int], proj_channels: int | None, dec_channels: list[int] | None,
                what: str = "dec_channels") -> tuple[int, list[int]]:
        proj = channels[-1] if proj_channels is None else int(proj_channels)
        default = channels[-2::-1]
        dec = default if dec_channels is None else [int(c) for c in dec_channels]
        if len(dec) != len(default):
            raise TypeError(f"{what} needs {len(default)} values (one per decoder stage before the mask)")
        return proj, dec

    def _decoder(self, channels: list[int], proj: int, widths: list[int], gated: bool) -> nn.ModuleList:
        """Decoder stage j takes [previous stage (or proj), encoder skip] and outputs
        widths[j] channels (doubled for value/gate when gated); the last stage is the mask."""
        n = len(channels)
        layers = nn.ModuleList()
        prev = proj
        for j in range(n):
            i = n - 1 - j
            pad = self.freqs[i] - (2 * self.freqs[i + 1] + 1)
            c_out = 1 if j == n - 1 else (2 if gated else 1) * widths[j]
            layers.append(CausalConvTranspose2d(prev + channels[i], c_out, self.kt, out_pad_f=pad))
            prev = widths[j] if j < n - 1 else 1
        return layers

    # Widths are read from the layers, never stored beside them: physical shrinking
    # replaces layers by smaller ones, and config, state_shapes and export then describe
    # the model that is really there.
    @property
    def channels(self) -> list[int]:
        return [layer.conv.out_channels // self._per_unit for layer in self.enc]

    @property
    def hidden(self) -> list[int]:
        return [layer.hidden_size for layer in self.rnn.layers]

    @property
    def proj_channels(self) -> int:
        return self.proj.out_features // self.freqs[-1]

    def _stage_widths(self, decoder: nn.ModuleList) -> list[int]:
        return [layer.conv.out_channels // self._per_unit for layer in list(decoder)[:-1]]

    @property
    def dec_channels(self) -> list[int]:
        return self._stage_widths(self.dec)

    def _mirrored(self) -> list[int]:
        return self.channels[-2::-1]

    def _width_config(self) -> dict:
        # only non-default widths are written, so configs of unshrunk models stay as before
        extra: dict = {}
        if self.proj_channels != self.channels[-1]:
            extra["proj_channels"] = self.proj_channels
        if self.dec_channels != self._mirrored():
            extra["dec_channels"] = list(self.dec_channels)
        return extra

    @property
    def config(self) -> dict:
        return {"channels": self.channels, "hidden": self.hidden, "cell": self.cell, "kt": self.kt,
                "n_bins": self.n_bins, **self._width_config()}

    def _conv_state_shapes(self) -> list[tuple[int, ...]]:
        shapes = [layer.context_shape(f) for layer, f in zip(self.enc, self.freqs)]
        shapes += [layer.context_shape(self.freqs[len(self.channels) - j]) for j, layer in enumerate(self.dec)]
        return shapes

    def state_shapes(self) -> list[tuple[int, ...]]:
        return self._conv_state_shapes() + self.rnn.state_shapes()

    def _decode(self, decoder, x, skips, ctx, act_last):
        new_ctx = []
        for j, layer in enumerate(decoder):
            x, c = layer(torch.cat([x, skips[-1 - j]], dim=1), ctx[j])
            new_ctx.append(c)
            if j < len(decoder) - 1:
                x = self.act(x)
        return act_last(x), new_ctx

    def forward(self, spec: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n_conv = len(self.enc)
        x = self.features(spec).unsqueeze(1)  # [B, 1, T, F]
        skips, new_state = [], []
        for layer, ctx in zip(self.enc, state[:n_conv]):
            x, c = layer(x, ctx)
            x = self.act(x)
            skips.append(x)
            new_state.append(c)
        b, ch, t, f = x.shape
        h, rnn_state = self.rnn(x.permute(0, 2, 1, 3).reshape(b, t, ch * f), state[2 * n_conv :])
        x = self.proj(h).reshape(b, t, self.proj_channels, f).permute(0, 2, 1, 3)
        mask, dec_ctx = self._decode(self.dec, x, skips, state[n_conv : 2 * n_conv], torch.sigmoid)
        out = spec * mask.squeeze(1).unsqueeze(-1)
        return out, new_state + dec_ctx + rnn_state


class GCRN(CRN):
    """Gated CRN (Tan & Wang 2019 style): gated (GLU) convolutions and two decoders
    estimating the real and imaginary parts of a complex ratio mask."""

    arch = "gcrn"
    input_channels = 3
    gated = True

    def __init__(
        self,
        channels: list[int] = (16, 32, 64, 128, 256),
        hidden: list[int] = (1024, 1024),
        cell: str = "lstm",
        kt: int = 2,
        n_bins: int = 161,
        proj_channels: int | None = None,
        dec_channels: list[int] | None = None,
        dec_imag_channels: list[int] | None = None,
    ) -> None:
        super().__init__(channels, hidden, cell, kt, n_bins, proj_channels, dec_channels)
        channels = [int(c) for c in channels]
        proj, dec_imag = self._widths(channels, proj_channels, dec_imag_channels, "dec_imag_channels")
        self.dec_imag = self._decoder(channels, proj, dec_imag, gated=True)

    @property
    def dec_imag_channels(self) -> list[int]:
        return self._stage_widths(self.dec_imag)

    def _width_config(self) -> dict:
        extra = super()._width_config()
        if self.dec_imag_channels != self._mirrored():
            extra["dec_imag_channels"] = list(self.dec_imag_channels)
        return extra

    def _conv_state_shapes(self) -> list[tuple[int, ...]]:
        shapes = super()._conv_state_shapes()
        return shapes + [layer.context_shape(self.freqs[len(self.channels) - j]) for j, layer in enumerate(self.dec_imag)]

    def forward(self, spec: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n_conv = len(self.enc)
        mag = spec.pow(2).sum(-1, keepdim=True).add(EPS).sqrt()
        x = torch.cat([self.features(spec).unsqueeze(-1), spec / mag], dim=-1).permute(0, 3, 1, 2)
        skips, new_state = [], []
        for layer, ctx in zip(self.enc, state[:n_conv]):
            x, c = layer(x, ctx)
            x = self.act(x)
            skips.append(x)
            new_state.append(c)
        b, ch, t, f = x.shape
        h, rnn_state = self.rnn(x.permute(0, 2, 1, 3).reshape(b, t, ch * f), state[3 * n_conv :])
        x = self.proj(h).reshape(b, t, self.proj_channels, f).permute(0, 2, 1, 3)
        m_re, ctx_re = self._decode(self.dec, x, skips, state[n_conv : 2 * n_conv], torch.tanh)
        m_im, ctx_im = self._decode(self.dec_imag, x, skips, state[2 * n_conv : 3 * n_conv], torch.tanh)
        m_re, m_im = m_re.squeeze(1), m_im.squeeze(1)
        re, im = spec[..., 0], spec[..., 1]
        out = torch.stack([m_re * re - m_im * im, m_re * im + m_im * re], dim=-1)
        return out, new_state + ctx_re + ctx_im + rnn_state


ARCHS: dict[str, type[SEModel]] = {cls.arch: cls for cls in (RnnMasker, CRN, GCRN)}

# Named presets: `--model NAME` builds one of these (untrained) for training.
PRESETS: dict[str, tuple[str, dict]] = {
    "crn": ("crn", {}),
    "crn-small": ("crn", {"channels": [8, 16, 32, 32, 64], "hidden": [256]}),
    # the small-from-scratch baseline of benchmarks/paper_reproduction.md: its fp32 weights
    # (6.9 MB) are about the size of the default model compressed 11x into a .hwc
    "crn-compact": ("crn", {"channels": [16, 32, 64, 64, 128], "hidden": [256, 256]}),
    "gcrn": ("gcrn", {}),
    "gcrn-small": ("gcrn", {"channels": [8, 16, 16, 32, 64], "hidden": [256]}),
    "lstm": ("rnn", {"cell": "lstm"}),
    "lstm-small": ("rnn", {"cell": "lstm", "hidden": [256, 256]}),
    "gru": ("rnn", {"cell": "gru"}),
    "tiny-crn": ("crn", {"channels": [4, 4, 8, 8, 8], "hidden": [16]}),
    "tiny-gcrn": ("gcrn", {"channels": [4, 4, 8, 8, 8], "hidden": [16]}),
    "tiny-lstm": ("rnn", {"cell": "lstm", "hidden": [16, 16]}),
    "tiny-gru": ("rnn", {"cell": "gru", "hidden": [16]}),
}


def build(arch: str, config: dict) -> SEModel:
    return ARCHS[arch](**config)


# ------------------------------------------------------------ configs read from files

# Bounds for a config that comes from a file (hwcompress.models.io, .hwc headers), checked
# before anything is built: generous for speech enhancement (the largest preset has 1024
# units) yet far from what would make the builder allocate gigabytes.
MAX_WIDTH = 1 << 14  # units or channels in one layer
MAX_LAYERS = 16  # recurrent layers in one stack
MAX_KT = 16  # time-kernel length of the convolutions
#: every stage (STFT, export graph) works on the 161 bins of the 20 ms / 10 ms STFT
FILE_N_BINS = 161
_CELLS = ("lstm", "gru")
MAX_DEPTH = max(d for d in range(1, 32) if _freqs(FILE_N_BINS, d)[-1] >= 1)  # 6 conv stages


class ConfigError(ValueError):
    """A model config that cannot describe a valid model (message without the file name)."""


def _positive_int(value: object, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if not 1 <= value <= limit:
        raise ConfigError(f"{what} must be between 1 and {limit}, got {value}")
    return value


def _widths(value: object, what: str, min_len: int, max_len: int) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{what} must be a list of integers, got {type(value).__name__}")
    if not min_len <= len(value) <= max_len:
        need = str(min_len) if min_len == max_len else f"{min_len} to {max_len}"
        raise ConfigError(f"{what} needs {need} values, got {len(value)}")
    return [_positive_int(v, f"{what}[{i}]", MAX_WIDTH) for i, v in enumerate(value)]


def check_config(arch: str, config: object) -> dict:
    """`config` for `arch` as read from a file, checked field by field (types, ranges,
    lengths, STFT bins) without building anything; raises ConfigError saying what is wrong.
    Returns the config with every default filled in."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}")
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a mapping, got {type(config).__name__}")
    params = inspect.signature(ARCHS[arch].__init__).parameters
    allowed = [n for n in params if n != "self"]
    unknown = sorted(str(k) for k in config if k not in allowed)
    if unknown:
        raise ConfigError(f"unknown {arch} config field(s) {', '.join(unknown)} (known: {', '.join(allowed)})")
    cfg = {n: config.get(n, params[n].default) for n in allowed}
    if isinstance(cfg["n_bins"], bool) or not isinstance(cfg["n_bins"], int) or cfg["n_bins"] != FILE_N_BINS:
        raise ConfigError(f"n_bins must be {FILE_N_BINS} (the 320-point STFT every stage uses), got {cfg['n_bins']!r}")
    if cfg["cell"] not in _CELLS:
        raise ConfigError(f"cell must be one of {', '.join(_CELLS)}, got {cfg['cell']!r}")
    cfg["hidden"] = _widths(cfg["hidden"], "hidden", 1, MAX_LAYERS)
    if arch == "rnn":
        return cfg
    # each conv stage halves the bins: past MAX_DEPTH stages none would be left
    cfg["channels"] = _widths(cfg["channels"], "channels", 1, MAX_DEPTH)
    cfg["kt"] = _positive_int(cfg["kt"], "kt", MAX_KT)
    if cfg["proj_channels"] is not None:
        cfg["proj_channels"] = _positive_int(cfg["proj_channels"], "proj_channels", MAX_WIDTH)
    n_dec = len(cfg["channels"]) - 1
    for key in ("dec_channels", "dec_imag_channels"):
        if cfg.get(key) is not None:
            cfg[key] = _widths(cfg[key], key, n_dec, n_dec)
    return cfg


def param_shapes(arch: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every state_dict entry the model of `config` has, computed on
    torch's `meta` device: nothing is allocated, whatever the config asks for.
    Call check_config first: this builds whatever it is given."""
    with torch.device("meta"):
        model = build(arch, config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def build_preset(name: str) -> SEModel:
    arch, config = PRESETS[name]
    return build(arch, config)
