"""Training: an interrupted and resumed run equals an uninterrupted one; early stopping and
LR halving happen when the validation loss stops improving; a bad checkpoint is one line.

Tiny model (tiny-gru), the small test corpus, a few steps of half-second crops."""

from __future__ import annotations

import json

import pytest
import torch

from hwcompress.errors import HwcError
from hwcompress.models.io import load_model
from hwcompress.train import TrainConfig, corpus_id, train

SMALL = dict(steps_per_epoch=3, batch=2, seconds=0.5, valid_items=1, lr=3e-3, seed=1)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return load_model("tiny-gru")


def _quiet(msg: str) -> None:
    pass


def _history(state: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in state["history"]]  # wall time differs


def _assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_equals_uninterrupted_run(small_corpus, tmp_path) -> None:
    cfg = TrainConfig(epochs=3, patience=10, **SMALL)
    straight = _model()
    s_state = train(straight, small_corpus, tmp_path / "straight", cfg, log=_quiet)

    # interrupted: stops after epoch 2 (max epochs), the process "ends", a new model resumes
    first = _model()
    train(first, small_corpus, tmp_path / "resumed", TrainConfig(**{**cfg.__dict__, "epochs": 2}), log=_quiet)
    torch.manual_seed(123)  # a new process: the global RNG is elsewhere
    resumed = _model(seed=99)  # different initial weights: everything must come from last.pt
    logs: list[str] = []
    r_state = train(resumed, small_corpus, tmp_path / "resumed", cfg, log=logs.append)
    assert any("resumed" in m and "epoch 2" in m for m in logs)
    assert len(r_state["history"]) == 3
    assert _history(r_state) == _history(s_state)
    _assert_same_weights(resumed, straight)
    assert r_state["best"] == s_state["best"]
    assert json.loads((tmp_path / "resumed" / "history.json").read_text()) == r_state["history"]
    best = load_model(str(tmp_path / "resumed" / "model.pt"))
    _assert_same_weights(best, load_model(str(tmp_path / "straight" / "model.pt")))


def test_resume_after_a_crash_mid_epoch(small_corpus, tmp_path) -> None:
    cfg = TrainConfig(epochs=2, patience=10, **SMALL)
    straight = _model()
    s_state = train(straight, small_corpus, tmp_path / "straight", cfg, log=_quiet)

    steps = []

    def crash(model) -> None:  # dies in the middle of epoch 2
        steps.append(1)
        if len(steps) == cfg.steps_per_epoch + 2:
            raise KeyboardInterrupt

    crashed = _model()
    with pytest.raises(KeyboardInterrupt):
        train(crashed, small_corpus, tmp_path / "run", cfg, after_step=crash, log=_quiet)
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1
    resumed = _model(seed=5)
    r_state = train(resumed, small_corpus, tmp_path / "run", cfg, log=_quiet)
    assert _history(r_state) == _history(s_state)
    _assert_same_weights(resumed, straight)


def _frozen(model):
    """An after_step hook undoing every update: the validation loss can never improve."""
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def hook(m) -> None:
        with torch.no_grad():
            for k, v in m.state_dict().items():
                v.copy_(init[k])
    return hook


def test_early_stopping_and_lr_halving(small_corpus, tmp_path) -> None:
    model = _model()
    cfg = TrainConfig(epochs=20, patience=2, **SMALL)
    state = train(model, small_corpus, tmp_path / "run", cfg, after_step=_frozen(model), log=_quiet)
    # epoch 1 improves on inf; epochs 2-3 cannot improve: patience 2 stops after epoch 3
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert state["bad_epochs"] == 2
    assert len({h["valid_loss"] for h in state["history"]}) == 1
    lr = cfg.lr
    # the lr an epoch ran with: halved after every epoch without improvement
    assert [h["lr"] for h in state["history"]] == [lr, lr, lr / 2]
    assert state["lr"] == lr / 4
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [lr / 4]  # the optimiser's own rate
    # the halved rate is what the optimiser used, and what a resume continues with
    logs: list[str] = []
    again = train(model, small_corpus, tmp_path / "run", TrainConfig(**{**cfg.__dict__, "patience": 3}),
                  after_step=_frozen(model), log=logs.append)
    assert any("resumed" in m for m in logs)
    assert [h["lr"] for h in again["history"]][3:] == [lr / 4]
    assert len(again["history"]) == 4 and again["lr"] == lr / 8


