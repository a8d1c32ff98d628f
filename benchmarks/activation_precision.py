"""Activation precision as a target capability (issue 15, point 3): the OpenVINO CPU plugin runs
the same IR with f32 or bf16 activations on this AVX512-BF16 host. Latency side by side, parity
against torch and quality on the real-speech test split, for the dense default CRN and a
compressed `.hwc`, each at fp32 and int8 weights.

    .venv/bin/python benchmarks/activation_precision.py --hwc runs/fit-rpi4-mixed/model.hwc \\
        --out benchmarks/activation_precision.md

Latency: this x86 host, the x86-openvino target's threads, one process; each round times every
(file, precision) session for --hops hops in turn and the table gives the median over rounds of
the median hop (MEASURED here, not a device). bf16 is asked for explicitly (INFERENCE_PRECISION_HINT);
hwcompress never leaves it to the plugin's default, which on this CPU is bf16.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._reading import write_keeping_reading  # noqa: E402

METRICS = ("pesq_wb", "stoi", "si_sdr")
PRECISIONS = ("f32", "bf16")


def _timed(sessions: dict, rounds: int, hops: int) -> dict:
    """Median over rounds of each session's median hop (ms), every session in turn each round."""
    from hwcompress.export.probe import speech_like_frames

    frames = speech_like_frames(hops)
    states = {k: None for k in sessions}
    for k, s in sessions.items():  # warm-up
        for f in frames[:30]:
            _, states[k] = s.run(f, states[k])
    per_round: dict = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            times = []
            for f in frames:
                t = time.perf_counter()
                _, states[k] = s.run(f, states[k])
                times.append(time.perf_counter() - t)
            per_round[k].append(statistics.median(times) * 1e3)
    return {k: statistics.median(v) for k, v in per_round.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hwc", type=Path, required=True, help="a compressed model (.hwc)")
    ap.add_argument("--template", default="default", help="the dense model the .hwc was compressed from")
    ap.add_argument("--items", type=int, default=20, help="real-speech test mixtures scored per session")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--hops", type=int, default=300)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.evaluate import evaluate_artifact
    from hwcompress.export import get_backend
    from hwcompress.export.check import check_parity
    from hwcompress.export.probe import artifact_bytes, runtime_version
    from hwcompress.models.io import load_model
    from hwcompress.targets import load_target

    target = load_target("x86-openvino")
    dense = load_model(args.template).eval()
    models = {"dense": dense, "compressed": load_model(str(args.hwc), template=dense).eval()}
    data = ensure_default_corpus()
    ov = get_backend("openvino")
    rows: dict[tuple[str, str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {(m, w): ov.export(net, Path(tmp) / f"{m}-{w}", "stream", weights=w)
                 for m, net in models.items() for w in ("fp32", "int8")}
        sessions = {(m, w, p): ov.load(path, threads=target.threads, precision=p)
                    for (m, w), path in files.items() for p in PRECISIONS}
        ms = _timed(sessions, args.rounds, args.hops)
        for (m, w, p), session in sessions.items():
            path = files[m, w]
            parity = check_parity(models[m], path, weights=w, mode="stream", enforce=False, session=session)
            t0 = time.time()
            ev = evaluate_artifact(path, data, "test", limit=args.items, dnsmos=False, threads=target.threads,
                                   precision=p)
            rows[m, w, p] = {"bytes": artifact_bytes(path), "ms": ms[m, w, p], "snr": parity.snr_db,
                             "n": ev["n"], "eval_s": time.time() - t0,
                             "quality": {k: ev["summary"]["overall"]["mean"][f"enhanced_{k}"] for k in METRICS},
                             "noisy": {k: ev["summary"]["overall"]["mean"][f"noisy_{k}"] for k in METRICS}}

    cmd = " ".join([".venv/bin/python", "benchmarks/activation_precision.py", *sys.argv[1:]])
    first = next(iter(rows.values()))
    q = lambda r: f"{r['pesq_wb']:.3f} | {r['stoi']:.4f} | {r['si_sdr']:.2f}"  # noqa: E731
    lines = [f"# Activation precision on OpenVINO: f32 vs bf16, dense and {args.hwc}", "",
             f"Command: `{cmd}`. OpenVINO {runtime_version('openvino')} CPU plugin, {target.threads} threads "
             f"(target x86-openvino), {platform.machine()} host ({target.cpu}), shared 2-core machine: latency "
             f"MEASURED here (median over {args.rounds} side-by-side rounds of the median of {args.hops} speech-like "
             f"hops, all eight sessions in one process), not on a device. Precision set by INFERENCE_PRECISION_HINT. "
             f"Parity: SNR of the runtime output against the model in torch (f32) on 50 speech-like hops. Quality: "
             f"the first {first['n']} mixtures of the real-speech test split, each session run hop by hop.", "",
             "| model | weights | activations | file B | latency ms | vs f32 | parity dB | PESQ-WB | STOI | SI-SDR dB | dPESQ-WB vs f32 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| noisy input | - | - | - | - | - | - | {q(first['noisy'])} | - |"]
    for (m, w, p), r in rows.items():
        base = rows[m, w, "f32"]
        lines.append(f"| {m} | {w} | {p} | {r['bytes']} | {r['ms']:.3f} | {r['ms'] / base['ms']:.2f}x | {r['snr']:.1f} | "
                     f"{q(r['quality'])} | {r['quality']['pesq_wb'] - base['quality']['pesq_wb']:+.3f} |")
    lines += ["", "Scoring took " + ", ".join(f"{m} {w} {p} {r['eval_s']:.0f} s" for (m, w, p), r in rows.items()) + "."]
    print(write_keeping_reading(args.out, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
