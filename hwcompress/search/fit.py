"""`hwcompress fit`: meet a target's budgets with the best quality the search can find.

Stages (each cached under --out, so an interrupted run resumes where it stopped):
  1. calibrate  where the target can be measured here, time the dense int8 model on its
                runtime; the ratio measured / predicted scales the latency model
  2. feasible?  the most the search may prune (75% of every group) against each budget:
                an impossible budget fails here, in seconds, with the best reachable figures
  3. sensitivity  per-group structured pruning and per-layer codebook losses (cached)
  4. allocate   per budget: group ratios (search/allocate.py); on measurable targets the
                one-shot pruned model is exported and timed, and the allocation tightened
                until the measurement fits (NetAdapt-style, weights are irrelevant to speed)
  5. compress   the paper's pipeline with those settings: iterative structured pruning
                with fine-tuning, physical shrinking, per-layer k-means with centroid
                fine-tuning -> model.hwc
  6. export     the target runtime's int8 artifact, checked against torch
  7. verify     measured latency (here) or predicted latency plus an emulated functional
                run (other CPUs); a measured miss tightens the allocation and repeats 4-7
  8. quality    PESQ-WB / STOI / SI-SDR (+ DNSMOS P.835) of noisy, dense and compressed on the test split

Choices the search does not make, and why: unstructured sparsity stays 0, because dense
CPU kernels (onnxruntime, OpenVINO, XNNPACK) run no faster on scattered zeros and the
runtime artifacts store them as ordinary weights; only the .hwc file would shrink, and
per-layer K already does that. Every runtime executes 8-bit weights (K <= 256 always maps
to the runtime's int8 form), so K is chosen for the .hwc size under a quality tolerance.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from hwcompress.device import describe
from hwcompress.errors import HwcError
from hwcompress.export.capabilities import Capabilities
from hwcompress.hostlock import cpu_share, quiet, settled
from hwcompress.models.zoo import SEModel
from hwcompress.profile.measurement import Measurement
from hwcompress.search import allocate as alloc
from hwcompress.search import sensitivity as sens
from hwcompress.search.sensitivity import atomic_json
from hwcompress.targets import Target, load_target
from hwcompress.train import model_licence
from hwcompress.workdir import OutputLock, check_writable, data_digest, digest, model_digest, read_keyed, write_keyed

if TYPE_CHECKING:
    from hwcompress.export.check import ExportedArtifact

REPORT_SCHEMA = 1
QUALITY = ("pesq_wb", "stoi", "si_sdr")
DNSMOS_QUALITY = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")  # with FitConfig.dnsmos
# keep measured latency this far under the budget: run-to-run noise on a shared host is a few %
MEASURE_MARGIN = 0.95
# a measured trial under this share of the budget pruned more than it had to: loosen and retry
LOOSEN_BELOW = 0.8


@dataclass
class FitConfig:
    target: str
    out: Path
    budgets_ms: list[float] = field(default_factory=list)  # empty: the target's budget
    budget_bytes: int | None = None  # runtime artifact bytes; None: the target's storage budget
    budget_ram_bytes: int | None = None  # runtime RAM (peak while loaded and running); None: the target's memory budget
    model: str = "default"
    model_weights: Path | None = None  # weights of a model given as code (hwcompress.models.user)
    data: Path | None = None
    prune_steps: int = 120
    cluster_steps: int = 40
    batch: int = 4
    seconds: float = 2.0
    lr: float = 1e-4
    sensitivity_items: int = 8
    eval_items: int = 40
    codebook_tolerance: float = 0.01  # summed sensitivity loss allowed for the codebooks, relative to the dense clean loss
    measure_runs: int = 300
    # fresh-process rounds per timing, the slowest round's median kept: a multi-thread runtime on
    # a VM can land in timing modes up to 1.8x apart (benchmarks/idle_core.md); 1: one round
    measure_rounds: int = 1
    final_runs: int = 500  # the verified figure: more hops than the search's probes
    retries: int = 3
    emulate: bool = True
    allocation: str = "search"  # or "uniform": one ratio for all groups, one K for all layers (the baseline)
    uniform_codebook: int = 16
    weights: str = "int8"  # runtime weight format: int8 everywhere, int4 where the backend has it (OpenVINO, LiteRT,
    # onnxruntime), or mixed (LiteRT, onnxruntime, OpenVINO: 4 bits for the layers clustered to K <= 16)
    dnsmos: bool = True  # DNSMOS P.835 in the quality rows (1-2 s per test mixture and condition)
    finetune_target: str = "teacher"  # compression fine-tuning target: teacher (dense model), clean or mix
    activations: str | None = None  # runtime activation precision (the target's `activations`); None: its default
    # where the caches that depend on the model and corpus but not on the target live (sensitivity
    # scores, the dense model's quality): `out` for one target; one folder shared by every target
    # of a multi-target run (search/multi.py), so the analysis is made once per model and data
    shared: Path | None = None
    torch_threads: int = 0  # torch intra-op threads for this fit's own work (0: torch's default)
    device: str = "auto"  # where torch runs fine-tuning, sensitivity and torch scoring: auto, cpu, cuda, cuda:N


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def check_budgets(cfg: FitConfig, target: Target) -> tuple[list[float], int, int]:
    """The latency budgets (loosest first), the runtime artifact's size budget and its RAM budget."""
    budgets = cfg.budgets_ms or [target.latency_budget_ms]
    for b in budgets:
        if not (b > 0 and math.isfinite(b)):
            raise HwcError(f"latency budget must be a finite positive number, got {b:g} ms")
    nbytes = cfg.budget_bytes if cfg.budget_bytes is not None else target.storage_budget_bytes
    if not (nbytes > 0 and math.isfinite(nbytes)):
        raise HwcError(f"size budget must be a finite positive number, got {nbytes} bytes")
    ram = cfg.budget_ram_bytes if cfg.budget_ram_bytes is not None else target.memory_budget_bytes
    if not (ram > 0 and math.isfinite(ram)):
        raise HwcError(f"RAM budget must be a finite positive number, got {ram} bytes")
    return sorted(set(budgets), reverse=True), int(nbytes), int(ram)


def _state_bytes(model: SEModel) -> int:
    """Bytes of one set of the model's fp32 streaming state tensors."""
    return 4 * sum(int(np.prod(s)) for s in model.state_shapes())


def _scores_only(k_sens: dict) -> dict:
    """What a codebook choice depends on in the codebook sensitivities: the scores, the scale and
    the noise floor, not how the floor was had (its `threads` say which process measured it: a
    multi-target run's task and its driver differ, and must reuse one choice)."""
    noise = k_sens.get("noise") or {}
    return {"base": k_sens["base"], "scores": k_sens["scores"], "scale": k_sens.get("scale"),
            "floor": noise.get("floor")}


def sensitivity_items(model: torch.nn.Module, data: Path, cfg: FitConfig) -> list[dict]:
    """The validation mixtures the sensitivities of `model` are scored on (Fitter.sensitivity_items)."""
    from hwcompress.compress.pipeline import FINETUNE_TARGETS

    items = sens.validation_items(data, cfg.sensitivity_items)
    return sens.with_teacher(items, model, FINETUNE_TARGETS[cfg.finetune_target])


