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
REAL_SPEAKER = {"allison-en": "allison", "allison-es": "allison", "june-fr": "june", "carlo-it": "carlo",
                "ivr-ru": "ivr-ru"}

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

# Corpus v2 adds training speech only, drawn from its own random streams after v1's, so that
# the valid and test splits (their speech, noise and every mixture) stay byte-identical to v1:
# two more real speakers (Carlo, a man, it-IT; a woman, ru-RU, both Asterisk core prompts), a
# Catalan HTS voice, espeak-ng voices at other speeds and pitches (`voice@s<wpm>p<pitch>`; no
# voice+variant of the valid or test splits), and generated car, rain, ventilation, clatter and
# tonal-alert noise.
EXTRA_REAL_SPEECH = {"train": [("carlo-it", "sounds/it_IT_m_Carlo"), ("ivr-ru", "sounds/ru_RU_f_IvrvoiceRU")]}
EXTRA_ESPEAK_VOICES = {"train": [
    "en-us+m3@s125p30", "en-gb+f4@s185p70", "en-us-nyc+m8@s160p45", "en-gb-x-rp+michel@s140p55",
    "nl+f1@s150p60", "pl+m5@s170p40", "sv+annie@s135p75", "ro+m7@s155p35", "de+linda@s175p65",
    "en-029+edward@s145p50", "pt-br+f4@s165p55", "cs+m2@s150p45"]}
EXTRA_FESTIVAL_VOICES = {"train": ["voice_upc_ca_ona_hts"]}

# Debian packages whose data we read, for the manifest's licence records.
PACKAGES = [
    "asterisk-core-sounds-en-g722", "asterisk-core-sounds-es-g722", "asterisk-core-sounds-fr-g722",
    "asterisk-moh-opsound-g722", "espeak-ng-data", "flite", "festival", "festvox-kallpc16k",
    "festvox-kdlpc16k", "festvox-us-slt-hts", "sound-theme-freedesktop",
]
PACKAGES_V2 = ["asterisk-core-sounds-it-g722", "asterisk-core-sounds-ru-g722", "festvox-ca-ona-hts"]

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


def real_speech(min_seconds: float = 0.8, table: dict | None = None) -> list[tuple[str, str, Path]]:
    jobs = []
    for split, dirs in (REAL_SPEECH if table is None else table).items():
        for tag, rel in dirs:
            folder = ASTERISK / rel
            if not folder.is_dir():
                raise HwcError(f"{folder} missing: run tools/setup.sh to install the speech packages")
            for path in sorted(folder.rglob("*.g722")):
                if path.stat().st_size >= min_seconds * 8000:  # G.722 is 64 kbit/s
                    jobs.append((split, tag, path))
    return jobs


def synthesize(engine: str, voice: str, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        if engine == "espeak-ng":
            name, _, prosody = voice.partition("@")  # en-us+m3@s125p30: 125 words/min, pitch 30 (0-99)
            m = re.fullmatch(r"s(\d+)p(\d+)", prosody)
            extra = ["-s", m.group(1), "-p", m.group(2)] if m else []
            subprocess.run(["espeak-ng", "-v", name, *extra, "-w", str(wav), text], check=True, capture_output=True)
        elif engine == "flite":
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(wav)], check=True, capture_output=True)
        else:
            txt = Path(tmp) / "s.txt"
            txt.write_text(text)
            subprocess.run(["text2wave", "-eval", f"({voice})", "-o", str(wav), str(txt)], check=True, capture_output=True)
        return _read_wav_bytes(wav)


def synthetic_jobs(rng: np.random.Generator, per_voice: int, extra: bool = False) -> list[tuple[str, str, str, str]]:
    """(split, speaker, engine, text) for every voice: v1's tables, or with `extra` v2's additions."""
    tables = ((("espeak-ng", EXTRA_ESPEAK_VOICES), ("festival", EXTRA_FESTIVAL_VOICES)) if extra else
              (("espeak-ng", ESPEAK_VOICES), ("flite", FLITE_VOICES), ("festival", FESTIVAL_VOICES)))
    jobs = []
    for engine, table in tables:
        for split, voices in table.items():
            for voice in voices:
                for text in sentences(rng, per_voice):
                    jobs.append((split, f"{engine}:{voice}", engine, text))
    return jobs


