"""Does OpenVINO's CPU plugin run the weights `export.openvino.quantize` writes (i4/i8 integers
times one f32 step, no zero point) natively, or decompress them? One 4096x4096 MatMul (a weight
on the 4-bit grid, 64 MiB in f32) as fp32, as our i8 and i4 forms, and as nncf's INT8_ASYM and
INT4_ASYM (groups of 128) forms of the same weights: the precision the compiled model's
FullyConnected reads its weight at (its runtime graph) and the latency of one matrix-vector product,
all forms timed in turn in the same rounds.

    .venv/bin/python benchmarks/openvino_compressed_matmul.py --out benchmarks/openvino_compressed_matmul.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._reading import write_keeping_reading  # noqa: E402

N = 4096


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import nncf
    import openvino as ov
    import openvino.opset13 as ops

    from hwcompress.export.openvino import _write_exact
    from hwcompress.export.probe import runtime_version

    rng = np.random.default_rng(0)
    step = np.float32(0.01)
    w = rng.integers(-7, 8, size=(N, N)).astype(np.float32) * step  # on the 4-bit grid of `step`

    def model(form: str) -> ov.Model:
        x = ops.parameter([1, N], ov.Type.f32, name="x")
        weight = ops.constant(w, name="w")
        mm = ops.matmul(x, weight, False, True)
        m = ov.Model([mm], [x], form)
        if form in ("i8", "i4"):
            _write_exact(weight, float(step), 8 if form == "i8" else 4)
        elif form.startswith("nncf"):
            nncf.set_log_level(logging.ERROR)
            kwargs = ({"mode": nncf.CompressWeightsMode.INT8_ASYM} if form == "nncf INT8_ASYM" else
                      {"mode": nncf.CompressWeightsMode.INT4_ASYM, "group_size": 128, "ratio": 1.0, "all_layers": True})
            with contextlib.redirect_stdout(io.StringIO()):
                m = nncf.compress_weights(m, **kwargs)
        return m

    forms = ["fp32", "i8", "i4", "nncf INT8_ASYM", "nncf INT4_ASYM g128"]
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    xin = rng.standard_normal((1, N)).astype(np.float32)
    ref = xin.astype(np.float64) @ w.T.astype(np.float64)
    rows = {}
    for form in forms:
        compiled = core.compile_model(model(form), "CPU", config)
        fc = next(op for op in compiled.get_runtime_model().get_ordered_ops()
                  if op.get_rt_info()["layerType"].astype(str) == "FullyConnected")
        request = compiled.create_infer_request()
        out = request.infer({0: xin})[0]
        rows[form] = {"request": request, "precision": fc.get_rt_info()["runtimePrecision"].astype(str),
                      "kernel": fc.get_rt_info()["primitiveType"].astype(str),
                      "weight": fc.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str),
                      "err": float(np.abs(out - ref).max() / np.abs(ref).max()), "ms": []}
    for r in rows.values():  # warm-up
        for _ in range(5):
            r["request"].infer({0: xin})
    for _ in range(args.rounds):
        for r in rows.values():
            times = []
            for _ in range(args.calls):
                t = time.perf_counter()
                r["request"].infer({0: xin})
                times.append(time.perf_counter() - t)
            r["ms"].append(statistics.median(times) * 1e3)
    base = statistics.median(rows["fp32"]["ms"])
    cmd = " ".join([".venv/bin/python", "benchmarks/openvino_compressed_matmul.py", *sys.argv[1:]])
    lines = ["# OpenVINO CPU: compressed MatMul weights, run natively or decompressed", "",
             f"Command: `{cmd}`. OpenVINO {runtime_version('openvino')} CPU plugin, {args.threads} thread(s), "
             f"f32 activations, LATENCY hint, {platform.machine()} host (shared 2-core machine): latency MEASURED here, "
             f"median over {args.rounds} rounds (every form in turn each round) of the median of {args.calls} calls of "
             f"one [1, {N}] x [{N}, {N}] product. The weight lies on the 4-bit grid (q in [-7, 7] times 0.01). "
             "'reads': the element type of the constant the compiled FullyConnected reads (its runtime graph); "
             "'max rel err': against the product in float64 (the plugin quantizes activations to int8 on the fly "
             "for integer weights; nncf's forms also round the weights).", "",
             "| weights | stored as | reads | kernel | latency ms | vs fp32 | max rel err |",
             "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    stored = {"fp32": "f32", "i8": "i8 x one f32 step (hwcompress)", "i4": "i4 x one f32 step (hwcompress)",
              "nncf INT8_ASYM": "u8, f16 scale and u8 zero point per row",
              "nncf INT4_ASYM g128": "u4, f16 scale and u4 zero point per 128"}
    for form, r in rows.items():
        ms = statistics.median(r["ms"])
        lines.append(f"| {form} | {stored[form]} | {r['weight']} | {r['kernel']} | {ms:.3f} | {ms / base:.2f}x | "
                     f"{r['err']:.1e} |")
    text = write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(text)


if __name__ == "__main__":
    main()