class Fitter:
    """One fit run: shared state (model, target, calibration, sensitivities) across budgets."""

    #: where torch works (set from cfg.device in __init__); the CPU for a Fitter built without it
    device = torch.device("cpu")
    _torch_model: torch.nn.Module | None = None

    def __init__(self, cfg: FitConfig, log: Callable[[str], None], model: torch.nn.Module | None = None,
                 pool: Any = None) -> None:
        from hwcompress.export import get_backend
        from hwcompress.models.io import load_model
        from hwcompress.profile.measure import RUNTIME_BACKENDS, host_arch

        self.cfg, self.log = cfg, log
        if cfg.allocation not in ("search", "uniform"):
            raise HwcError(f"unknown allocation {cfg.allocation!r}: choose search or uniform")
        from hwcompress.compress.pipeline import check_finetune_target

        check_finetune_target(cfg.finetune_target)  # before any long work
        from hwcompress.device import resolve_device

        #: where torch works (hwcompress.device); self.model stays on the CPU (exports, digests)
        self.device = resolve_device(cfg.device)
        self.target = load_target(cfg.target)
        self.budgets, self.budget_bytes, self.ram_budget = check_budgets(cfg, self.target)
        if self.target.runtime not in RUNTIME_BACKENDS:
            raise HwcError(f"target {self.target.name}: runtime {self.target.runtime!r} has no export backend")
        self.backend = RUNTIME_BACKENDS[self.target.runtime]
        get_backend(self.backend)  # a missing runtime fails now, with its install hint
        #: a device pool (profile/pool.py) whose hosts time every latency of this target
        self.pool = pool
        self.measurable = pool is not None or self.target.arch == host_arch()
        # a microcontroller is not measurable here, but its exported file can be priced per
        # operator (profile/mcu.py): that prediction, not the torch-layer roofline, is what the
        # latency model is calibrated on and what the verified latency is
        self.per_op = self.caps.microcontroller and bool(self.target.cycles)
        self.out = Path(cfg.out)
        check_writable(self.out, "dir")
        self.out.mkdir(parents=True, exist_ok=True)
        self.shared = Path(cfg.shared) if cfg.shared is not None else self.out
        #: latency budgets the most pruned model cannot meet, with why (check_feasible(strict=False))
        self.unreachable: dict[float, str] = {}
        # a model object (the Python API) or what --model names
        self.model = (model if model is not None else load_model(cfg.model, cfg.model_weights)).eval()
        if callable(getattr(self.model, "analyze", None)):
            raise HwcError(f"{cfg.model}: fit is not adapted yet to a model with its own front end (DeepFilterNet3's "
                           "48 kHz analysis): its timing probes run hwcompress's 161-bin STFT; compress and export "
                           "it instead")
        # what every cache under --out is keyed by, so a resumed run with another model,
        # target or weight format never reports figures computed for the old one
        from hwcompress.profile.measure import target_activations

        #: the activation precision every timed run, parity check and (when not f32) the quality
        #: evaluation use: one the target's device has
        self.activations = target_activations(self.target, cfg.activations)
        self.key = {"model": model_digest(self.model), "target": digest(self.target.to_dict()),
                    "weights": cfg.weights, "backend": self.backend, "activations": self.activations}
        if cfg.measure_rounds != 1:  # every cached timing is the slowest of that many rounds
            if cfg.measure_rounds < 1:
                raise HwcError(f"measure_rounds must be at least 1, got {cfg.measure_rounds}")
            self.key["measure_rounds"] = cfg.measure_rounds
        if pool is not None:  # a LiteRT target a host serves, and one up: else one line, in seconds
            pool.probe(self.target)
            self.key["timed_on"] = pool.key(self.target)
        from hwcompress.export import WEIGHT_BITS, check_mode

        if cfg.weights not in ("int8", "int4", "mixed"):
            raise HwcError(f"fit exports int8, int4 or mixed runtime weights, not {cfg.weights!r}")
        #: weights="mixed": the layers exported at 4 bits (set once the codebooks are chosen; until
        #: then every layer is int8, as the dense calibration export is)
        self.int4_layers: list[str] = []
        check_mode("stream", cfg.weights, self.backend)
        self.weight_bits = WEIGHT_BITS[cfg.weights]
        self.oracle = alloc.CostOracle(self.model, self.target, weight_bits=self.weight_bits)
        # runtime bytes per weight of the quantized artifact, refined from the dense export
        self.bytes_per_weight = 1.0
        self.calibration_log: list[dict] = []
        self.floor_ms: float | None = None  # the most pruned model's latency (check_feasible)
        self.floor_how = "predicted"
        self.floor_ratios: dict[str, float] = {}
        self._floor_probe: dict | None = None  # the most pruned model's export (and measurement)
        #: (kept weights, measured peak bytes) of this budget's allocations whose measured RAM
        #: missed the RAM budget: each steepens the RAM model's line (`ram_model`)
        self.ram_misses: list[list[float]] = []
        self.data: Path | None = None  # the corpus, once _fit knows it
        self._calibration_audio: list[np.ndarray] | None = None

    # ------------------------------------------------------------ runtime probes

    def _export(self, model: SEModel, out_dir: Path, check: bool = True, **options) -> ExportedArtifact:
        from hwcompress.export.check import export_checked

        if self.caps.microcontroller and self.calibration_audio():
            # integer activations: their ranges are taken on real mixtures, not synthetic spectra
            # (NSNet2 fitted for cortex-m7, TFLM file on the test split: SI-SDR 7.97 dB -> 9.43 dB)
            options = {"calibration_audio": self.calibration_audio(), **options}

        if self.cfg.weights == "mixed":  # the same layers at 4 bits in every export, probes included
            options = {"int4_layers": list(self.int4_layers), **options}
        # parity is recorded, not raised: a failed check marks the budget not met in the report
        with cpu_share():
            return export_checked(model, self.backend, out_dir, ["stream"], weights=self.cfg.weights, stem="model",
                                  check=check, enforce=False, options=options, precision=self.activations)[0]

    def calibration_audio(self) -> list[np.ndarray]:
        """Noisy validation mixtures of the fit's corpus (as many as the sensitivity scores on),
        the audio integer-activation ranges are calibrated on; empty before the corpus is known."""
        if self._calibration_audio is None and self.data is not None:
            from hwcompress.data.loader import eval_set

            self._calibration_audio = [row["noisy"] for row in eval_set(self.data, "valid", self.cfg.sensitivity_items)]
        return self._calibration_audio or []

    def _measure(self, path: str, runs: int | None = None, what: str | None = None) -> Measurement:
        """One latency figure of the artifact at `path`: `cfg.measure_rounds` fresh-process rounds,
        the slowest kept (with every round's median) where there are several."""
        rounds = [self._measure_once(path, runs, what) for _ in range(max(1, self.cfg.measure_rounds))]
        if len(rounds) == 1:
            return rounds[0]
        slowest = max(rounds, key=lambda m: m.median_ms)
        return slowest.with_(round_medians_ms=[m.median_ms for m in rounds])

    def _measure_once(self, path: str, runs: int | None = None, what: str | None = None) -> Measurement:
        if self.pool is not None:  # on a free pool host serving the target, named in the result's `device`
            return self.pool.measure(self.target, Path(path), runs or self.cfg.measure_runs, what=what)
        from hwcompress.profile.measure import measure_artifact

        with quiet():  # in a parallel fit, no other task's step runs on this machine meanwhile
            m = measure_artifact(self.backend, Path(path), self.target.threads, runs or self.cfg.measure_runs,
                                 precision=self.activations)
            if settled() is not None:  # the machine's other CPU use before this timing
                m = m.with_(quiet=settled())
                if not m.quiet["quiet"]:
                    self.log(f"  {what or 'timing'}: other processes still used {m.quiet['others_cores']:.2f} "
                             f"cores after {m.quiet['waited_s']:.0f} s; timed anyway (the figure may be slow)")
            return m

    def _probe(self, ratios: dict[str, float]) -> dict:
        """Export and (if measurable) time the one-shot pruned model of `ratios`."""
        from hwcompress.compress.prune import apply_masks, structured_masks
        from hwcompress.compress.shrink import shrink
        import copy

        net = copy.deepcopy(self.model)
        if any(ratios.values()):
            apply_masks(net, structured_masks(net, {g: r for g, r in ratios.items() if r}))
            net = shrink(net)
        with tempfile.TemporaryDirectory(prefix="hwc-fit-probe-") as tmp:
            art = self._export(net, Path(tmp), check=False)
            result = {"bytes": art.bytes, "params": sum(p.numel() for p in net.parameters())}
            if self.measurable:
                m = self._measure(art.path, what="pruned model " + ", ".join(
                    f"{g} {r:.0%}" for g, r in ratios.items() if r) if any(ratios.values()) else "dense model")
                result.update(measured_ms=m.median_ms, p90_ms=m.p90_ms, peak_memory_bytes=m.peak_memory_bytes)
                if m.quiet is not None:  # a parallel run: the machine's other CPU use before the timing
                    result["quiet"] = m.quiet
                if m.device is not None:  # a pool host; one without Linux's /proc reports no peak
                    result["measured_on"] = m.device["host"]
                    if m.peak_memory_bytes is None:
                        del result["peak_memory_bytes"]
            elif self.per_op:
                from hwcompress.profile.mcu import predict_tflm

                result["per_op_ms"] = predict_tflm(Path(art.path).read_bytes(), self.target)["latency_ms"]
            if self.caps.microcontroller:  # the arena TFLM needs, measured in its interpreter
                from hwcompress.export.tflm import measure_arena

                result["arena_bytes"] = measure_arena(Path(art.path).read_bytes(), str(art.path))[0]
        return result

    # ------------------------------------------------------------ stages

    def calibrate(self) -> None:
        """Dense quantized artifact: its bytes per weight, and measured/predicted latency."""
        path = self.out / "calibration.json"
        cached = read_keyed(path, self.key, self.log)
        if cached:
            self.bytes_per_weight = cached["bytes_per_weight"]
            self.oracle.calibration = cached["calibration"]
            self.calibration_log = cached["log"]
            return
        self.log(f"calibrate: exporting the dense model to {self.backend} {self.cfg.weights}"
                 + ((" and timing it on the device pool" if self.pool else " and timing it here") if self.measurable else ""))
        probe = self._probe({})
        self.bytes_per_weight = probe["bytes"] / probe["params"]
        predicted = self.oracle.latency_ms({}) / self.oracle.calibration
        if self.measurable:
            self.oracle.calibration = probe["measured_ms"] / predicted
        elif self.per_op:  # predicted either way; the per-op figure prices what TFLM runs
            self.oracle.calibration = probe["per_op_ms"] / predicted
            self.log(f"calibrate: {probe['per_op_ms']:.2f} ms per hop predicted per op for the dense file vs "
                     f"{predicted:.2f} ms by the layer roofline")
        self.calibration_log.append({"ratios": {}, "predicted_ms": predicted, **probe})
        write_keyed(path, self.key, {"target": self.target.name, "model": self.cfg.model, "weights": self.cfg.weights,
                                     "bytes_per_weight": self.bytes_per_weight, "calibration": self.oracle.calibration,
                                     "log": self.calibration_log})

    def precheck_size(self) -> None:
        """Seconds, before the dense export: a model whose most pruned form cannot fit the
        size budget even at the weight format's bits per weight (the export only adds to
        that) is refused here, not after a long export (or a runtime that cannot load a file
        that large: TFLite Micro aborted on the default CRN's)."""
        floor = {g: alloc.MAX_RATIO for g in self.oracle.sizes}
        # TFLite Micro can store a clustered layer as 1-bit LUT indices: the codebook stage decides
        # (check_lut_size); here only what no K could fit
        bits = 1 if self.caps.microcontroller else self.weight_bits
        least = int(self.oracle.params(floor) * bits / 8)
        if least > self.budget_bytes:
            raise HwcError(f"size budget {self.budget_bytes} B cannot be met on {self.target.name}: even with "
                           f"{alloc.MAX_RATIO:.0%} of every group pruned the {self.cfg.weights} weights alone take about "
                           f"{least} B{' at 1-bit LUT indices' if bits == 1 else ''} (pass a smaller model, or --budget-kb)")

    @property
    def caps(self) -> Capabilities:
        """What the target's backend can do (export.capabilities): the fit asks it, not the name."""
        from hwcompress.export import capabilities

        return capabilities(self.backend)

    @property
    def margin(self) -> float:
        """The share of a budget a measured figure may use (noise room); 1 for predictions."""
        return MEASURE_MARGIN if self.measurable else 1.0

    def budget_params(self) -> int:
        """The most weights the allocation may keep: the size budget's, and the RAM budget's
        (`ram_model`) where the weights are what the runtime holds in RAM."""
        fixed, per_weight = self.size_model()
        size = int((self.budget_bytes - fixed) / per_weight)
        model = self.ram_model()
        if model is None:
            return size
        fixed, per_weight, _ = model
        return max(0, min(size, int((self.ram_budget * self.margin - fixed) / per_weight)))

    def size_model(self) -> tuple[float, float]:
        """Runtime artifact bytes as fixed bytes + bytes per kept weight: the line through the
        dense and the most pruned model's exported files where both were exported (a file's
        graph, names and metadata do not shrink with pruning: tiny-crn's 45-48 KB files are
        mostly that), else all bytes per weight (the dense file's bytes / its weights)."""
        dense = self.calibration_log[0] if self.calibration_log else {}
        floor = self._floor_probe or {}
        if not self.caps.microcontroller and "bytes" in dense and "bytes" in floor and dense["params"] > floor["params"]:
            per_weight = (dense["bytes"] - floor["bytes"]) / (dense["params"] - floor["params"])
            if per_weight > 0:
                return max(0.0, floor["bytes"] - per_weight * floor["params"]), per_weight
        return 0.0, self.bytes_per_weight

    def ram_model(self) -> tuple[float, float, str] | None:
        """Runtime RAM as fixed bytes + bytes per kept weight, and how it was had. Measurable
        here: the line through the dense model's and the most pruned model's measured peaks
        (what load and run add to a fresh process), since a runtime's own allocations (arenas,
        prepacked weights) scale with neither the file nor a fixed constant alone. Otherwise
        the prediction the report states: artifact bytes + input and output state buffers.
        None for TFLite Micro, whose weights stay in flash (its RAM is the arena: check_arena)."""
        if self.caps.microcontroller:
            return None
        dense = self.calibration_log[0] if self.calibration_log else {}
        floor = self._floor_probe or {}
        if self.measurable and "peak_memory_bytes" in dense and "peak_memory_bytes" in floor \
                and dense["params"] > floor["params"]:
            per_weight = (dense["peak_memory_bytes"] - floor["peak_memory_bytes"]) / (dense["params"] - floor["params"])
            # RSS is paged: a slope at or under zero is noise; the file's bytes per weight bound it below
            per_weight = max(per_weight, self.bytes_per_weight)
            how = "measured peaks of the dense and the most pruned model, a line through the two"
            # a pruned model that measured over the line (a runtime's arenas need not shrink in
            # proportion to its weights): the line from the floor through it, so that every
            # measured point lies on or under the model
            steeper = [(peak - floor["peak_memory_bytes"]) / (params - floor["params"])
                       for params, peak in self.ram_misses if params > floor["params"]]
            if steeper and max(steeper) > per_weight:
                per_weight = max(steeper)
                how = (f"measured peaks of the most pruned model and of {len(self.ram_misses)} allocation(s) "
                       "that missed the RAM budget, a line through the floor and the steepest")
            return floor["peak_memory_bytes"] - per_weight * floor["params"], per_weight, how
        fixed, per_weight = self.size_model()
        return 2.0 * _state_bytes(self.model) + fixed, per_weight, "predicted: artifact bytes + input and output state buffers"

    def ram_fits(self, measured: dict) -> bool | None:
        """Whether a measured peak (a probe's or the verified artifact's) is within the RAM
        budget's measured share; None where no RAM model applies or no peak was measured."""
        if measured.get("peak_memory_bytes") is None or not self.measurable or self.caps.microcontroller:
            return None
        return measured["peak_memory_bytes"] <= self.ram_budget * self.margin

    def ram_floor(self) -> tuple[float, str]:
        """The most pruned model's RAM: measured where it ran here, else by `ram_model`."""
        floor = self._floor_probe or {}
        if self.measurable and "peak_memory_bytes" in floor:
            return float(floor["peak_memory_bytes"]), (f"measured on {floor['measured_on']}" if floor.get("measured_on")
                                                       else "measured here")
        fixed, per_weight, how = self.ram_model()
        return fixed + per_weight * self.oracle.params(self.floor_ratios), how

    def check_feasible(self, strict: bool = True) -> None:
        """The most pruned model against every budget. A size, RAM or arena budget it cannot meet
        fails here (one line); so does the tightest latency budget when `strict`. Not `strict`
        (a multi-target run, where one unreachable budget must not stop the others): each latency
        budget the floor misses is kept in `unreachable` with the reason, for the report."""
        floor = {g: alloc.MAX_RATIO for g in self.oracle.sizes}
        best_ms, best_params = self.oracle.latency_ms(floor), self.oracle.params(floor)
        how = "predicted"
        dense_bytes = self.calibration_log[0]["bytes"] if self.calibration_log else 0
        # the smallest model the search may build, exported (and where the target can be timed
        # here, timed for real): seconds. A predicted target needs its bytes only when the dense
        # artifact is over the size budget (the size model's second point: `size_model`)
        if self.measurable or (not self.caps.microcontroller and dense_bytes > self.budget_bytes):
            key = {**self.key, "calibration": digest(self.calibration_log)}
            cached = read_keyed(self.out / "floor.json", key, self.log)
            if not cached:
                cached = {"calibration_log": self.calibration_log, **self._probe(floor)}
                write_keyed(self.out / "floor.json", key, cached)
            if self.measurable:
                best_ms = cached["measured_ms"]
                how = f"measured on {cached['measured_on']}" if cached.get("measured_on") else "measured here"
            self._floor_probe = cached
        self.floor_ms = best_ms
        self.floor_how = how
        self.floor_ratios = floor
        self.unreachable = {
            b: (f"budget {b:g} ms cannot be met on {self.target.name}: the best reachable is about {best_ms:.3g} ms "
                f"per hop ({how}; {alloc.MAX_RATIO:.0%} of every group pruned, {self.cfg.weights} weights)")
            for b in self.budgets if best_ms > b * self.margin}
        tight = min(self.budgets)
        if strict and tight in self.unreachable:
            raise HwcError(self.unreachable[tight])
        fixed, per_weight = self.size_model()
        least_bytes = (self._floor_probe or {}).get("bytes") or fixed + per_weight * best_params
        if least_bytes > self.budget_bytes and not self.caps.microcontroller:
            raise HwcError(f"size budget {self.budget_bytes} B cannot be met: the smallest reachable runtime artifact is "
                           f"about {int(least_bytes)} B")
        if not self.caps.microcontroller:
            least, ram_how = self.ram_floor()
            if least > self.ram_budget * self.margin:
                raise HwcError(f"RAM budget {self.ram_budget} B cannot be met on {self.target.name}: with "
                               f"{alloc.MAX_RATIO:.0%} of every group pruned the runtime still needs about {int(least)} B "
                               f"({ram_how}; {self.cfg.weights} weights)")
        self.check_arena(floor)

    def check_lut_size(self, ks: dict[str, int]) -> None:
        """TFLite Micro, once the codebooks are chosen: the flash budget against the most pruned
        model. Where its int8 weights fit, the search sizes int8 (LUT storage then only shrinks the
        file, and the file may ship int8 when decoding costs the latency budget). Where they do not,
        the budget needs LUT weights: the search sizes each layer at its ceil(log2 K)-bit indices,
        and a budget those cannot meet is one line naming the layers whose K TFLM's decoder cannot
        take (K > 128: more than 7 index bits, stored as int8)."""
        from hwcompress.export.tflm import LUT_MAX_BITS

        if not self.caps.microcontroller:
            return
        floor = {g: alloc.MAX_RATIO for g in self.oracle.sizes}
        least = self.oracle.params(floor) * self.bytes_per_weight
        if least <= self.budget_bytes:
            return
        weights = self.layer_weights()
        bits = {layer: (k - 1).bit_length() if (k - 1).bit_length() <= LUT_MAX_BITS else 8 for layer, k in ks.items()}
        total = sum(weights.values()) or 1
        scale = sum(w * bits.get(layer, 8) for layer, w in weights.items()) / (8 * total)
        if least * scale > self.budget_bytes:
            wide = sorted((layer for layer, k in ks.items() if bits[layer] == 8), key=lambda x: -weights.get(x, 0))
            why = (f"; layers {', '.join(f'{x} (K={ks[x]})' for x in wide[:4])}{' ...' if len(wide) > 4 else ''} have "
                   f"codebooks TFLite Micro's LUT decoder cannot take (more than {LUT_MAX_BITS} index bits: stored int8), "
                   f"lower --codebook-tolerance for smaller K" if wide else "")
            raise HwcError(f"size budget {self.budget_bytes} B cannot be met on {self.target.name}: with "
                           f"{alloc.MAX_RATIO:.0%} of every group pruned the weights need LUT storage, and at the chosen "
                           f"codebooks' index bits the file is still about {int(least * scale)} B{why}")
        self.bytes_per_weight *= scale
        self.log(f"  flash: int8 weights cannot fit {self.budget_bytes} B; the search sizes LUT weights at "
                 f"{8 * scale:.2f} bits per weight on average (the chosen codebooks' index bits)")

    def layer_weights(self) -> dict[str, int]:
        """Weight-matrix elements (parameters of 2 or more dims) of each layer of the dense model."""
        from hwcompress.models.cost import layer_paths

        params = dict(self.model.named_parameters())
        return {layer: sum(p.numel() for n, p in params.items() if n.startswith(path + ".") and p.dim() >= 2)
                for layer, path in layer_paths(self.model).items()}

    def check_arena(self, floor: dict[str, float]) -> None:
        """TFLite Micro: the dense file's measured arena against the RAM budget; when it misses, the
        most pruned model's is measured too, and an arena that cannot fit even then fails here in
        one line (pruning channels is what shrinks activations and state)."""
        dense = next((e.get("arena_bytes") for e in self.calibration_log if not e.get("ratios")), None)
        budget = self.ram_budget
        if dense is None or dense <= budget:
            return
        key = {**self.key, "what": "floor arena", "ratios": floor}
        cached = read_keyed(self.out / "floor-arena.json", key, self.log)
        if not cached:
            self.log(f"  the dense model needs {dense} B of TFLite Micro arena (> {budget} B): measuring the most pruned one")
            cached = self._probe(floor)
            write_keyed(self.out / "floor-arena.json", key, cached)
        if cached["arena_bytes"] > budget:
            raise HwcError(f"memory budget {budget} B cannot be met on {self.target.name}: even with {alloc.MAX_RATIO:.0%} "
                           f"of every group pruned the TFLite Micro tensor arena needs {cached['arena_bytes']} B "
                           f"(measured; the dense model's: {dense} B)")

    def _floor_fits(self, budget_ms: float) -> bool:
        return self.measurable and self.floor_ms is not None and self.floor_ms <= budget_ms * MEASURE_MARGIN

    def _anchor_on_floor(self) -> None:
        """Calibration that makes the latency model agree with the floor's measurement."""
        predicted = self.oracle.latency_ms(self.floor_ratios) / self.oracle.calibration
        self.oracle.calibration = self.floor_ms / max(predicted, 1e-12)
        self.log(f"  latency model re-anchored on the most pruned model's measurement ({self.floor_ms:.3f} ms)")

    def torch_model(self) -> SEModel:
        """The dense model on the torch device: self.model itself on the CPU, else one copy there."""
        if self._torch_model is None:
            from hwcompress.device import placed

            self._torch_model = placed(self.model, self.device)
        return self._torch_model

    def sensitivity_items(self, data: Path) -> list[dict]:
        """The validation mixtures every sensitivity is scored on, against the objective the
        fine-tuning uses (`finetune_target`: distance to the dense model's output by default)."""
        return sensitivity_items(self.torch_model(), data, self.cfg)

    def sensitivities(self, data: Path) -> tuple[dict, dict]:
        items = self.sensitivity_items(data)
        self.log(f"sensitivity: {len(items)} validation mixtures, cached in {self.shared / 'sensitivity'}")
        s = sens.structured(self.torch_model(), items, self.shared / "sensitivity" / "structured.json", log=self.log)
        k = sens.codebooks(self.torch_model(), items, self.shared / "sensitivity" / "codebooks.json", log=self.log)
        return s, k

    def allocate(self, curves: dict, budget_ms: float) -> tuple[alloc.Allocation, list[dict]]:
        """Allocation for one budget; on measurable targets the one-shot pruned model is
        timed and the latency model re-scaled by measured / predicted: tightened until it
        fits, and loosened when it lands far under the budget (one noisy calibration
        measurement must not cost quality). The feasible trial with the least predicted
        loss wins."""
        trials: list[dict] = []
        feasible: list[alloc.Allocation] = []
        for attempt in range(self.cfg.retries + 1):
            how = alloc.uniform if self.cfg.allocation == "uniform" else alloc.allocate
            try:
                a = how(curves, self.oracle, budget_ms * self.margin,
                        self.budget_params())
            except alloc.Infeasible:
                if feasible:
                    break
                if self._floor_fits(budget_ms):
                    # a re-scale from one measured allocation (here, or a verified miss of the
                    # compressed model before this call) can make the model predict the floor
                    # over budget although the floor itself measured within it (one scalar
                    # cannot hold both a fixed per-hop overhead and the part that pruning
                    # removes): trust the floor's measurement and allocate again
                    self._anchor_on_floor()
                    try:
                        a = how(curves, self.oracle, budget_ms * MEASURE_MARGIN, self.budget_params())
                    except alloc.Infeasible:
                        break
                else:
                    raise HwcError(f"budget {budget_ms:g} ms cannot be met on {self.target.name}: the best reachable is "
                                   f"about {self.floor_ms:.3g} ms per hop ({self.floor_how}; {alloc.MAX_RATIO:.0%} of "
                                   f"every group pruned, {self.cfg.weights} weights)") from None
            if not self.measurable:
                return a, trials
            if any(t["ratios"] == a.ratios for t in trials):  # the re-scaled model picked a setting already timed
                break
            probe = self._probe(a.ratios)
            trials.append({"attempt": attempt, "ratios": a.ratios, "predicted_ms": a.predicted_ms, **probe})
            ram_ok = self.ram_fits(probe)
            self.log(f"  allocation {attempt}: predicted {a.predicted_ms:.3f} ms, measured {probe['measured_ms']:.3f} ms "
                     f"(budget {budget_ms:g} ms)" + ("" if ram_ok is None else
                                                     f"; peak RAM {probe['peak_memory_bytes']} B measured "
                                                     f"(budget {self.ram_budget} B)"))
            fits = probe["measured_ms"] <= budget_ms * MEASURE_MARGIN and ram_ok is not False
            if ram_ok is False:
                self.ram_misses.append([probe["params"], probe["peak_memory_bytes"]])
            if fits:
                feasible.append(a)
                if probe["measured_ms"] >= budget_ms * LOOSEN_BELOW:
                    break
            self.oracle.calibration *= probe["measured_ms"] / a.predicted_ms
        if feasible:
            return min(feasible, key=lambda x: x.predicted_loss), trials
        if self._floor_fits(budget_ms):
            # every allocation tried missed, but the most pruned model measured within the
            # budget: it is the one measured fit there is
            self.log(f"  no measured allocation fitted {budget_ms:g} ms; keeping the most pruned model "
                     f"({self.floor_ms:.3f} ms measured)")
            floor = self.floor_ratios
            a = alloc.Allocation(dict(floor), self.oracle.latency_ms(floor), self.oracle.params(floor),
                                 sum(alloc.interpolate(curves[g], r) for g, r in floor.items() if g in curves))
            trials.append({"attempt": len(trials), "ratios": a.ratios, "predicted_ms": a.predicted_ms,
                           "measured_ms": self.floor_ms, "from": "floor measurement"})
            return a, trials
        raise HwcError(f"budget {budget_ms:g} ms: after {self.cfg.retries + 1} measured allocations the pruned model "
                       f"still measures {trials[-1]['measured_ms']:.3g} ms on {self.target.name}")

    def use_widths(self, ks: dict[str, int]) -> None:
        """weights="mixed": the layers the runtime stores at 4 bits are those the search clustered
        to K <= 16 whose kind the backend runs at 4 bits (`Capabilities.int4_kinds`); the latency model prices each layer at its width from here on."""
        if self.cfg.weights != "mixed":
            return
        from hwcompress.export import MIXED_MAX_K
        from hwcompress.models.cost import layer_costs

        kinds = {r["name"]: r["kind"] for r in layer_costs(self.model)}
        self.int4_layers = self.four_bit_layers(ks)
        self.weight_bits = {layer: 4 if layer in self.int4_layers else 8 for layer in kinds}
        self.oracle.bits = self.weight_bits
        self.oracle._cache.clear()
        self.log(f"mixed weights: 4-bit {', '.join(self.int4_layers) or 'none'} (K <= {MIXED_MAX_K}); 8-bit the rest")

    def four_bit_layers(self, ks: dict[str, int]) -> list[str]:
        """weights="mixed": the layers clustered to K <= 16 whose kind the backend runs at 4 bits."""
        from hwcompress.export import MIXED_MAX_K
        from hwcompress.models.cost import layer_costs

        kinds = {r["name"]: r["kind"] for r in layer_costs(self.model)}
        return [layer for layer, k in ks.items() if k <= MIXED_MAX_K and kinds.get(layer) in self.caps.int4_kinds]

    def grids(self, ks: dict[str, int]) -> dict[str, int]:
        """Per layer, the runtime width whose integer grid its codebook is held on, so that the
        backend stores the `.hwc` weights exactly (`Capabilities.grid_exact`): 4 bits for the
        layers the file stores at 4 bits (int4: the backend's 4-bit kinds; mixed: those of
        `four_bit_layers`), 8 for the rest; none on other backends (their export rounds on its
        own grid)."""
        from hwcompress.models.cost import layer_costs

        if self.backend is None or not self.caps.grid_exact or self.cfg.weights not in ("int8", "int4", "mixed"):
            return {}
        kinds = {r["name"]: r["kind"] for r in layer_costs(self.model)}
        four = (set(self.four_bit_layers(ks)) if self.cfg.weights == "mixed" else
                {n for n, k in kinds.items() if k in self.caps.int4_kinds} if self.cfg.weights == "int4" else set())
        return {n: 4 if n in four else 8 for n in kinds}

    def codebooks(self, k_sens: dict) -> dict[str, int]:
        from hwcompress.models.cost import layer_paths

        if self.cfg.allocation == "uniform":
            return {layer: self.cfg.uniform_codebook for layer in layer_paths(self.model)}
        weights = self.layer_weights()
        # relative to the dense model's own clean validation loss (k_sens["scale"]): with the
        # clean objective that is the base score itself; a distance to the teacher starts at 0
        budget = self.cfg.codebook_tolerance * abs(float(k_sens.get("scale") or k_sens["base"]))
        # a loss change within the measured noise floor counts as none (sens.within_noise),
        # and the joint check allows the same floor: float noise cannot flip a K
        floor = float((k_sens.get("noise") or {}).get("floor", 0.0))
        items = self.sensitivity_items(self.data)
        cache = self.out / "sensitivity" / "codebooks-joint.json"
        key = {"what": "joint codebook check", "model": model_digest(self.model),
               "evaluation": sens.evaluation_key(items, self.device), "k_sens": digest(_scores_only(k_sens)), "budget": budget,
               # the grids the codebooks are held on (none, or per layer by K: see `grids`)
               "grids": digest(self.grids({layer: 2 for layer in weights})) + digest(self.grids({layer: 256 for layer in weights}))}
        cached = read_keyed(cache, key, self.log)
        if cached is not None:
            ks = cached.get("ks")
            if isinstance(ks, dict) and set(ks) == set(weights) and all(
                    isinstance(k, int) and 2 <= k <= 256 for k in ks.values()):
                return ks
            self.log(f"{cache}: malformed cache contents; recomputing it")
        # single-layer losses add up only roughly (and the small ones are within the noise
        # of a few validation mixtures), so the choice is checked with every layer clustered
        # at once and the tolerance halved until the joint loss stays within the budget
        from hwcompress.compress.cluster import apply_clustering, cluster_model, snap_to_grid
        import copy

        score = sens.score_fn(items)
        curves = alloc.codebook_curves(sens.within_noise(k_sens))
        tolerance, trials = budget, []
        for _ in range(6):
            ks = alloc.choose_codebooks(curves, weights, tolerance)
            net = copy.deepcopy(self.model)
            paths = layer_paths(net)
            per_param = {n: ks[layer] for n, p in net.named_parameters() if p.dim() >= 2
                         for layer, path in paths.items() if n.startswith(path + ".")}
            grid_of = {n: self.grids(ks).get(layer, 0) for n in per_param
                       for layer, path in paths.items() if n.startswith(path + ".")}
            # the codebooks as the .hwc will hold them: on their runtime grid where it has one
            apply_clustering(net, {n: snap_to_grid(c, grid_of[n]) if grid_of[n] else c
                                   for n, c in cluster_model(net, per_param).items()})
            joint = float(k_sens["base"]) - score(net.to(self.device))
            trials.append({"tolerance": tolerance, "ks": ks, "joint_loss": joint})
            self.log(f"codebooks: joint objective increase {joint:.6f} (budget {budget:.6f}) with K "
                     + ", ".join(f"{n}={k}" for n, k in ks.items()))
            if joint <= budget + floor:
                break
            tolerance /= 2
        else:
            ks = {layer: 256 for layer in weights}
        write_keyed(cache, key, {"base": k_sens["base"], "budget": budget, "noise_floor": floor, "ks": ks,
                                 "trials": trials})
        return ks

    def compress(self, work: Path, data: Path, ratios: dict[str, float], ks: dict[str, int]) -> dict:
        from hwcompress.compress.pipeline import CompressConfig, compress

        layers: dict[str, dict] = {name: {"codebook": k, "grid": self.grids(ks).get(name, 0)} for name, k in ks.items()}
        for g, r in ratios.items():
            if r > 0:
                layers.setdefault(g, {}).update(sparsity=r, structured=True)
        cfg = CompressConfig(sparsity=0.0, codebook=16, structured=False, layers=layers,
                             prune_steps=self.cfg.prune_steps if any(ratios.values()) else 0,
                             cluster_steps=self.cfg.cluster_steps, batch=self.cfg.batch, seconds=self.cfg.seconds,
                             lr=self.cfg.lr, finetune_target=self.cfg.finetune_target)
        settings = {"config": asdict(cfg), "model": self.cfg.model, "key": self.key, "data": data_digest(data)}
        hwc = work / "model.hwc"
        done = work / "compress.json"
        previous = _read_json(work / "settings.json")
        if previous != settings:  # another allocation: its stages cannot be reused
            shutil.rmtree(work / "model.hwc.work", ignore_errors=True)
            hwc.unlink(missing_ok=True)
            done.unlink(missing_ok=True)
            atomic_json(work / "settings.json", settings)
        if hwc.exists() and done.exists():
            self.log(f"compress: {hwc} already built with these settings")
            return _read_json(done)
        import copy

        report = compress(copy.deepcopy(self.model), cfg, data, hwc, log=self.log, device=self.device)
        atomic_json(done, report)
        return report

    def _tflm_storage(self, compressed: SEModel, work: Path, art: ExportedArtifact,
                      budget_ms: float) -> tuple[ExportedArtifact, dict, dict | None]:
        """The TFLite Micro file to ship and its per-op prediction. TFLM decodes every LUT weight
        on every invoke (TFLM_DECODE), so LUT storage trades flash for cycles: the LUT file ships
        when it meets the latency budget; when it misses and the same model with plain int8
        weights is faster and fits the flash budget, that file ships instead (the report says so)."""
        from hwcompress.export.tflm import lut_layers
        from hwcompress.profile.mcu import predict_tflm

        data = Path(art.path).read_bytes()
        cycles = predict_tflm(data, self.target)
        if not lut_layers(data) or cycles["latency_ms"] <= budget_ms:
            shutil.rmtree(work / "export-int8", ignore_errors=True)  # an earlier attempt's
            return art, cycles, None
        plain = self._export(compressed, work / "export-int8", lut=False)
        plain_cycles = predict_tflm(Path(plain.path).read_bytes(), self.target)
        choice = {"lut_ms": cycles["latency_ms"], "lut_bytes": art.bytes, "int8_ms": plain_cycles["latency_ms"],
                  "int8_bytes": plain.bytes, "budget_ms": budget_ms, "budget_bytes": self.budget_bytes}
        if plain_cycles["latency_ms"] < cycles["latency_ms"] and plain.bytes <= self.budget_bytes:
            self.log(f"  tflite-micro: LUT weights predict {cycles['latency_ms']:.2f} ms (decoded every invoke) > "
                     f"{budget_ms:g} ms; int8 weights {plain_cycles['latency_ms']:.2f} ms fit {plain.bytes} B of "
                     f"flash: shipping int8")
            return plain, plain_cycles, {**choice, "shipped": "int8",
                                         "why": "LUT decoding missed the latency budget; int8 weights fit the flash budget"}
        shutil.rmtree(work / "export-int8", ignore_errors=True)
        return art, cycles, {**choice, "shipped": "lut",
                             "why": "int8 weights are not faster, or do not fit the flash budget"}

    def verify(self, compressed: SEModel, work: Path, ks: dict[str, int], budget_ms: float | None = None) -> dict:
        from hwcompress.profile.latency_model import predict_latency
        from hwcompress.profile.measure import runtime_version

        art = self._export(compressed, work / "export")
        cycles = storage = None
        if self.per_op:  # every operator of the exported file priced with the target's cycle figures
            art, cycles, storage = self._tflm_storage(compressed, work, art, budget_ms or self.target.latency_budget_ms)
        prediction = predict_latency(compressed, self.target, self.weight_bits)
        v: dict[str, Any] = {
            "runtime": self.backend, "runtime_version": runtime_version(self.backend), "threads": self.target.threads,
            "artifact": {k: getattr(art, k) for k in ("path", "files", "bytes", "weights")}, "parity_vs_torch": art.parity,
            "predicted_ms": prediction.latency_ms, "predicted_calibrated_ms": prediction.latency_ms * self.oracle.calibration,
        }
        if self.measurable:
            runs = max(self.cfg.measure_runs, self.cfg.final_runs)
            m = self._verified_measurement(art, work / "verified-measurement.json", runs)
            v.update(latency_ms=m.median_ms, p90_ms=m.p90_ms, latency_source="measured",
                     device=f"{m.host['cpu']} (this machine)", peak_memory_bytes=m.peak_memory_bytes,
                     peak_memory_source="measured", peak_memory_method=m.peak_memory_method,
                     how=f"median of {runs} streaming hops of the exported artifact in a fresh "
                         f"subprocess, {self.target.threads} thread(s), host load {m.host.get('load_avg')}"
                         + (f"; the slowest of {len(m.round_medians_ms)} such rounds (medians "
                            f"{', '.join(f'{x:.3f}' for x in m.round_medians_ms)} ms)" if m.round_medians_ms else ""))
            if m.device is not None:  # timed on a pool host: named, with what its runner reported
                d = m.device
                v.update(device=f"{d['cpu']} ({d['machine']}) at {d['host']} over SSH", how=m.how,
                         measured_on={**d, **({"warning": m.warning} if m.warning else {})})
        else:
            state_bytes = _state_bytes(compressed)
            v.update(latency_ms=prediction.latency_ms, p90_ms=None, latency_source="predicted",
                     device=f"{self.target.cpu} (not attached)", how=prediction.how,
                     peak_memory_bytes=art.bytes + 2 * state_bytes, peak_memory_source="predicted",
                     peak_memory_method="artifact bytes + input and output state buffers; interpreter and "
                                        "activation arenas not included (no device to measure)")
            if self.cfg.emulate and self.target.emulation and self.caps.emulated:
                v["emulated_check"] = self.emulated_check(Path(art.path))
            if cycles is not None:
                v.update(latency_ms=cycles["latency_ms"], how=cycles["how"], latency_model=cycles["latency_model"],
                         per_op={k: cycles[k] for k in ("cycles", "clock_mhz", "macs", "ops", "by_figure", "layers")},
                         tflm_storage=storage)
            if self.caps.microcontroller:  # the arena is measured in the real TFLM interpreter
                from hwcompress.export import get_backend

                session = get_backend(self.backend).load(Path(art.path))
                v.update(peak_memory_bytes=session.arena_bytes, peak_memory_source="measured",
                         peak_memory_method=f"measured: TFLite Micro arena, smallest that runs (bisection to 16 B in "
                                            f"the TFLM interpreter; its recording allocator: "
                                            f"{session.arena_recorded_bytes} B); weights stay in the "
                                            f"{session.model_bytes} B model file (flash)",
                         lut_layers=session.lut_layers, tflm_weights=self.tflm_weights(compressed, art.path, ks))
        if self.cfg.weights in self.caps.widths_read_back:
            from hwcompress.export import layer_widths

            v["layer_widths"] = layer_widths(self.backend, Path(art.path), compressed)
        return v

    def _verified_measurement(self, art: ExportedArtifact, path: Path, runs: int) -> Measurement:
        """The final timing of an artifact, kept under --out with the digest of its files: a
        rerun of a finished budget reuses it, so a resumed fit reports what it measured
        instead of timing the same bytes again and (on a noisy machine) retrying a budget it
        had met. Another artifact, run count or setting is timed anew."""
        from hwcompress.workdir import file_digest

        key = {**self.key, "what": "verified measurement", "runs": runs, "threads": self.target.threads,
               "files": {Path(f).name: file_digest(Path(f)) for f in art.files}}
        cached = read_keyed(path, key, self.log)
        if cached is not None:
            self.log(f"  verified measurement reused from {path} (same artifact bytes; delete it to time again)")
            return Measurement.from_json(cached["measurement"])
        m = self._measure(art.path, runs=runs, what=f"verify {path.parent.name}")
        write_keyed(path, key, {"measurement": m.to_json()})
        return m

    def tflm_weights(self, compressed: SEModel, path: str, ks: dict[str, int]) -> list[dict]:
        """Per weight tensor of a TFLite Micro file: its layer, the K the search gave that layer,
        and how the file stores it (LUT index bits or plain int8, bytes), read back from the file."""
        from hwcompress.export.tflm import tensor_layers, weight_tensors
        from hwcompress.models.cost import layer_paths

        rows = weight_tensors(Path(path).read_bytes())
        names = tensor_layers([r["tensor"] for r in rows], compressed, layer_paths(compressed))
        return [{"layer": names.get(r["tensor"]), "k": ks.get(names.get(r["tensor"])), **r} for r in rows]

    def emulated_check(self, tflite: Path) -> dict:
        """Run the .tflite on the emulated target CPU and compare with this machine's run."""
        from hwcompress.export import _graph as g
        from hwcompress.export import get_backend
        from hwcompress.export.probe import speech_like_frames

        try:
            from hwcompress.profile.emulate import run_emulated

            frames = speech_like_frames(20)
            session = get_backend(self.backend).load(tflite, threads=1)
            ref, state = [], None
            for f in frames:
                out, state = session.run(f, state)
                ref.append(out)
            feeds = {g.SPEC: frames}  # one frame per invoke; the states are carried by the runner
            for i, s in enumerate(session.state_shapes):
                feeds[g.state_name(i)] = np.zeros((1, *s), np.float32)
            outputs, info = run_emulated(tflite, feeds, n_runs=len(frames), threads=self.target.threads)
            got, want = outputs[g.OUT].reshape(len(frames), -1), np.stack(ref).reshape(len(frames), -1)
            diff = float(np.abs(got - want).max())
            snr = float(10 * np.log10(np.sum(want.astype(np.float64) ** 2) / max(np.sum((got - want).astype(np.float64) ** 2), 1e-30)))
            # int8 artifacts differ by a quantization step between ISAs: dynamic activation
            # quantization rounds differently in XNNPACK's arm64 and x86 kernels
            from hwcompress.export.check import EMULATED_MIN_SNR_DB

            passed = snr >= EMULATED_MIN_SNR_DB
            return {"ran": True, "status": "passed" if passed else "failed", "passed": passed,
                    "min_snr_db": EMULATED_MIN_SNR_DB,
                    "hops": len(frames), "max_abs_diff_vs_host": diff, "snr_db_vs_host": snr, "latency_source": "emulated",
                    "emulated_median_ms": info["latency_ms"]["median"],
                    "note": info.get("latency_note", "emulator time, not device latency"),
                    "emulator": info.get("emulator"), "runtime": info.get("runtime")}
        except HwcError as exc:  # no emulator here, or it failed: say so, never pass silently
            return {"ran": False, "status": "not verified", "passed": None, "reason": str(exc)}

    def quality(self, net: SEModel, data: Path, cache: Path, artifact: str | None = None) -> dict:
        """Quality on the test split: of `net` in torch (f32), or, when the fit runs another
        activation precision than f32 and `artifact` is given, of that runtime file run at it
        (bf16 changes the numbers the device computes; the torch model would not show it)."""
        from hwcompress.evaluate import evaluate, evaluate_artifact

        metrics = [*QUALITY, *(DNSMOS_QUALITY if self.cfg.dnsmos else ())]
        in_runtime = artifact is not None and self.activations != "f32"
        key = {"model": model_digest(net), "data": data_digest(data), "set": "test", "n_requested": self.cfg.eval_items,
               "metrics": metrics, **({"artifact": hashlib.sha256(Path(artifact).read_bytes()).hexdigest(),
                                       "activations": self.activations} if in_runtime else {})}
        if not in_runtime and self.device.type != "cpu":
            # scored on a GPU (its matmuls may round differently): not the CPU's cached figures
            key["torch_device"] = self.device.type
        cached = read_keyed(cache, key, self.log)
        if cached:
            return cached
        if in_runtime:
            r = evaluate_artifact(Path(artifact), data, "test", limit=self.cfg.eval_items, dnsmos=self.cfg.dnsmos,
                                  threads=self.target.threads, precision=self.activations)
        else:
            from hwcompress.device import placed

            r = evaluate(placed(net, self.device), data, "test", limit=self.cfg.eval_items, dnsmos=self.cfg.dnsmos)
        mean = r["summary"]["overall"]["mean"]
        result = {"set": "test", "n": r["n"], "n_requested": self.cfg.eval_items,
                  "noisy": {m: mean[f"noisy_{m}"] for m in metrics},
                  "enhanced": {m: mean[f"enhanced_{m}"] for m in metrics},
                  "dnsmos": (r.get("dnsmos") or {}).get("what"),
                  "scored": (f"the runtime artifact in {r['runtime']} with {self.activations} activations" if in_runtime
                             else "the compressed model in torch (f32)" if self.device.type == "cpu"
                             else f"the compressed model in torch (f32 weights) on {describe(self.device)}")}
        write_keyed(cache, key, result)
        return result


