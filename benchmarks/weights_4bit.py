"""Runtime weight widths side by side (issue 15): one `.hwc` exported to LiteRT and to onnxruntime
with int8 weights, with 4-bit weights on every layer kind the backend runs at 4 bits (int4: LiteRT
FULLY_CONNECTED, onnxruntime MatMulNBits; convolutions int8), and with 4 bits only for the layers
whose codebooks lie on the 4-bit integer grid (mixed: what `fit --weights mixed` leaves for the
layers it clusters to K <= 16). Bytes of each file, the width each layer's weights are stored at
(read back from the file), how many weight tensors the file holds exactly as the `.hwc` has them,
latency per hop measured here, parity against the `.hwc` in torch, and quality on the real-speech
test split, each file run hop by hop in its runtime.

    .venv/bin/python benchmarks/weights_4bit.py --hwc runs/fit-rpi4-mixed/model.hwc \\
        --out benchmarks/weights_4bit.md

Latency: this x86 host, 1 thread, one process; each round times every file for --hops hops in
turn (side by side) and the table gives the median over rounds of the median hop. Emulated or
device (Raspberry Pi 4) timings are not here: see the Reading section.
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


BACKENDS = ("litert", "onnxruntime")
#: int4 peers: the dense template through each runtime's own 4-bit weight quantizer
PEERS = {"litert": "ai-edge-quantizer dynamic_wi4 (FULLY_CONNECTED; the rest int8)",
         "onnxruntime": "MatMulNBits (the cells' matmuls; the rest int8)",
         "openvino": "nncf INT4_ASYM, groups of 128, all layers"}


def _timed(sessions: dict, rounds: int, hops: int) -> dict[str, float]:
    """Median over rounds of each session's median hop (ms), every session in turn each round."""
    frame = np.random.default_rng(0).standard_normal((1, 1, 161, 2)).astype(np.float32) * 0.1
    states = {k: None for k in sessions}
    for k, s in sessions.items():  # warm-up
        for _ in range(50):
            _, states[k] = s.run(frame, states[k])
    per_round: dict = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            times = []
            for _ in range(hops):
                t = time.perf_counter()
                _, states[k] = s.run(frame, states[k])
                times.append(time.perf_counter() - t)
            per_round[k].append(statistics.median(times) * 1e3)
    return {k: statistics.median(v) for k, v in per_round.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hwc", type=Path, required=True, help="a compressed model (.hwc)")
    ap.add_argument("--template", default="default", help="the model the .hwc was compressed from")
    ap.add_argument("--items", type=int, default=20, help="real-speech test mixtures scored per file")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--hops", type=int, default=300)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-peers", dest="peers", action="store_false",
                    help="skip the int4 peers: the dense template quantized to 4 bits by each runtime's own tool")
    args = ap.parse_args()

    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.evaluate import evaluate_artifact
    from hwcompress.export import distinct_weights, get_backend, layer_widths, tflite
    from hwcompress.export.check import check_parity
    from hwcompress.export.onnx import exact_weights as onnx_exact_weights
    from hwcompress.export.probe import artifact_bytes, runtime_version
    from hwcompress.models.cost import layer_paths
    from hwcompress.models.io import load_model

    model = load_model(str(args.hwc), template=load_model(args.template)).eval()
    ks = distinct_weights(model)
    data = ensure_default_corpus()
    rows: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        src = get_backend("litert").export(model, Path(tmp), "stream", weights="fp32")
        convert_s = time.time() - t0
        scopes = tflite.mixed_scopes(src, model)
        for form in FORMS:  # one litert-torch conversion, quantized three ways
            dst = Path(tmp) / f"litert-{form}.tflite"
            tflite.quantize(src, dst, form, scopes)
            rows["litert", form] = {"path": dst}
        for form in FORMS:
            out = Path(tmp) / f"onnx-{form}"
            rows["onnxruntime", form] = {"path": get_backend("onnxruntime").export(model, out, "stream", weights=form)}
        dense = load_model(args.template).eval()
        peers: dict[tuple[str, str], dict] = {}
        if args.peers:  # the dense model at 4 bits by each runtime's own quantizer (int4 peers)
            for backend, library in PEERS.items():
                out = Path(tmp) / f"peer-{backend}"
                peers[backend, "int4"] = {"path": get_backend(backend).export(dense, out, "stream", weights="int4"),
                                          "library": library}
        sessions = {("fit", *key): get_backend(key[0]).load(r["path"], threads=1) for key, r in rows.items()}
        sessions.update({("peer", *key): get_backend(key[0]).load(r["path"], threads=1) for key, r in peers.items()})
        ms = _timed(sessions, args.rounds, args.hops)
        for key, r in [(("fit", *k), v) for k, v in rows.items()] + [(("peer", *k), v) for k, v in peers.items()]:
            which, backend, form = key
            net = model if which == "fit" else dense
            r.update(bytes=artifact_bytes(Path(r["path"])), ms=ms[key],
                     widths=layer_widths(backend, Path(r["path"]), net))
            # weight tensors held exactly as the .hwc has them (LiteRT: against the fp32 conversion)
            if which == "fit":
                same = (tflite.exact_weights(r["path"], src) if backend == "litert"
                        else onnx_exact_weights(r["path"], model))
                r["exact"] = f"{sum(same.values())}/{len(same)}"
            parity = check_parity(net, r["path"], weights="mixed" if form == "mixed" else form, mode="stream",
                                  enforce=False, backend=backend, session=get_backend(backend).load(r["path"], threads=1))
            r["snr"] = parity.snr_db
            t0 = time.time()
            ev = evaluate_artifact(r["path"], data, "test", limit=args.items, dnsmos=False)
            r["n"] = ev["n"]
            r["quality"] = {m: ev["summary"]["overall"]["mean"][f"enhanced_{m}"] for m in METRICS}
            r["noisy"] = {m: ev["summary"]["overall"]["mean"][f"noisy_{m}"] for m in METRICS}
            r["eval_s"] = time.time() - t0

    cmd = " ".join([".venv/bin/python", "benchmarks/weights_4bit.py", *sys.argv[1:]])
    q = lambda m: f"{m['pesq_wb']:.3f} | {m['stoi']:.3f} | {m['si_sdr']:.2f}"  # noqa: E731
    first = rows["litert", "int8"]
    lines = [f"# Runtime weight widths: int8, int4 and mixed 4/8-bit exports of {args.hwc}", "",
             f"Command: `{cmd}`. ai-edge-litert {runtime_version('litert')} (XNNPACK) and onnxruntime "
             f"{runtime_version('onnxruntime')} (CPU EP), 1 thread each, {platform.machine()} host, shared 2-core "
             f"machine: latency MEASURED here (median over {args.rounds} side-by-side rounds of the median of "
             f"{args.hops} hops, all six files in one process), not on a device. LiteRT: one fp32 conversion "
             f"({convert_s:.0f} s) quantized three ways by ai-edge-quantizer dynamic-range recipes (per output "
             f"channel); onnxruntime: int8 by quantize_dynamic (per channel; ConvTranspose weights int8 behind a "
             f"DequantizeLinear), 4-bit by MatMulNBits (symmetric, blocks of up to 128 inputs) on the matmuls of "
             f"the recurrent cells exported as matmuls. Weights on an integer grid are written with the grid's "
             f"step as their scales; 'weights exact': weight tensors of the file equal to the .hwc's, element by "
             f"element (LiteRT: against the fp32 conversion; onnxruntime: against the .hwc in torch). Parity: SNR "
             f"of the runtime output against the .hwc in torch on 50 speech-like hops (check_parity). Quality: the "
             f"first {first['n']} mixtures of the real-speech test split, each file run hop by hop.", "",
             "| runtime | weights | file B | vs int8 | weights exact | latency ms | vs int8 | parity dB | PESQ-WB | STOI | SI-SDR dB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| noisy input | - | - | - | - | - | - | - | {q(first['noisy'])} |"]
    for backend in BACKENDS:
        base = rows[backend, "int8"]
        for form in FORMS:
            r = rows[backend, form]
            lines.append(f"| {backend} | {form} | {r['bytes']} | {r['bytes'] / base['bytes']:.2f}x | {r['exact']} | {r['ms']:.3f} | "
                         f"{r['ms'] / base['ms']:.2f}x | {r['snr']:.1f} | {q(r['quality'])} |")
    if peers:
        mixed = {b: rows[b, "mixed"] for b in BACKENDS}
        lines += ["", f"int4 peers: the dense template ({args.template}) quantized to 4 bits by each runtime's own tool, "
                      "timed in the same rounds as the rows above; parity against the dense model in torch. 'vs mixed': "
                      "this file's bytes and PESQ-WB against the mixed export of the .hwc on the same runtime (LiteRT's "
                      "for OpenVINO, which has no mixed export).", "",
                  "| runtime | peer | file B | vs mixed B | latency ms | parity dB | PESQ-WB | STOI | SI-SDR dB | PESQ-WB vs mixed |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for (backend, _), r in peers.items():
            m = mixed.get(backend, mixed["litert"])
            lines.append(f"| {backend} | {r['library']} | {r['bytes']} | {r['bytes'] / m['bytes']:.2f}x | {r['ms']:.3f} | "
                         f"{r['snr']:.1f} | {q(r['quality'])} | {r['quality']['pesq_wb'] - m['quality']['pesq_wb']:+.3f} |")
    lines += ["", "Per layer: K (distinct nonzero weight values in the .hwc) and the width each file stores its "
                  "weights at (read back from the file: the flatbuffer's tensor types; the ONNX graph's MatMulNBits "
                  "nodes).", "",
              "| layer | K | " + " | ".join(f"{b} {f}" for b in BACKENDS for f in FORMS) + " |",
              "| --- | ---: | " + " | ".join("---" for _ in BACKENDS for _ in FORMS) + " |"]
    for layer in layer_paths(model):
        lines.append(f"| {layer} | {ks.get(layer, '-')} | " + " | ".join(
            rows[b, f]["widths"].get(layer, "-") for b in BACKENDS for f in FORMS) + " |")
    lines += ["", "Scoring took " + ", ".join(f"{b} {f} {rows[b, f]['eval_s']:.0f} s" for b in BACKENDS for f in FORMS)
              + "".join(f", peer {b} {p['eval_s']:.0f} s" for (b, _), p in peers.items()) + "."]
    text = write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(text)


if __name__ == "__main__":
    main()
