"""Training batches mixed on the fly from a corpus split, and the fixed evaluation sets."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from hwcompress.data import augment
from hwcompress.data.augment import Augment
from hwcompress.data.corpus import mix
from hwcompress.errors import HwcError


def check_corpus(root: Path) -> Path:
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise HwcError(f"{root}: not a corpus (no manifest.json); build one with `hwcompress data build --out {root}`")
    return root


class MixtureSampler:
    """Random (noisy, clean) crops: random utterance, noise kind chosen uniformly (so big
    pools such as music do not dominate), random segment, SNR and level. With `augment`
    (hwcompress.data.augment) each mixture may also be sped up or slowed down, reverberated
    and coloured by a channel; without it the draws are exactly those of earlier versions."""

    def __init__(self, root: Path, split: str = "train", snr_range: tuple[float, float] = (-5.0, 20.0),
                 augment: Augment | None = None) -> None:
        root = check_corpus(root)
        self.speech = [sf.read(p, dtype="float32")[0] for p in sorted((root / "clean" / split).glob("*.wav"))]
        self.noise: dict[str, list[np.ndarray]] = defaultdict(list)
        for p in sorted((root / "noise" / split).glob("*.wav")):
            self.noise[p.name.split("__")[0]].append(sf.read(p, dtype="float32")[0])
        if not self.speech or not self.noise:
            raise HwcError(f"{root}: split {split!r} has no speech or no noise")
        self.kinds = sorted(self.noise)
        self.snr_range = snr_range
        self.augment = augment

    def batch(self, rng: np.random.Generator, size: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.one(rng, samples) for _ in range(size)]
        return torch.from_numpy(np.stack([n for n, _ in pairs])), torch.from_numpy(np.stack([c for _, c in pairs]))

    def one(self, rng: np.random.Generator, samples: int) -> tuple[np.ndarray, np.ndarray]:
        """One (noisy, clean) pair of `samples` samples."""
        aug = self.augment
        factor = augment.speed_factor(rng, aug) if aug is not None else 1.0
        need = samples if factor == 1.0 else int(np.ceil(samples * factor)) + 1
        parts, total = [], 0
        while total < need:  # chain utterances so short prompts still fill the crop
            utt = self.speech[rng.integers(len(self.speech))]
            parts += [utt, np.zeros(rng.integers(0, 4000), np.float32)]
            total += utt.size + parts[-1].size
        speech = np.concatenate(parts)
        start = rng.integers(0, speech.size - need + 1)
        speech = speech[start : start + need]
        if np.abs(speech).max() < 1e-4:
            speech = self.speech[0][:need]
            speech = np.pad(speech, (0, need - speech.size))
        target = None
        if aug is not None:
            speech = augment.change_speed(speech, factor, samples)
            rir = augment.room_impulse_response(rng, aug)
            if rir is not None:
                speech, target = augment.reverberate(speech, rir)
        pool = self.noise[self.kinds[rng.integers(len(self.kinds))]]
        noisy, clean = mix(speech, pool[rng.integers(len(pool))], rng.uniform(*self.snr_range), rng, target=target)
        if aug is not None:
            noisy, clean = augment.apply_channel(augment.channel_filter(rng, aug), noisy, clean)
        return noisy, clean


def eval_set(root: Path, name: str = "test", limit: int | None = None) -> list[dict]:
    """Fixed mixtures of a set: dicts with noisy, clean arrays and their metadata."""
    root = check_corpus(root)
    meta_file = root / "mix" / f"{name}.json"
    if not meta_file.is_file():
        known = sorted(p.stem for p in (root / "mix").glob("*.json"))
        raise HwcError(f"{root}: no evaluation set {name!r} (have {', '.join(known)})")
    rows = json.loads(meta_file.read_text())[:limit]
    for row in rows:
        row["noisy"] = sf.read(root / "mix" / name / f"{row['id']}_noisy.wav", dtype="float32")[0]
        row["clean"] = sf.read(root / "mix" / name / f"{row['id']}_clean.wav", dtype="float32")[0]
    return rows
