"""Offline sources of clean speech and noise: Debian packages and seeded generators.

Each source yields (split, speaker_or_recording, audio) so the corpus builder can keep
train/valid/test disjoint in speakers and in noise recordings.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal

from hwcompress.errors import HwcError

SR = 16000
ASTERISK = Path("/usr/share/asterisk")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")

# Real recorded speakers. Allison Smith recorded both the en-US and es-MX prompts, so
# both go to train; June (fr-CA) is never trained on: she is the real-speech test set.
REAL_SPEECH = {
    "train": [("allison-en", "sounds/en_US_f_Allison"), ("allison-es", "sounds/es_MX_f_Allison")],
    "test": [("june-fr", "sounds/fr_CA_f_June")],
}
REAL_SPEAKER = {"allison-en": "allison", "allison-es": "allison", "june-fr": "june"}

MUSIC_SPLIT = {
    "macroform-cold_day": "train",
    "macroform-the_simplicity": "train",
    "macroform-robot_dity": "train",
    "manolo_camp-morning_coffee": "valid",
    "reno_project-system": "test",
}

# Synthetic voices, each assigned to exactly one split (speaker-disjoint).
ESPEAK_VOICES = {
    "train": ["en-us+m1", "en-us+f1", "en-gb+m3", "en-gb-scotland+f2", "en-029+m4", "en-gb-x-rp+f3",
              "en-us+m6", "fr+m2", "es+f4", "de+m5", "en-gb-x-gbclan+f5", "en-us+m7", "it+f1", "pt+m3"],
    "valid": ["en-us+f2", "en-gb+m2", "es-419+m4"],
    "test": ["en-us+f3", "en-gb-x-gbcwmd+m1", "fr+f5"],
}
FLITE_VOICES = {"train": ["kal16", "awb", "rms"], "valid": ["kal"], "test": ["slt"]}
FESTIVAL_VOICES = {"train": ["voice_kal_diphone"], "valid": ["voice_cmu_us_slt_arctic_hts"], "test": ["voice_ked_diphone"]}

# Debian packages whose data we read, for the manifest's licence records.
PACKAGES = [
    "asterisk-core-sounds-en-g722", "asterisk-core-sounds-es-g722", "asterisk-core-sounds-fr-g722",
    "asterisk-moh-opsound-g722", "espeak-ng-data", "flite", "festival", "festvox-kallpc16k",
    "festvox-kdlpc16k", "festvox-us-slt-hts", "sound-theme-freedesktop",
]

WORDS = (
    "the a an this that my your our their one two three four five six seven eight nine ten "
    "red green blue yellow black white small large quiet loud warm cold bright dark early late "
    "house garden river window table kitchen station market letter picture engine signal morning "
    "evening weather answer question number message doctor teacher driver neighbour children "
    "walks runs opens closes carries finds reads writes builds moves sends takes brings leaves "
    "quickly slowly carefully often never always today tomorrow yesterday again together "
    "under over near behind across inside outside before after during"
).split()


@dataclass
class Utterance:
    split: str
    speaker: str
    source: str
    audio: np.ndarray = field(repr=False)


def require_tools(names: list[str]) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise HwcError(f"missing programs {', '.join(missing)}: run tools/setup.sh to install them")


def resample(audio: np.ndarray, sr: int) -> np.ndarray:
    if sr == SR:
        return audio.astype(np.float32)
    g = np.gcd(sr, SR)
    return scipy.signal.resample_poly(audio, SR // g, sr // g).astype(np.float32)


def decode_ffmpeg(path: Path, fmt: str | None = None) -> np.ndarray:
    """Decode any file ffmpeg reads to 16 kHz mono float32 (G.722 needs `-f g722`)."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin"] + (["-f", fmt] if fmt else []) + ["-i", str(path)]
    cmd += ["-ac", "1", "-ar", str(SR), "-f", "f32le", "-"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype=np.float32).copy()


def _read_wav_bytes(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return resample(audio[:, 0], sr)


def sentences(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=rng.integers(6, 13))) + "." for _ in range(n)]


def _stable_unit(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_of(key: str, valid: float = 0.1, test: float = 0.1) -> str:
    """Deterministic split for user data, by a hash of the speaker or recording name."""
    u = _stable_unit(key)
    return "test" if u < test else "valid" if u < test + valid else "train"


def real_speech(min_seconds: float = 0.8) -> list[tuple[str, str, Path]]:
    jobs = []
    for split, dirs in REAL_SPEECH.items():
        for tag, rel in dirs:
            for path in sorted((ASTERISK / rel).rglob("*.g722")):
                if path.stat().st_size >= min_seconds * 8000:  # G.722 is 64 kbit/s
                    jobs.append((split, tag, path))
    return jobs


def synthesize(engine: str, voice: str, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        if engine == "espeak-ng":
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
        elif engine == "flite":
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(wav)], check=True, capture_output=True)
        else:
            txt = Path(tmp) / "s.txt"
            txt.write_text(text)
            subprocess.run(["text2wave", "-eval", f"({voice})", "-o", str(wav), str(txt)], check=True, capture_output=True)
        return _read_wav_bytes(wav)


def synthetic_jobs(rng: np.random.Generator, per_voice: int) -> list[tuple[str, str, str, str]]:
    jobs = []
    for engine, table in (("espeak-ng", ESPEAK_VOICES), ("flite", FLITE_VOICES), ("festival", FESTIVAL_VOICES)):
        for split, voices in table.items():
            for voice in voices:
                for text in sentences(rng, per_voice):
                    jobs.append((split, f"{engine}:{voice}", engine, text))
    return jobs


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / f ** (exponent / 2), n)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def machinery(rng: np.random.Generator, n: int) -> np.ndarray:
    """Nonstationary machine-like noise: a drifting motor hum with harmonics, a rough
    modulated broadband component, and random impulsive clanks."""
    t = np.arange(n) / SR
    f0 = rng.uniform(35, 140) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    hum = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 12))
    rough = scipy.signal.lfilter(*scipy.signal.butter(2, rng.uniform(300, 3000) / (SR / 2)), rng.standard_normal(n))
    rough *= 1 + 0.8 * np.sin(2 * np.pi * rng.uniform(1, 12) * t)
    clanks = np.zeros(n)
    for start in rng.integers(0, n, size=max(1, int(n / SR * rng.uniform(0.5, 3)))):
        length = int(rng.uniform(0.03, 0.3) * SR)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 5))
        clanks[start : start + length] += burst[: n - start] * rng.uniform(1, 4)
    x = hum / 4 + rough * rng.uniform(0.3, 1.0) + clanks
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def package_licences() -> list[dict]:
    """Name, version and licence of every Debian package read, from its copyright file."""
    records = []
    for pkg in PACKAGES:
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
        copyright_file = Path("/usr/share/doc") / pkg / "copyright"
        licences: list[str] = []
        if copyright_file.exists():
            for m in re.finditer(r"^License:\s*(\S.*)$", copyright_file.read_text(errors="replace"), re.M):
                if m.group(1).strip() not in licences:
                    licences.append(m.group(1).strip())
        records.append({
            "package": pkg, "version": version or None, "licences": licences,
            "copyright_file": str(copyright_file) if copyright_file.exists() else None,
        })
    return records