def _layers_table(model: SEModel, compressed: SEModel, ratios: dict[str, float], ks: dict[str, int],
                  artifact_report: dict) -> list[dict]:
    from hwcompress.models.cost import layer_costs, layer_paths

    before = {r["name"]: r for r in layer_costs(model)}
    after = {r["name"]: r for r in layer_costs(compressed)}
    paths = layer_paths(compressed)
    by_layer: dict[str, int] = {}
    for t in artifact_report.get("tensors", []):
        for name, path in paths.items():
            if t["name"].startswith(path + "."):
                by_layer[name] = by_layer.get(name, 0) + t["bytes"]
                break
    rows = []
    for name, b in before.items():
        a = after.get(name, b)
        rows.append({"name": name, "kind": b["kind"], "params_before": b["params"], "params": a["params"],
                     "macs_per_frame": a["macs_per_frame"], "structured_sparsity": ratios.get(name, 0.0),
                     "unstructured_sparsity": 0.0, "k": ks.get(name), "hwc_bytes": by_layer.get(name)})
    return rows


class SearchState:
    """Where one budget's allocate -> compress -> verify loop stands, kept under --out so that a
    rerun resumes it: a verified miss tightens the latency model, and a rerun that started from
    the untightened calibration would allocate the first (missed) setting again and throw the
    compressed model away. Holds the attempt, the calibration it starts from and, once made,
    its allocation and the calibration the allocation's own measurements left behind."""

    def __init__(self, path: Path, key: dict, log: Callable[[str], None]) -> None:
        self.path, self.key, self.log = path, key, log
        self.data = read_keyed(path, key, log) or {}

    def resume(self, f: "Fitter") -> int:
        f.ram_misses = [list(x) for x in self.data.get("ram_misses", [])]
        if "calibration" in self.data:
            f.oracle.calibration = self.data["calibration"]
            if self.data["attempt"]:
                self.log(f"  resuming at verify retry {self.data['attempt']} with the tightened latency and RAM "
                         f"models ({self.path})")
        return int(self.data.get("attempt", 0))

    def save(self, f: "Fitter", attempt: int, calibration: float, ram_misses: list | None = None,
             **made: Any) -> None:
        """The attempt and the latency and RAM models it starts from (`ram_misses`: f's now by
        default), with what it made once made."""
        self.data = {"attempt": attempt, "calibration": calibration,
                     "ram_misses": f.ram_misses if ram_misses is None else ram_misses, **made}
        write_keyed(self.path, self.key, self.data)

    def allocation(self, f: "Fitter", curves: dict, budget_ms: float,
                   attempt: int) -> tuple[alloc.Allocation, list[dict]]:
        made = self.data.get("allocation") if self.data.get("attempt", 0) == attempt else None
        if made:
            f.oracle.calibration = self.data["calibration_after"]
            f.ram_misses = [list(x) for x in self.data.get("ram_misses_after", f.ram_misses)]
            self.log(f"  allocation of attempt {attempt} reused from {self.path}")
            return alloc.Allocation(**made), self.data["trials"]
        start = f.oracle.calibration
        self.save(f, attempt, start)
        start_misses = [list(x) for x in f.ram_misses]
        a, trials = f.allocate(curves, budget_ms)
        self.save(f, attempt, start, ram_misses=start_misses, allocation=asdict(a), trials=trials,
                  calibration_after=f.oracle.calibration, ram_misses_after=f.ram_misses)
        return a, trials


