"""Cortex-M7 per-op cycle model (profile/mcu.py) against public Cortex-M figures, and what it
predicts for our models' TFLite Micro files (issue 18, item 3).

Part 1: for every public anchor (a published per-inference latency of an int8 model on a
Cortex-M, with that model's MAC count), the cycles per MAC the anchor implies, beside the
target's `mac_s8` figure, and the latency the figure predicts for that model's MACs at the
anchor's clock (MAC term only: the anchors' op lists are not public in text). A ratio under 1
means our figure is the more optimistic one.

Part 2: the dense models' exported TFLite Micro files priced per op (PREDICTED, no device).

    .venv/bin/python benchmarks/mcu_cycles.py [--models nsnet2,default] [--out benchmarks/mcu_cycles.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._reading import write_keeping_reading  # noqa: E402

#: (model, engine, core @ clock MHz, MACs, published latency ms, source). MAC counts were counted
#: from the models' .tflite files (CONV_2D out x kh x kw x cin, DEPTHWISE out x kh x kw, FC in x out);
#: latencies are as published (MLPerf Tiny: 1 / median throughput).
ANCHORS = [
    ("person_detect (TFLM example)", "TFLM + CMSIS-NN", "Cortex-M33", 150, 7_157_888, 76.842,
     "shanemmattner/embedded-agent-bridge benchmark: 11,526,407 DWT cycles"),
    ("MLPerf Tiny AD FC autoencoder", "TFLM + CMSIS", "Cortex-M33 (RA6M4)", 200, 264_192, 1e3 / 216.772,
     "mlcommons/tiny_results_v0.7 closed/renesas EK-RA6M4 ad: 216.772 inf/s"),
    ("MLPerf Tiny KWS DS-CNN", "TFLM + CMSIS", "Cortex-M33 (RA6M4)", 200, 2_656_768, 1e3 / 19.774,
     "mlcommons/tiny_results_v0.7 closed/renesas EK-RA6M4 kws: 19.774 inf/s"),
    ("MLPerf Tiny KWS DS-CNN", "X-CUBE-AI 8.1", "Cortex-M7 (STM32H7A3)", 280, 2_656_768, 1e3 / 65.133,
     "mlcommons/tiny_results_v1.1 closed/STMicroelectronics NUCLEO_H7A3ZI_Q kws: 65.133 inf/s"),
    ("MLPerf Tiny IC ResNet-8", "X-CUBE-AI 8.1", "Cortex-M7 (STM32H7A3)", 280, 12_501_632, 1e3 / 19.250,
     "mlcommons/tiny_results_v1.1 closed/STMicroelectronics NUCLEO_H7A3ZI_Q ic: 19.250 inf/s"),
    ("MLPerf Tiny AD FC autoencoder", "X-CUBE-AI 8.1", "Cortex-M7 (STM32H7A3)", 280, 264_192, 1e3 / 549.973,
     "mlcommons/tiny_results_v1.1 closed/STMicroelectronics NUCLEO_H7A3ZI_Q ad: 549.973 inf/s"),
    ("MLPerf Tiny KWS DS-CNN", "Plumerai", "Cortex-M7 (STM32F746)", 216, 2_656_768, 1e3 / 52.288,
     "mlcommons/tiny_results_v1.0 closed/plumerai DISCO_F746NG kws: 52.288 inf/s"),
    ("RNNoise-like GRU denoiser (NNoM)", "NNoM + CMSIS-NN", "Cortex-M4 (STM32L476)", 140, 208_952, 3.281,
     "majianjia/nnom examples/rnn-denoise README: 208,952 MACs, 3,281 us"),
]


def anchors_table(target) -> list[str]:
    s8 = target.cycles["mac_s8"].value
    lines = ["| model | engine | core @ MHz | MACs | published ms | cycles/MAC implied | "
             f"predicted ms (mac_s8 = {s8:g}) | predicted / published | source |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    ratios = []
    for model, engine, core, mhz, macs, ms, source in ANCHORS:
        implied = ms * 1e-3 * mhz * 1e6 / macs
        predicted = macs * s8 / (mhz * 1e6) * 1e3
        ratios.append(predicted / ms)
        lines.append(f"| {model} | {engine} | {core} @ {mhz} | {macs:,} | {ms:.3f} | {implied:.2f} | "
                     f"{predicted:.3f} | {predicted / ms:.2f} | {source} |")
    m7 = [r for (_, _, core, *_), r in zip(ANCHORS, ratios) if "M7" in core]
    return lines + ["", f"Cortex-M7 anchors: predicted / published {min(m7):.2f}-{max(m7):.2f}; all anchors "
                        f"{min(ratios):.2f}-{max(ratios):.2f}.", ""]


def model_rows(names: list[str], target) -> list[str]:
    from hwcompress.export import get_backend
    from hwcompress.export.tflm import float_ops, measure_arena
    from hwcompress.models.io import load_model
    from hwcompress.profile.mcu import predict_tflm

    lines = []
    for name in names:
        model = load_model(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            path = get_backend("tflite-micro").export(model, Path(tmp))
            seconds = time.time() - t0
            data = path.read_bytes()
            p = predict_tflm(data, target)
            arena, _ = measure_arena(data, name)
        lines += [f"### {name} (dense, exported in {seconds:.0f} s)", "",
                  f"- file {len(data):,} B (budget {target.storage_budget_bytes:,} B); measured arena {arena:,} B "
                  f"(budget {target.memory_budget_bytes:,} B); ops left float: {', '.join(float_ops(data)) or 'none'}",
                  f"- **{p['latency_ms']:.2f} ms per hop, PREDICTED** ({p['ops']} operators, {p['macs']:,} MACs, "
                  f"{p['cycles'] / 1e6:.2f} M cycles at {p['clock_mhz']:g} MHz; budget {target.latency_budget_ms:g} ms)", "",
                  "| cycle figure | ops | ms | share |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {k} | {f['ops']} | {f['ms']:.3f} | {f['share']:.1%} |" for k, f in p["by_figure"].items()]
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nsnet2,default")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("mcu_cycles.md"))
    args = ap.parse_args()
    from hwcompress.export.probe import runtime_version
    from hwcompress.targets import load_target

    target = load_target("cortex-m7")
    names = [m for m in args.models.split(",") if m]
    lines = ["# Cortex-M7 per-op cycle model vs public figures", "",
             f"Command: `.venv/bin/python benchmarks/mcu_cycles.py --models {','.join(names)}`; target "
             f"targets/cortex-m7.toml; TFLite Micro {runtime_version('tflite-micro')} (host build, used only to export, "
             "run and measure the arena). Every latency of ours here is PREDICTED: no Cortex-M is attached.", "",
             "## 1. The MAC figure against published Cortex-M latencies", ""]
    lines += anchors_table(target)
    lines += ["## 2. Our dense models' TFLite Micro files, priced per op", ""]
    lines += model_rows(names, target)
    text = write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(text)


if __name__ == "__main__":
    main()