def test_no_halving_when_disabled(small_corpus, tmp_path) -> None:
    model = _model()
    cfg = TrainConfig(epochs=10, patience=2, halve_on_plateau=False, **SMALL)  # what compression fine-tuning uses
    state = train(model, small_corpus, tmp_path / "frozen", cfg, after_step=_frozen(model), log=_quiet)
    assert len(state["history"]) == 3  # patience 2: epochs 2 and 3 were bad
    assert [h["lr"] for h in state["history"]] == [cfg.lr] * 3 and state["lr"] == cfg.lr


def test_corrupt_or_foreign_checkpoint_is_one_line(small_corpus, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HwcError, match="last.pt.*no-resume"):
        train(_model(), small_corpus, run, TrainConfig(epochs=1, **SMALL), log=_quiet)
    assert (run / "last.pt").read_bytes() == b"not a checkpoint"  # loses nothing

    other = tmp_path / "other"
    train(_model(), small_corpus, other, TrainConfig(epochs=1, **SMALL), log=_quiet)
    torch.manual_seed(0)
    with pytest.raises(HwcError, match="another model"):
        train(load_model("tiny-lstm"), small_corpus, other, TrainConfig(epochs=2, **SMALL), log=_quiet)
    with pytest.raises(HwcError, match="seed"):
        train(_model(), small_corpus, other, TrainConfig(epochs=2, **{**SMALL, "seed": 7}), log=_quiet)
    # resume=False starts afresh over it
    state = train(_model(), small_corpus, other, TrainConfig(epochs=1, **{**SMALL, "seed": 7}), resume=False,
                  log=_quiet)
    assert len(state["history"]) == 1


def test_resume_on_another_corpus_is_one_line(small_corpus, tmp_path) -> None:
    """A checkpoint remembers its corpus (the manifest's digest): continuing it on other data
    would silently change the run, so it is refused before anything is written."""
    import shutil

    run = tmp_path / "run"
    train(_model(), small_corpus, run, TrainConfig(epochs=1, **SMALL), log=_quiet)
    assert load_model(str(run / "model.pt")).meta["corpus"] == corpus_id(small_corpus) != ""
    other = tmp_path / "corpus"
    shutil.copytree(small_corpus, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["seed"] = 99
    (other / "manifest.json").write_text(json.dumps(manifest))
    before = (run / "last.pt").read_bytes()
    with pytest.raises(HwcError, match="another corpus.*--data"):
        train(_model(), other, run, TrainConfig(epochs=2, **SMALL), log=_quiet)
    assert (run / "last.pt").read_bytes() == before


def test_magnitude_loss_ignores_the_phase_a_mask_cannot_change() -> None:
    """`--loss mag` scores compressed magnitudes only: an estimate with the reference's magnitudes
    and another phase costs nothing, where the default loss charges the phase error (which is
    least, for a real gain on the noisy spectrum, at a gain below the magnitude ratio)."""
    from hwcompress.train import spectral_loss

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 20, 161, 2, generator=g)
    mag = ref.pow(2).sum(-1).sqrt()
    phase = torch.rand(2, 20, 161, generator=g) * 6.28
    other = torch.stack([mag * torch.cos(phase), mag * torch.sin(phase)], -1)
    assert spectral_loss(other, ref, kind="mag").item() < 1e-10
    assert spectral_loss(other, ref).item() > 0.1
    assert spectral_loss(ref, ref).item() < 1e-10
    # a magnitude error is charged the same by both
    louder = ref * 2.0
    assert spectral_loss(louder, ref, kind="mag").item() > 0.01
    with pytest.raises(HwcError, match="unknown training loss 'l1'"):
        spectral_loss(ref, ref, kind="l1")


