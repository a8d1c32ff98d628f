"""Training with on-the-fly mixing, checkpoints every epoch, resume and early stopping."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from hwcompress.errors import HwcError
from hwcompress.progress import progress_bar

from hwcompress.data.loader import MixtureSampler, eval_set
from hwcompress.models.io import save_model
from hwcompress.models.stft import StftConfig, stft
from hwcompress.models.zoo import SEModel

STFT = StftConfig()


@dataclass
class TrainConfig:
    epochs: int = 30
    steps_per_epoch: int = 200
    batch: int = 8
    seconds: float = 4.0
    lr: float = 1e-3
    patience: int = 6
    seed: int = 0
    valid_items: int = 60
    max_minutes: float = 0.0  # stop cleanly after this wall time (0 = no limit)
    # Compression fine-tuning keeps a constant rate: while sparsity ramps up the validation loss
    # rises by design, and halving on those "plateaus" left long runs fine-tuning at lr/32.
    halve_on_plateau: bool = True


def spectral_loss(est: torch.Tensor, ref: torch.Tensor, power: float = 0.3) -> torch.Tensor:
    """MSE of power-law compressed magnitudes plus of compressed complex spectra: the
    compression weights quiet T-F regions as hearing (and PESQ) does."""
    mag_e = est.pow(2).sum(-1).add(1e-10).sqrt()
    mag_r = ref.pow(2).sum(-1).add(1e-10).sqrt()
    comp_e = est * (mag_e.pow(power - 1)).unsqueeze(-1)
    comp_r = ref * (mag_r.pow(power - 1)).unsqueeze(-1)
    return torch.mean((mag_e.pow(power) - mag_r.pow(power)) ** 2) + torch.mean((comp_e - comp_r) ** 2)


def analysis(model: torch.nn.Module, audio: torch.Tensor) -> torch.Tensor:
    """The spectrum `model` reads for 16 kHz `audio` [B, N]: its own front end's where it has one
    (`model.analyze`, e.g. DeepFilterNet3's 48 kHz STFT), hwcompress's STFT otherwise."""
    own = getattr(model, "analyze", None)
    return own(audio) if callable(own) else stft(audio)


def reference(model: torch.nn.Module, clean: torch.Tensor) -> torch.Tensor:
    """The clean speech's spectrum aligned with `model`'s output (`model.reference` where the model
    has its own front end and a delayed output, e.g. DeepFilterNet3's lookahead)."""
    own = getattr(model, "reference", None)
    return own(clean) if callable(own) else stft(clean)


def target_loss(est: torch.Tensor, spec: torch.Tensor, clean: torch.Tensor, teacher: torch.nn.Module | None = None,
                teacher_weight: float = 1.0, model: torch.nn.Module | None = None) -> torch.Tensor:
    """The fine-tuning loss of the student output `est` for the noisy STFT `spec`:
    teacher_weight x spectral loss against the teacher's output on `spec` (computed here
    under no_grad: the teacher gets no gradient and is not changed) + (1 - teacher_weight)
    x spectral loss against the clean speech. No teacher (or weight 0): the clean loss only.
    `model` (the student) says how clean speech becomes a spectrum (`reference`)."""
    w = float(teacher_weight) if teacher is not None else 0.0
    if w <= 0.0:
        return spectral_loss(est, reference(model, clean))
    with torch.no_grad():
        target, _ = teacher(spec, teacher.initial_state(spec.shape[0]))
    loss = spectral_loss(est, target.detach())
    if w < 1.0:
        loss = w * loss + (1.0 - w) * spectral_loss(est, reference(model, clean))
    return loss


def fit_normalizer(model: SEModel, sampler: MixtureSampler, rng: np.random.Generator, n: int = 64) -> None:
    noisy, _ = sampler.batch(rng, n, int(STFT.sample_rate * 4))
    logp = torch.log(stft(noisy).pow(2).sum(-1) + 1e-10).reshape(-1, STFT.n_bins)
    model.feat_mean.copy_(logp.mean(0))
    model.feat_std.copy_(logp.std(0).clamp_min(1e-3))


def validation_loss(model: SEModel, items: list[dict]) -> float:
    """Mean spectral loss over fixed items: no sampling, so the same weights always give
    the same figure (bit-identical for a given thread count). The model's mode is kept.
    An item holding a teacher's output ("teacher", "teacher_weight" w: see
    search.sensitivity.with_teacher) is scored w x loss against it + (1 - w) x the clean loss."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for item in items:
            noisy = torch.from_numpy(item["noisy"])[None]
            spec = analysis(model, noisy)
            est, _ = model(spec, model.initial_state(1))
            w = float(item.get("teacher_weight", 0.0)) if "teacher" in item else 0.0
            loss = w * spectral_loss(est, torch.from_numpy(item["teacher"])[None]).item() if w > 0 else 0.0
            if w < 1.0:
                loss += (1.0 - w) * spectral_loss(est, reference(model, torch.from_numpy(item["clean"])[None])).item()
            total += loss
    model.train(was_training)
    return total / len(items)


# settings that shape the trajectory: a resume with other values would not continue the
# same run (epochs, patience and max_minutes may change: they only say when to stop)
RESUME_FIELDS = ("seed", "batch", "steps_per_epoch", "seconds", "lr", "valid_items", "halve_on_plateau")


def _resume(last: Path, model: SEModel, opt: torch.optim.Optimizer, cfg: TrainConfig) -> dict:
    """Load last.pt into `model` and `opt` (and the torch RNG) and return the loop state.
    A checkpoint that is corrupt, of another model or of other settings is one HwcError
    line, before anything is changed on disk."""
    hint = "pass --no-resume (or another --out) to start afresh"
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        state = json.loads(ckpt["state"])
        saved_cfg = json.loads(ckpt["train_config"]) if "train_config" in ckpt else None
        same_model = ckpt.get("arch", getattr(model, "arch", None)) == getattr(model, "arch", None) and (
            "config" not in ckpt or json.loads(ckpt["config"]) == json.loads(json.dumps(getattr(model, "config", None))))
        int(state["epoch"]), float(state["best"]), int(state["bad_epochs"]), list(state["history"]), float(state["lr"])
        model_state, opt_state = ckpt["model"], ckpt["optimizer"]
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise HwcError(f"{last}: corrupt or unreadable training checkpoint ({type(exc).__name__}); {hint}") from None
    if not same_model:
        raise HwcError(f"{last}: checkpoint of another model ({ckpt.get('arch')}); {hint}")
    if saved_cfg is not None:
        changed = [f for f in RESUME_FIELDS if f in saved_cfg and saved_cfg[f] != getattr(cfg, f)]
        if changed:
            was = ", ".join(f"{f} {saved_cfg[f]!r} (now {getattr(cfg, f)!r})" for f in changed)
            raise HwcError(f"{last}: written with other settings: {was}; resume with the same settings or {hint}")
    try:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise HwcError(f"{last}: checkpoint of another model ({str(exc).splitlines()[0][:120]}); {hint}") from None
    if isinstance(ckpt.get("torch_rng"), torch.Tensor):
        torch.set_rng_state(ckpt["torch_rng"])
    return state


def train(
    model: SEModel,
    data: Path,
    out: Path,
    cfg: TrainConfig = TrainConfig(),
    resume: bool = True,
    regularizer: Callable[[SEModel], torch.Tensor] | None = None,
    after_step: Callable[[SEModel], None] | None = None,
    after_backward: Callable[[], None] | None = None,
    parameters: list[torch.nn.Parameter] | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, flush=True),
    teacher: torch.nn.Module | None = None,
    teacher_weight: float = 1.0,
) -> dict:
    """Train `model` in place; `out` holds last.pt (resume state), best model in model.pt
    and history.json. `regularizer` adds a penalty (sparse regularisation); `after_step`
    runs after each optimiser step (re-applying pruning masks); `parameters` replaces the
    model's parameters as what the optimiser updates and `after_backward` runs between
    backward and step (both for centroid fine-tuning, where codebooks are trained).
    `teacher` (distillation, compression fine-tuning): a model in eval mode whose output on
    each noisy batch is the target, weighted `teacher_weight` against the clean target
    (`target_loss`). With a teacher the input normalizer is never refitted: the student
    starts as the teacher's copy and refitting would make them differ before any step.
    The validation loss stays against clean speech (what the history reports)."""
    if not 0.0 <= teacher_weight <= 1.0:
        raise HwcError(f"teacher weight must be in [0, 1], got {teacher_weight}")
    distil = teacher is not None and teacher_weight > 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sampler = MixtureSampler(data, "train")
    valid = eval_set(data, "valid", cfg.valid_items)
    trained = list(parameters) if parameters is not None else list(model.parameters())
    opt = torch.optim.Adam(trained, lr=cfg.lr)
    state = {"epoch": 0, "best": math.inf, "bad_epochs": 0, "history": [], "lr": cfg.lr}
    last = out / "last.pt"
    if resume and last.exists():
        state = _resume(last, model, opt, cfg)
        log(f"resumed from {last} at epoch {state['epoch']}")
    elif not distil and not getattr(model, "meta", {}).get("trained") and hasattr(model, "feat_mean"):
        # the zoo's models normalise their features with statistics fitted here; a model of your
        # own (hwcompress.models.wrap) computes exactly the features its front end declares
        fit_normalizer(model, sampler, np.random.default_rng([cfg.seed, 999]))
    for group in opt.param_groups:
        group["lr"] = state["lr"]
    started = time.time()
    samples = int(cfg.seconds * STFT.sample_rate)
    model.train()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with progress_bar(*columns) as progress:
        while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
            epoch = state["epoch"]
            rng = np.random.default_rng([cfg.seed, epoch])  # per-epoch seed: resume is exact
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=cfg.steps_per_epoch, info="")
            running = 0.0
            for step in range(cfg.steps_per_epoch):
                noisy, clean = sampler.batch(rng, cfg.batch, samples)
                spec = analysis(model, noisy)
                est, _ = model(spec, model.initial_state(cfg.batch))
                loss = target_loss(est, spec, clean, teacher, teacher_weight, model)
                total = loss + (regularizer(model) if regularizer else 0.0)
                opt.zero_grad()
                total.backward()
                if after_backward:
                    after_backward()
                torch.nn.utils.clip_grad_norm_(trained, 5.0)
                opt.step()
                if after_step:
                    after_step(model)
                running += loss.item()
                progress.update(task, advance=1, info=f"loss {running / (step + 1):.4f}")
            val = validation_loss(model, valid)
            state["epoch"] += 1
            improved = val < state["best"] - 1e-4
            state["history"].append({"epoch": state["epoch"], "train_loss": running / cfg.steps_per_epoch,
                                     "valid_loss": val, "lr": state["lr"], "seconds": time.time() - started})
            if improved:
                state["best"], state["bad_epochs"] = val, 0
                save_model(out / "model.pt", model, {"trained": True, "epochs": state["epoch"], "valid_loss": val,
                                                     "train_config": asdict(cfg)})
            else:
                state["bad_epochs"] += 1
                if cfg.halve_on_plateau:
                    state["lr"] /= 2
                    for group in opt.param_groups:
                        group["lr"] = state["lr"]
            log(f"epoch {state['epoch']}: train {running / cfg.steps_per_epoch:.4f} valid {val:.4f}"
                f"{' (best)' if improved else ''} lr {state['lr']:.2e}")
            tmp = last.with_name("last.pt.tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": json.dumps(state),
                        "arch": getattr(model, "arch", None), "config": json.dumps(getattr(model, "config", None)),
                        "train_config": json.dumps(asdict(cfg)), "torch_rng": torch.get_rng_state()}, tmp)
            os.replace(tmp, last)
            tmp = out / "history.json.tmp"
            tmp.write_text(json.dumps(state["history"], indent=1))
            os.replace(tmp, out / "history.json")
            if cfg.max_minutes and (time.time() - started) / 60 > cfg.max_minutes:
                log("stopping: time limit reached (resume with the same command)")
                break
    return state