def fit(cfg: FitConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
        model: torch.nn.Module | None = None, pool: Any = None) -> dict:
    """Run every stage for every budget; returns the report (also written to cfg.out).
    `model`: a model object to fit instead of loading `cfg.model` (which then only labels it).
    `pool`: a hwcompress.profile.pool.DevicePool whose hosts serve the target: every latency
    (calibration, floor, allocation probes, the verified figure) is timed on them."""
    from hwcompress.device import resolve_device

    # a CUDA device that is not there: one line before the output folder is made and locked
    # (the CLI checks this too; the Python API comes straight here)
    resolve_device(cfg.device, say=False)
    check_writable(Path(cfg.out), "dir")
    with OutputLock(Path(cfg.out), inside=True):
        return _fit(cfg, log, model, pool)


def prepare(cfg: FitConfig, log: Callable[[str], None], model: torch.nn.Module | None = None,
            strict: bool = True, pool: Any = None) -> Fitter:
    """The per-target stages before the search: the model and target checked, the corpus found,
    the size precheck, the calibration and the feasibility check (each cached under cfg.out)."""
    from hwcompress.data.corpus import ensure_default_corpus

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    f = Fitter(cfg, log, model, pool)
    f.data = cfg.data if cfg.data is not None else ensure_default_corpus()
    f.precheck_size()
    f.calibrate()
    f.check_feasible(strict)
    #: where every budget's search starts: each budget is its own task (search/multi.py), so one
    #: budget's measured trials must not steer another's (nor make a serial run differ from it)
    f.base_calibration = f.oracle.calibration
    return f


