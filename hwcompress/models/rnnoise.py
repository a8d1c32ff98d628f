"""RNNoise (Valin 2018; Xiph.Org, BSD-3-Clause) as a reference enhancer, in its own C library.

The `pyrnnoise` package (Zhendong Peng, Apache-2.0) ships librnnoise.so with the model's weights
compiled in. hwcompress binds that library with ctypes and never imports the package's Python
module (which pulls in audio I/O libraries it does not need): the library is found with
importlib.util.find_spec. RNNoise runs at 48 kHz on 480-sample frames of 16-bit-scaled floats;
a 16 kHz signal is resampled to 48 kHz and back with scipy's resample_poly (as DeepFilterNet3's
reference path does) and the library's two-frame (20 ms) output delay is removed.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.signal

from hwcompress.errors import HwcError

DIST = PACKAGE = "pyrnnoise"
PINNED = "0.4.5"
LIBRARY_FILE = "librnnoise.so"
SAMPLE_RATE = 48000
NAME = "rnnoise"
SCALE = 32768.0  # the library reads and writes floats at 16-bit sample scale


def package_version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def library_path() -> Path:
    """librnnoise.so of the installed package, found without executing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for loc in list(spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(loc) / LIBRARY_FILE).is_file():
            return Path(loc) / LIBRARY_FILE
    raise HwcError(f"RNNoise needs the {DIST} package with its {LIBRARY_FILE} (pip install {DIST}=={PINNED})")


@lru_cache(maxsize=1)
def _library(path: str) -> ctypes.CDLL:
    """ctypes signatures of the RNNoise C API (include/rnnoise.h):

        DenoiseState *rnnoise_create(RNNModel *model);   // NULL: the built-in model
        void  rnnoise_destroy(DenoiseState *st);
        int   rnnoise_get_frame_size(void);
        float rnnoise_process_frame(DenoiseState *st, float *out, const float *in);  // voice probability
    """
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise HwcError(f"{path}: cannot load the RNNoise library ({exc})") from None
    for sym in ("rnnoise_create", "rnnoise_destroy", "rnnoise_get_frame_size", "rnnoise_process_frame"):
        if not hasattr(lib, sym):
            raise HwcError(f"{path}: no symbol {sym} (not the RNNoise C API)")
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
    lib.rnnoise_destroy.restype = None
    lib.rnnoise_get_frame_size.argtypes = []
    lib.rnnoise_get_frame_size.restype = ctypes.c_int
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
    lib.rnnoise_process_frame.restype = ctypes.c_float
    return lib


class NativeRnnoise:
    """RNNoise streams in the C library: `enhance(x48)` runs a whole 48 kHz signal from a fresh
    state and returns it aligned with the input. One instance per thread."""

    def __init__(self) -> None:
        self.lib = _library(os.fspath(library_path()))
        self.frame = int(self.lib.rnnoise_get_frame_size())
        #: output lag in samples (two frames, 20 ms: measured by cross-correlation on clean speech, tests/test_teachers.py)
        self.delay = 2 * self.frame
        self._in = (ctypes.c_float * self.frame)()
        self._out = (ctypes.c_float * self.frame)()

    def enhance(self, x48: np.ndarray) -> np.ndarray:
        x = np.asarray(x48, dtype=np.float32) * np.float32(SCALE)
        n, hop = x.size, self.frame
        n_hops = -(-(n + self.delay) // hop)
        padded = np.zeros(n_hops * hop, dtype=np.float32)
        padded[:n] = x
        out = np.empty_like(padded)
        state = self.lib.rnnoise_create(None)
        if not state:
            raise HwcError(f"{library_path()}: rnnoise_create returned no state")
        try:
            for t in range(n_hops):
                ctypes.memmove(self._in, padded[t * hop:].ctypes.data, hop * 4)
                self.lib.rnnoise_process_frame(state, self._out, self._in)
                ctypes.memmove(out[t * hop:].ctypes.data, self._out, hop * 4)
        finally:
            self.lib.rnnoise_destroy(state)
        return out[self.delay:self.delay + n] / np.float32(SCALE)


_local = threading.local()


def load() -> NativeRnnoise:
    """This thread's instance (the library loaded on the first call)."""
    inst = getattr(_local, "inst", None)
    if inst is None:
        inst = _local.inst = NativeRnnoise()
    return inst


def enhance(x: np.ndarray, sr: int = 16000) -> np.ndarray:
    """RNNoise on one mono signal at rate `sr`: resampled to 48 kHz, enhanced from a fresh state,
    delay removed, resampled back; the same length as `x`."""
    audio = np.asarray(x, dtype=np.float32)
    if audio.ndim != 1 or not np.isfinite(audio).all():
        raise HwcError(f"{NAME}: needs one finite mono signal, got shape {audio.shape}")
    g = np.gcd(int(sr), SAMPLE_RATE)
    x48 = scipy.signal.resample_poly(audio, SAMPLE_RATE // g, int(sr) // g).astype(np.float32)
    y48 = load().enhance(x48)
    y = scipy.signal.resample_poly(y48, int(sr) // g, SAMPLE_RATE // g)[: audio.size]
    if y.size < audio.size:
        y = np.pad(y, (0, audio.size - y.size))
    return np.ascontiguousarray(y, dtype=np.float32)
