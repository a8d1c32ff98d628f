"""Dense vs compressed on every runtime this machine runs, side by side in one run.

    python benchmarks/backends.py --compressed runs/fit-x86/budget-1ms/model.hwc [--runs 500]

For each backend (onnxruntime = target generic-onnx, OpenVINO = x86-openvino, LiteRT =
x86-litert; each with its target's thread count) three artifacts of the streaming graph:
the dense default model with fp32 weights, the dense model with the runtime's int8 weights,
and the compressed model (a fit result: structurally shrunk, clustered) with int8 weights.
Each is exported, timed here (median / p90 of --runs hops in a fresh process, after 50
warm-up hops) and its files weighed. For OpenVINO, OpenVINO's own benchmark_app times the
same IRs with the same threads, next to our figure. Writes benchmarks/backends.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _reading import write_keeping_reading  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"onnxruntime": "generic-onnx", "openvino": "x86-openvino", "litert": "x86-litert"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compressed", required=True, type=Path, help="a .hwc (e.g. from hwcompress fit)")
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--backends", default="onnxruntime,openvino,litert")
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "backends.md")
    args = p.parse_args(argv)

    from hwcompress.errors import HwcError
    from hwcompress.export import get_backend
    from hwcompress.models.cost import count_params, total_macs
    from hwcompress.models.io import load_model
    from hwcompress.export.probe import artifact_bytes
    from hwcompress.profile.measure import (benchmark_app_latency, host_cpu, measure_artifact,
                                            runtime_version)
    from hwcompress.targets import load_target

    dense = load_model("default")
    small = load_model(str(args.compressed))
    variants = [("dense fp32", dense, "fp32"), ("dense int8", dense, "int8"), ("compressed int8", small, "int8")]
    lines = ["# Dense vs compressed on each runtime (measured here, one run)", "",
             f"Command: `python benchmarks/backends.py --compressed {args.compressed} --runs {args.runs} "
             f"--backends {args.backends}`", "",
             f"Machine: {host_cpu()}. Models: `default` ({count_params(dense)} params, {total_macs(dense)} MACs/hop) and "
             f"`{args.compressed}` ({count_params(small)} params, {total_macs(small)} MACs/hop, .hwc "
             f"{args.compressed.stat().st_size} B). Latency: median and p90 of {args.runs} streaming hops "
             "(T=1, state carried) in a fresh process after 50 warm-up hops, MEASURED on this machine.", "",
             "| runtime | threads | artifact | bytes | median ms | p90 ms | peak MiB | vs dense fp32: bytes | vs dense fp32: speed "
             "| runtime's own median ms | benchmark_app median ms |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for backend in args.backends.split(","):
        target = load_target(TARGETS[backend])
        be = get_backend(backend)
        ref = None
        with tempfile.TemporaryDirectory(prefix="hwc-bench-backends-") as tmp:
            for label, model, weights in variants:
                path = be.export(model, Path(tmp), "stream", weights=weights, stem=label.replace(" ", "-"))
                nbytes = artifact_bytes(path)
                m = measure_artifact(backend, path, target.threads, runs=args.runs, warmup=50, top=1)
                bench = "-"
                own = f"{m.runtime_median_ms:.3f}" if m.runtime_median_ms is not None else "-"
                if backend == "openvino":
                    try:
                        b = benchmark_app_latency(path, target.threads, niter=args.runs)
                        bench = f"{b['median_ms']:.3f} (ours {100 * (m.median_ms / b['median_ms'] - 1):+.0f}%)"
                        if m.runtime_median_ms is not None:
                            own += f" ({100 * (m.runtime_median_ms / b['median_ms'] - 1):+.0f}%)"
                    except HwcError as exc:  # keep the other rows; say what went wrong in this cell
                        bench = f"not measured ({str(exc)[:60]})"
                if ref is None:
                    ref = (nbytes, m.median_ms)
                lines.append(f"| {backend} {runtime_version(backend)} | {target.threads} | {label} | {nbytes} | "
                             f"{m.median_ms:.3f} | {m.p90_ms:.3f} | {m.peak_memory_bytes / 2**20:.1f} | "
                             f"{ref[0] / nbytes:.2f}x smaller | {ref[1] / m.median_ms:.2f}x faster | {own} | {bench} |")
                print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", "benchmark_app: OpenVINO's tool on the same IR, CPU, LATENCY hint, 1 stream, sync, same threads; "
              "it reports each inference's InferRequest.latency (the runtime's own timing). *median ms* is our "
              "per-hop wall time of Session.run (copies in, infer, copies out, as a Python application pays it); "
              "*runtime's own* is InferRequest.latency of the same hops, the like-for-like figure; percentages are "
              "against benchmark_app."]
    text = write_keeping_reading(args.table, "\n".join(lines) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
