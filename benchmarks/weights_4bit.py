"""Runtime weight widths side by side (issue 15): one `.hwc` exported to LiteRT, onnxruntime and
OpenVINO with int8 weights, with 4-bit weights on every layer kind the backend runs at 4 bits (int4:
LiteRT FULLY_CONNECTED, onnxruntime MatMulNBits, OpenVINO's MatMuls; convolutions int8), and with
4 bits only for the layers whose codebooks lie on the 4-bit integer grid (mixed: what
`fit --weights mixed` leaves for the layers it clusters to K <= 16). Bytes of each file, the width
each layer's weights are stored at (read back from the file), how many weight tensors the file
holds exactly as the `.hwc` has them, latency per hop measured here, parity against the `.hwc` in
torch, and quality on the real-speech test split, each file run hop by hop in its runtime.

    .venv/bin/python benchmarks/weights_4bit.py --hwc runs/fit-rpi4-mixed/model.hwc \\
        --out benchmarks/weights_4bit.md [--backends openvino]

Each run writes one block of the output file, keyed by its --backends: a rerun replaces its own
block and keeps the others (and the hand-written Reading section), so a runtime can be added or
measured again without rerunning the rest.

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

from benchmarks._reading import NOTES, write_keeping_reading  # noqa: E402

METRICS = ("pesq_wb", "stoi", "si_sdr")
FORMS = ("int8", "int4", "mixed")


BACKENDS = ("litert", "onnxruntime", "openvino")
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
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help=f"comma-separated, of {', '.join(BACKENDS)}; their block of --out is replaced")
    args = ap.parse_args()
    backends = tuple(b for b in BACKENDS if b in args.backends.split(","))
    if not backends or set(args.backends.split(",")) - set(BACKENDS):
        ap.error(f"--backends: choose from {', '.join(BACKENDS)}")

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
        convert_s = None
        if "litert" in backends:
            t0 = time.time()
            src = get_backend("litert").export(model, Path(tmp), "stream", weights="fp32")
            convert_s = time.time() - t0
            scopes = tflite.mixed_scopes(src, model)
            for form in FORMS:  # one litert-torch conversion, quantized three ways
                dst = Path(tmp) / f"litert-{form}.tflite"
                tflite.quantize(src, dst, form, scopes)
                rows["litert", form] = {"path": dst}
        for backend in (b for b in backends if b != "litert"):
            for form in FORMS:
                out = Path(tmp) / f"{backend}-{form}"
                rows[backend, form] = {"path": get_backend(backend).export(model, out, "stream", weights=form)}
        dense = load_model(args.template).eval()
        peers: dict[tuple[str, str], dict] = {}
        if args.peers:  # the dense model at 4 bits by each runtime's own quantizer (int4 peers)
            for backend, library in ((b, PEERS[b]) for b in backends):
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
                if backend == "openvino":
                    from hwcompress.export import openvino

                    same = openvino.exact_weights(r["path"], model)
                    # what the CPU plugin's compiled graph reads each weight as
                    r["executed"] = openvino.executed_widths(r["path"])
                else:
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
    first = rows[backends[0], "int8"]
    names = {"litert": "LiteRT", "onnxruntime": "onnxruntime", "openvino": "OpenVINO"}
    how = {"litert": f"ai-edge-litert {runtime_version('litert')} (XNNPACK)",
           "onnxruntime": f"onnxruntime {runtime_version('onnxruntime')} (CPU EP)",
           "openvino": f"OpenVINO {runtime_version('openvino')} (CPU plugin, f32 activations, LATENCY hint)"}
    forms = {"litert": f"LiteRT: one fp32 conversion ({convert_s or 0:.0f} s) quantized three ways by ai-edge-quantizer "
                       "dynamic-range recipes (per output channel)",
             "onnxruntime": "onnxruntime: int8 by quantize_dynamic (per channel; ConvTranspose weights int8 behind a "
                            "DequantizeLinear), 4-bit by MatMulNBits (symmetric, blocks of up to 128 inputs) on the "
                            "matmuls of the recurrent cells exported as matmuls",
             "openvino": "OpenVINO: the recurrent cells exported as matmuls; a weight on its width's integer grid is "
                         "written as i4/i8 integers times one f32 step (openvino.quantize), the others by nncf "
                         "(INT8_ASYM per channel; INT4_ASYM in groups of 128); 4 bits on MatMuls only"}
    label = " and ".join(names[b] for b in backends)
    lines = [f"## {label}: int8, int4 and mixed 4/8-bit exports of {args.hwc}", "",
             f"Command: `{cmd}`. {', '.join(how[b] for b in backends)}, 1 thread each, {platform.machine()} host, "
             f"shared 2-core machine: latency MEASURED here (median over {args.rounds} side-by-side rounds of the median "
             f"of {args.hops} hops, all {len(rows) + len(peers)} files in one process), not on a device. "
             + ". ".join(forms[b] for b in backends) + ". Weights on an integer grid are written with the grid's "
             "step as their scales; 'weights exact': weight tensors of the file equal to the .hwc's, element by "
             "element (LiteRT: against the fp32 conversion; onnxruntime: against the .hwc in torch; OpenVINO: the "
             "IR's decompression subgraphs constant-folded by OpenVINO, against the .hwc in torch). Parity: SNR of "
             "the runtime output against the .hwc in torch on 50 speech-like hops (check_parity). Quality: the first "
             f"{first['n']} mixtures of the real-speech test split, each file run hop by hop.", "",
             "| runtime | weights | file B | vs int8 | weights exact | latency ms | vs int8 | parity dB | PESQ-WB | STOI | SI-SDR dB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| noisy input | - | - | - | - | - | - | - | {q(first['noisy'])} |"]
    for backend in backends:
        base = rows[backend, "int8"]
        for form in FORMS:
            r = rows[backend, form]
            lines.append(f"| {backend} | {form} | {r['bytes']} | {r['bytes'] / base['bytes']:.2f}x | {r['exact']} | {r['ms']:.3f} | "
                         f"{r['ms'] / base['ms']:.2f}x | {r['snr']:.1f} | {q(r['quality'])} |")
    if peers:
        mixed = {b: rows[b, "mixed"] for b in backends}
        lines += ["", f"int4 peers: the dense template ({args.template}) quantized to 4 bits by each runtime's own tool, "
                      "timed in the same rounds as the rows above; parity against the dense model in torch. 'vs mixed': "
                      "this file's bytes and PESQ-WB against the mixed export of the .hwc on the same runtime.", "",
                  "| runtime | peer | file B | vs mixed B | latency ms | parity dB | PESQ-WB | STOI | SI-SDR dB | PESQ-WB vs mixed |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for (backend, _), r in peers.items():
            m = mixed[backend]
            lines.append(f"| {backend} | {r['library']} | {r['bytes']} | {r['bytes'] / m['bytes']:.2f}x | {r['ms']:.3f} | "
                         f"{r['snr']:.1f} | {q(r['quality'])} | {r['quality']['pesq_wb'] - m['quality']['pesq_wb']:+.3f} |")
    lines += ["", "Per layer: K (distinct nonzero weight values in the .hwc) and the width each file stores its "
                  "weights at (read back from the file: the flatbuffer's tensor types; the ONNX graph's MatMulNBits "
                  "nodes; the element types of the IR's weight constants).", "",
              "| layer | K | " + " | ".join(f"{b} {f}" for b in backends for f in FORMS) + " |",
              "| --- | ---: | " + " | ".join("---" for _ in backends for _ in FORMS) + " |"]
    for layer in layer_paths(model):
        lines.append(f"| {layer} | {ks.get(layer, '-')} | " + " | ".join(
            rows[b, f]["widths"].get(layer, "-") for b in backends for f in FORMS) + " |")
    if "openvino" in backends:
        lines += ["", "What OpenVINO's CPU plugin runs each weight tensor at, from the compiled model's runtime graph "
                      "(the precision of the constant a FullyConnected or convolution reads; f32: decompressed when "
                      "the model compiled): " + "; ".join(
                          f"{form} " + ", ".join(f"{n} {p}" for p, n in sorted(_count(rows['openvino', form]['executed']).items()))
                          for form in FORMS) + "."]
    lines += ["", "Scoring took " + ", ".join(f"{b} {f} {rows[b, f]['eval_s']:.0f} s" for b in backends for f in FORMS)
              + "".join(f", peer {b} {p['eval_s']:.0f} s" for (b, _), p in peers.items()) + "."]
    text = write_block(args.out, ",".join(backends), "\n".join(lines) + "\n")
    print(text)


def _count(executed: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for precision in executed.values():
        out[precision] = out.get(precision, 0) + 1
    return out


TITLE = "# Runtime weight widths: int8, int4 and mixed 4/8-bit exports"


def write_block(path: Path, key: str, block: str) -> str:
    """`block` between the markers of `key` in the file at `path`: replacing that key's block, or
    inserted before the hand-written Reading section; the other blocks stay as they are."""
    start, end = f"<!-- weights_4bit.py --backends {key} -->", f"<!-- end {key} -->"
    old = path.read_text() if path.is_file() else ""
    body = old[:old.index(NOTES)] if NOTES in old else old
    body = body or TITLE + "\n\n"
    new = f"{start}\n{block}{end}\n"
    if start in body and end in body:
        body = body[:body.index(start)] + new + body[body.index(end) + len(end) + 1:]
    else:
        body = body.rstrip("\n") + "\n\n" + new
    return write_keeping_reading(path, body)


if __name__ == "__main__":
    main()
