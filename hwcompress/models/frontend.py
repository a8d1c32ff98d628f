"""A model's front end: how audio becomes the features it reads and how its output
becomes audio again.

Every model declares one, so `enhance`, `eval`, `fit` and the exports reproduce what the
model's authors do. The zoo's models declare `ZOO`; an imported or user model declares its
own, as a `FrontEnd(...)` beside its factory or a `[front_end]` table in a TOML file:

    [front_end]
    sample_rate = 16000
    win = 320            # analysis window (= FFT size), samples
    hop = 160
    window = "sqrt-hann" # periodic
    feature = "log-power"
    output = "magnitude-mask"
    gain_floor_db = -80  # the mask is clipped below at 10^(-80/20)

Features, per frame of the STFT X (F = win/2 + 1 bins, the model sees [B, T, F] or, for
"real-imag", [B, T, F, 2]):

- "log-power":       ln(|X|^2 + eps)
- "log10-power":     log10(|X|^2 + eps)
- "magnitude":       |X|
- "compressed-magnitude": |X|^c (c = `compress_exponent`, e.g. 0.3)
- "real-imag":       (Re X, Im X)

Outputs: "magnitude-mask" (a real gain per bin, [B, T, F]: applied to X), "complex-mask"
([B, T, F, 2]: complex multiplication with X), "spectrum" ([B, T, F, 2]: the enhanced STFT).

Every stage of hwcompress runs the 16 kHz, 320-point, 160-hop STFT today (the export
graph's 161 bins); `check_supported` says so in one line for any other front end.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hwcompress.errors import HwcError

FEATURES = ("log-power", "log10-power", "magnitude", "compressed-magnitude", "real-imag")
OUTPUTS = ("magnitude-mask", "complex-mask", "spectrum")
WINDOWS = ("sqrt-hann",)


@dataclass(frozen=True)
class FrontEnd:
    sample_rate: int = 16000
    win: int = 320
    hop: int = 160
    window: str = "sqrt-hann"
    feature: str = "log-power"
    output: str = "magnitude-mask"
    #: lower bound of a magnitude mask, in dB (None: unbounded)
    gain_floor_db: float | None = None
    #: exponent c of "compressed-magnitude"
    compress_exponent: float = 0.3
    #: added to the power before a logarithm
    eps: float = 1e-10

    def __post_init__(self) -> None:
        problems = []
        if self.feature not in FEATURES:
            problems.append(f"feature must be one of {', '.join(FEATURES)}, got {self.feature!r}")
        if self.output not in OUTPUTS:
            problems.append(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.window not in WINDOWS:
            problems.append(f"window must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        for name in ("sample_rate", "win", "hop"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not problems and self.hop > self.win:
            problems.append(f"hop ({self.hop}) must not exceed win ({self.win})")
        if self.gain_floor_db is not None and not (isinstance(self.gain_floor_db, (int, float))
                                                   and math.isfinite(self.gain_floor_db) and self.gain_floor_db <= 0):
            problems.append(f"gain_floor_db must be a finite number <= 0 (dB) or absent, got {self.gain_floor_db!r}")
        if not (isinstance(self.compress_exponent, (int, float)) and 0 < self.compress_exponent <= 2):
            problems.append(f"compress_exponent must be in (0, 2], got {self.compress_exponent!r}")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < 1):
            problems.append(f"eps must be in (0, 1), got {self.eps!r}")
        if problems:
            raise HwcError("front end: " + "; ".join(problems))

    @property
    def n_bins(self) -> int:
        return self.win // 2 + 1

    @property
    def gain_floor(self) -> float:
        """The mask's lower bound as a linear gain (0 when unbounded)."""
        return 0.0 if self.gain_floor_db is None else 10.0 ** (self.gain_floor_db / 20.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, origin: str = "front end") -> FrontEnd:
        if not isinstance(data, dict):
            raise HwcError(f"{origin}: [front_end] must be a table of fields, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise HwcError(f"{origin}: unknown front-end field(s) {', '.join(unknown)} (known: {', '.join(known)})")
        try:
            return cls(**data)
        except HwcError as exc:
            raise HwcError(f"{origin}: {exc}") from None

    @classmethod
    def from_toml(cls, path: Path) -> FrontEnd:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise HwcError(f"{path}: cannot read the front-end declaration ({exc})") from None
        if "front_end" not in data:
            raise HwcError(f"{path}: no [front_end] table (see docs/your-model.md)")
        return cls.from_dict(data["front_end"], str(path))

    def check_supported(self, origin: str = "model") -> None:
        """Raise one line unless every hwcompress stage can run this front end."""
        if (self.sample_rate, self.win, self.hop) != (ZOO.sample_rate, ZOO.win, ZOO.hop):
            raise HwcError(f"{origin}: front end {self.sample_rate} Hz, win {self.win}, hop {self.hop} is not supported "
                           f"yet: every stage runs the {ZOO.sample_rate} Hz, {ZOO.win}-point, {ZOO.hop}-hop STFT")


#: the zoo's models: log-power features (normalised inside the model), magnitude mask
ZOO = FrontEnd()
