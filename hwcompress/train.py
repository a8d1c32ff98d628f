"""Training with on-the-fly mixing, checkpoints every epoch, resume and early stopping, on the
CPU or a CUDA GPU, and data-parallel over several processes (torchrun, `data_parallel`).

Data parallel (torch.distributed, DistributedDataParallel): every process (rank) holds a
replica of the model, draws its own batches (rank 0 the ones a single process would draw,
rank r > 0 from the seed [seed, epoch, r]), and the gradients are averaged over the ranks
before each optimiser step, so the replicas stay identical (checked at every checkpoint).
Rank 0 alone validates, logs and writes model.pt, last.pt and history.json; its validation
loss (and a time-limit stop) is broadcast, so every rank takes the same early-stopping and
learning-rate decisions. The effective batch is `batch` x the number of ranks.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from hwcompress.device import Ranks, describe, device_of, to_cpu
from hwcompress.errors import HwcError
from hwcompress.hostlock import cpu_share
from hwcompress.progress import progress_bar

from hwcompress.data.augment import Augment
from hwcompress.data.loader import MixtureSampler, eval_set
from hwcompress.models.io import save_model
from hwcompress.models.stft import StftConfig, stft
from hwcompress.models.zoo import SEModel
from hwcompress.teachers import PoolSpec, TeacherPool, build_pool
from hwcompress.workdir import model_digest

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
    # distillation from a pretrained model's cached outputs (hwcompress.teachers, issue 14): the
    # batches come from a pool of `pool_items` fixed mixtures, each with the teacher's output, and
    # the loss is distill_weight x (loss against the teacher) + (1 - distill_weight) x (against
    # clean speech). "" = on-the-fly mixtures and clean targets only.
    distill_from: str = ""
    distill_weight: float = 0.5
    pool_items: int = 2000
    # speed, reverberation and channel augmentation of every training mixture (data.augment)
    augment: bool = False
    # the spectral loss (LOSSES; "mag" for a magnitude-mask model: see spectral_loss), in
    # training and in the validation loss that picks the best epoch
    loss: str = "mag+complex"


#: training losses (TrainConfig.loss): "mag+complex" is the MSE of power-law compressed magnitudes
#: plus that of the compressed complex spectra; "mag" the magnitude term alone.
LOSSES = ("mag+complex", "mag")


def check_loss(kind: str) -> None:
    if kind not in LOSSES:
        raise HwcError(f"unknown training loss {kind!r}: one of {', '.join(LOSSES)}")


def spectral_loss(est: torch.Tensor, ref: torch.Tensor, power: float = 0.3, kind: str = "mag+complex") -> torch.Tensor:
    """MSE of power-law compressed magnitudes plus (kind "mag+complex") of compressed complex
    spectra: the compression weights quiet T-F regions as hearing (and PESQ) does.

    kind "mag" drops the complex term. It is meant for a model that only scales the noisy
    spectrum by a real gain (a magnitude mask, e.g. NSNet2): its output keeps the noisy phase,
    so the complex term is least where the gain is |S|/|Y| x cos(phase error)^(1/power), below
    the magnitude ratio wherever the noise has turned the phase; it pulls the gain down on
    speech at low SNR, which a magnitude model cannot repair by any phase."""
    check_loss(kind)
    mag_e = est.pow(2).sum(-1).add(1e-10).sqrt()
    mag_r = ref.pow(2).sum(-1).add(1e-10).sqrt()
    loss = torch.mean((mag_e.pow(power) - mag_r.pow(power)) ** 2)
    if kind == "mag":
        return loss
    comp_e = est * (mag_e.pow(power - 1)).unsqueeze(-1)
    comp_r = ref * (mag_r.pow(power - 1)).unsqueeze(-1)
    return loss + torch.mean((comp_e - comp_r) ** 2)


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
                teacher_weight: float = 1.0, model: torch.nn.Module | None = None,
                kind: str = "mag+complex") -> torch.Tensor:
    """The fine-tuning loss of the student output `est` for the noisy STFT `spec`:
    teacher_weight x spectral loss against the teacher's output on `spec` (computed here
    under no_grad: the teacher gets no gradient and is not changed) + (1 - teacher_weight)
    x spectral loss against the clean speech. No teacher (or weight 0): the clean loss only.
    `model` (the student) says how clean speech becomes a spectrum (`reference`)."""
    w = float(teacher_weight) if teacher is not None else 0.0
    if w <= 0.0:
        return spectral_loss(est, reference(model, clean), kind=kind)
    with torch.no_grad():
        target, _ = teacher(spec, initial_state(teacher, spec.shape[0], spec.device))
    loss = spectral_loss(est, target.detach(), kind=kind)
    if w < 1.0:
        loss = w * loss + (1.0 - w) * spectral_loss(est, reference(model, clean), kind=kind)
    return loss


def pool_loss(est: torch.Tensor, clean: torch.Tensor, taught: torch.Tensor, weight: float,
              model: torch.nn.Module, kind: str = "mag+complex") -> torch.Tensor:
    """weight x spectral loss against a teacher's output `taught` (audio, from a pool) + (1 - weight)
    x spectral loss against the clean speech."""
    loss = spectral_loss(est, reference(model, taught), kind=kind) if weight > 0 else 0.0
    if weight < 1.0:
        loss = weight * loss + (1.0 - weight) * spectral_loss(est, reference(model, clean), kind=kind)
    return loss


def initial_state(model: torch.nn.Module, batch: int, device: torch.device) -> list[torch.Tensor]:
    """The model's zero state for `batch` sequences, on `device`."""
    return [s.to(device) for s in model.initial_state(batch)]


