"""Measured per-hop latency of a streaming model on this machine, and per-layer times.

`measure_local(model, target)` exports the model in streaming mode (T=1) for the
target's runtime, then times it in a *fresh subprocess*: the parent has torch, the
exporter and whatever else loaded, with their own thread pools and heap, none of which a
deployed denoiser would carry. The child imports the backend, loads the artifact with the
target's thread count and feeds one STFT frame per call with the state carried from the
previous call, as a device does. Each `Session.run` call (copy inputs in, infer, copy
outputs out: what an application pays per hop) is timed with `time.perf_counter_ns`
after a warm-up. Per-layer times come from a second, profiling-enabled session opened
after the timed loop, because profiling adds per-node bookkeeping that must not leak
into the headline numbers.

A number is labelled `"measured"` only when the target's CPU architecture is this
machine's. Anything else (a Raspberry Pi 4 target on an x86 host, a microcontroller) gets
the roofline prediction from `latency_model.predict_latency`, labelled `"predicted"`,
with the reason: timing x86 cores and calling it a Pi would be wrong by an unknown factor.

`benchmark_app_latency` runs OpenVINO's own benchmark_app on the same IR with the same
threads, latency hint, one stream and f32 precision: an independent check that our
timing loop adds no measurable overhead.
"""

from __future__ import annotations

import functools
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import hwcompress
from hwcompress.errors import HwcError
from hwcompress.export import CAPABILITIES, capabilities
from hwcompress.export.capabilities import resolve
from hwcompress.export.probe import artifact_files, runtime_version, speech_like_frames  # noqa: F401 (re-exported)
from hwcompress.profile.measurement import Measurement
from hwcompress.targets import Target, load_target

REPO = Path(hwcompress.__file__).resolve().parent.parent

#: target.runtime -> export backend that produces and runs its artifact here
#: (every registered backend runs the runtime of its name: export.CAPABILITIES)
RUNTIME_BACKENDS: dict[str, str] = {name: name for name in CAPABILITIES}
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}
#: enough profiled hops for stable per-node means without a huge ORT trace file
_PROFILE_RUNS = 200
_PROFILE_WARMUP = 10


# ---------------------------------------------------------------- host facts


