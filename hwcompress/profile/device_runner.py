#!/usr/bin/env python3
"""Run a .tflite model on the machine this file is on and time it: a self-contained script.

Copied as a single file onto a device (over SSH) or into the emulated arm64 root
(`hwcompress.profile.emulate`), so it imports only the standard library, numpy and
whichever TFLite interpreter is installed there: `ai_edge_litert.interpreter` first,
then `tflite_runtime.interpreter`. Never import hwcompress here.

    python3 device_runner.py MODEL.tflite INPUTS.npz OUT_DIR [--runs N] [--warmup W]
        [--threads T] [--carry auto|none|IN=OUT,...] [--latency-source device]
    python3 - --probe < device_runner.py     # what this machine is and runs: one JSON line

`--probe` (the script fed on stdin, nothing copied) prints the machine, its CPU model, load,
Python, numpy and the TFLite interpreter it would use, or fails when it has none: a device
pool (`hwcompress.profile.pool`) checks each host with it before timing anything there.

INPUTS.npz holds one array per model input (named as the input of the model's first
signature, or of the plain input tensor when the model has no signature). An array
shaped like the input is fed to every invoke; an array with one more leading axis of
length N is a sequence, element t fed to invoke t. "Carried" inputs take the previous
invoke's output instead (the npz holds their initial value): with `--carry auto`, input
`<base>_<k>` is fed by output `<base>_out_<k>` and input `<x>` by output `<x>_out`,
so a streaming model's `state_i` follows `state_out_i`.

Writes OUT_DIR/outputs.npz (every output stacked over the N recorded invokes:
[N, *shape]) and OUT_DIR/info.json (per-invoke latency median/p90 in ms, runtime name
and version, threads, machine, CPU model, load average, peak memory). `--warmup` invokes
happen first, from the initial inputs, and are neither recorded nor timed; the recorded
sequence then restarts from the initial state. One timed invoke = the signature-runner call: copy inputs in,
invoke, copy outputs out (what a streaming app pays per hop), tensors set by index on the
allocated interpreter (the signature runner would resize and re-allocate on every call).
The peak memory is what loading the model and the warm-up invokes add to the process
(Linux: VmHWM after them minus VmRSS after the imports, the peak reset in between), taken
before the recorded outputs pile up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

import numpy as np

FORMAT = 1


def load_interpreter_class():
    """(Interpreter class, runtime name, runtime version)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert", _dist_version("ai-edge-litert", "ai_edge_litert")
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime", _dist_version("tflite-runtime", "tflite_runtime")
    except ImportError:
        pass
    raise SystemExit("device_runner: no TFLite interpreter: pip install ai-edge-litert (or tflite-runtime)")