def _peak(x: np.ndarray) -> np.ndarray:
    """Scaled to a peak of 1, float32 (every generated noise ends here)."""
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    return _peak(np.fft.irfft(spec / f ** (exponent / 2), n))


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
    return _peak(hum / 4 + rough * rng.uniform(0.3, 1.0) + clanks)


# Car, rain, ventilation, clatter and alert noise for corpus v2's training split. Written by hand:
# no offline package ships such recordings under a licence we can use, and these generators
# are seeded, so the corpus stays reproducible. Each is a few physical ingredients, not a
# recording; they widen the training noise, and the test noise stays the real recordings.
def _band(x: np.ndarray, lo: float | None, hi: float | None, order: int = 2) -> np.ndarray:
    if lo and hi:
        sos = scipy.signal.butter(order, [lo, hi], "bandpass", fs=SR, output="sos")
    elif hi:
        sos = scipy.signal.butter(order, hi, "lowpass", fs=SR, output="sos")
    else:
        sos = scipy.signal.butter(order, lo, "highpass", fs=SR, output="sos")
    return scipy.signal.sosfilt(sos, x)


def _decaying_tones(rng: np.random.Generator, n: int, rate: float, freqs: tuple[float, float],
                    decay: tuple[float, float], partials: int) -> np.ndarray:
    """Impacts at Poisson times, each a few decaying sinusoids (drops, cutlery, dishes)."""
    out = np.zeros(n)
    for start in np.sort(rng.integers(0, n, size=max(1, rng.poisson(rate * n / SR)))):
        length = min(n - start, int(decay[1] * 5 * SR))
        t = np.arange(length) / SR
        tau = rng.uniform(*decay)
        hit = sum(np.sin(2 * np.pi * rng.uniform(*freqs) * t + rng.uniform(0, 2 * np.pi)) for _ in range(partials))
        out[start : start + length] += rng.lognormal(0, 0.6) * hit * np.exp(-t / tau)
    return out


def car(rng: np.random.Generator, n: int) -> np.ndarray:
    """In a moving car: low road rumble, engine firing harmonics at a drifting rpm, tyre hiss and
    now and then a passing vehicle."""
    t = np.arange(n) / SR
    rumble = _band(rng.standard_normal(n), None, rng.uniform(120, 400), order=4)
    rpm = rng.uniform(1500, 3500) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.02, 0.1) * t))
    phase = 2 * np.pi * np.cumsum(rpm / 60 * 2) / SR  # a four-cylinder engine fires twice per turn
    engine = sum(rng.uniform(0.1, 1.0) / k * np.sin(k * phase) for k in range(1, 8))
    hiss = _band(rng.standard_normal(n), 600, rng.uniform(2500, 5000))
    passing = np.zeros(n)
    for centre in rng.uniform(0, n / SR, size=rng.integers(0, 4)):
        passing += np.exp(-(((t - centre) / rng.uniform(0.5, 1.5)) ** 2))
    x = rumble / (np.abs(rumble).max() + 1e-9) + 0.3 * engine / 4 + (0.1 + 0.3 * passing) * hiss / (np.abs(hiss).max() + 1e-9)
    return _peak(x)


