"""LiteRT weight widths side by side (issue 15): one `.hwc` exported to LiteRT with int8 weights,
with 4-bit FULLY_CONNECTED weights everywhere (int4), and with 4 bits only where the search chose
K <= 16 (mixed), all from the same fp32 conversion; bytes of each file, which width each layer's
weights are stored at (read back from the flatbuffer), latency per hop measured here, parity
against the `.hwc` in torch, and quality on the real-speech test split, each file run hop by hop
in the LiteRT interpreter.

    .venv/bin/python benchmarks/litert_int4.py --hwc runs/m7/fit-default/model.hwc \\
        --out benchmarks/litert_int4.md

Latency: LiteRT (XNNPACK) on this x86 host, 1 thread, one process; each round times every file
for --hops hops in turn (side by side) and the table gives the median over rounds of the median
hop. Emulated or device (Raspberry Pi 4) timings are not here: see the Reading section.
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
FORMS = ("int8", "int4", "mixed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hwc", type=Path, required=True, help="a compressed model (.hwc)")
    ap.add_argument("--template", default="default", help="the model the .hwc was compressed from")
    ap.add_argument("--items", type=int, default=20, help="real-speech test mixtures scored per file")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--hops", type=int, default=300)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.evaluate import evaluate_artifact
    from hwcompress.export import get_backend, run_stream  # noqa: F401
    from hwcompress.export import tflite
    from hwcompress.export._litert_convert import tensor_layers
    from hwcompress.export.check import check_parity
    from hwcompress.export.probe import runtime_version
    from hwcompress.models.cost import layer_paths
    from hwcompress.models.io import load_model

    model = load_model(str(args.hwc), template=load_model(args.template)).eval()
    ks = tflite.distinct_weights(model)
    be = get_backend("litert")
    data = ensure_default_corpus()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        src = be.export(model, Path(tmp), "stream", weights="fp32")
        convert_s = time.time() - t0
        scopes = tflite.mixed_scopes(src, model)
        for form in FORMS:
            dst = Path(tmp) / f"{form}.tflite"
            tflite.quantize(src, dst, form, scopes)
            rows[form] = {"path": dst, "bytes": dst.stat().st_size}
        # latency, side by side: every file in turn, each round
        rng = np.random.default_rng(0)
        frame = rng.standard_normal((1, 1, 161, 2)).astype(np.float32) * 0.1
        sessions = {form: be.load(r["path"], threads=1) for form, r in rows.items()}
        states = {form: None for form in rows}
        for form, s in sessions.items():  # warm-up
            for _ in range(50):
                _, states[form] = s.run(frame, states[form])
        per_round: dict[str, list[float]] = {form: [] for form in rows}
        for _ in range(args.rounds):
            for form, s in sessions.items():
                times = []
                for _ in range(args.hops):
                    t = time.perf_counter()
                    _, states[form] = s.run(frame, states[form])
                    times.append(time.perf_counter() - t)
                per_round[form].append(statistics.median(times) * 1e3)
        for form, r in rows.items():
            r["ms"] = statistics.median(per_round[form])
            parity = check_parity(model, r["path"], weights="mixed" if form == "mixed" else form, mode="stream",
                                  enforce=False, backend="litert", session=be.load(r["path"], threads=1))
            r["snr"] = parity.snr_db
            t0 = time.time()
            ev = evaluate_artifact(r["path"], data, "test", limit=args.items, dnsmos=False)
            r["n"] = ev["n"]
            r["quality"] = {m: ev["summary"]["overall"]["mean"][f"enhanced_{m}"] for m in METRICS}
            r["noisy"] = {m: ev["summary"]["overall"]["mean"][f"noisy_{m}"] for m in METRICS}
            r["eval_s"] = time.time() - t0
        ops = tflite.weight_ops(rows["mixed"]["path"])
        layer_of = tensor_layers([o["output"] for o in ops], model, layer_paths(model))
        widths = {form: {} for form in FORMS}
        for form in FORMS:
            for o in tflite.weight_ops(rows[form]["path"]):
                layer = layer_of.get(o["output"], "?")
                widths[form].setdefault(layer, set()).add(o["type"].lower())
        layer_ops = {}
        for o in ops:
            layer_ops.setdefault(layer_of.get(o["output"], "?"), []).append(o)

    cmd = f".venv/bin/python benchmarks/litert_int4.py --hwc {args.hwc} --out {args.out}"
    base = rows["int8"]
    q = lambda m: f"{m['pesq_wb']:.3f} | {m['stoi']:.3f} | {m['si_sdr']:.2f}"  # noqa: E731
    lines = [f"# LiteRT weight widths: int8, int4 and mixed 4/8-bit exports of {args.hwc}", "",
             f"Command: `{cmd}`. ai-edge-litert {runtime_version('litert')} (XNNPACK), 1 thread, "
             f"{platform.machine()} host ({platform.processor() or 'cpu'}), shared 2-core machine: latency MEASURED "
             f"here (median over {args.rounds} side-by-side rounds of the median of {args.hops} hops), not on a "
             f"device. One fp32 conversion ({convert_s:.0f} s), quantized three ways by ai-edge-quantizer "
             f"dynamic-range recipes (weights per output channel, activations quantized on the fly). Parity: SNR of "
             f"the runtime output against the .hwc in torch on 50 speech-like hops (check_parity). Quality: the first "
             f"{base['n']} mixtures of the real-speech test split, each file run hop by hop.", "",
             "| weights | file B | vs int8 | latency ms | vs int8 | parity dB | PESQ-WB | STOI | SI-SDR dB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| noisy input | - | - | - | - | - | {q(base['noisy'])} |"]
    for form in FORMS:
        r = rows[form]
        lines.append(f"| {form} | {r['bytes']} | {r['bytes'] / base['bytes']:.2f}x | {r['ms']:.3f} | "
                     f"{r['ms'] / base['ms']:.2f}x | {r['snr']:.1f} | {q(r['quality'])} |")
    lines += ["", "Per layer: K (distinct nonzero weight values in the .hwc) and the width each file stores its "
                  "weights at (read back from the flatbuffer).", "",
              "| layer | K | ops | int8 | int4 | mixed |", "| --- | ---: | --- | --- | --- | --- |"]
    for layer in sorted(layer_ops, key=lambda x: list(layer_paths(model)).index(x) if x in layer_paths(model) else 99):
        kinds = ", ".join(sorted({o["op"] for o in layer_ops[layer]}))
        lines.append(f"| {layer} | {ks.get(layer, '-')} | {kinds} | " + " | ".join(
            "/".join(sorted(widths[f].get(layer, {'-'}))) for f in FORMS) + " |")
    lines += ["", "Scoring took " + ", ".join(f"{f} {rows[f]['eval_s']:.0f} s" for f in FORMS) + "."]
    text = write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(text)


if __name__ == "__main__":
    main()