def fit_normalizer(model: SEModel, sampler: MixtureSampler, rng: np.random.Generator, n: int = 64) -> None:
    noisy, _ = sampler.batch(rng, n, int(STFT.sample_rate * 4))
    noisy = noisy.to(model.feat_mean.device)
    logp = torch.log(stft(noisy).pow(2).sum(-1) + 1e-10).reshape(-1, STFT.n_bins)
    model.feat_mean.copy_(logp.mean(0))
    model.feat_std.copy_(logp.std(0).clamp_min(1e-3))


def validation_loss(model: SEModel, items: list[dict], kind: str = "mag+complex") -> float:
    """Mean spectral loss over fixed items: no sampling, so the same weights always give
    the same figure (bit-identical for a given thread count). The model's mode is kept.
    An item holding a teacher's output ("teacher", "teacher_weight" w: see
    search.sensitivity.with_teacher) is scored w x loss against it + (1 - w) x the clean loss.
    `kind`: the spectral loss (LOSSES), the one the model trains with."""
    was_training = model.training
    model.eval()
    device = device_of(model)  # scored where the model lives
    total = 0.0
    with torch.no_grad():
        for item in items:
            with cpu_share():  # one item: a parallel fit's timing waits at most this long
                noisy = torch.from_numpy(item["noisy"])[None].to(device)
                spec = analysis(model, noisy)
                est, _ = model(spec, initial_state(model, 1, device))
                w = float(item.get("teacher_weight", 0.0)) if "teacher" in item else 0.0
                loss = w * spectral_loss(est, torch.from_numpy(item["teacher"])[None].to(device), kind=kind).item() \
                    if w > 0 else 0.0
                if w < 1.0:
                    clean = torch.from_numpy(item["clean"])[None].to(device)
                    loss += (1.0 - w) * spectral_loss(est, reference(model, clean), kind=kind).item()
            total += loss
    model.train(was_training)
    return total / len(items)


# settings that shape the trajectory: a resume with other values would not continue the
# same run (epochs, patience and max_minutes may change: they only say when to stop)
RESUME_FIELDS = ("seed", "batch", "steps_per_epoch", "seconds", "lr", "valid_items", "halve_on_plateau",
                 "distill_from", "distill_weight", "pool_items", "augment", "loss")


def derived_from(model: torch.nn.Module) -> dict:
    """{"derived_from": {pretrained, licence, weights_from}} for a model that starts from
    pretrained weights under a licence (NSNet2: CC-BY 4.0, which asks for attribution), also
    through earlier training or WiSE-FT; {} otherwise."""
    meta = getattr(model, "meta", None) or {}
    if isinstance(meta.get("derived_from"), dict):
        return {"derived_from": meta["derived_from"]}
    if meta.get("licence"):
        return {"derived_from": {k: meta[k] for k in ("pretrained", "licence", "weights_from") if k in meta}}
    return {}


def model_licence(model: torch.nn.Module) -> str:
    """One line naming a model's pretrained origin and licence ('' when it has none)."""
    src = derived_from(model).get("derived_from", {})
    if not src.get("licence"):
        return ""
    trained = "" if (getattr(model, "meta", None) or {}).get("licence") else " (trained on by hwcompress)"
    return f"{src.get('pretrained', 'pretrained weights')}{trained}, {src['licence']}"


