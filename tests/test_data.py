"""Offline corpus: disjoint splits, noise kinds, SNRs, licences, determinism."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import soundfile as sf

from hwcompress.data.corpus import build_corpus
from hwcompress.data.loader import MixtureSampler, eval_set


def test_splits_are_speaker_and_noise_disjoint(small_corpus) -> None:
    manifest = json.loads((small_corpus / "manifest.json").read_text())
    splits = manifest["splits"]
    speakers = {s: set(v["speakers"]) for s, v in splits.items()}
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    # real recorded speech is in train (Allison; from v2 also Carlo and the ru-RU voice) and test (June) only
    assert "june-fr" in speakers["test"] and {"allison-en", "carlo-it", "ivr-ru"} <= speakers["train"]
    assert manifest["corpus_version"] == 2
    noise = {s: set(v["noise_files"]) for s, v in splits.items()}
    assert not noise["train"] & noise["test"] and not noise["train"] & noise["valid"]
    kinds = {name.split("__")[0] for name in noise["train"]}
    assert {"babble", "music", "white", "pink", "brown", "machinery", "events", "car", "rain", "ventilation",
            "clatter", "alerts"} <= kinds


def test_manifest_records_licences(small_corpus) -> None:
    manifest = json.loads((small_corpus / "manifest.json").read_text())
    packages = {p["package"]: p for p in manifest["sources"]["debian_packages"]}
    assert packages["asterisk-core-sounds-fr-g722"]["licences"]
    assert packages["asterisk-moh-opsound-g722"]["version"]


def test_mixtures_have_the_stated_snr(small_corpus) -> None:
    rows = eval_set(small_corpus, "test")
    assert {r["speaker"] for r in rows} == {"june-fr"}
    for row in rows:
        noise = row["noisy"] - row["clean"]
        snr = 10 * np.log10(np.sum(row["clean"] ** 2) / np.sum(noise**2))
        assert abs(snr - row["snr_db"]) < 0.2
        assert np.abs(row["noisy"]).max() < 1.0


def test_sampler_is_seeded(small_corpus) -> None:
    sampler = MixtureSampler(small_corpus)
    a = sampler.batch(np.random.default_rng(3), 2, 16000)
    b = sampler.batch(np.random.default_rng(3), 2, 16000)
    assert all((x == y).all() for x, y in zip(a, b))
    noisy, clean = a
    assert noisy.shape == (2, 16000)
    for x, y in zip(noisy.numpy(), clean.numpy()):
        snr = 10 * np.log10(np.sum(y**2) / np.sum((x - y) ** 2))
        assert -5.2 < snr < 20.2


def test_build_is_deterministic(tmp_path, small_corpus) -> None:
    out = tmp_path / "again"
    build_corpus(out, seed=0, per_voice=1, n_valid=6, n_test=10, n_test_synth=5, real_limit=12)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.wav"))}

    assert digest(out) == digest(small_corpus)
    assert not (tmp_path / "again.partial").exists()


def test_user_folders_are_added(tmp_path) -> None:
    clean = tmp_path / "clean"
    noise = tmp_path / "noise"
    clean.mkdir()
    noise.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for spk in ("p001", "p002", "p003", "p004"):
        sf.write(clean / f"{spk}_001.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 16000)
    sf.write(noise / "fan.wav", (0.1 * rng.standard_normal(48000)).astype(np.float32), 48000)
    manifest = build_corpus(tmp_path / "c", seed=1, per_voice=1, n_valid=2, n_test=2, n_test_synth=2,
                            real_limit=2, clean_dirs=[clean], noise_dirs=[noise])
    speakers = set().union(*(set(v["speakers"]) for v in manifest["splits"].values()))
    assert {"user-p001", "user-p002", "user-p003", "user-p004"} <= speakers
    files = set().union(*(set(v["noise_files"]) for v in manifest["splits"].values()))
    assert "user__fan.wav" in files


def test_v2_adds_training_data_only(tmp_path, small_corpus) -> None:
    """Corpus v2 adds speakers, voices and noise to train; valid and test (speech, noise, every
    mixture and its metadata) stay byte-identical to v1, so scores on them stay comparable."""
    v1 = tmp_path / "v1"
    build_corpus(v1, seed=0, per_voice=1, n_valid=6, n_test=10, n_test_synth=5, real_limit=12, version=1)

    def digest(root, parts):
        return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                for part in parts for p in sorted((root / part).rglob("*")) if p.is_file()}

    held_out = ["clean/valid", "clean/test", "noise/valid", "noise/test", "mix"]
    assert digest(v1, held_out) == digest(small_corpus, held_out)
    old, new = (json.loads((c / "manifest.json").read_text())["splits"]["train"] for c in (v1, small_corpus))
    assert set(old["speakers"]) < set(new["speakers"]) and set(old["noise_files"]) < set(new["noise_files"])
    assert new["speech_seconds"] > old["speech_seconds"] * 1.5  # real_limit=12: 24 -> 48 real prompts
    assert json.loads((v1 / "manifest.json").read_text())["corpus_version"] == 1

    def packages(corpus):
        return {p["package"] for p in json.loads((corpus / "manifest.json").read_text())["sources"]["debian_packages"]}

    assert "asterisk-core-sounds-it-g722" in packages(small_corpus) - packages(v1)  # v1 records only what it reads


def test_unknown_corpus_version_is_one_line(capsys, tmp_path) -> None:
    from conftest import cli, user_error

    user_error(cli(capsys, "data", "build", "--out", str(tmp_path / "c"), "--corpus-version", "3"), "--corpus-version 3")
    assert not (tmp_path / "c").exists()
