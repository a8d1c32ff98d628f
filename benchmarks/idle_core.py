"""Why one timing of a 2-thread runtime can differ 1.5x between two fits on this VM (the parallel fit
benchmark's x86-openvino floor): the same artifact timed round after round, with the other core
idle and with a light background process (busy 10 ms in every 100 ms, i.e. 10% of one core, as a
daemon's heartbeat or a parallel run's idle workers) running meanwhile; a 1-thread runtime beside it.

    .venv/bin/python benchmarks/idle_core.py [--model crn-small] [--rounds 4] [--runs 100]

Artifacts: the model dense and with 75% of every prunable group removed (the fit's floor), int8
weights, exported to OpenVINO (x86-openvino: 2 threads) and to onnxruntime (generic-onnx: 1
thread). Each round is one `measure_artifact` (a fresh subprocess; the median of --runs hops
after 50 warm-up hops), the way the fit times its calibration, floor and allocations; the
conditions alternate round by round so that drift hits both alike.

Writes benchmarks/idle_core.md with the command.
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# 10 ms busy, 90 ms asleep, forever: 10% of one core, in bursts, like a daemon's heartbeat
DUTY = "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.01:\n        pass\n    time.sleep(0.09)\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="crn-small")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "idle_core.md")
    args = ap.parse_args()

    import torch

    from hwcompress.compress.prune import apply_masks, structured_masks
    from hwcompress.compress.shrink import shrink
    from hwcompress.export.check import export_checked
    from hwcompress.export.probe import runtime_version
    from hwcompress.models.io import load_model
    from hwcompress.profile.measure import host_cpu, measure_artifact
    from hwcompress.search import allocate as alloc
    from hwcompress.targets import load_target

    model = load_model(args.model).eval()
    floor = copy.deepcopy(model)
    sizes = alloc.CostOracle(model, load_target("generic-onnx"), weight_bits=8).sizes
    apply_masks(floor, structured_masks(floor, {g: alloc.MAX_RATIO for g in sizes}))
    floor = shrink(floor)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hwc-idle-core-") as tmp:
        for target in ("x86-openvino", "generic-onnx"):
            tg = load_target(target)
            for label, net in (("dense", model), (f"floor ({alloc.MAX_RATIO:.0%} pruned)", floor)):
                folder = Path(tmp) / f"{target}-{label.split()[0]}"
                art = export_checked(net, tg.runtime, folder, ["stream"], weights="int8", stem="model",
                                     check=False, enforce=False)[0]
                times: dict[str, list[float]] = {"idle": [], "busy": []}
                for _ in range(args.rounds):
                    for cond in ("idle", "busy"):
                        spin = subprocess.Popen([sys.executable, "-c", DUTY]) if cond == "busy" else None
                        try:
                            m = measure_artifact(tg.runtime, Path(art.path), tg.threads, runs=args.runs, warmup=50, top=0)
                        finally:
                            if spin is not None:
                                spin.kill()
                                spin.wait()
                        times[cond].append(m.median_ms)
                        print(f"{target} {label} {cond}: {m.median_ms:.3f} ms", file=sys.stderr, flush=True)
                rows.append((target, tg.runtime, runtime_version(tg.runtime), tg.threads, label, times))

    cmd = "python benchmarks/idle_core.py" + "".join(
        f" --{k} {v}" for k, v in (("model", args.model), ("rounds", args.rounds), ("runs", args.runs))
        if v != ap.get_default(k))
    lines = ["# Round-to-round spread of one timing: 2-thread OpenVINO vs 1-thread onnxruntime, other core idle "
             "or lightly busy", "",
             f"Command: `{cmd}` ({host_cpu()}, {platform.machine()}, {__import__('os').cpu_count()} logical CPUs, "
             f"Python {platform.python_version()}, torch {torch.__version__}). Measured, this machine; each figure the "
             f"median of {args.runs} streaming hops after 50 warm-up hops in a fresh subprocess (`measure_artifact`, as "
             f"the fit times); {args.rounds} rounds per condition, alternating. *busy*: a background process running 10 ms "
             "in every 100 ms (10% of one core) during the round; *idle*: nothing else running.", "",
             "| target | runtime | threads | artifact | idle: median ms per round | busy: median ms per round | "
             "idle / busy (medians) | slowest / fastest round |", "| --- | --- | ---: | --- | --- | --- | ---: | ---: |"]
    for target, runtime, version, threads, label, times in rows:
        idle, busy = float(np.median(times["idle"])), float(np.median(times["busy"]))
        lines.append(f"| {target} | {runtime} {version} | {threads} | {label} | "
                     f"{', '.join(f'{x:.3f}' for x in times['idle'])} | {', '.join(f'{x:.3f}' for x in times['busy'])} | "
                     f"{idle / busy:.2f}x | {max(times['idle'] + times['busy']) / min(times['idle'] + times['busy']):.2f}x |")
    text = "\n".join(lines) + "\n"
    from _reading import write_keeping_reading  # benchmarks/, the script's own folder

    print(write_keeping_reading(args.table, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