def corpus_id(data: Path) -> str:
    """The corpus a run trains on: its manifest's sha256 (16 hex digits); '' without a manifest."""
    manifest = Path(data) / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else ""


def _resume(last: Path, model: SEModel, opt: torch.optim.Optimizer, cfg: TrainConfig, world: int = 1,
            blob: bytes | None = None, corpus: str = "") -> dict:
    """Load last.pt (or `blob`, its bytes as rank 0 read them) into `model` and `opt` (and the
    torch RNG) and return the loop state. A checkpoint that is corrupt, of another model, of
    other settings or of another number of data-parallel processes (`world`: the batches each
    step averages) is one HwcError line, before anything is changed on disk. The checkpoint's
    tensors load onto the model's device."""
    hint = "pass --no-resume (or another --out) to start afresh"
    try:
        ckpt = torch.load(io.BytesIO(blob) if blob is not None else last, map_location="cpu", weights_only=True)
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
    saved_world = ckpt.get("world_size", 1)
    if saved_world != world:
        raise HwcError(f"{last}: written by a data-parallel run of {saved_world} process(es), this run has {world}; "
                       f"resume with the same number (torchrun --nproc_per_node x --nnodes) or {hint}")
    if corpus and ckpt.get("corpus") and ckpt["corpus"] != corpus:  # checkpoints before issue 14 have none
        raise HwcError(f"{last}: written while training on another corpus (manifest {ckpt['corpus']}, now {corpus}); "
                       f"resume with the same --data or {hint}")
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