@dataclass
class Plan:
    """What the search decides once per model and target, before any budget: the sensitivity
    scores, the pruning loss curves the allocation reads and the per-layer codebook sizes."""

    structured: dict
    codebooks: dict
    curves: dict
    ks: dict[str, int]


@dataclass
class BudgetResult:
    """One budget's outcome: what `fit_budget` hands the report (and a multi-target run's driver);
    `to_json()` gives the report's per-budget entry (docs/fit-report.md names every field)."""

    budget_ms: float
    budget_bytes: int
    memory_budget_bytes: int
    ram_model: dict[str, Any] | None
    latency_ms: float
    latency_p90_ms: float | None
    latency_source: str  # "measured" or "predicted"
    latency_how: str
    runtime: str
    runtime_version: str
    threads: int
    activations: str
    device: str
    measured_on: dict[str, Any] | None  # a device pool's host: host, machine, cpu, platform
    predicted_ms: float
    size_bytes: int  # the .hwc file
    dense_fp32_bytes: int
    runtime_artifact_bytes: int  # the files the runtime loads
    runtime_artifact: dict[str, Any]
    peak_memory_bytes: int | None
    peak_memory_source: str
    peak_memory_method: str | None
    parity_vs_torch: dict[str, Any]
    emulated_check: dict[str, Any] | None
    lut_layers: Any  # tflite-micro: LUT-encoded weights, read back from the file
    tflm_weights: Any  # tflite-micro: every weight tensor, its layer, K and storage
    per_op: dict[str, Any] | None  # tflite-micro: every operator of the file priced in cycles (predicted)
    layer_widths: dict[str, Any] | None  # litert, openvino, onnxruntime 4-bit: each layer's stored width, read back
    tflm_storage: dict[str, Any] | None  # tflite-micro: LUT vs int8 file, when LUT decoding missed latency
    parity_ok: bool
    budget_met: bool
    not_met_because: list[str]
    quality: dict[str, Any]  # noisy, baseline (dense) and compressed scores on the test split
    finetune_target: str
    allocation: dict[str, Any]  # ratios, predicted_loss, steps, measured_trials, calibration
    macs_per_frame: dict[str, Any]
    layers: list[dict[str, Any]]
    files: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(f: Fitter) -> Plan:
    s_sens, k_sens = f.sensitivities(f.data)
    curves = alloc.loss_curves(s_sens)
    ks = f.codebooks(k_sens)
    f.use_widths(ks)
    f.check_lut_size(ks)
    return Plan(s_sens, k_sens, curves, ks)


