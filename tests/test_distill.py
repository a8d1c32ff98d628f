"""Compression fine-tuning distils from the dense model by default (teacher), or trains on the
clean speech (clean) or both (mix): tiny zoo models, real corpus batches, seconds each."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conftest import cli, user_error
from hwcompress.compress.pipeline import FINETUNE_TARGETS, CompressConfig, compress
from hwcompress.compress.prune import apply_masks, magnitude_masks
from hwcompress.data.loader import MixtureSampler
from hwcompress.errors import HwcError
from hwcompress.models.io import load_model, save_model
from hwcompress.models.stft import stft
from hwcompress.train import TrainConfig, target_loss, train

FAST = dict(prune_steps=2, prune_every=1, cluster_steps=1, batch=2, seconds=0.5)
STEPS = TrainConfig(epochs=1, steps_per_epoch=3, batch=2, seconds=0.5, lr=1e-3, patience=10, valid_items=1,
                    halve_on_plateau=False)


def quiet(_msg: str) -> None:
    pass


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _frozen_teacher(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval()  # as compress makes it (its outputs are taken under no_grad)


def test_teacher_loss_is_zero_for_the_uncompressed_student(small_corpus, tmp_path) -> None:
    student = load_model("tiny-gru")
    teacher = _frozen_teacher(student)
    noisy, clean = MixtureSampler(small_corpus, "train").batch(np.random.default_rng(0), 2, 8000)
    spec = stft(noisy)
    est, _ = student(spec, student.initial_state(2))
    assert target_loss(est, spec, clean, teacher, 1.0).item() == 0.0  # student == teacher at step 0
    assert target_loss(est, spec, clean, None).item() > 0.0  # the clean target is another matter
    mixed = target_loss(est, spec, clean, teacher, 0.5).item()
    assert mixed == pytest.approx(0.5 * target_loss(est, spec, clean, None).item(), rel=1e-6)
    # trained on the teacher's outputs, the uncompressed student has nothing to learn: zero loss
    # on every step, zero gradients, weights bit-identical afterwards
    before = _params(student)
    state = train(student, small_corpus, tmp_path / "t", STEPS, resume=False, teacher=teacher, log=quiet)
    assert state["history"][0]["train_loss"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_each_target_trains_a_pruned_student_differently(small_corpus, tmp_path) -> None:
    dense = load_model("tiny-gru")
    teacher = _frozen_teacher(dense)
    pruned = copy.deepcopy(dense)
    apply_masks(pruned, magnitude_masks(pruned, {"rnn.0": 0.5}))
    start = _params(pruned)
    finals = {}
    for target, weight in FINETUNE_TARGETS.items():
        student = copy.deepcopy(pruned)
        state = train(student, small_corpus, tmp_path / target, STEPS, resume=False, log=quiet,
                      teacher=teacher if weight else None, teacher_weight=weight)
        assert state["history"][0]["train_loss"] > 0.0, target  # the pruned student differs from its teacher
        finals[target] = _params(student)
        changed = [k for k in start if not torch.equal(start[k], finals[target][k])]
        assert changed, f"{target}: no weight changed"
        assert all(torch.equal(teacher.state_dict()[k], v) for k, v in dense.state_dict().items())
    weights = [k for k in start if k.endswith("weight_ih_l0")]
    for a, b in (("teacher", "clean"), ("teacher", "mix"), ("clean", "mix")):
        assert any(not torch.equal(finals[a][k], finals[b][k]) for k in weights), (a, b)


def test_default_is_teacher_and_it_reaches_the_artifact(small_corpus, tmp_path) -> None:
    assert CompressConfig().finetune_target == "teacher"
    for target in ("teacher", "mix"):
        out = tmp_path / f"{target}.hwc"
        report = compress(load_model("tiny-lstm"), CompressConfig(sparsity=0.5, codebook=8, finetune_target=target, **FAST),
                          small_corpus, out, log=quiet)
        assert report["finetune_target"] == target
        meta = load_model(str(out)).meta["compression"]
        assert meta["config"]["finetune_target"] == target
        assert meta["finetune"] == {"target": target, "teacher_weight": FINETUNE_TARGETS[target],
                                    "teacher": "the dense input model (eval mode, frozen)"}
    out = tmp_path / "clean.hwc"
    compress(load_model("tiny-lstm"), CompressConfig(sparsity=0.5, codebook=8, finetune_target="clean", **FAST),
             small_corpus, out, log=quiet)
    assert load_model(str(out)).meta["compression"]["finetune"]["teacher"] is None


def test_cli_option_and_bad_value(small_corpus, tmp_path, capsys) -> None:
    model = tmp_path / "tiny.pt"
    save_model(model, load_model("tiny-gru"))
    out = tmp_path / "c.hwc"
    proc = cli(capsys, "compress", "--model", str(model), "--data", str(small_corpus), "--sparsity", "0.3",
               "--codebook", "8", "--prune-steps", "2", "--cluster-steps", "1", "--batch", "2",
               "--finetune-target", "mix", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["finetune_target"] == "mix"
    assert load_model(str(out)).meta["compression"]["finetune"]["target"] == "mix"
    line = user_error(cli(capsys, "compress", "--model", str(model), "--finetune-target", "student",
                          "--out", str(tmp_path / "x.hwc")), "fine-tuning target", "'student'", "teacher, clean, mix")
    assert not (tmp_path / "x.hwc").exists(), line


def test_work_folder_restarts_when_the_target_changes(small_corpus, tmp_path) -> None:
    out = tmp_path / "r.hwc"
    work = tmp_path / "r.hwc.work"

    def interrupt_after_pruning(msg: str) -> None:
        if (work / "prune" / "result.pt").exists():
            raise KeyboardInterrupt

    cfg = CompressConfig(sparsity=0.3, codebook=4, finetune_target="teacher", **FAST)
    with pytest.raises(KeyboardInterrupt):
        compress(load_model("tiny-gru"), cfg, small_corpus, out, log=interrupt_after_pruning)
    assert (work / "prune" / "result.pt").exists()
    key = json.loads((work / "key.json").read_text())
    assert key["config"]["finetune_target"] == "teacher"
    logged: list[str] = []  # another target: the pruned stage is not reused, the run starts afresh
    compress(load_model("tiny-gru"), CompressConfig(**{**cfg.__dict__, "finetune_target": "clean"}), small_corpus,
             out, log=logged.append)
    assert any("starting afresh" in m for m in logged) and not any("already done" in m for m in logged), logged
    assert out.exists() and not work.exists()
    assert load_model(str(out)).meta["compression"]["finetune"]["target"] == "clean"


def test_fit_passes_the_target_through(small_corpus, tmp_path) -> None:
    from hwcompress.models.cost import layer_paths
    from hwcompress.search.fit import FitConfig, Fitter, fit

    with pytest.raises(HwcError, match="fine-tuning target 'bogus'"):
        fit(FitConfig(target="generic-onnx", out=tmp_path / "bad", model="tiny-gru", finetune_target="bogus"),
            log=quiet)
    f = Fitter(FitConfig(target="generic-onnx", out=tmp_path / "fit", model="tiny-gru", cluster_steps=1, batch=2,
                         seconds=0.5, finetune_target="mix"), quiet)
    report = f.compress(tmp_path / "fit", small_corpus, {}, {layer: 8 for layer in layer_paths(f.model)})
    assert report["finetune_target"] == "mix"
    assert json.loads((tmp_path / "fit" / "settings.json").read_text())["config"]["finetune_target"] == "mix"
