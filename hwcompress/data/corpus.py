"""Build the offline corpus: clean speech and noise pools per split, fixed evaluation
mixtures, and a manifest with the licence of every source.

Layout of DIR:
  clean/<split>/<speaker>__<n>.wav   noise/<split>/<kind>__<name>.wav
  mix/<set>/<n>_noisy.wav, <n>_clean.wav and mix/<set>.json (SNR, noise kind, speaker)
  manifest.json
Sets: valid (held-out synthetic voices), test (real recorded speech of an unseen
speaker: the acceptance set), test-synth (held-out synthetic voices).
"""

from __future__ import annotations

import json
import sys
import os
import shutil
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from hwcompress.progress import progress_bar

from hwcompress.data import sources as src
from hwcompress.errors import HwcError
from hwcompress.workdir import OutputLock

SR = src.SR
SPLITS = ("train", "valid", "test")
SNRS_DB = (-5, 0, 5, 10, 15)
# v2 (issue 14) adds training speech and noise only; valid and test are byte-identical to v1's
# (tests/test_data.py::test_v2_adds_training_data_only). build_corpus(version=1) still builds v1.
CORPUS_VERSION = 2


def _write(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    sf.write(tmp, np.clip(audio, -1, 1), SR, subtype="PCM_16")
    os.replace(tmp, path)


def _trim_silence(audio: np.ndarray, floor_db: float = -45.0) -> np.ndarray:
    frame = 160
    n = audio.size // frame
    if n == 0:
        return audio
    energy = (audio[: n * frame].reshape(n, frame) ** 2).mean(1)
    active = np.nonzero(10 * np.log10(energy + 1e-12) > 10 * np.log10(energy.max() + 1e-12) + floor_db)[0]
    if active.size == 0:
        return audio[:0]
    lo, hi = max(0, active[0] - 10), min(n, active[-1] + 11)
    return audio[lo * frame : hi * frame]


def _normalize(audio: np.ndarray, peak: float = 0.9) -> np.ndarray:
    return (audio * peak / (np.abs(audio).max() + 1e-9)).astype(np.float32)


def build_corpus(
    out: Path,
    seed: int = 0,
    per_voice: int = 24,
    n_valid: int = 150,
    n_test: int = 200,
    n_test_synth: int = 100,
    clean_dirs: list[Path] | None = None,
    noise_dirs: list[Path] | None = None,
    workers: int = 2,
    real_limit: int | None = None,
    version: int = CORPUS_VERSION,
) -> dict:
    """Write the corpus to `out` and return its manifest. Deterministic for a seed and version."""
    if version not in (1, 2):
        raise HwcError(f"corpus version {version}: this hwcompress builds versions 1 and 2")
    src.require_tools(["ffmpeg", "espeak-ng", "flite", "text2wave"])
    if not src.ASTERISK.exists():
        raise HwcError("asterisk sound packages missing: run tools/setup.sh to install them")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    rng = np.random.default_rng(seed)
    clean: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    noise: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    counters: dict[str, int] = defaultdict(int)

    def add_clean(split: str, speaker: str, audio: np.ndarray) -> None:
        audio = _trim_silence(audio)
        if audio.size < SR // 2 or not np.isfinite(audio).all():
            return
        counters[speaker] += 1
        path = partial / "clean" / split / f"{speaker.replace(':', '-')}__{counters[speaker]:04d}.wav"
        _write(path, _normalize(audio))
        clean[split].append((speaker, path))

    def add_noise(split: str, kind: str, name: str, audio: np.ndarray) -> None:
        path = partial / "noise" / split / f"{kind}__{name}.wav"
        _write(path, _normalize(audio))
        noise[split].append((kind, path))

    real_jobs = src.real_speech()
    if version >= 2:  # after v1's speech, so v1's files keep their order and names
        real_jobs += src.real_speech(table=src.EXTRA_REAL_SPEECH)
    if real_limit is not None:  # small corpora for tests: the first files of each speaker
        by_tag: dict[str, list] = defaultdict(list)
        for job in real_jobs:
            by_tag[job[1]].append(job)
        real_jobs = [job for jobs in by_tag.values() for job in jobs[:real_limit]]
    synth_jobs = src.synthetic_jobs(rng, per_voice)
    if version >= 2:  # their own stream: v1's sentences are drawn exactly as before
        synth_jobs += src.synthetic_jobs(np.random.default_rng([seed, 3000]), per_voice, extra=True)
    with progress_bar() as progress:
        task = progress.add_task("real speech (ffmpeg G.722)", total=len(real_jobs))
        with ThreadPoolExecutor(workers) as pool:
            for (split, tag, _), audio in zip(real_jobs, pool.map(lambda j: src.decode_ffmpeg(j[2], "g722"), real_jobs)):
                add_clean(split, tag, audio)
                progress.advance(task)
        task = progress.add_task("synthetic voices", total=len(synth_jobs))
        with ThreadPoolExecutor(workers) as pool:
            for (split, speaker, _, _), audio in zip(synth_jobs, pool.map(lambda j: src.synthesize(j[2], j[1].split(":", 1)[1], j[3]), synth_jobs)):
                add_clean(split, speaker, audio)
                progress.advance(task)
        for directory in clean_dirs or []:
            files = sorted(Path(directory).rglob("*.wav"))
            task = progress.add_task(f"user speech {directory}", total=len(files))
            for path in files:
                speaker = "user-" + path.stem.split("_")[0]
                add_clean(src.split_of(speaker), speaker, src._read_wav_bytes(path))
                progress.advance(task)

        task = progress.add_task("noise", total=None)
        for path in sorted((src.ASTERISK / "moh").glob("*.g722")):
            add_noise(src.MUSIC_SPLIT.get(path.stem, "train"), "music", path.stem, src.decode_ffmpeg(path, "g722"))
        events = [p for p in sorted(src.FREEDESKTOP.glob("*.oga")) if not p.name.startswith("audio-channel")]
        for i, path in enumerate(events):
            # short real event sounds: one split per file, chained with gaps into one recording per split
            add_noise(src.split_of(path.stem, 0.15, 0.15), "events", path.stem, src.decode_ffmpeg(path))
        for split_i, split in enumerate(SPLITS):
            split_rng = np.random.default_rng([seed, 1000 + split_i])
            minutes = 3 if split == "train" else 1
            n = minutes * 60 * SR
            for kind, exponent in (("white", 0.0), ("pink", 1.0), ("brown", 2.0)):
                add_noise(split, kind, f"{split}{split_i}", src.colored_noise(split_rng, n, exponent))
            for k in range(3 if split == "train" else 1):
                add_noise(split, "machinery", f"{split}{k}", src.machinery(split_rng, n))
            # babble: 4-6 talkers of this split's pool, so no speaker crosses splits
            pool = [p for _, p in clean[split]]
            for k in range(4 if split == "train" else 1):
                talkers = []
                for _ in range(split_rng.integers(4, 7)):
                    stream = np.concatenate([sf.read(pool[i], dtype="float32")[0] for i in split_rng.choice(len(pool), 20)])
                    talkers.append(stream[:n] if stream.size >= n else np.pad(stream, (0, n - stream.size), mode="wrap"))
                add_noise(split, "babble", f"{split}{k}", np.sum(talkers, axis=0))
            if version >= 2 and split == "train":
                extra_rng = np.random.default_rng([seed, 5000])
                for kind, make in src.EXTRA_NOISES.items():
                    for k in range(2):
                        add_noise(split, kind, f"{split}{k}", make(extra_rng, n))
            progress.advance(task)
        for directory in noise_dirs or []:
            for path in sorted(Path(directory).rglob("*.wav")):
                add_noise(src.split_of(path.stem), "user", path.stem, src._read_wav_bytes(path))

        sets = {
            "valid": ("valid", n_valid, lambda spk: True),
            "test": ("test", n_test, lambda spk: spk == "june-fr" or spk.startswith("user-")),
            "test-synth": ("test", n_test_synth, lambda spk: spk != "june-fr" and not spk.startswith("user-")),
        }
        mix_meta = {}
        for set_i, (name, (split, count, keep)) in enumerate(sets.items()):
            pool = [(spk, p) for spk, p in clean[split] if keep(spk)]
            if not pool or not noise[split]:
                raise HwcError(f"corpus has no clean speech or noise for the {name} set")
            task = progress.add_task(f"mixtures {name}", total=count)
            mix_rng = np.random.default_rng([seed, 2000 + set_i])
            rows = []
            for i in range(count):
                speaker, clean_path = pool[mix_rng.integers(len(pool))]
                kind, noise_path = noise[split][mix_rng.integers(len(noise[split]))]
                snr = SNRS_DB[i % len(SNRS_DB)]
                speech = sf.read(clean_path, dtype="float32")[0][: 6 * SR]
                noisy, clean_scaled = mix(speech, sf.read(noise_path, dtype="float32")[0], snr, mix_rng)
                stem = partial / "mix" / name / f"{i:04d}"
                _write(stem.with_name(stem.name + "_noisy.wav"), noisy)
                _write(stem.with_name(stem.name + "_clean.wav"), clean_scaled)
                rows.append({"id": f"{i:04d}", "snr_db": snr, "noise_kind": kind, "noise_file": noise_path.name,
                             "speaker": speaker, "clean_file": clean_path.name, "seconds": round(speech.size / SR, 3)})
                progress.advance(task)
            (partial / "mix" / f"{name}.json").write_text(json.dumps(rows, indent=1))
            mix_meta[name] = {"split": split, "count": count, "snrs_db": list(SNRS_DB)}

    manifest = {
        "corpus_version": version,
        "seed": seed,
        "sample_rate": SR,
        "splits": {
            split: {
                "speakers": sorted({spk for spk, _ in clean[split]}),
                "utterances": len(clean[split]),
                "speech_seconds": round(sum(sf.info(p).frames for _, p in clean[split]) / SR, 1),
                "noise_files": sorted(p.name for _, p in noise[split]),
            }
            for split in SPLITS
        },
        "mixtures": mix_meta,
        "sources": {
            "debian_packages": src.package_licences(version),
            "generated": "white/pink/brown and machinery noise" + (", and car, rain, ventilation, clatter and alert noise (v2, train)"
                          if version >= 2 else "") + " generated from the seed (no licence needed)",
            "synthetic_voices": {"espeak-ng": src.ESPEAK_VOICES, "flite": src.FLITE_VOICES, "festival": src.FESTIVAL_VOICES,
                                 **({"espeak-ng (v2, train)": src.EXTRA_ESPEAK_VOICES["train"],
                                     "festival (v2, train)": src.EXTRA_FESTIVAL_VOICES["train"]} if version >= 2 else {})},
            "user_dirs": {"clean": [str(d) for d in clean_dirs or []], "noise": [str(d) for d in noise_dirs or []],
                          "licence": "user-provided: not checked"},
        },
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return manifest


def default_corpus_dir(seed: int = 0, version: int = CORPUS_VERSION) -> Path:
    root = Path(os.environ.get("HWCOMPRESS_CACHE", Path.home() / ".cache" / "hwcompress"))
    return root / f"corpus-v{version}-seed{seed}"


def ensure_default_corpus() -> Path:
    """The built-in corpus, built on first use (about two minutes)."""
    out = default_corpus_dir()
    if (out / "manifest.json").exists():
        return out
    # concurrent first uses (two commands, parallel tests) wait for one build instead of
    # deleting each other's half-built folder
    with OutputLock(out, wait=True):
        if not (out / "manifest.json").exists():
            print(f"building the offline corpus in {out} (first use only)", file=sys.stderr, flush=True)
            build_corpus(out)
    return out


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator,
        target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mix speech with a random segment of noise at `snr_db`, at a random level; returns
    (noisy, clean) scaled identically, peak below 1. `target`: what "clean" is when it is not
    the speech in the mixture (reverberant speech's early part), scaled by the same gain."""
    n = speech.size
    if noise.size < n:
        noise = np.pad(noise, (0, n - noise.size), mode="wrap")
    floor = 1e-4 * np.mean(noise**2)
    for _ in range(10):  # event recordings have silent stretches: SNR needs some noise
        start = rng.integers(0, noise.size - n + 1)
        segment = noise[start : start + n]
        if np.mean(segment**2) > floor:
            break
    p_speech = np.mean(speech**2) + 1e-12
    p_noise = np.mean(segment**2) + 1e-12
    segment = segment * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    noisy = speech + segment
    gain = 10 ** (rng.uniform(-35, -15) / 20) / (np.sqrt(np.mean(noisy**2)) + 1e-12)
    gain = min(gain, 0.99 / (np.abs(noisy).max() + 1e-12))
    clean = speech if target is None else target
    return (noisy * gain).astype(np.float32), (clean * gain).astype(np.float32)