def baseline_quality(f: Fitter) -> dict:
    """The dense model's quality on the test split (target-independent: cached in the shared folder)."""
    return f.quality(f.model, f.data, f.shared / "baseline-quality.json")


def budget_folder(f: Fitter, budget: float) -> Path:
    return f.out if len(f.budgets) == 1 else f.out / f"budget-{budget:g}ms"


def fit_budget(f: Fitter, p: Plan, budget: float, baseline_q: dict) -> BudgetResult:
    """One budget: allocate -> compress -> export -> verify (tightening after a measured miss),
    then the quality; the per-budget result of the report."""
    from hwcompress.models.io import load_model

    cfg, log, data, ks = f.cfg, f.log, f.data, p.ks
    work = budget_folder(f, budget)
    work.mkdir(parents=True, exist_ok=True)
    log(f"budget {budget:g} ms on {f.target.name}")
    f.oracle.calibration = getattr(f, "base_calibration", f.oracle.calibration)
    f.ram_misses = []  # each budget starts from the dense and floor peaks alone, as its calibration does
    state = SearchState(work / "search-state.json", {**f.key, "budget_ms": budget, "budget_bytes": f.budget_bytes,
                                                     "ram_budget_bytes": f.ram_budget}, log)
    attempt = state.resume(f)
    while True:
        allocation, trials = state.allocation(f, p.curves, budget, attempt)
        creport = f.compress(work, data, allocation.ratios, ks)
        compressed = load_model(str(work / "model.hwc"), template=f.model).eval()
        v = f.verify(compressed, work, ks, budget)
        checked = v["latency_source"] == "measured" or v.get("latency_model") == "per-op cycles"
        slow = checked and v["latency_ms"] > budget
        # the verified peak over the RAM budget itself (the search aimed under its measured share)
        heavy = v["peak_memory_source"] == "measured" and f.ram_fits(v) is not None \
            and v["peak_memory_bytes"] > f.ram_budget
        if not (slow or heavy) or attempt >= cfg.retries:
            break
        log("  verified " + " and ".join(
            ([f"{v['latency_ms']:.3f} ms ({v['latency_source']}) > {budget:g} ms"] if slow else [])
            + ([f"peak RAM {v['peak_memory_bytes']} B (measured) > {f.ram_budget} B"] if heavy else []))
            + ": tightening and compressing again")
        if slow:
            # re-scale by what this allocation measured against what the model predicts for it
            # (not against the budget: an allocation far off the budget would over-correct and
            # make every later allocation look infeasible)
            f.oracle.calibration *= v["latency_ms"] / max(f.oracle.latency_ms(allocation.ratios), 1e-9)
        if heavy:
            f.ram_misses.append([sum(t.numel() for t in compressed.parameters()), v["peak_memory_bytes"]])
        attempt += 1
        state.save(f, attempt, f.oracle.calibration)
    q = f.quality(compressed, data, work / "quality.json", artifact=v["artifact"]["path"])
    runtime_bytes = v["artifact"]["bytes"]
    memory_ok = v["peak_memory_bytes"] is None or v["peak_memory_bytes"] <= f.ram_budget
    parity_ok = bool(v["parity_vs_torch"]["ok"])
    # an emulated run that ran and disagreed with this machine fails the budget; one that
    # could not run leaves it "not verified" in the report (the figures are predicted anyway)
    emulated_ok = (v.get("emulated_check") or {}).get("status") != "failed"
    if not parity_ok:
        par = v["parity_vs_torch"]
        log(f"  parity: {v['runtime']} output departs from torch (SNR {par['snr_db']:.1f} dB < "
            f"{par['min_snr_db']:g} dB for {par['weights']}): budget {budget:g} ms not met")
    return BudgetResult(
        budget_ms=budget,
        budget_bytes=f.budget_bytes,
        memory_budget_bytes=f.ram_budget,
        ram_model=dict(zip(("fixed_bytes", "bytes_per_weight", "how"), f.ram_model() or ())) or None,
        latency_ms=v["latency_ms"],
        latency_p90_ms=v.get("p90_ms"),
        latency_source=v["latency_source"],
        latency_how=v["how"],
        runtime=v["runtime"], runtime_version=v["runtime_version"], threads=v["threads"],
        activations=f.activations,
        device=v["device"],
        measured_on=v.get("measured_on"),
        predicted_ms=v["predicted_ms"],
        size_bytes=creport["size_bytes"],
        dense_fp32_bytes=creport["dense_fp32_bytes"],
        runtime_artifact_bytes=runtime_bytes,
        runtime_artifact=v["artifact"],
        peak_memory_bytes=v["peak_memory_bytes"],
        peak_memory_source=v["peak_memory_source"],
        peak_memory_method=v["peak_memory_method"],
        parity_vs_torch=v["parity_vs_torch"],
        emulated_check=v.get("emulated_check"),
        lut_layers=v.get("lut_layers"),
        tflm_weights=v.get("tflm_weights"),
        per_op=v.get("per_op"),
        layer_widths=v.get("layer_widths"),
        tflm_storage=v.get("tflm_storage"),
        parity_ok=parity_ok,
        budget_met=bool(v["latency_ms"] <= budget and runtime_bytes <= f.budget_bytes and memory_ok
                        and parity_ok and emulated_ok),
        not_met_because=[why for why, bad in (
            ("latency", v["latency_ms"] > budget), ("size", runtime_bytes > f.budget_bytes),
            ("memory", not memory_ok), ("parity vs torch", not parity_ok),
            ("emulated check", not emulated_ok)) if bad],
        quality={"noisy": q["noisy"], "baseline": baseline_q["enhanced"], "compressed": q["enhanced"],
                 "set": "test", "n": q["n"], "dnsmos": q.get("dnsmos"),
                 "scored": q.get("scored", "the compressed model in torch (f32)")},
        finetune_target=cfg.finetune_target,
        allocation={"ratios": allocation.ratios, "predicted_loss": allocation.predicted_loss,
                    "steps": allocation.steps, "measured_trials": trials,
                    "calibration": f.oracle.calibration},
        macs_per_frame=creport["macs_per_frame"],
        layers=_layers_table(f.model, compressed, allocation.ratios, ks, creport),
        files={"hwc": str(work / "model.hwc"), "runtime": v["artifact"]["files"]},
    )


