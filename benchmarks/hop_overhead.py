"""What a streaming hop costs beyond the runtime's own work, per backend, before and after the
sessions kept their state in place (issue 15 point 5), and the roofline again.

    .venv/bin/python benchmarks/hop_overhead.py --out benchmarks/hop_overhead.md

The shipped default CRN (dense, and 75% of every structured group pruned one-shot and shrunk, as
the fit's floor probe makes it), exported with int8 weights to onnxruntime, OpenVINO and LiteRT.
All sessions live in one process and are timed in interleaved rounds (side by side), each over
--hops hops of speech-like frames, at the target's threads (generic-onnx, x86-openvino,
x86-litert). Per artifact, four ways to run a hop:

  per-call   `session.run(frame, state)` with `fast_path = False`: each runtime's per-call API
             (onnxruntime `InferenceSession.run` with a feed dict; OpenVINO `infer(dict)`;
             LiteRT's signature runner, which resizes and re-allocates every call);
  run        `session.run(frame, state)` on the fast path: bound or shared buffers, but the state
             still handed to the caller and back every hop (copies in and out);
  hop        `session.hop(frame)`: the state stays in the runtime's buffers (onnxruntime IOBinding
             ping-pong pair, OpenVINO's two requests on shared tensors, LiteRT tensors set by index);
  bare       the runtime's own call alone, inputs untouched (`run_with_iobinding`, `infer()`,
             `invoke()`): the floor a Python caller cannot go below.

Before this change `profile` and `fit` timed onnxruntime and LiteRT on the per-call path and
OpenVINO on the run path; now all three on the hop path. Achieved / attainable uses
benchmarks/peers.py's roofline (ceilings measured in this run by tools/measure_host.py).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from benchmarks._reading import write_keeping_reading  # noqa: E402

TARGETS = {"onnxruntime": "generic-onnx", "openvino": "x86-openvino", "litert": "x86-litert"}
MODES = ("per-call", "run", "hop", "bare")


def models() -> dict:
    from hwcompress.compress.prune import apply_masks, structured_masks
    from hwcompress.compress.shrink import shrink
    from hwcompress.models.io import load_model

    dense = load_model("default").eval()
    pruned = copy.deepcopy(dense)
    apply_masks(pruned, structured_masks(pruned, 0.75))
    return {"dense": dense, "75% pruned": shrink(pruned).eval()}


def export_all(work: Path) -> list[dict]:
    """One int8 artifact per (model, backend), cached under `work`."""
    from hwcompress.export import get_backend
    from hwcompress.models.cost import total_macs

    rows = []
    for name, model in models().items():
        for backend, target in TARGETS.items():
            out = work / f"{name.split('%')[0].replace(' ', '')}-{backend}"
            be = get_backend(backend)
            found = sorted(out.glob(f"*{be.suffix}")) if out.is_dir() else []
            if found:
                path = found[0]
            else:
                out.mkdir(parents=True, exist_ok=True)
                print(f"exporting {name} to {backend} int8", file=sys.stderr, flush=True)
                path = be.export(model, out, "stream", weights="int8")
            files = [f for f in out.iterdir() if f.suffix in (be.suffix, ".bin")]
            rows.append({"model": name, "backend": backend, "target": target, "path": path,
                         "bytes": sum(f.stat().st_size for f in files), "macs": total_macs(model),
                         "params": sum(p.numel() for p in model.parameters())})
    return rows


def bare_call(session, frames: np.ndarray):
    """The runtime's own call with every input already in place (no copies, no Python checks):
    a few real hops first, so the inputs it repeats are a speech frame and a live state (zero
    spectra would run the recurrent state into slow denormals)."""
    for frame in frames[:8]:
        session.hop(frame)
    name = type(session).__name__
    if name == "OnnxSession":
        binding = session._bindings[session._cur]
        return lambda: session.sess.run_with_iobinding(binding)
    if name == "OpenVinoSession":
        return session._requests[session._cur].infer
    if name == "LiteRtSession":
        return session.interpreter.invoke
    raise SystemExit(f"no bare call for {name}")


def timers(row: dict, frames: np.ndarray) -> dict:
    from hwcompress.export import get_backend
    from hwcompress.targets import load_target

    be, threads = get_backend(row["backend"]), load_target(row["target"]).threads
    percall, fast, hopper, bare = (be.load(row["path"], threads=threads) for _ in range(4))
    percall.fast_path = False
    states = {"per-call": None, "run": None}
    n = len(frames)

    def run_with(session, key):
        def step(i):
            _, states[key] = session.run(frames[i % n], states[key])
        return step

    call = bare_call(bare, frames)
    # the sessions own the buffers their runtimes write into (bound by pointer or shared):
    # they must outlive every call, so the steps hold them
    keep = (percall, fast, hopper, bare)
    return {"_sessions": keep, "per-call": run_with(percall, "per-call"), "run": run_with(fast, "run"),
            "hop": lambda i: hopper.hop(frames[i % n]), "bare": lambda i: call()}


def time_rounds(steps: dict, hops: int, rounds: int, warmup: int = 50) -> dict:
    """Median over rounds of each timer's median hop (ms); timers interleave within each round."""
    import gc

    for step in steps.values():
        for i in range(warmup):
            step(i)
    medians = {k: [] for k in steps}
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for key, step in steps.items():
                t = np.empty(hops, np.int64)
                for i in range(hops):
                    t0 = clock()
                    step(i)
                    t[i] = clock() - t0
                medians[key].append(float(np.median(t)) / 1e6)
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in medians.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "hop_overhead.md")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "hop_overhead")
    ap.add_argument("--hops", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    from hwcompress.export.probe import speech_like_frames
    from hwcompress.profile.measure import runtime_version
    from peers import L3_BYTES, Row, host_ceilings, roofline  # benchmarks/peers.py: the same formula

    rows = export_all(args.work)
    frames = speech_like_frames(64)
    steps, alive = {}, []
    for row in rows:
        made = timers(row, frames)
        alive.append(made.pop("_sessions"))
        for mode, step in made.items():
            steps[(row["model"], row["backend"], mode)] = step
    print(f"timing {len(steps)} ways side by side: {args.rounds} rounds x {args.hops} hops", file=sys.stderr, flush=True)
    ms = time_rounds(steps, args.hops, args.rounds)
    peaks = host_ceilings()
    from hwcompress.targets import load_target

    lines = ["# Per-hop overhead: per-call, run, hop (state in place) and the bare runtime call", "",
             "Command: `.venv/bin/python benchmarks/hop_overhead.py --out benchmarks/hop_overhead.md`"
             f" (--hops {args.hops} --rounds {args.rounds}).", "",
             f"Measured on this machine ({platform.processor() or platform.machine()}, {platform.system()}), one process, "
             "all ways timed in interleaved rounds; each figure is the median over rounds of the median hop. "
             "Runtimes: " + ", ".join(f"{b} {runtime_version(b)}" for b in TARGETS) + "; threads: the target's ("
             + ", ".join(f"{t} {load_target(t).threads}" for t in TARGETS.values()) + "). Model: the shipped default "
             "CRN, int8 weights; '75% pruned' = 75% of every structured group removed one-shot (no fine-tuning: "
             "latency only).", "",
             "| model | backend | bytes | per-call ms | run ms | hop ms | bare ms | hop / per-call | overhead left (hop - bare) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        m = {mode: ms[(row["model"], row["backend"], mode)] for mode in MODES}
        lines.append(f"| {row['model']} | {row['backend']} | {row['bytes']} | {m['per-call']:.3f} | {m['run']:.3f} | "
                     f"{m['hop']:.3f} | {m['bare']:.3f} | {m['hop'] / m['per-call']:.2f}x | {m['hop'] - m['bare']:.3f} ms |")
        row["ms"] = m
    before = {"onnxruntime": "per-call", "openvino": "run", "litert": "per-call"}
    lines += ["", "## Roofline: achieved / attainable, before (the path profile timed) and after (hop)", "",
              "Attainable = benchmarks/peers.py's `roofline`: max(2 x MACs / int8 GEMM peak, weight bytes / read "
              "rate), ceilings from tools/measure_host.py in this run: "
              + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items() if isinstance(v, (int, float))) + ".", "",
              "| model | backend | MACs / hop | bound | attainable ms | before: path, ms, achieved | after: hop ms, achieved | bare: achieved |",
              "| --- | --- | ---: | --- | ---: | --- | --- | ---: |"]
    for row in rows:
        r = Row(target=row["target"], name=row["model"], library="hwcompress", path=str(row["path"]), weights="int8",
                macs=row["macs"], bytes=row["bytes"], latency={"median_ms": row["ms"]["hop"]})
        rf = roofline(r, load_target(row["target"]).threads, peaks)
        att, m, b = rf["attainable_ms"], row["ms"], before[row["backend"]]
        lines.append(f"| {row['model']} | {row['backend']} | {row['macs'] / 1e6:.1f} M | {rf['bound']} | {att:.3f} | "
                     f"{b}, {m[b]:.3f} ms, {att / m[b]:.0%} | {m['hop']:.3f} ms, {att / m['hop']:.0%} | "
                     f"{att / m['bare']:.0%} |")
    assert L3_BYTES > 0
    text = write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
