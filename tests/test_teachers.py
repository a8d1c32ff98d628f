"""Distillation from a cached teacher pool (issue 14) and training-data augmentation.

The pool's items are deterministic, written atomically, checked when read (a missing or damaged
item is recomputed, the others are kept), hold the teacher's real output on the very mixture the
student reads, and training from them resumes like on-the-fly training. Tiny model, 1 s items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import cli, user_error
from hwcompress.data.augment import Augment, reverberate, room_impulse_response
from hwcompress.data.loader import MixtureSampler
from hwcompress.errors import HwcError
from hwcompress.models import deepfilternet as dfn
from hwcompress.models.io import load_model
from hwcompress.teachers import PoolSpec, TeacherPool, build_pool, make_item
from hwcompress.train import TrainConfig, train

ALWAYS = Augment(speed_prob=1.0, reverb_prob=1.0, channel_prob=1.0, bandlimit_prob=1.0)


def _quiet(msg: str) -> None:
    pass


def test_augmented_mixtures_are_deterministic_and_valid(small_corpus) -> None:
    sampler = MixtureSampler(small_corpus, augment=ALWAYS)
    a = sampler.one(np.random.default_rng(5), 16000)
    b = sampler.one(np.random.default_rng(5), 16000)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for noisy, clean in (a, sampler.one(np.random.default_rng(6), 16000)):
        assert noisy.shape == clean.shape == (16000,) and noisy.dtype == clean.dtype == np.float32
        assert np.isfinite(noisy).all() and np.abs(noisy).max() < 1 and np.abs(clean).max() > 0
    plain = MixtureSampler(small_corpus).one(np.random.default_rng(5), 16000)
    assert not np.array_equal(plain[0], a[0])  # the augmentation changed the mixture


def test_reverberant_target_is_the_early_part_aligned_with_the_mixture() -> None:
    rng = np.random.default_rng(0)
    rir = room_impulse_response(rng, Augment(reverb_prob=1.0, rt60_range=(0.6, 0.6)))
    assert rir is not None and np.abs(rir).max() == pytest.approx(1.0)
    speech = np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    wet, early = reverberate(speech, rir)
    # aligned: the direct path sits at lag 0 in both, so the early target correlates with the dry
    # speech at lag 0; the late tail makes the wet signal differ from the target
    assert np.corrcoef(early, speech)[0, 1] > 0.3
    assert np.mean((wet - early) ** 2) > 0.05 * np.mean(early**2)


def test_pool_items_are_deterministic_resumable_and_hold_the_teachers_output(small_corpus, tmp_path) -> None:
    spec = PoolSpec(teacher="dfn3", seconds=1.0, seed=3, augment=ALWAYS)
    folder = build_pool(small_corpus, spec, 3, log=_quiet, root=tmp_path)
    first = {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}
    assert sorted(first) == ["000000.npy", "000001.npy", "000002.npy"]
    item = np.load(folder / "000001.npy")
    assert item.dtype == np.float16 and item.shape == (3, 16000)
    # the third row is DeepFilterNet3's (C runtime) output on the stored, float16 mixture
    out = dfn.enhance_native(item[0].astype(np.float32), 16000)
    assert np.abs(out - item[2].astype(np.float32)).max() <= 2e-3 * max(1.0, np.abs(out).max())
    # a lost and a damaged item are recomputed, equal to before; the others are not touched
    (folder / "000001.npy").unlink()
    (folder / "000002.npy").write_bytes(first["000002.npy"][:100])
    mtime0 = (folder / "000000.npy").stat().st_mtime_ns
    logs: list[str] = []
    assert build_pool(small_corpus, spec, 3, log=logs.append, root=tmp_path) == folder
    assert any("computing 2 of 3" in m for m in logs), logs
    assert {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))} == first
    assert (folder / "000000.npy").stat().st_mtime_ns == mtime0
    # a larger pool extends the smaller one; the same items from a sampler of its own
    build_pool(small_corpus, spec, 4, log=_quiet, root=tmp_path)
    assert (folder / "000001.npy").read_bytes() == first["000001.npy"]
    again = make_item(MixtureSampler(small_corpus, augment=ALWAYS), spec, 3)
    assert np.array_equal(again, np.load(folder / "000003.npy"))
    assert not list(folder.glob("*.tmp"))
    # other settings, another folder
    assert build_pool(small_corpus, PoolSpec(teacher="dfn3", seconds=1.0, seed=4, augment=ALWAYS), 1,
                      log=_quiet, root=tmp_path) != folder
    pool = TeacherPool(folder, spec, 4)
    noisy, clean, taught = pool.batch(np.random.default_rng(0), 2, 8000)
    assert noisy.shape == clean.shape == taught.shape == (2, 8000) and noisy.dtype == torch.float32
    with pytest.raises(HwcError, match="item 4 is missing"):
        TeacherPool(folder, spec, 6)


def test_training_from_a_pool_learns_resumes_and_refuses_other_settings(small_corpus, tmp_path, monkeypatch) -> None:
    import hwcompress.teachers as teachers

    # the pool under tmp_path: this test's items are its own
    real = teachers.build_pool
    monkeypatch.setattr("hwcompress.train.build_pool", lambda *a, **k: real(*a, **{**k, "root": tmp_path / "pools"}))
    cfg = TrainConfig(epochs=2, steps_per_epoch=3, batch=2, seconds=0.5, valid_items=1, lr=3e-3, seed=1,
                      distill_from="nsnet2", distill_weight=0.7, pool_items=3, augment=True)
    torch.manual_seed(0)
    model = load_model("tiny-gru")
    logs: list[str] = []
    state = train(model, small_corpus, tmp_path / "run", TrainConfig(**{**cfg.__dict__, "epochs": 1}), log=logs.append)
    assert any("distilling from nsnet2: 3 pooled mixtures, loss 0.7 x teacher" in m for m in logs), logs
    assert state["epoch"] == 1 and np.isfinite(state["history"][0]["train_loss"])
    state = train(load_model("tiny-gru"), small_corpus, tmp_path / "run", cfg, log=logs.append)
    assert state["epoch"] == 2 and any("resumed" in m for m in logs)
    saved = load_model(str(tmp_path / "run" / "model.pt"))  # weights_only loading of what training wrote
    assert saved.meta["train_config"]["distill_from"] == "nsnet2"
    with pytest.raises(HwcError, match="distill_weight 0.7 \\(now 0.2\\)"):
        train(load_model("tiny-gru"), small_corpus, tmp_path / "run",
              TrainConfig(**{**cfg.__dict__, "epochs": 3, "distill_weight": 0.2}), log=_quiet)


def test_train_cli_rejects_an_unknown_teacher(capsys, small_corpus, tmp_path) -> None:
    proc = cli(capsys, "train", "--model", "tiny-gru", "--data", str(small_corpus), "--out", str(tmp_path / "r"),
               "--teacher", "rnnoise", "--device", "cpu")
    user_error(proc, "unknown teacher 'rnnoise'", "dfn3", "nsnet2")
    assert not (tmp_path / "r").exists()


def test_rnnoise_reference_is_aligned_and_enhances(small_corpus) -> None:
    """RNNoise in its C library: the output is aligned with the input (the library's two-frame
    delay removed: the best cross-correlation lag on real speech is 0) and it raises SI-SDR on
    a noisy real-speech mixture; bad input is one line."""
    import scipy.signal

    from hwcompress.data.loader import eval_set
    from hwcompress.metrics import si_sdr
    from hwcompress.models import rnnoise

    item = eval_set(small_corpus, "test", limit=1)[0]
    clean = item["clean"] / max(1e-3, float(np.abs(item["clean"]).max())) * 0.5
    out = rnnoise.enhance(clean)
    assert out.shape == clean.shape and out.dtype == np.float32
    c = scipy.signal.correlate(out, clean, mode="full")
    assert int(np.argmax(c)) - (clean.size - 1) == 0
    noisy = item["noisy"]
    assert si_sdr(item["clean"], rnnoise.enhance(noisy)) > si_sdr(item["clean"], noisy)
    with pytest.raises(HwcError, match="one finite mono signal"):
        rnnoise.enhance(np.zeros((2, 100), np.float32))


def test_train_cli_rejects_teacher_options_without_a_teacher(capsys, small_corpus, tmp_path) -> None:
    proc = cli(capsys, "train", "--model", "tiny-gru", "--data", str(small_corpus), "--out", str(tmp_path / "r"),
               "--teacher-weight", "0.9", "--device", "cpu")
    user_error(proc, "--teacher-weight: used only with --teacher")
    assert not (tmp_path / "r").exists()
