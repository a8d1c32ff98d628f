"""Reading and writing mono speech clips.

Everything downstream (models, metrics) assumes float32 mono at one fixed rate, so
`load_audio` normalises whatever the user hands us and rejects inputs that would only
fail later with an obscure error (or, worse, produce meaningless scores: a silent or
NaN clip makes PESQ/STOI/SI-SDR undefined).
"""

from __future__ import annotations

import os
import sys
import uuid
from math import gcd
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from hwcompress.errors import HwcError

PathLike = Union[str, os.PathLike]

# Peak below this is treated as silence: quieter than the last bit of 16-bit PCM
# (1/32768 ~ 3e-5), so it cannot be real recorded speech.
SILENCE_PEAK = 1e-5
# Shorter clips do not fill a single STOI/PESQ analysis window in a meaningful way.
MIN_DURATION_S = 0.1
# Float files may hold samples beyond full scale (+/-1.0); they are scaled to this peak,
# with a warning, instead of being hard-clipped on the way out (save_audio clips to +/-1).
RESCALED_PEAK = 0.99
# Input rates below this carry no speech band worth enhancing, and resampling them up to
# 16 kHz would multiply the sample count (a 1 Hz header turns 1 s of file into 4.4 h).
MIN_SAMPLE_RATE = 4000


def print_warning(message: str) -> None:
    """Default `warn` of load_audio: one `warning: ...` line on stderr (stdout stays clean)."""
    print(f"warning: {message}", file=sys.stderr)


class AudioError(HwcError):
    """An input audio file is missing, unreadable or unusable (user mistake)."""


def load_audio(
    path: PathLike,
    sample_rate: int = 16000,
    min_duration: float = MIN_DURATION_S,
    warn: Callable[[str], None] = print_warning,
) -> np.ndarray:
    """Read a WAV/FLAC/OGG file as float32 mono at `sample_rate`.

    Multichannel files keep only the first channel (averaging could cancel out
    channels that are out of phase). Any input rate of at least MIN_SAMPLE_RATE is
    resampled with a polyphase filter. Raises AudioError with a one-line message naming
    the file for missing, unreadable, empty, non-finite, too-short or silent audio.

    A float file whose samples go beyond full scale (peak > 1.0) is scaled down to peak
    RESCALED_PEAK rather than clipped later, and `warn` gets one message naming the file,
    its peak and the factor (default: a `warning: ...` line on stderr; code reading many
    files can collect the messages instead).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{name}: file not found")
    if not p.is_file():
        raise AudioError(f"{name}: not a file")
    if p.stat().st_size == 0:
        raise AudioError(f"{name}: file is empty (0 bytes)")

    try:
        data, file_rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:
        # LibsndfileError's str() repeats the path; error_string is just the reason.
        text = getattr(exc, "error_string", None) or str(exc)
        lines = text.strip().splitlines()
        reason = lines[0].strip().rstrip(".") if lines else type(exc).__name__
        raise AudioError(f"{name}: cannot read audio ({reason})") from None

    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if file_rate < MIN_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {file_rate} Hz is too low (at least {MIN_SAMPLE_RATE} Hz)")
    audio = np.ascontiguousarray(data[:, 0])

    n_bad = int(np.count_nonzero(~np.isfinite(audio)))
    if n_bad:
        raise AudioError(f"{name}: audio contains {n_bad} NaN/Inf samples")
    duration = audio.shape[0] / file_rate
    if duration < min_duration:
        raise AudioError(
            f"{name}: audio is too short ({duration:.3f} s < {min_duration:g} s)"
        )
    peak = float(np.max(np.abs(audio)))
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent (peak {peak:.3g})")

    if file_rate != sample_rate:
        g = gcd(int(file_rate), int(sample_rate))
        # float64 for the filter so the resampler adds no audible rounding noise.
        audio = resample_poly(audio.astype(np.float64), sample_rate // g, file_rate // g)
    if peak > 1.0:
        # only float files can exceed full scale; as is, the output would be hard-clipped.
        # The factor is taken after resampling, whose ringing can raise the peak a little.
        factor = RESCALED_PEAK / float(np.max(np.abs(audio)))
        audio = audio * factor
        warn(f"{name}: float samples exceed full scale (peak {peak:.4g} > 1.0): scaled by {factor:.4g} "
             f"to peak {RESCALED_PEAK:g} instead of clipping")
    return audio.astype(np.float32, copy=False)


def _to_mono_array(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):  # torch tensors straight from a model
        audio = audio.detach().cpu().numpy()
    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"save_audio expects mono audio, got shape {arr.shape}")
    return arr


def save_audio(path: PathLike, audio: Any, sample_rate: int = 16000) -> None:
    """Write mono audio as 16-bit PCM WAV, clipped to [-1, 1], atomically.

    The file appears complete or not at all: an interrupted run never leaves a
    truncated WAV that a later stage would try to score. Parent directories are created.
    """
    arr = _to_mono_array(audio)
    if not np.all(np.isfinite(arr)):
        # Clipping cannot repair NaN, and PCM conversion of NaN is undefined.
        raise ValueError(f"{path}: refusing to save audio with NaN/Inf samples")
    arr = np.clip(arr, -1.0, 1.0)

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Same directory so os.replace is a rename on one filesystem (atomic); a unique
    # name so concurrent writers never share a temp file. open(..., "xb") honours the
    # umask, unlike tempfile's 0600.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            sf.write(fh, arr, sample_rate, format="WAV", subtype="PCM_16")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