def _dist_version(dist: str, module: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        mod = sys.modules.get(module)
        return str(getattr(mod, "__version__", "unknown"))


class Model:
    """Named inputs and outputs of a model, through its first signature when it has one."""

    def __init__(self, interpreter_cls, path: str, threads: int) -> None:
        self.interpreter = interpreter_cls(model_path=path, num_threads=threads)
        signatures = self.interpreter.get_signature_list()
        if signatures:
            self.signature = next(iter(signatures))
            self.runner = self.interpreter.get_signature_runner(self.signature)
            ins, outs = self.runner.get_input_details(), self.runner.get_output_details()
            self.inputs = {n: (tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])) for n, d in ins.items()}
            self.outputs = {n: (tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])) for n, d in outs.items()}
            if getattr(self.runner, "_subgraph_index", 0) == 0:
                # the runner resizes every input and re-allocates on each call; shapes never
                # change here, so tensors are set by index on the allocated interpreter (a live
                # runner would make the interpreter refuse set_tensor/invoke: drop it)
                self._in, self._out, self.runner = ins, outs, None
                self.interpreter.allocate_tensors()
        else:
            self.signature = None
            self.runner = None
            self.interpreter.allocate_tensors()
            self._in = {d["name"]: d for d in self.interpreter.get_input_details()}
            self._out = {d["name"]: d for d in self.interpreter.get_output_details()}
            self.inputs = {n: (tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])) for n, d in self._in.items()}
            self.outputs = {n: (tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])) for n, d in self._out.items()}

    def __call__(self, feeds: dict) -> dict:
        if self.runner is not None:
            return self.runner(**feeds)
        for name, value in feeds.items():
            self.interpreter.set_tensor(self._in[name]["index"], value)
        self.interpreter.invoke()
        return {n: self.interpreter.get_tensor(d["index"]) for n, d in self._out.items()}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo ("model name" on x86, "Model"/"Hardware" on Arm boards).
    The same lookup as hwcompress.profile.measure.host_cpu, written again: this file imports
    nothing of hwcompress."""
    try:
        with open("/proc/cpuinfo", errors="replace") as fh:
            text = fh.read()
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or "unknown"


def load_avg() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            m = re.search(rf"^{key}:\s*(\d+)\s*kB", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak() -> bool:
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def probe() -> dict:
    """What this machine is and would run a model with (raises SystemExit without an interpreter)."""
    _, runtime, runtime_version = load_interpreter_class()
    return {"format": FORMAT, "machine": platform.machine(), "platform": platform.platform(), "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(), "load_avg": load_avg(), "python": platform.python_version(),
            "numpy": np.__version__, "runtime": {"name": runtime, "version": runtime_version}}


def carry_pairs(spec: str, inputs: list, outputs: list) -> dict:
    """{input name: output name feeding it on the next invoke}."""
    if spec == "none":
        return {}
    if spec == "auto":
        pairs = {}
        for name in inputs:
            m = re.fullmatch(r"(.*)_(\d+)", name)
            for cand in ([f"{m.group(1)}_out_{m.group(2)}"] if m else []) + [f"{name}_out"]:
                if cand in outputs:
                    pairs[name] = cand
                    break
        return pairs
    pairs = {}
    for item in filter(None, spec.split(",")):
        src, sep, dst = item.partition("=")
        if not sep or src not in inputs or dst not in outputs:
            raise SystemExit(f"device_runner: bad --carry pair {item!r} (inputs {inputs}, outputs {outputs})")
        pairs[src] = dst
    return pairs


def _percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run(model_path: str, inputs_path: str, out_dir: str, runs: int, warmup: int = 0,
        threads: int = 1, carry: str = "auto", latency_source: str = "device") -> dict:
    if runs < 1:
        raise SystemExit("device_runner: --runs must be at least 1")
    interpreter_cls, runtime, runtime_version = load_interpreter_class()
    load_before = load_avg()
    reset = _reset_peak()
    base_kib = _status_kib("VmRSS")
    t0 = time.perf_counter()
    model = Model(interpreter_cls, model_path, threads)
    load_ms = (time.perf_counter() - t0) * 1e3

    with np.load(inputs_path) as data:
        given = {k: data[k] for k in data.files}
    missing = sorted(set(model.inputs) - set(given))
    unknown = sorted(set(given) - set(model.inputs))
    if missing or unknown:
        raise SystemExit(f"device_runner: inputs.npz does not match the model: missing {missing}, unknown {unknown}"
                         f" (model inputs: {sorted(model.inputs)})")
    pairs = carry_pairs(carry, list(model.inputs), list(model.outputs))
    sequences, constants = {}, {}
    for name, value in given.items():
        shape, dtype = model.inputs[name]
        value = np.ascontiguousarray(value, dtype=dtype)
        if value.shape == shape:
            constants[name] = value
        elif value.ndim == len(shape) + 1 and value.shape[1:] == shape and name not in pairs:
            if value.shape[0] != runs:
                raise SystemExit(f"device_runner: sequence input {name!r} has {value.shape[0]} steps, --runs is {runs}")
            sequences[name] = value
        else:
            raise SystemExit(f"device_runner: input {name!r} has shape {value.shape}, the model wants {shape}"
                             + ("" if name in pairs else f" (or [{runs}, *{shape}] for a sequence)"))

    def feeds_at(t: int, carried: dict) -> dict:
        feeds = dict(constants)
        feeds.update({n: v[t] for n, v in sequences.items()})
        feeds.update(carried)
        return feeds

    for _ in range(warmup):
        model(feeds_at(0, {}))
    hwm_kib = _status_kib("VmHWM")
    peak = (hwm_kib - base_kib) * 1024 if reset and base_kib is not None and hwm_kib is not None else None

    carried: dict = {}
    recorded = {n: [] for n in model.outputs}
    times = []
    for t in range(runs):
        feeds = feeds_at(t, carried)
        start = time.perf_counter()
        result = model(feeds)
        times.append((time.perf_counter() - start) * 1e3)
        for name in recorded:
            recorded[name].append(np.array(result[name], copy=True))
        carried = {i: np.array(result[o], copy=True) for i, o in pairs.items()}

    os.makedirs(out_dir, exist_ok=True)
    np.savez(os.path.join(out_dir, "outputs.npz"), **{n: np.stack(v) for n, v in recorded.items()})
    info = {
        "format": FORMAT,
        "latency_source": latency_source,
        "latency_ms": {
            "median": statistics.median(times),
            "p90": _percentile(times, 0.9),
            "mean": statistics.fmean(times),
            "min": min(times),
            "max": max(times),
        },
        "latency_scope": "one signature-runner call per invoke: inputs in, invoke, outputs out",
        "runs": runs,
        "warmup": warmup,
        "load_ms": load_ms,
        "runtime": {"name": runtime, "version": runtime_version},
        "threads": threads,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "load_avg": load_before,
        "load_avg_after": load_avg(),
        "peak_memory_bytes": peak,
        "peak_memory_method": ("VmHWM after loading the model and the warm-up invokes minus VmRSS after the imports "
                               "(/proc/self/status, peak reset with clear_refs 5), in the runner's process"
                               if peak is not None else "not available (needs Linux /proc)"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "signature": model.signature,
        "inputs": {n: list(s) for n, (s, _) in model.inputs.items()},
        "outputs": {n: list(s) for n, (s, _) in model.outputs.items()},
        "carry": pairs,
    }
    with open(os.path.join(out_dir, "info.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    return info


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("inputs", nargs="?")
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--probe", action="store_true", help="print what this machine is and runs (JSON), run nothing")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--carry", default="auto", help="auto, none, or IN=OUT pairs separated by commas")
    ap.add_argument("--latency-source", default="device", help="label stored in info.json (device, emulated)")
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return 0
    if args.out_dir is None:
        ap.error("MODEL, INPUTS and OUT_DIR are required (or --probe)")
    info = run(args.model, args.inputs, args.out_dir, args.runs, args.warmup, args.threads, args.carry,
               args.latency_source)
    lat = info["latency_ms"]
    print(f"{info['runtime']['name']} {info['runtime']['version']} on {info['machine']}, {args.threads} thread(s): "
          f"median {lat['median']:.3f} ms, p90 {lat['p90']:.3f} ms over {args.runs} invokes ({info['latency_source']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