def rain(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rain: many short drop impacts over a steady high-frequency wash."""
    drops = _decaying_tones(rng, n, rng.uniform(80, 400), (1500, 7000), (0.002, 0.02), 1)
    wash = _band(rng.standard_normal(n), rng.uniform(400, 1500), 7500)
    wash *= 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * np.arange(n) / SR)
    return _peak(drops / (np.abs(drops).max() + 1e-9) + rng.uniform(0.3, 1.0) * wash / (np.abs(wash).max() + 1e-9))


def ventilation(rng: np.random.Generator, n: int) -> np.ndarray:
    """A fan or air conditioner: broadband air noise, a blade-pass tone with harmonics and a
    slow beat."""
    t = np.arange(n) / SR
    air = _band(colored_noise(rng, n, rng.uniform(0.5, 1.5)), 40, rng.uniform(2000, 6000))
    blade = rng.uniform(60, 300)
    tone = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * blade * t + rng.uniform(0, 6.3)) for k in range(1, 6))
    beat = 1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t)
    return _peak(beat * (air / (np.abs(air).max() + 1e-9) + rng.uniform(0.05, 0.3) * tone / 3))


def clatter(rng: np.random.Generator, n: int) -> np.ndarray:
    """A kitchen or cafe: cutlery and dish impacts (inharmonic ringing) over a room murmur."""
    hits = _decaying_tones(rng, n, rng.uniform(0.5, 4), (1800, 9000), (0.02, 0.2), 4)
    room = _band(colored_noise(rng, n, 1.0), 100, 4000)
    return _peak(hits / (np.abs(hits).max() + 1e-9) + rng.uniform(0.05, 0.3) * room / (np.abs(room).max() + 1e-9))


def _tone(t: np.ndarray, f: float, odd_harmonics: int = 1) -> np.ndarray:
    return sum(np.sin(2 * np.pi * f * (2 * k + 1) * t) / (2 * k + 1) for k in range(odd_harmonics))


def alerts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sustained tonal alerts one after another with short gaps: struck bells and chimes
    (inharmonic partials, long decays), ring-tone melodies, dual-tone beep cadences and two-tone
    alarms. Harmonic but not speech: the model has to learn to remove them (the validation split's
    tonal event recordings showed the models trained on v1 leaving such sounds in)."""
    out = np.zeros(n)
    pos = int(rng.uniform(0, 0.5) * SR)
    while pos < n:
        kind = rng.integers(4)
        if kind == 0:  # bell or chime: 1-4 strikes of inharmonic partials
            length = int(rng.uniform(1.0, 3.0) * SR)
            t = np.arange(length) / SR
            sound = np.zeros(length)
            f0 = rng.uniform(300, 1500)
            for start in np.sort(rng.uniform(0, 0.6, size=rng.integers(1, 5))):
                s0 = int(start * SR)
                tau = rng.uniform(0.3, 2.0)
                for ratio in rng.choice([0.5, 1.0, 1.19, 1.5, 2.0, 2.5, 2.76, 3.0, 4.07], size=rng.integers(3, 7), replace=False):
                    sound[s0:] += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * f0 * ratio * t[: length - s0]) * np.exp(-t[: length - s0] / (tau / ratio**0.5))
        elif kind == 1:  # ring-tone melody: notes of a pentatonic scale
            notes = [rng.uniform(0.08, 0.3) for _ in range(rng.integers(3, 9))] * int(rng.integers(1, 3))
            base = rng.uniform(450, 1000)
            parts = []
            for dur in notes:
                t = np.arange(int(dur * SR)) / SR
                f = base * 2 ** (rng.choice([0, 2, 4, 7, 9, 12]) / 12)
                parts.append(_tone(t, f, int(rng.integers(1, 4))) * np.minimum(1, np.minimum(t, t[::-1]) / 0.01))
            sound = np.concatenate(parts)
        elif kind == 2:  # dual-tone beeps on a cadence (busy, ringing, appliance beeps)
            f1, f2 = rng.uniform(350, 1000), rng.uniform(350, 2500)
            on, off = rng.uniform(0.1, 1.0), rng.uniform(0.1, 1.5)
            parts = []
            for _ in range(rng.integers(2, 6)):
                t = np.arange(int(on * SR)) / SR
                parts += [np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t), np.zeros(int(off * SR))]
            sound = np.concatenate(parts)
        else:  # two-tone or swept alarm
            length = int(rng.uniform(1.0, 3.0) * SR)
            t = np.arange(length) / SR
            lo, hi = sorted(rng.uniform(500, 2000, size=2))
            rate = rng.uniform(0.5, 4)
            sweep = np.sign(np.sin(2 * np.pi * rate * t)) if rng.random() < 0.5 else np.sin(2 * np.pi * rate * t)
            phase = 2 * np.pi * np.cumsum(lo + (hi - lo) * (sweep + 1) / 2) / SR
            sound = sum(np.sin((2 * k + 1) * phase) / (2 * k + 1) for k in range(int(rng.integers(1, 4))))
        sound = sound[: n - pos] * rng.lognormal(0, 0.5) / (np.abs(sound).max() + 1e-9)
        out[pos : pos + sound.size] += sound
        pos += sound.size + int(rng.uniform(0.05, 1.0) * SR)
    return _peak(out + 1e-3 * rng.standard_normal(n))


EXTRA_NOISES = {"car": car, "rain": rain, "ventilation": ventilation, "clatter": clatter, "alerts": alerts}


def package_licences(corpus_version: int = 2) -> list[dict]:
    """Name, version and licence of every Debian package a corpus of `corpus_version` reads, from
    its copyright file."""
    records = []
    for pkg in PACKAGES + (PACKAGES_V2 if corpus_version >= 2 else []):
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