def _fit(cfg: FitConfig, log: Callable[[str], None], model: torch.nn.Module | None = None, pool: Any = None) -> dict:
    started = time.time()
    f = prepare(cfg, log, model, pool=pool)
    p = plan(f)
    baseline_q = baseline_quality(f)
    results = [fit_budget(f, p, budget, baseline_q) for budget in f.budgets]
    return assemble(f, p, results, time.time() - started)


def assemble(f: Fitter, p: Plan, outcomes: list[BudgetResult], seconds: float, write: bool = True) -> dict:
    """The target's report from its per-budget results (written to f.out unless `write` is False)."""
    from hwcompress.search.report import write_reports

    cfg = f.cfg
    results = [r.to_json() for r in outcomes]  # the JSON edge
    report = {
        "schema": REPORT_SCHEMA,
        "command": "hwcompress " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None,
        "target": f.target.name,
        "target_description": f.target.description,
        "model": cfg.model,
        "params": sum(t.numel() for t in f.model.parameters()),
        "model_licence": model_licence(f.model),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "calibration": {"factor": f.oracle.calibration, "log": f.calibration_log,
                        "bytes_per_weight": f.bytes_per_weight, "measurable_here": f.measurable},
        "sensitivity": {"structured": p.structured, "codebooks": p.codebooks},
        "codebooks": p.ks,
        "pool": f.pool.state() if f.pool is not None else None,
        "results": results,
        "torch_device": describe(f.device),  # where fine-tuning, sensitivity and torch scoring ran
        "seconds": seconds,
    }
    if len(results) == 1:  # one budget: its fields at the top level, as documented
        report.update({k: v for k, v in results[0].items()})
    if write:
        write_reports(report, f.out, f.model, data=f.data, target=f.target)
    return report