def test_training_with_the_magnitude_loss_resumes_and_refuses_another_loss(small_corpus, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(epochs=1, loss="mag", **SMALL)
    state = train(_model(), small_corpus, run, cfg, log=_quiet)
    assert state["epoch"] == 1 and torch.isfinite(torch.tensor(state["history"][0]["valid_loss"]))
    assert load_model(str(run / "model.pt")).meta["train_config"]["loss"] == "mag"
    before = (run / "last.pt").read_bytes()
    with pytest.raises(HwcError, match="loss 'mag' \\(now 'mag\\+complex'\\)"):
        train(_model(), small_corpus, run, TrainConfig(epochs=2, **SMALL), log=_quiet)
    assert (run / "last.pt").read_bytes() == before
    with pytest.raises(HwcError, match="unknown training loss 'l1'"):
        train(_model(), small_corpus, tmp_path / "other", TrainConfig(epochs=1, loss="l1", **SMALL), log=_quiet)
    assert not (tmp_path / "other").exists()  # refused before anything is written


def test_train_cli_rejects_an_unknown_loss(capsys, small_corpus, tmp_path) -> None:
    from conftest import cli, user_error

    proc = cli(capsys, "train", "--model", "tiny-gru", "--data", str(small_corpus), "--out", str(tmp_path / "r"),
               "--loss", "l1", "--device", "cpu")
    user_error(proc, "--loss must be one of mag+complex, mag, got 'l1'")
    assert not (tmp_path / "r").exists()


def test_wise_ft_averages_a_finetuned_model_with_its_start(capsys, small_corpus, tmp_path) -> None:
    """`hwcompress wise-ft`: every float weight is alpha x fine-tuned + (1 - alpha) x start (alpha 1
    gives the fine-tuned model, 0 the start), the file loads with weights_only and says what it
    is; a start of another network, a .hwc, a non-.pt output or an untrained --model is one line
    and writes nothing."""
    from conftest import cli, user_error
    from hwcompress.models.io import save_model

    start = _model(0)
    save_model(tmp_path / "start.pt", start, {"trained": True})
    train(_model(0), small_corpus, tmp_path / "run", TrainConfig(epochs=1, **SMALL), log=_quiet)
    tuned = load_model(str(tmp_path / "run" / "model.pt"))
    st, sf = start.state_dict(), tuned.state_dict()
    assert any(not torch.equal(st[k], sf[k]) for k in st)  # training moved the weights
    for alpha in (0.0, 0.5, 1.0):
        out = tmp_path / f"wise{alpha}.pt"
        proc = cli(capsys, "wise-ft", "--model", str(tmp_path / "run" / "model.pt"), "--start",
                   str(tmp_path / "start.pt"), "--alpha", str(alpha), "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        merged = load_model(str(out))
        assert merged.meta["wise_ft"]["alpha"] == alpha and merged.meta["trained"] is True
        for k, v in merged.state_dict().items():
            want = alpha * sf[k] + (1 - alpha) * st[k] if v.is_floating_point() else sf[k]
            assert torch.allclose(v, want, atol=1e-7), k
    other = tmp_path / "other.pt"
    torch.manual_seed(0)
    save_model(other, load_model("tiny-lstm"), {"trained": True})
    run = str(tmp_path / "run" / "model.pt")
    bad = tmp_path / "bad.pt"
    user_error(cli(capsys, "wise-ft", "--model", run, "--start", str(other), "--out", str(bad)),
               "needs the model training started from")
    user_error(cli(capsys, "wise-ft", "--model", "m.hwc", "--start", str(other), "--out", str(bad)), "not a compressed")
    user_error(cli(capsys, "wise-ft", "--model", run, "--start", str(other), "--out", str(tmp_path / "x.onnx")),
               "written as a .pt")
    user_error(cli(capsys, "wise-ft", "--model", "tiny-gru", "--start", "tiny-gru", "--out", str(bad)),
               "not a trained model file")
    assert not bad.exists()


def test_a_model_trained_from_licensed_weights_keeps_their_name_and_licence(small_corpus, tmp_path) -> None:
    """Weights under an attribution licence (NSNet2: CC-BY 4.0) stay credited in what is trained
    from them, and in a WiSE-FT ensemble of that, for the fit's report to name."""
    from hwcompress.train import model_licence

    start = _model(0)
    start.meta = {"pretrained": "demo", "licence": "CC-BY 4.0, someone", "weights_from": "a package"}
    train(start, small_corpus, tmp_path / "run", TrainConfig(epochs=1, **SMALL), log=_quiet)
    tuned = load_model(str(tmp_path / "run" / "model.pt"))
    assert tuned.meta["derived_from"] == {"pretrained": "demo", "licence": "CC-BY 4.0, someone",
                                          "weights_from": "a package"}
    assert model_licence(tuned) == "demo (trained on by hwcompress), CC-BY 4.0, someone"
    assert model_licence(_model(0)) == ""
    train(_model(0), small_corpus, tmp_path / "plain", TrainConfig(epochs=1, **SMALL), log=_quiet)
    assert "derived_from" not in load_model(str(tmp_path / "plain" / "model.pt")).meta