def host_arch() -> str:
    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def host_cpu() -> str:
    """CPU model name from /proc/cpuinfo ("model name" on x86, "Model"/"Hardware" on Arm boards)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or "unknown"


def _load_avg() -> list[float] | None:
    # recorded with every measurement: a busy host inflates medians, and the reader of a
    # stored profile must be able to tell
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def host_info() -> dict[str, Any]:
    return {"cpu": host_cpu(), "arch": host_arch(), "logical_cpus": os.cpu_count(), "load_avg": _load_avg()}


# ---------------------------------------------------------------- timing (runs in the child)


def latency_stats(ns: np.ndarray) -> dict[str, float]:
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def time_session(session: Any, frames: np.ndarray, runs: int, warmup: int,
                 runtime_ms: list[float] | None = None) -> np.ndarray:
    """Per-call wall time in ns of `runs` streaming hops after `warmup` untimed ones, each a
    `session.hop` with the state held in the session (in the runtime's own buffers where it
    allows: export/_graph.SessionBase.hop), as a deployment's loop runs. Sessions whose
    runtime times each inference itself (OpenVINO's InferRequest.latency) leave that figure
    in `last_runtime_ms`; it is appended to `runtime_ms` when given."""
    n = len(frames)
    session.reset()
    for i in range(warmup):
        session.hop(frames[i % n])
    times = np.empty(runs, dtype=np.int64)
    clock = time.perf_counter_ns
    # a cyclic-GC pass landing inside one call would show up as a fake tail latency that
    # belongs to this Python harness, not to the runtime
    gc.collect()
    gc.disable()
    try:
        for i in range(runs):
            frame = frames[(warmup + i) % n]
            t0 = clock()
            session.hop(frame)
            times[i] = clock() - t0
            if runtime_ms is not None and getattr(session, "last_runtime_ms", None) is not None:
                runtime_ms.append(session.last_runtime_ms)
    finally:
        gc.enable()
    return times


def _proc_status_kib(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s*(\d+)\s*kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS, so the peak after this
    # point belongs to the model alone and not to torch's import-time transients
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def _top_layers(per_run: dict[str, list[float]], kinds: dict[str, str], top: int) -> dict[str, Any]:
    # median per node, not mean: on a shared host one preempted call adds milliseconds to
    # whichever node was running and would make a trivial op look like the hot spot
    med = {n: float(np.median(v)) for n, v in per_run.items() if v}
    mean = {n: float(np.mean(v)) for n, v in per_run.items() if v}
    total = sum(med.values())
    rows = sorted(med.items(), key=lambda kv: kv[1], reverse=True)
    return {
        "layers": [{"name": n, "type": kinds.get(n, "?"), "ms": ms, "mean_ms": mean[n],
                    "share": ms / total if total else 0.0} for n, ms in rows[:top]],
        "layers_total_ms": total,
        "layers_count": len(rows),
    }


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """Load, time and profile one artifact in this (fresh) process."""
    from hwcompress.export import get_backend

    backend = get_backend(args["backend"])
    # made by the parent: the STFT needs torch, and importing torch here would make every
    # fresh measurement process ~1 s slower to start (most of a sweep's time)
    frames = np.load(args["frames"], allow_pickle=False)
    path, threads, runs, warmup = Path(args["path"]), args["threads"], args["runs"], args["warmup"]
    # baseline after every import and the input frames: what remains is the model's cost
    reset = _reset_peak_rss()
    base_kib = _proc_status_kib("VmRSS")
    base_max = _max_rss_bytes()
    t0 = time.perf_counter()
    session = backend.load(path, threads=threads, precision=args.get("precision"))
    load_s = time.perf_counter() - t0
    runtime_ms: list[float] = []
    times = time_session(session, frames, runs, warmup, runtime_ms)
    hwm_kib = _proc_status_kib("VmHWM")
    if reset and base_kib is not None and hwm_kib is not None:
        peak = (hwm_kib - base_kib) * 1024
        how = "VmHWM - VmRSS from /proc/self/status, peak reset (clear_refs 5) after imports, in a fresh subprocess"
    else:
        # ru_maxrss cannot be reset: if imports peaked above load+run this reads low
        peak = max(0, _max_rss_bytes() - (base_kib * 1024 if base_kib is not None else base_max))
        how = "resource.getrusage ru_maxrss minus RSS after imports, in a fresh subprocess (peak not resettable here)"
    result: dict[str, Any] = {**latency_stats(times), "runs": runs, "warmup": warmup, "load_seconds": load_s,
                              "harness": f"{type(session).__name__}.hop: one call per hop, the state held in "
                                         "the session between hops",
                              "peak_memory_bytes": int(peak), "peak_memory_method": how,
                              "process_peak_rss_bytes": (hwm_kib * 1024 if hwm_kib else _max_rss_bytes())}
    if runtime_ms and len(runtime_ms) == runs:
        result["runtime_median_ms"] = float(np.median(runtime_ms))
        result["runtime_p90_ms"] = float(np.percentile(runtime_ms, 90))
        result["runtime_method"] = ("OpenVINO InferRequest.latency of the same timed hops: the runtime's own "
                                    "timing of infer(), without the Python call (what benchmark_app reports)")
        result["harness_overhead_ms"] = result["median_ms"] - result["runtime_median_ms"]
    layer_runs = min(runs, _PROFILE_RUNS)
    if args["top"] <= 0:  # latency only (profile-table sweeps): skip the profiled second session
        result.update({"layers": [], "layers_total_ms": None, "layers_count": 0, "layers_source": "not requested"})
        return result
    caps = capabilities(args["backend"])
    if caps.layer_profiler:
        times_, kinds = resolve(caps.layer_profiler)(path, session, frames, layer_runs, threads, Path(args["tmp"]),
                                                    _PROFILE_WARMUP)
        result.update(_top_layers(times_, kinds, args["top"]))
        result["layers_source"] = caps.layer_profiler_source.format(runs=layer_runs)
    else:
        result.update({"layers": [], "layers_total_ms": None, "layers_count": 0,
                       "layers_source": f"{args['backend']}: its Python interpreter exposes no per-op profiler"})
    return result


@functools.lru_cache(maxsize=1)
def _probe_frames() -> np.ndarray:
    return speech_like_frames()


def _run_child(backend: str, path: Path, threads: int, runs: int, warmup: int, top: int,
               precision: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hwc-measure-") as tmp:
        spec = Path(tmp) / "args.json"
        out = Path(tmp) / "result.json"
        frames = Path(tmp) / "frames.npy"
        np.save(frames, _probe_frames())
        spec.write_text(json.dumps({"backend": backend, "path": str(path), "threads": threads, "runs": runs,
                                    "warmup": warmup, "top": top, "tmp": tmp, "out": str(out),
                                    "frames": str(frames), "precision": precision}))
        env = dict(os.environ)
        # this very source tree, not another installed copy of hwcompress
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        try:
            proc = subprocess.run([sys.executable, "-m", "hwcompress.profile.measure", str(spec)],
                                  capture_output=True, text=True, env=env, timeout=3600)
        except subprocess.TimeoutExpired:
            raise HwcError("measurement subprocess did not finish within an hour") from None
        if out.is_file():
            result = json.loads(out.read_text())
            if "error" in result:
                raise HwcError(result["error"])
            result["activations"] = precision or CAPABILITIES[backend].activations[0]
            return result
    last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit code {proc.returncode}")
    raise HwcError(f"measurement subprocess failed: {last.strip()[:300]}")


def _child_main(argv: list[str]) -> int:
    args = json.loads(Path(argv[0]).read_text())
    out = Path(args["out"])
    try:
        result = _child(args)
    except HwcError as e:
        result = {"error": str(e)}
    out.write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- public entry points


def _emulation_hint(target: Target) -> str | None:
    if not target.emulation:
        return None
    # looked up as text, not imported: another module owns emulation and importing it
    # here would tie profiling to its dependencies
    emulate = Path(__file__).with_name("emulate.py")
    try:
        available = re.search(r"^def run_emulated\(", emulate.read_text(), re.MULTILINE) is not None
    except OSError:
        available = False
    if not available:
        return None
    return (f"a functional run under {target.emulation} is available via hwcompress.profile.emulate.run_emulated; "
            "its timings are emulator time, not device latency")


def _budgets(target: Target, latency: float | None, memory: int | None, storage: int | None) -> dict[str, Any]:
    def fits(v: float | None, budget: float) -> bool | None:
        return None if v is None else bool(v <= budget)

    return {
        "latency_budget_ms": target.latency_budget_ms, "memory_budget_bytes": target.memory_budget_bytes,
        "storage_budget_bytes": target.storage_budget_bytes,
        "fits_latency": fits(latency, target.latency_budget_ms), "fits_memory": fits(memory, target.memory_budget_bytes),
        "fits_storage": fits(storage, target.storage_budget_bytes),
    }


def measure_artifact(backend: str, path: Path, threads: int, runs: int = 300, warmup: int = 50,
                     top: int = 10, precision: str | None = None) -> Measurement:
    """Time an exported streaming artifact here, in a fresh subprocess (median_ms, p90_ms,
    peak_memory_bytes, per-layer times where the runtime has a profiler), its activations at
    `precision` (None: the runtime's default)."""
    load_before = _load_avg()
    result = _run_child(backend, Path(path), threads, runs, warmup, top, precision)
    result.update({"latency_source": "measured", "host": {**host_info(), "load_avg": load_before,
                                                          "load_avg_after": _load_avg()}})
    return Measurement.from_json(result)


def profile_artifact(path: str | os.PathLike[str], target: Target | str, backend: str | None = None,
                     runs: int = 500, warmup: int = 50, top: int = 10, activations: str | None = None) -> dict[str, Any]:
    """Per-hop streaming latency of an exported artifact (.onnx, OpenVINO .xml, .tflite) on
    `target`, timed here exactly as `measure_local` times its own export (fresh subprocess, the
    target's threads), so the figure compares with benchmark_app on the same file.

    The artifact fixes the runtime (from its suffix) and the weights (read from its contents).
    Only a target of this machine's arch is measured: an artifact carries no layer table for
    the roofline prediction, so another CPU gets a one-line error pointing at the model instead.
    """
    from hwcompress.export import ARTIFACT_KINDS, backend_for_artifact, canonical_name, get_backend
    from hwcompress.export.probe import stored_weights

    tg = load_target(target) if isinstance(target, (str, os.PathLike)) else target
    path = Path(path)
    name = backend_for_artifact(path)
    # the target's default when the file runs in the target's runtime; another runtime's own otherwise
    activations = target_activations(tg, activations) if name == tg.runtime else activations
    kind = ARTIFACT_KINDS[name]
    if runs < 1 or warmup < 0:
        raise HwcError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if backend is not None and canonical_name(backend) != name:
        raise HwcError(f"{path}: an {kind} runs in {name}, not in backend {canonical_name(backend)!r}; "
                       f"drop --backend, or export the model for {canonical_name(backend)}")
    if CAPABILITIES[name].microcontroller:
        return _profile_micro(path, tg, top, name)
    host = host_info()
    if tg.arch != host["arch"]:
        raise HwcError(f"{path}: target {tg.name} is {tg.arch} ({tg.cpu}) and this machine is {host['arch']}: an "
                       "artifact is measured only on the CPU it runs on, and the roofline prediction needs the model; "
                       "profile the model (.pt, .hwc, preset) for the prediction, or the model with --host on the device")
    # a missing, corrupt or foreign file fails here with the runtime's one-line reason, not in the child
    session = get_backend(name).load(path, threads=1, precision=activations)
    if session.frames != 1:
        t = "a dynamic T" if session.frames is None else f"T={session.frames}"
        raise HwcError(f"{path}: a whole-utterance {kind} ({t}); profile times one 10 ms hop per call: give the "
                       f"streaming export (hwcompress export --mode stream writes *-stream{path.suffix})")
    del session
    weights = stored_weights(path)
    files = artifact_files(path)
    result: dict[str, Any] = {
        "weights": weights or "unknown",
        "weights_source": "read from the artifact (integer weight ops / constant element types / tensor dtypes)",
        "target": tg.name, "model": str(path), "runtime": name, "runtime_version": runtime_version(name),
        "target_runtime": tg.runtime, "threads": tg.threads, "predicted_ms": None,
        "prediction": "none: an exported artifact carries no layer table; profile the model for the roofline figure",
    }
    if activations is not None:
        result["activations"] = activations
    if name != tg.runtime:
        result["note"] = (f"the artifact runs in {name}, target {tg.name} names {tg.runtime}: timed in {name} "
                          f"with the target's {tg.threads} thread(s)")
    load_before = _load_avg()
    measured = _run_child(name, path, tg.threads, runs, warmup, top, activations)
    host.update(load_avg=load_before, load_avg_after=_load_avg())
    artifact = {"path": str(path), "files": [str(f) for f in files], "bytes": sum(f.stat().st_size for f in files),
                "kept": True}
    result.update({
        "host": host,
        "device": {"cpu": host["cpu"], "arch": host["arch"], "where": "this machine"},
        "latency_source": "measured",
        "how": (f"{runs} streaming hops (T=1, state carried, synthetic speech-like spectra) after {warmup} warm-up "
                f"hops of the given artifact, each Session.run timed with time.perf_counter_ns in a fresh subprocess"),
        "latency_ms": measured["median_ms"],
        "artifact": artifact,
        **measured,
    })
    result.update(_budgets(tg, measured["median_ms"], measured["peak_memory_bytes"], artifact["bytes"]))
    return result


def _profile_micro(path: Path, tg: Target, top: int, name: str) -> dict[str, Any]:
    """A TFLite Micro file on a microcontroller target: no such CPU is attached, so the latency is
    the per-op cycle prediction of this very file (profile/mcu.py), and the memory is the tensor
    arena measured in the real TFLM interpreter."""
    from hwcompress.export import get_backend
    from hwcompress.profile.mcu import predict_tflm

    if tg.runtime != name or not tg.cycles:
        raise HwcError(f"{path}: a TFLite Micro file runs on a microcontroller target (runtime tflite-micro with a "
                       f"[cycles] table, e.g. cortex-m7), not on {tg.name} ({tg.runtime})")
    session = get_backend(name).load(path)
    p = predict_tflm(path.read_bytes(), tg)
    size = path.stat().st_size
    rows = sorted(p["layers"], key=lambda r: -r["cycles"])[:top]
    result: dict[str, Any] = {
        "weights": "int8", "note": "int16 activations (16x8)" + (f"; {len(session.lut_layers)} weight tensors "
                                                                  "LUT-encoded, decoded every invoke" if session.lut_layers else ""),
        "weights_source": "read from the artifact", "target": tg.name, "model": str(path), "runtime": name,
        "runtime_version": runtime_version(name), "target_runtime": tg.runtime, "threads": tg.threads,
        "predicted_ms": None, "prediction": "per-op cycle model of this file (below)",
        "latency_source": "predicted", "latency_ms": p["latency_ms"], "how": p["how"],
        "reason": f"per-op cycles of this file at {p['clock_mhz']:g} MHz: {tg.cpu} is not attached",
        "host": {}, "device": {"cpu": tg.cpu, "arch": tg.arch, "where": "not attached"},
        "artifact": {"path": str(path), "files": [str(path)], "bytes": size, "kept": True},
        "peak_memory_bytes": session.arena_bytes,
        "peak_memory_method": (f"measured: TFLite Micro arena, smallest that runs (host TFLM interpreter); weights stay "
                               f"in the {size} B file (flash)"),
        "per_op": p, "lut_layers": session.lut_layers,
        "layers_source": f"PREDICTED per-op cycles, the {len(rows)} costliest of {p['ops']} operators",
        "layers": [{"name": f"#{r['index']} {r['op']}", "type": f"{r['precision']} {r['figure']}", "ms": r["ms"],
                    "share": r["cycles"] / p["cycles"]} for r in rows],
    }
    result.update(_budgets(tg, p["latency_ms"], session.arena_bytes, size))
    return result


def _export(model: Any, backend: str, out_dir: Path, weights: str = "fp32") -> dict[str, Any]:
    from hwcompress.export import get_backend

    path = get_backend(backend).export(model, out_dir, mode="stream", weights=weights)
    files = artifact_files(path)
    return {"path": str(path), "files": [str(f) for f in files], "bytes": sum(f.stat().st_size for f in files)}


def target_activations(target: Target, activations: str | None) -> str:
    """The activation precision to run `target` at: `activations` if the target's device has it
    (its `activations` list), else one line naming what it offers; None: the target's default."""
    if activations is None:
        return target.activations[0]
    if activations not in target.activations:
        raise HwcError(f"target {target.name} runs {', '.join(target.activations)} activations, not {activations!r} "
                       f"({target.cpu})")
    return activations


def measure_local(model: Any, target: Target | str, backend: str | None = None, runs: int = 500, warmup: int = 50,
                  out_dir: str | os.PathLike[str] | None = None, top: int = 10,
                  export_when_predicted: bool = False, weights: str = "fp32",
                  activations: str | None = None) -> dict[str, Any]:
    """Per-hop streaming latency of `model` (SEModel or `load_model` spec) on `target`.

    Measured here when the target's arch is this machine's and its runtime (or `backend`)
    runs here; otherwise the roofline prediction, labelled "predicted" with a `reason`.
    The artifact is written to `out_dir` (kept) or a temporary folder (removed; `kept`
    says which). `export_when_predicted` also exports for unmeasured targets, to report
    the artifact size against the storage budget (slow for LiteRT: a converter run).
    """
    from hwcompress.export import is_artifact
    from hwcompress.models.io import load_model
    from hwcompress.profile.latency_model import predict_latency

    if isinstance(model, (str, os.PathLike)) and is_artifact(model):
        # already exported: nothing to export, the file fixes runtime and weights
        if weights != "fp32" or out_dir is not None:
            raise HwcError(f"{model}: an exported artifact keeps the weights and place it was exported with; "
                           "weights and out_dir apply when a model is exported for profiling")
        return profile_artifact(model, target, backend=backend, runs=runs, warmup=warmup, top=top,
                                activations=activations)
    tg = load_target(target) if isinstance(target, (str, os.PathLike)) else target
    activations = target_activations(tg, activations)
    net = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    if runs < 1 or warmup < 0:
        raise HwcError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if backend is not None:
        from hwcompress.export import canonical_name

        backend = canonical_name(backend)  # aliases (ort, ov, tflite) and unknown names fail early
    runtime = backend or tg.runtime
    host = host_info()
    from hwcompress.export import WEIGHT_BITS

    prediction = predict_latency(net, tg, WEIGHT_BITS[weights])
    result: dict[str, Any] = {
        "weights": weights,
        "target": tg.name,
        "model": str(model) if isinstance(model, (str, os.PathLike)) else getattr(net, "arch", type(net).__name__),
        "runtime": runtime,
        "target_runtime": tg.runtime,
        "threads": tg.threads,
        "activations": activations,
        "host": host,
        "predicted_ms": prediction.latency_ms,
    }

    reason = None
    if tg.arch != host["arch"]:
        reason = (f"target arch {tg.arch} ({tg.cpu}) is not this machine's {host['arch']}: a local run would time "
                  "this host's cores, not the device's, so the latency is the roofline prediction")
    elif runtime not in RUNTIME_BACKENDS:
        reason = f"runtime {runtime!r} has no local backend (choose one of {', '.join(RUNTIME_BACKENDS)})"
    if reason is not None:
        artifact = None
        if export_when_predicted and runtime in RUNTIME_BACKENDS:
            with tempfile.TemporaryDirectory(prefix="hwc-profile-") as tmp:
                artifact = _export(net, RUNTIME_BACKENDS[runtime], Path(out_dir) if out_dir else Path(tmp), weights)
                artifact["kept"] = out_dir is not None
        result.update({
            "runtime_version": tg.runtime_version,
            "device": {"cpu": tg.cpu, "arch": tg.arch, "where": "target device (not attached; predicted)"},
            "latency_source": "predicted", "reason": reason, "how": prediction.how,
            "latency_ms": prediction.latency_ms, "median_ms": prediction.latency_ms,
            "p90_ms": None, "mean_ms": None, "min_ms": None, "max_ms": None, "runs": 0,
            "artifact": artifact, "peak_memory_bytes": None, "peak_memory_method": None,
            "layers": [{"name": r["name"], "type": r["kind"], "ms": r["ms"],
                        "share": r["ms"] / prediction.latency_ms if prediction.latency_ms else 0.0}
                       for r in sorted(prediction.layers, key=lambda r: r["ms"], reverse=True)[:top]],
            "layers_source": "roofline prediction per weight layer (predicted, not measured)",
        })
        hint = _emulation_hint(tg)
        if hint:
            result["emulation"] = hint
        result.update(_budgets(tg, prediction.latency_ms, None, artifact["bytes"] if artifact else None))
        return result

    from hwcompress.export import canonical_name, get_backend

    name = canonical_name(runtime)
    get_backend(name)  # a missing runtime fails here with the backend's own install hint
    result["runtime"] = name
    result["runtime_version"] = runtime_version(name)
    with tempfile.TemporaryDirectory(prefix="hwc-profile-") as tmp:
        artifact = _export(net, name, Path(out_dir) if out_dir else Path(tmp), weights)
        artifact["kept"] = out_dir is not None
        load_before = _load_avg()
        measured = _run_child(name, Path(artifact["path"]), tg.threads, runs, warmup, top,
                              activations if name == tg.runtime else None)
    host["load_avg_after"] = _load_avg()
    host["load_avg"] = load_before
    result.update({
        "device": {"cpu": host["cpu"], "arch": host["arch"], "where": "this machine"},
        "latency_source": "measured",
        "how": (f"{runs} streaming hops (T=1, state carried, synthetic speech-like spectra) after {warmup} warm-up "
                f"hops, each Session.run timed with time.perf_counter_ns in a fresh subprocess"),
        "latency_ms": measured["median_ms"],
        "artifact": artifact,
        **measured,
    })
    result.update(_budgets(tg, measured["median_ms"], measured["peak_memory_bytes"], artifact["bytes"]))
    return result


# ---------------------------------------------------------------- OpenVINO benchmark_app


def _benchmark_app_command() -> list[str]:
    # prefer the console script of this very environment, then PATH, then the module
    local = Path(sys.executable).parent / "benchmark_app"
    if local.is_file():
        return [str(local)]
    found = shutil.which("benchmark_app")
    if found:
        return [found]
    if importlib.util.find_spec("openvino.tools.benchmark") is not None:
        return [sys.executable, "-c", "import sys; from openvino.tools.benchmark.main import main; sys.exit(main())"]
    raise HwcError("OpenVINO benchmark_app not found (neither the console script nor openvino.tools.benchmark)")


def _ir_shapes(xml_path: Path) -> str:
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    parts = []
    for p in model.inputs:
        ps = p.get_partial_shape()
        if not ps.is_static:
            raise HwcError(f"{xml_path}: input {p.get_any_name()} has a dynamic shape; profile a streaming (T=1) IR")
        parts.append(f"{p.get_any_name()}[{','.join(str(d) for d in ps.to_shape())}]")
    return ",".join(parts)


def parse_benchmark_app(text: str) -> dict[str, Any]:
    """Latency figures from benchmark_app's final report (the block after `Latency:`)."""
    # benchmark_app switches to microseconds below 1 ms ("Median: 842.11 us")
    unit = {"ms": 1.0, "us": 1e-3, "s": 1e3}
    value = r":\s*([\d.]+)\s*(ms|us|s)\b"
    # the last "Latency:" that opens a block with a Median line: warnings may mention latency too
    blocks = [text[m.start():] for m in re.finditer(r"Latency:", text)]
    block = next((b for b in reversed(blocks) if re.search("Median" + value, b)), "")
    out: dict[str, Any] = {}
    for key in ("Median", "Average", "Min", "Max"):
        m = re.search(key + value, block)
        if m:
            out[f"{key.lower()}_ms"] = float(m.group(1)) * unit[m.group(2)]
    m = re.search(r"Count:\s*(\d+)\s*iterations", text)
    if m:
        out["iterations"] = int(m.group(1))
    m = re.search(r"INFERENCE_NUM_THREADS:\s*(\d+)", text)
    if m:
        out["threads_reported"] = int(m.group(1))
    m = re.search(r"INFERENCE_PRECISION_HINT:\s*(.+)", text)
    if m:
        out["precision_reported"] = m.group(1).strip()
    return out


def benchmark_app_latency(xml_path: str | os.PathLike[str], threads: int, niter: int = 500,
                          precision: str = "f32", timeout: float = 1800) -> dict[str, Any]:
    """Run OpenVINO's benchmark_app on `xml_path` like `measure_local` runs it: CPU,
    LATENCY hint, 1 stream, 1 sync request, `threads` threads, `precision` inference
    precision, the IR's static input shapes. Returns median/average/min/max ms and what
    benchmark_app reported back (iterations, threads, precision), plus the command.

    benchmark_app refuses `-nthreads`/`-nstreams` next to `-hint latency` (a UI rule of
    the tool, not of OpenVINO), so the settings go in through `-load_config`.
    """
    xml = Path(xml_path)
    if not xml.is_file():
        raise HwcError(f"{xml}: no such OpenVINO IR")
    with tempfile.TemporaryDirectory(prefix="hwc-bench-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"CPU": {
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
            # the CPU plugin otherwise picks bf16 on AVX512-BF16 hosts, while our session runs f32
            "INFERENCE_PRECISION_HINT": precision,
        }}))
        cmd = [*_benchmark_app_command(), "-m", str(xml), "-d", "CPU", "-load_config", str(config), "-api", "sync",
               "-nireq", "1", "-niter", str(niter), "-shape", _ir_shapes(xml)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise HwcError(f"benchmark_app did not finish within {timeout:g} s") from None
    parsed = parse_benchmark_app(proc.stdout + proc.stderr)
    if proc.returncode != 0 or "median_ms" not in parsed:
        lines = (proc.stdout + proc.stderr).splitlines()
        err = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
        last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
        what = err[-1] if err else f"exit code {proc.returncode}, no latency report; last line: {last}"
        raise HwcError(f"benchmark_app failed: {what.strip()[:300]}")
    return {**parsed, "threads": threads, "precision": precision, "command": cmd}


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
