"""The paper's pipeline end to end: sparse regularisation -> iterative pruning with
fine-tuning (-> physical shrinking when structured) -> clustering -> centroid
fine-tuning -> .hwc artifact.

Each stage writes its result into a work folder next to the output (`OUT.hwc.work/`), so an
interrupted run resumes at the first unfinished stage (a stage itself restarts from its
beginning). The work folder is keyed by a fingerprint of the model's weights, the corpus, the
settings and the code version: a rerun with anything different starts afresh instead of
reusing stages computed for other settings. It is removed once the artifact is written, and
the output is locked against a second concurrent run.

Fine-tuning target (`finetune_target`): by default every fine-tuning stage distils from the
dense model as given (the teacher, a frozen copy in eval mode): the student's loss is the
spectral loss against the teacher's output on the same noisy batch, computed on the fly
under no_grad. So the compressed model is pulled back towards what the dense model did,
not towards a clean target the dense model itself never reached. `clean` is the loss
against the clean speech (the training loss), `mix` the mean of both.

Device (`compress(..., device=)`, `--device`): the fine-tuning stages, the teacher and the
pruning and clustering bookkeeping run where the model is put (a CUDA GPU or the CPU); stage
results and the `.hwc` are written from the CPU, and the caller's model ends where it was.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from hwcompress.compress.artifact import save_artifact
from hwcompress.compress.cluster import GRID_Q, INITS, METHODS, CentroidTuner, cluster_model, clusterable, snap_to_grid
from hwcompress.compress.groups import model_groups
from hwcompress.compress.prune import GradualPruner, apply_masks, magnitude_masks, structured_masks
from hwcompress.compress.regularize import Regularizer
from hwcompress.compress.shrink import shrink
from hwcompress.device import describe, device_of, placed
from hwcompress.errors import HwcError
from hwcompress.models.cost import layer_paths, total_macs
from hwcompress.models.io import load_model, save_model
from hwcompress.models.zoo import SEModel
from hwcompress.train import TrainConfig, train
from hwcompress.workdir import OutputLock, WorkFolder, check_writable, data_digest, model_digest

LAYER_KEYS = {"sparsity", "codebook", "structured", "grid"}
# fine-tuning target -> weight of the teacher's loss (the rest is the clean-target loss)
FINETUNE_TARGETS: dict[str, float] = {"teacher": 1.0, "clean": 0.0, "mix": 0.5}


@dataclass
class LayerSetting:
    sparsity: float = 0.0  # unstructured: fraction of weights; structured: fraction of units
    codebook: int = 16  # K
    structured: bool = False
    # runtime weight width whose symmetric integer grid the codebook is held on (cluster.GRID_Q:
    # 4 or 8), so that a runtime storing it at that width reproduces the .hwc exactly; 0: free
    # k-means centroids (the paper's clustering)
    grid: int = 0


@dataclass
class CompressConfig:
    sparsity: float = 0.5
    codebook: int = 16
    structured: bool = False
    layers: dict[str, dict] = field(default_factory=dict)  # per-layer overrides
    regularize_steps: int = 0
    l1: float = 0.0
    group_lasso: float = 0.0
    prune_steps: int = 200  # fine-tuning steps over which sparsity ramps up (cubic)
    prune_every: int = 25
    cluster_steps: int = 100  # centroid fine-tuning steps
    init: str = "linear"
    method: str = "auto"
    batch: int = 8
    seconds: float = 4.0
    lr: float = 1e-4
    seed: int = 0
    finetune_target: str = "teacher"  # teacher (distil from the dense model), clean, or mix (0.5/0.5)
    grid: int = 0  # LayerSetting.grid for every layer not overridden


def check_finetune_target(target: str) -> None:
    if target not in FINETUNE_TARGETS:
        raise HwcError(f"unknown fine-tuning target {target!r}: use one of {', '.join(FINETUNE_TARGETS)}")


def check_global(cfg: CompressConfig) -> None:
    """Every option value, checked before any long work starts."""
    check_finetune_target(cfg.finetune_target)
    if not 0.0 <= cfg.sparsity < 1.0:
        raise HwcError(f"sparsity must be in [0, 1), got {cfg.sparsity}")
    if not 2 <= cfg.codebook <= 256:
        raise HwcError(f"codebook size K must be between 2 and 256, got {cfg.codebook}")
    _check_grid(cfg.grid, "grid")
    if cfg.init not in INITS:
        raise HwcError(f"unknown codebook init {cfg.init!r}: use one of {', '.join(INITS)}")
    if cfg.method not in METHODS:
        raise HwcError(f"unknown clustering method {cfg.method!r}: use one of {', '.join(METHODS)}")
    for name in ("l1", "group_lasso", "lr", "seconds"):
        v = getattr(cfg, name)
        if not (v >= 0 and v < float("inf")):
            raise HwcError(f"{name.replace('_', '-')} must be finite and non-negative, got {v}")
    for name in ("regularize_steps", "prune_steps", "cluster_steps", "batch", "prune_every"):
        if getattr(cfg, name) < 0:
            raise HwcError(f"{name.replace('_', '-')} must not be negative, got {getattr(cfg, name)}")


def _check_grid(grid: object, where: str) -> None:
    if isinstance(grid, bool) or grid not in (0, *GRID_Q):
        raise HwcError(f"{where} must be 0 (free centroids) or a runtime weight width of "
                       f"{' or '.join(map(str, GRID_Q))} bits, got {grid!r}")


def read_layer_config(path: Path) -> dict[str, dict]:
    """A TOML file of per-layer overrides: `[layers."rnn.0"] sparsity = 0.7  codebook = 32`."""
    path = Path(path)
    if not path.is_file():
        raise HwcError(f"{path}: no such layer config file")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HwcError(f"{path}: malformed TOML ({exc})") from None
    layers = raw.get("layers", {})
    if not isinstance(layers, dict) or set(raw) - {"layers"}:
        raise HwcError(f"{path}: expected only [layers.\"NAME\"] tables")
    for name, setting in layers.items():
        if not isinstance(setting, dict) or set(setting) - LAYER_KEYS:
            raise HwcError(f"{path}: layer {name!r}: allowed keys are {', '.join(sorted(LAYER_KEYS))}")
        for key, value in setting.items():
            # TOML booleans are ints to Python: say "true" is not a number, and 0.5 is not a K
            ok = {"sparsity": isinstance(value, (int, float)) and not isinstance(value, bool),
                  "codebook": isinstance(value, int) and not isinstance(value, bool),
                  "structured": isinstance(value, bool),
                  "grid": isinstance(value, int) and not isinstance(value, bool) and value in (0, *GRID_Q)}[key]
            if not ok:
                want = {"sparsity": "a number in [0, 1)", "codebook": "an integer K (2..256)",
                        "structured": "true or false",
                        "grid": f"0 or a weight width of {' or '.join(map(str, GRID_Q))} bits"}[key]
                raise HwcError(f"{path}: layer {name!r}: {key} must be {want}, got {value!r}")
    return layers


def layer_settings(model: SEModel, cfg: CompressConfig) -> dict[str, LayerSetting]:
    check_global(cfg)
    names = list(layer_paths(model))
    unknown = [n for n in cfg.layers if n not in names]
    if unknown:
        raise HwcError(f"layer config names layers not in the model: {', '.join(unknown)} (layers: {', '.join(names)})")
    out = {}
    for name in names:
        over = cfg.layers.get(name, {})
        s = LayerSetting(float(over.get("sparsity", cfg.sparsity)), int(over.get("codebook", cfg.codebook)),
                         bool(over.get("structured", cfg.structured)), int(over.get("grid", cfg.grid)))
        _check_grid(s.grid, f"layer {name}: grid")
        if not 0.0 <= s.sparsity < 1.0:
            raise HwcError(f"layer {name}: sparsity must be in [0, 1), got {s.sparsity}")
        if not 2 <= s.codebook <= 256:
            raise HwcError(f"layer {name}: codebook size K must be between 2 and 256, got {s.codebook}")
        out[name] = s
    return out


def _stage(work: Path, name: str, run: Callable[[], SEModel], log: Callable[[str], None],
           template: SEModel | None = None, device: torch.device | None = None) -> SEModel:
    done = work / name / "result.pt"
    if done.exists():
        log(f"{name}: already done, resuming after it ({done})")
        model = load_model(str(done), template=template)  # template: rebuilds a model of the user's code
        return model.to(device) if device is not None else model
    model = run()
    save_model(done, model, getattr(model, "meta", {}))
    return model


def compress(
    model: SEModel,
    cfg: CompressConfig,
    data: Path,
    out: Path,
    log: Callable[[str], None] = lambda m: print(m, flush=True),
    device: torch.device | str | None = None,
) -> dict:
    """Run the pipeline on `model` and write `out` (.hwc). Returns the artifact report
    extended with per-layer settings, MACs before/after, the stages run and `torch_device`.
    `device`: where the fine-tuning runs (a resolved torch device, hwcompress.device); None:
    where `model` lives. The model is changed in place as before and ends where it started;
    the artifact is written from the CPU. Not a setting of the work folder: a run interrupted
    on one device resumes on another."""
    settings = layer_settings(model, cfg)
    out = Path(out)
    check_writable(out, "file")
    with OutputLock(out):
        folder = WorkFolder(out.with_name(out.name + ".work"),
                            {"model": model_digest(model), "data": data_digest(data), "config": asdict(cfg)}, log)
        home = device_of(model)
        try:
            report = _compress(model, cfg, settings, data, out, folder.path, log,
                               torch.device(device) if device is not None else home)
        finally:
            model.to(home)
        folder.remove()  # the artifact is written: its stages are not needed again
    return report


def _compress(model: SEModel, cfg: CompressConfig, settings: dict[str, LayerSetting], data: Path, out: Path,
              work: Path, log: Callable[[str], None], device: torch.device) -> dict:
    macs_before = total_macs(model)
    teacher_weight = FINETUNE_TARGETS[cfg.finetune_target]
    teacher = None
    if teacher_weight > 0:  # the dense model as given, before any stage changes `model` in place
        # frozen by use, not by requires_grad_(False): its outputs are computed under no_grad and
        # it is in no optimiser; parameters without grad switch torch's RNNs to another kernel
        # whose output differs in the last bits, and an unpruned student would no longer match it
        teacher = copy.deepcopy(model).eval()
    # what a resumed stage of a model of the user's code is rebuilt from (its file names the code only);
    # it stays where the model was given (resumed stages load on the CPU), the teacher runs on `device`
    template = teacher if teacher is not None or model.arch != "user" else copy.deepcopy(model).eval()
    teacher = placed(teacher, device) if teacher is not None else None
    model.to(device)

    def finetune(net: SEModel, stage: str, steps: int, **hooks) -> None:
        # epochs of at most 50 steps (a validation pass and a checkpoint each) that add up to exactly `steps`
        epochs = max(1, -(-steps // 50))
        per_epoch = max(1, -(-steps // epochs))
        tcfg = TrainConfig(epochs=epochs, steps_per_epoch=per_epoch, batch=cfg.batch,
                           seconds=cfg.seconds, lr=cfg.lr, patience=10**6, seed=cfg.seed, valid_items=8,
                           halve_on_plateau=False)
        train(net, data, work / stage, tcfg, resume=False, log=log, teacher=teacher, teacher_weight=teacher_weight,
              device=device, **hooks)

    if cfg.regularize_steps and (cfg.l1 or cfg.group_lasso):
        def regularize() -> SEModel:
            finetune(model, "regularize", cfg.regularize_steps, regularizer=Regularizer(l1=cfg.l1, group=cfg.group_lasso))
            return model
        model = _stage(work, "regularize", regularize, log, template, device)

    requested = dict(settings)
    groups = {g.name for g in model_groups(model)}
    not_groups = [n for n, s in settings.items() if n not in groups and "structured" in cfg.layers.get(n, {})
                  and s.structured and s.sparsity > 0]
    if not_groups:
        raise HwcError(f"layers {', '.join(not_groups)} cannot be pruned structurally (their outputs are the model's output)")
    # a global --structured leaves the output layers (not groups) unpruned
    structured = {n: s.sparsity for n, s in settings.items() if s.structured and s.sparsity > 0 and n in groups}
    unstructured = {n: s.sparsity for n, s in settings.items() if not s.structured and s.sparsity > 0}
    if structured:

        def prune_structured() -> SEModel:
            if cfg.prune_steps:  # 0 steps: one-shot pruning without fine-tuning
                pruner = GradualPruner(structured, cfg.prune_steps, min(cfg.prune_every, cfg.prune_steps),
                                       structured=True)
                finetune(model, "prune-structured", cfg.prune_steps, after_step=pruner)
            apply_masks(model, structured_masks(model, structured))
            smaller = shrink(model)
            smaller.meta = getattr(model, "meta", {})
            return smaller
        model = _stage(work, "prune-structured", prune_structured, log, template, device)
        settings = {**{n: LayerSetting(0.0, s.codebook, grid=s.grid) for n, s in settings.items()},
                    **{n: settings[n] for n in unstructured}}
    if unstructured:
        def prune_unstructured() -> SEModel:
            if cfg.prune_steps:
                pruner = GradualPruner(unstructured, cfg.prune_steps, min(cfg.prune_every, cfg.prune_steps),
                                       structured=False)
                finetune(model, "prune", cfg.prune_steps, after_step=pruner)
            apply_masks(model, magnitude_masks(model, unstructured))
            return model
        model = _stage(work, "prune", prune_unstructured, log, template, device)

    # per weight matrix of a weight layer (a LayerNorm over two axes is no weight: not clustered)
    layer_of = {path: n for n, path in layer_paths(model).items()}
    ks = {pname: settings[layer_of[pname.rpartition(".")[0]]].codebook for pname in clusterable(model)}
    grids = {pname: settings[layer_of[pname.rpartition(".")[0]]].grid for pname in ks}

    def on_grid(clustered: dict) -> dict:
        return {n: snap_to_grid(c, grids[n]) if grids[n] else c for n, c in clustered.items()}

    # centroids start on their grid, are fine-tuned freely (small steps) and snapped back after
    clustered = on_grid(cluster_model(model, ks, init=cfg.init, method=cfg.method))
    if cfg.cluster_steps:
        tuner = CentroidTuner(model, clustered)
        finetune(model, "cluster", cfg.cluster_steps, parameters=list(tuner.parameters()),
                 after_backward=tuner.step_hook, after_step=lambda _m: tuner.materialize())
        clustered = on_grid(tuner.clustered())
    meta = dict(getattr(model, "meta", {}))
    meta["compression"] = {"config": asdict(cfg), "stages": sorted(p.name for p in work.iterdir() if p.is_dir()),
                           "finetune": {"target": cfg.finetune_target, "teacher_weight": teacher_weight,
                                        "teacher": "the dense input model (eval mode, frozen)" if teacher else None}}
    report = save_artifact(out, model.cpu(), clustered, meta)  # written from the CPU
    report["layers"] = {n: asdict(s) for n, s in requested.items()}
    report["macs_per_frame"] = {"before": macs_before, "after": total_macs(model)}
    report["finetune_target"] = cfg.finetune_target
    report["torch_device"] = describe(device)  # where the fine-tuning ran
    return report