def epoch_rng(seed: int, epoch: int, rank: int = 0) -> np.random.Generator:
    """The batches of one epoch on one rank: rank 0 draws what a single process draws (so a
    resume, or a one-process run, is exact), rank r > 0 its own stream [seed, epoch, r]."""
    return np.random.default_rng([seed, epoch] if rank == 0 else [seed, epoch, rank])


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
    device: torch.device | str | None = None,
    pool_workers: int = 1,
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
    The validation loss stays against clean speech (what the history reports).
    `cfg.distill_from` names a pretrained teacher (hwcompress.teachers) whose outputs on a pool
    of fixed mixtures are built first (`pool_workers` processes) and cached with the corpus.

    `device`: where the steps run (a resolved torch device, see hwcompress.device); the model
    (and the teacher, and `parameters`) must live there or be movable there: the model is
    moved in place, the teacher and `parameters` must already be on it. None: the model's own
    device. Inside an initialised torch.distributed process group of several processes
    (`data_parallel`) the model is trained data-parallel (see the module docstring)."""
    if not 0.0 <= teacher_weight <= 1.0:
        raise HwcError(f"teacher weight must be in [0, 1], got {teacher_weight}")
    device = torch.device(device) if device is not None else device_of(model)
    model.to(device)
    rank, world = _dist_rank_world()
    if world > 1 and parameters is not None:
        raise HwcError("data-parallel training updates the model's own parameters, not a separate `parameters` list")
    say = log if rank == 0 else (lambda _msg: None)
    distil = teacher is not None and teacher_weight > 0
    check_loss(cfg.loss)  # before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not 0.0 <= cfg.distill_weight <= 1.0:
        raise HwcError(f"distillation weight must be in [0, 1], got {cfg.distill_weight}")
    if cfg.distill_from and teacher is not None:
        raise HwcError("train with either a model as teacher or a pretrained teacher's pool, not both")
    sampler = MixtureSampler(data, "train", augment=Augment() if cfg.augment else None)
    pool = None
    if cfg.distill_from:
        spec = PoolSpec(teacher=cfg.distill_from, seconds=cfg.seconds, seed=cfg.seed,
                        augment=Augment() if cfg.augment else None)
        build = lambda: str(build_pool(data, spec, cfg.pool_items, pool_workers, say))  # noqa: E731
        folder = _from_rank0(build) if world > 1 else build()
        pool = TeacherPool(Path(folder), spec, cfg.pool_items)
        say(f"distilling from {cfg.distill_from}: {len(pool)} pooled mixtures, loss {cfg.distill_weight:g} x teacher "
            f"+ {1 - cfg.distill_weight:g} x clean")
    valid = eval_set(data, "valid", cfg.valid_items) if rank == 0 else []
    corpus = corpus_id(data)
    origin = derived_from(model)  # a pretrained start's name and licence go with what is trained from it
    trained = list(parameters) if parameters is not None else list(model.parameters())
    opt = torch.optim.Adam(trained, lr=cfg.lr)
    state = {"epoch": 0, "best": math.inf, "bad_epochs": 0, "history": [], "lr": cfg.lr}
    last = out / "last.pt"
    # data parallel: rank 0 reads the checkpoint and hands its bytes to every rank (the other
    # machines of a multi-node run need no copy of --out)
    blob = _from_rank0(lambda: last.read_bytes() if resume and last.exists() else None) if world > 1 else None
    if blob is not None or (world == 1 and resume and last.exists()):
        state = _resume(last, model, opt, cfg, world, blob, corpus)
        say(f"resumed from {last} at epoch {state['epoch']}")
    elif not distil and not getattr(model, "meta", {}).get("trained") and hasattr(model, "feat_mean"):
        # the zoo's models normalise their features with statistics fitted here; a model of your
        # own (hwcompress.models.wrap) computes exactly the features its front end declares
        fit_normalizer(model, sampler, np.random.default_rng([cfg.seed, 999]))
    for group in opt.param_groups:
        group["lr"] = state["lr"]
    where = describe(device)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # built after the normalizer and the resume: it broadcasts rank 0's weights and buffers
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        say(f"data parallel: {world} processes ({torch.distributed.get_backend()}), {cfg.batch} mixtures each per "
            f"step ({cfg.batch * world} per step in all); rank 0 on {where}")
    else:
        net = model
    started = time.time()
    samples = int(cfg.seconds * STFT.sample_rate)
    model.train()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with progress_bar(*columns, disable=rank != 0) as progress:
        while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
            epoch = state["epoch"]
            rng = epoch_rng(cfg.seed, epoch, rank)  # per-epoch seed: resume is exact
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=cfg.steps_per_epoch, info="")
            running = 0.0
            for step in range(cfg.steps_per_epoch):
                with cpu_share():  # one step (hostlock: a parallel fit's timings wait for it, not longer)
                    if pool is not None:
                        noisy, clean, taught = (t.to(device) for t in pool.batch(rng, cfg.batch, samples))
                    else:
                        noisy, clean = sampler.batch(rng, cfg.batch, samples)
                        noisy, clean = noisy.to(device), clean.to(device)
                    spec = analysis(model, noisy)
                    est, _ = net(spec, initial_state(model, cfg.batch, device))
                    if pool is not None:
                        loss = pool_loss(est, clean, taught, cfg.distill_weight, model, cfg.loss)
                    else:
                        loss = target_loss(est, spec, clean, teacher, teacher_weight, model, cfg.loss)
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
            if world > 1:  # the epoch's train loss over every rank's batches; rank 0's verdicts for all
                running = _mean_over_ranks(running, device)
                late = lambda: bool(cfg.max_minutes and (time.time() - started) / 60 > cfg.max_minutes)  # noqa: E731
                val, stop = _from_rank0(lambda: (validation_loss(model, valid, cfg.loss), late()))
            else:
                val, stop = validation_loss(model, valid, cfg.loss), None  # the time limit: checked once the files are written
            state["epoch"] += 1
            improved = val < state["best"] - 1e-4
            state["history"].append({"epoch": state["epoch"], "train_loss": running / cfg.steps_per_epoch,
                                     "valid_loss": val, "lr": state["lr"], "seconds": time.time() - started,
                                     "device": where, **({"processes": world} if world > 1 else {})})
            if improved:
                state["best"], state["bad_epochs"] = val, 0
            else:
                state["bad_epochs"] += 1
                if cfg.halve_on_plateau:
                    state["lr"] /= 2
                    for group in opt.param_groups:
                        group["lr"] = state["lr"]
            digests = _replica_digests(model, state["epoch"]) if world > 1 else None
            if rank == 0:
                if improved:
                    save_model(out / "model.pt", model, {"trained": True, "epochs": state["epoch"], "valid_loss": val,
                                                         "train_config": asdict(cfg), "device": where,
                                                         "processes": world, "corpus": corpus, **origin})
                say(f"epoch {state['epoch']}: train {running / cfg.steps_per_epoch:.4f} valid {val:.4f}"
                    f"{' (best)' if improved else ''} lr {state['lr']:.2e}"
                    + (f" ({world} replicas identical)" if digests else ""))
                tmp = last.with_name("last.pt.tmp")
                torch.save({"model": to_cpu(model.state_dict()), "optimizer": to_cpu(opt.state_dict()),
                            "state": json.dumps(state), "arch": getattr(model, "arch", None),
                            "config": json.dumps(getattr(model, "config", None)),
                            "train_config": json.dumps(asdict(cfg)), "torch_rng": torch.get_rng_state(),
                            "corpus": corpus,
                            **({"world_size": world, "replica_digests": json.dumps(digests)} if world > 1 else {})},
                           tmp)
                os.replace(tmp, last)
                tmp = out / "history.json.tmp"
                tmp.write_text(json.dumps(state["history"], indent=1))
                os.replace(tmp, out / "history.json")
            if stop is None:
                stop = bool(cfg.max_minutes and (time.time() - started) / 60 > cfg.max_minutes)
            if stop:
                say("stopping: time limit reached (resume with the same command)")
                break
    if world > 1:
        torch.distributed.barrier()  # every rank returns once rank 0's files are written
    return state


# ---------------------------------------------------------------- data parallel (torchrun)


def _dist_rank_world() -> tuple[int, int]:
    """(rank, processes) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_ranks(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _from_rank0(compute: Callable[[], Any]) -> Any:
    """`compute()` run on rank 0 and its result broadcast to every rank."""
    import torch.distributed as dist

    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _replica_digests(model: torch.nn.Module, epoch: int) -> list[str]:
    """Every rank's weight digest (hwcompress.workdir.model_digest), gathered on every rank. DDP
    averages the gradients before each step, so the replicas must be bit-identical; one that is
    not is a bug (a buffer or parameter outside DDP's reach), stopped here, not trained on."""
    import torch.distributed as dist

    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, model_digest(model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"data-parallel replicas differ after epoch {epoch}: weight digests {digests}")
    return digests


@contextmanager
def data_parallel(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """The torch.distributed process group of a torchrun launch around a `train` call: NCCL
    between CUDA GPUs (one per process, `device` = cuda:LOCAL_RANK), gloo between CPU processes;
    rendezvous from torchrun's environment (MASTER_ADDR, MASTER_PORT)."""
    import torch.distributed as dist

    if not dist.is_available():
        raise HwcError("this torch has no torch.distributed: data-parallel training is not available")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world,
                            **({"device_id": device} if device.type == "cuda" else {}))
    try:
        yield
    finally:
        dist.destroy_process_group()


def wise_ft(finetuned: torch.nn.Module, start: torch.nn.Module, alpha: float = 0.5) -> torch.nn.Module:
    """Weight-space ensemble of a fine-tuned model and the model its training started from
    (WiSE-FT, Wortsman et al., CVPR 2022): every floating-point weight and buffer becomes
    alpha x fine-tuned + (1 - alpha) x start; integer buffers are the fine-tuned model's.
    `finetuned` is changed in place and returned.

    Fine-tuning on one corpus moves a pretrained model away from what it learnt elsewhere; the
    ensemble keeps part of each, and on data unlike the fine-tuning corpus it often beats both
    ends (benchmarks/nsnet2_wide.md measures it on real speech). Written here because it is
    one line of arithmetic once the two models are checked to be the same network."""
    if not (0.0 <= float(alpha) <= 1.0) or not math.isfinite(float(alpha)):
        raise HwcError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
    arch_f, arch_s = getattr(finetuned, "arch", None), getattr(start, "arch", None)
    same_config = json.dumps(getattr(finetuned, "config", None), sort_keys=True, default=str) == \
        json.dumps(getattr(start, "config", None), sort_keys=True, default=str)
    if arch_f != arch_s or not same_config:
        raise HwcError(f"WiSE-FT needs the model training started from: the fine-tuned model is {arch_f!r}, "
                       f"the start {arch_s!r}{'' if arch_f != arch_s else ' with another configuration'}")
    sf, ss = finetuned.state_dict(), start.state_dict()
    odd = sorted(set(sf) ^ set(ss)) + sorted(k for k in set(sf) & set(ss) if sf[k].shape != ss[k].shape)
    if odd:
        raise HwcError(f"WiSE-FT needs the model training started from: their tensors differ ({', '.join(odd[:3])})")
    mixed = {k: (alpha * v + (1.0 - alpha) * ss[k].to(v.device, v.dtype)) if v.is_floating_point() else v
             for k, v in sf.items()}
    finetuned.load_state_dict(mixed)
    return finetuned
