"""hwcompress against the compression tools users would otherwise pick, and against the roofline.

    python benchmarks/peers.py [--items 60] [--runs 500] [--work runs/peers]

Every row compresses the same model (the shipped default CRN, 18.6 M parameters) with a real
library and is scored the same way, in one run on this machine:
  quality   PESQ-WB / STOI / SI-SDR of the first --items real-speech test mixtures, the
            artifact run hop by hop in its own runtime (so quantization error counts);
  bytes     every file the runtime loads (.onnx; .xml + .bin; .tflite);
  latency   median / p90 per 10 ms hop, the target's threads, fresh process, after warm-up,
            all artifacts timed one after another in the final pass (side by side);
  memory    peak RSS growth while loading and running the artifact.

Peers, per target (the target fixes runtime and threads):
  generic-onnx  onnxruntime quantize_dynamic (per-tensor and per-channel int8), quantize_static
                (QDQ int8 calibrated on 3 validation mixtures), and PyTorch global magnitude
                pruning (torch.nn.utils.prune, 50%) followed by dynamic int8;
  x86-openvino  NNCF compress_weights INT8_ASYM, INT4_ASYM (group 128, all layers) and CB4
                (4-bit codebook) on the IR a user gets from ov.convert_model, and the same INT8 /
                INT4 on the IR hwcompress exports (recurrent cells as MatMuls, which NNCF does
                compress);
  x86-litert    ai-edge-quantizer dynamic_wi8_afp32, weight_only_wi8_afp32 and static_wi8_ai8
                (full int8, same calibration data).
Then `hwcompress fit` per target with a latency budget equal to the fastest *usable* peer's
measured latency (PESQ-WB within 0.1 of the dense model) and a size budget equal to the
smallest usable peer's bytes: it must be no slower and no larger than the best usable peer;
and, in the same fit run (shared analysis), at half that latency, where no peer has a knob.

Roofline: for each row, MACs and weight bytes per hop against this machine's ceilings measured
in the same run (tools/measure_host.py: GEMM fp32/int8, DRAM/L3 read and GEMV rates at the
target's threads); attainable = max(2 MACs / compute peak, bytes / read rate), and
achieved / attainable = attainable / measured.

Writes benchmarks/peers.md, benchmarks/peers.json and benchmarks/peers.png. Artifacts, quality
scores and fits are cached under --work, so a rerun only re-times.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from _reading import write_keeping_reading  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"generic-onnx": "onnxruntime", "x86-openvino": "openvino", "x86-litert": "litert"}
FIT_WEIGHTS = {"generic-onnx": "int8", "x86-openvino": "int4", "x86-litert": "int8"}
USABLE_PESQ_DROP = 0.1  # a peer that loses more than this is not a deployment choice
L3_BYTES = 32 << 20


@dataclass
class Row:
    target: str
    name: str
    library: str
    path: str
    weights: str  # fp32 | int8 | int4 (what the file stores for most weights)
    macs: int
    kind: str = "peer"  # reference | peer | hwcompress
    note: str = ""
    bytes: int = 0
    quality: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)


# ---------------------------------------------------------------- calibration data


class _Recorder:
    """A streaming session that remembers every hop's inputs: calibration sets for static
    quantizers, from real (validation) speech rather than synthetic frames."""

    def __init__(self, inner) -> None:
        from hwcompress.export import _graph as g

        self.inner, self.feeds = inner, []
        self.state_shapes, self.frames = inner.state_shapes, inner.frames
        self.names = [g.SPEC, *(g.state_name(i) for i in range(len(inner.state_shapes)))]

    def run(self, spec, state=None):
        spec_in, states = self.inner.checked_inputs(spec, state)
        self.feeds.append(dict(zip(self.names, [spec_in, *states])))
        return self.inner.run(spec, state)


def calibration_feeds(onnx_fp32: Path, data: Path, mixtures: int = 3, every: int = 4) -> list[dict]:
    from hwcompress.data.loader import eval_set
    from hwcompress.export import get_backend, run_stream

    rec = _Recorder(get_backend("onnxruntime").load(onnx_fp32))
    for item in eval_set(data, "valid", mixtures):
        run_stream(rec, item["noisy"])
    return rec.feeds[::every]


# ---------------------------------------------------------------- peers


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def ort_dynamic(src: Path, dst: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)


def ort_static(src: Path, dst: Path, feeds: list[dict]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)


def torch_global_magnitude(dense, amount: float = 0.5):
    """torch.nn.utils.prune.global_unstructured over every weight matrix (conv, linear, LSTM),
    made permanent: what a PyTorch user does before handing the model to a quantizer."""
    import torch
    from torch.nn.utils import prune

    net = copy.deepcopy(dense)
    params = []
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            params.append((module, "weight"))
        elif isinstance(module, (torch.nn.LSTM, torch.nn.GRU)):
            params += [(module, n) for n, _ in module.named_parameters() if n.startswith("weight_")]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in params:
        prune.remove(module, name)
    for m in net.modules():
        if isinstance(m, (torch.nn.LSTM, torch.nn.GRU)):
            m.flatten_parameters()  # prune.remove re-registers the weights
    return net


def nncf_compress(xml: Path, dst: Path, mode: str, group_size: int = 128) -> None:
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    kwargs = {"int8": dict(mode=nncf.CompressWeightsMode.INT8_ASYM),
              "int4": dict(mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group_size, ratio=1.0, all_layers=True),
              "cb4": dict(mode=nncf.CompressWeightsMode.CB4, group_size=group_size, ratio=1.0, all_layers=True)}[mode]
    model = ov.Core().read_model(str(xml))
    with _quiet():
        model = nncf.compress_weights(model, **kwargs)
    ov.save_model(model, str(dst), compress_to_fp16=False)


def explicit_cell_ir(dense, dst: Path) -> None:
    """The IR hwcompress's own OpenVINO export produces: LSTMs traced as MatMul cells."""
    import openvino as ov

    from hwcompress.export._trace import explicit_cells
    from hwcompress.export.onnx import export_onnx

    tmp = dst.with_suffix(".onnx")
    with explicit_cells(dense):
        export_onnx(dense, tmp, "stream")
    ov.save_model(ov.convert_model(str(tmp)), str(dst), compress_to_fp16=False)
    tmp.unlink()


def aeq(src: Path, dst: Path, recipe_name: str, feeds: list[dict] | None) -> None:
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(str(src))
    q.load_quantization_recipe(getattr(recipe, recipe_name)())
    with _quiet(), contextlib.redirect_stderr(io.StringIO()):
        if feeds is None:
            q.quantize().export_model(str(dst), overwrite=True)
        else:
            from ai_edge_litert.interpreter import Interpreter

            sig = list(Interpreter(str(src)).get_signature_list())[0]
            q.quantize(q.calibrate({sig: feeds})).export_model(str(dst), overwrite=True)


def build_peers(dense, data: Path, work: Path, log) -> list[Row]:
    """Every peer artifact (cached: an existing file is reused)."""
    from hwcompress.export import get_backend
    from hwcompress.models.cost import total_macs

    macs = total_macs(dense)
    rows: list[Row] = []

    def make(target: str, name: str, library: str, dst: Path, weights: str, build, kind: str = "peer",
             note: str = "", model_macs: int = macs) -> None:
        if not dst.exists():
            log(f"building {target}: {name}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(".tmp-" + dst.name)
            build(tmp)
            if tmp.suffix == ".xml":
                os.replace(tmp.with_suffix(".bin"), dst.with_suffix(".bin"))
            os.replace(tmp, dst)
        rows.append(Row(target, name, library, str(dst), weights, model_macs, kind, note))

    def export_to(backend: str):
        def build(tmp: Path) -> None:
            path = get_backend(backend).export(dense, tmp.parent, "stream", stem="staged")
            if path.suffix == ".xml":
                os.replace(path.with_suffix(".bin"), tmp.with_suffix(".bin"))
            os.replace(path, tmp)
        return build

    # onnxruntime
    d = work / "generic-onnx"
    onnx_fp32 = d / "dense.onnx"
    make("generic-onnx", "dense fp32", "torch.onnx", onnx_fp32, "fp32", export_to("onnxruntime"), "reference")
    feeds_file = work / "calibration.npz"
    if not feeds_file.exists():
        feeds = calibration_feeds(onnx_fp32, data)
        np.savez(feeds_file, **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})
    z = np.load(feeds_file)
    feeds = [{} for _ in range(1 + max(int(k.split("/")[0]) for k in z.files))]
    for k in z.files:
        i, name = k.split("/", 1)
        feeds[int(i)][name] = z[k]
    make("generic-onnx", "quantize_dynamic int8 (per-tensor, the default)", "onnxruntime.quantization",
         d / "ort-dynamic.onnx", "int8", lambda t: ort_dynamic(onnx_fp32, t, per_channel=False))
    make("generic-onnx", "quantize_dynamic int8 per-channel", "onnxruntime.quantization",
         d / "ort-dynamic-pc.onnx", "int8", lambda t: ort_dynamic(onnx_fp32, t, per_channel=True))
    make("generic-onnx", f"quantize_static QDQ int8 ({len(feeds)} calibration hops)", "onnxruntime.quantization",
         d / "ort-static.onnx", "int8", lambda t: ort_static(onnx_fp32, t, feeds),
         note="ORT's static quantizer leaves LSTM fp32")

    def pruned_int8(tmp: Path) -> None:
        staged = tmp.with_name("pruned-fp32.onnx")
        net = torch_global_magnitude(dense)
        path = get_backend("onnxruntime").export(net, tmp.parent, "stream", stem="pruned")
        os.replace(path, staged)
        ort_dynamic(staged, tmp, per_channel=True)
        staged.unlink()
    make("generic-onnx", "torch global magnitude 50% + quantize_dynamic int8", "torch.nn.utils.prune + onnxruntime",
         d / "torch-prune50-int8.onnx", "int8", pruned_int8, note="one-shot, no fine-tuning; zeros stored densely")

    # OpenVINO
    d = work / "x86-openvino"
    ir = d / "dense.xml"
    make("x86-openvino", "dense fp32", "openvino.convert_model", ir, "fp32", export_to("openvino"), "reference")
    for mode, label, weights in (("int8", "INT8_ASYM", "int8"), ("int4", "INT4_ASYM g128 all layers", "int4"),
                                 ("cb4", "CB4 codebook g128 all layers", "int4")):
        make("x86-openvino", f"NNCF {label}", "nncf.compress_weights", d / f"nncf-{mode}.xml", weights,
             lambda t, mode=mode: nncf_compress(ir, t, mode),
             note="on ov.convert_model's IR: LSTMSequence weights stay fp32")
    cells = d / "dense-cells.xml"
    if not cells.exists():
        explicit_cell_ir(dense, cells)
    for mode, label, weights in (("int8", "INT8_ASYM", "int8"), ("int4", "INT4_ASYM g128 all layers", "int4")):
        make("x86-openvino", f"NNCF {label}, LSTM as MatMul cells", "nncf.compress_weights",
             d / f"nncf-cells-{mode}.xml", weights, lambda t, mode=mode: nncf_compress(cells, t, mode),
             note="on the IR hwcompress exports (its explicit-cell tracing)")

    # LiteRT
    d = work / "x86-litert"
    tfl = d / "dense.tflite"
    make("x86-litert", "dense fp32", "litert-torch", tfl, "fp32", export_to("litert"), "reference")
    make("x86-litert", "ai-edge-quantizer dynamic_wi8_afp32", "ai-edge-quantizer", d / "aeq-dynamic.tflite", "int8",
         lambda t: aeq(tfl, t, "dynamic_wi8_afp32", None))
    make("x86-litert", "ai-edge-quantizer weight_only_wi8_afp32", "ai-edge-quantizer", d / "aeq-weight-only.tflite",
         "int8", lambda t: aeq(tfl, t, "weight_only_wi8_afp32", None))
    make("x86-litert", f"ai-edge-quantizer static_wi8_ai8 ({len(feeds)} calibration hops)", "ai-edge-quantizer",
         d / "aeq-static.tflite", "int8", lambda t: aeq(tfl, t, "static_wi8_ai8", feeds),
         note="int8 activations and recurrent state")
    return rows


# ---------------------------------------------------------------- scoring


def quality(row: Row, data: Path, items: int, cache_dir: Path) -> dict:
    from hwcompress.evaluate import evaluate_artifact

    p = Path(row.path)
    key = f"{row.target}-{p.stem}-{int(p.stat().st_mtime)}-{items}.json"
    cache = cache_dir / key
    if cache.exists():
        return json.loads(cache.read_text())
    r = evaluate_artifact(p, data, "test", items)
    mean = r["summary"]["overall"]["mean"]
    out = {"n": r["n"], **{m: mean[f"enhanced_{m}"] for m in ("pesq_wb", "stoi", "estoi", "si_sdr")},
           "noisy": {m: mean[f"noisy_{m}"] for m in ("pesq_wb", "stoi", "estoi", "si_sdr")}}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def measure(row: Row, runs: int) -> dict:
    from hwcompress.profile.measure import measure_artifact
    from hwcompress.targets import load_target

    r = measure_artifact(TARGETS[row.target], Path(row.path), load_target(row.target).threads, runs=runs, warmup=50,
                         top=0)
    out = {"median_ms": r.median_ms, "p90_ms": r.p90_ms, "peak_memory_bytes": r.peak_memory_bytes,
           "load_avg": r.host["load_avg"]}
    if TARGETS[row.target] == "openvino":
        from hwcompress.errors import HwcError
        from hwcompress.profile.measure import benchmark_app_latency

        try:  # OpenVINO's own timer on the same IR and threads, as a cross-check of ours
            out["benchmark_app_median_ms"] = benchmark_app_latency(row.path, load_target(row.target).threads,
                                                                   niter=runs)["median_ms"]
        except HwcError as exc:
            out["benchmark_app_error"] = str(exc)
    return out


def usable(rows: list[Row], target: str) -> list[Row]:
    ref = next(r for r in rows if r.target == target and r.kind == "reference")
    return [r for r in rows if r.target == target and r.kind == "peer"
            and r.quality["pesq_wb"] >= ref.quality["pesq_wb"] - USABLE_PESQ_DROP]


def run_fit(target: str, budgets_ms: list[float], budget_bytes: int, work: Path, log) -> Path:
    """`hwcompress fit` in a subprocess (its own progress and caches); returns the report.
    On OpenVINO it exports int4 weights (the runtime's 4-bit path), elsewhere int8."""
    out = work / f"fit-{target}"
    report = out / "report.json"
    ms = ",".join(f"{b:.4f}" for b in budgets_ms)
    cmd = [sys.executable, "-m", "hwcompress", "fit", "--target", target, "--budget-ms", ms,
           "--budget-kb", f"{budget_bytes / 1024:.1f}", "--out", str(out), "--weights", FIT_WEIGHTS[target]]
    if report.exists():
        r = json.loads(report.read_text())
        if [x["budget_ms"] for x in r["results"]] == [round(b, 4) for b in budgets_ms]:
            return report
    log("running: hwcompress " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True)
    return report


# ---------------------------------------------------------------- roofline


def host_ceilings() -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "measure_host.py"), "--json"], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout)


def roofline(row: Row, threads: int, peaks: dict) -> dict:
    t = "2t" if threads >= 2 else "1t"
    int8 = row.weights in ("int8", "int4")
    compute = (peaks[f"torch_gemm_int8_gops_{t}"] if int8 else peaks[f"torch_gemm_fp32_gflops_{t}"]) * 1e9
    in_cache = row.bytes <= L3_BYTES
    if in_cache:
        read = max(peaks[f"l3_read_gbps_torch_{t}_8MiB"], peaks[f"gemv_fp32_l3_gbps_{t}"])
    else:
        read = max(peaks[f"dram_read_gbps_torch_{t}_512MiB"], peaks[f"gemv_fp32_dram_gbps_{t}"])
    compute_ms = 2 * row.macs / compute * 1e3
    memory_ms = row.bytes / (read * 1e9) * 1e3
    attainable = max(compute_ms, memory_ms)
    return {"compute_ms": compute_ms, "memory_ms": memory_ms, "attainable_ms": attainable,
            "bound": "compute" if compute_ms >= memory_ms else ("L3 read" if in_cache else "DRAM read"),
            "achieved_over_attainable": attainable / row.latency["median_ms"]}


# ---------------------------------------------------------------- report


def _fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def write_report(rows: list[Row], peaks: dict, args, versions: dict, seconds: float) -> str:
    from hwcompress.profile.measure import host_cpu
    from hwcompress.targets import load_target

    lines = ["# hwcompress vs the tools users would otherwise pick", "",
             f"Command: `python benchmarks/peers.py --items {args.items} --runs {args.runs} --rounds {args.rounds}` "
             f"({seconds / 60:.0f} min including cached stages). Host: {host_cpu()}. Versions: "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
             f"Model: the shipped default CRN (18.6 M parameters, 74.5 MB fp32). Quality: first {args.items} mixtures of "
             "the real-speech test split, each artifact run hop by hop in its runtime. Latency: MEASURED here, median "
             f"(p90) of {args.runs} streaming hops after 50 warm-up hops, fresh process per artifact, all rows of a "
             f"target timed back to back, {args.rounds} interleaved rounds, the fastest round's median kept "
             "(round spread in peers.json). Bytes: all files the runtime loads. Memory: peak RSS growth "
             "while loading and running. Usable = PESQ-WB within 0.1 of the dense model.", ""]
    for target in TARGETS:
        tg = load_target(target)
        sel = [r for r in rows if r.target == target]
        if not sel:
            continue
        ref = next(r for r in sel if r.kind == "reference")
        noisy = ref.quality["noisy"]
        hwc = next((r for r in sel if r.kind == "hwcompress"), None)  # the matched fit
        lines += [f"## {target}: {tg.runtime} {versions.get(tg.runtime, '')}, {tg.threads} thread(s)", "",
                  f"Noisy input: PESQ-WB {noisy['pesq_wb']:.3f}, STOI {noisy['stoi']:.4f}, "
                  f"SI-SDR {noisy['si_sdr']:.2f} dB.", "",
                  "| method | library | bytes | median ms (p90) | peak MB | PESQ-WB | STOI | SI-SDR dB | "
                  "hwcompress vs it: size / speed / dPESQ / dSTOI | note |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for r in sel:
            q, lat = r.quality, r.latency
            vs = "-"
            if hwc is not None and r is not hwc:
                vs = (f"{_fmt_ratio(r.bytes / hwc.bytes)} smaller / {_fmt_ratio(lat['median_ms'] / hwc.latency['median_ms'])}"
                      f" faster / {hwc.quality['pesq_wb'] - q['pesq_wb']:+.3f} / {hwc.quality['stoi'] - q['stoi']:+.4f}")
            name = f"**{r.name}**" if r.kind == "hwcompress" else r.name
            mem = lat.get("peak_memory_bytes")
            bench = lat.get("benchmark_app_median_ms")
            timing = f"{lat['median_ms']:.3f} ({lat['p90_ms']:.3f})" + (f"; benchmark_app {bench:.3f}" if bench else "")
            lines.append(f"| {name} | {r.library} | {r.bytes} | {timing} | "
                         f"{mem / 1e6 if mem is not None else float('nan'):.1f} | {q['pesq_wb']:.3f} | {q['stoi']:.4f} | "
                         f"{q['si_sdr']:.2f} | {vs} | {r.note} |")
        lines.append("")
    spreads = sorted(max(r.latency["round_medians_ms"]) / min(r.latency["round_medians_ms"]) - 1 for r in rows
                     if len(r.latency.get("round_medians_ms", [])) > 1)
    if spreads:
        lines += [f"Round-to-round spread (slowest / fastest round median - 1) over {len(spreads)} artifacts: median "
                  f"{100 * spreads[len(spreads) // 2]:.1f}%, max {100 * spreads[-1]:.1f}%.", ""]
    again = [(r.latency["median_ms"], args.pass1[r.path]) for r in rows if r.path in args.pass1]
    if again:
        dev = sorted(abs(a / b - 1) for a, b in again)
        lines += [f"Repeatability of the timing: {len(again)} peer artifacts were also timed in an earlier pass of the "
                  f"same run (to set the budgets); the two medians differ by {100 * dev[len(dev) // 2]:.1f}% (median) and "
                  f"at most {100 * dev[-1]:.1f}%.", ""]
    # roofline
    lines += ["## Roofline: achieved / attainable per hop", "",
              "Ceilings measured in this run by `tools/measure_host.py` (best of N): "
              + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items() if isinstance(v, float) and "load" not in k) + ".",
              "Attainable = max(2 x MACs / GEMM peak (int8 peak for int8/int4 weights, fp32 otherwise), weight bytes / "
              "read rate (L3 if the artifact fits in 32 MiB, else DRAM; the better of a streaming sum and a GEMV)). "
              "Weight bytes = artifact bytes.", "",
              "| target | model | MACs / hop | bytes | bound | attainable ms | measured ms | achieved / attainable |",
              "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        if r.kind == "peer" and "roofline" not in r.latency:
            continue
        rf = r.latency["roofline"]
        lines.append(f"| {r.target} | {r.name} | {r.macs / 1e6:.1f} M | {r.bytes} | {rf['bound']} | "
                     f"{rf['attainable_ms']:.3f} | {r.latency['median_ms']:.3f} | {rf['achieved_over_attainable']:.0%} |")
    lines.append("")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, len(TARGETS), figsize=(5.5 * len(TARGETS), 4.6))
    for ax, target in zip(axes, TARGETS):
        sel = [r for r in rows if r.target == target]
        if not sel:
            continue
        noisy = sel[0].quality["noisy"]["pesq_wb"]
        shown = [r for r in sel if r.quality["pesq_wb"] >= noisy]
        off = [r.name.split("(")[0].strip() for r in sel if r not in shown]
        for i, r in enumerate(shown):
            color = {"reference": "grey", "peer": "tab:blue", "hwcompress": "tab:red"}[r.kind]
            ax.scatter(r.latency["median_ms"], r.quality["pesq_wb"], s=max(15, r.bytes / 3e5), color=color, alpha=0.6)
            ax.annotate(str(i + 1), (r.latency["median_ms"], r.quality["pesq_wb"]), fontsize=8,
                        xytext=(4, 4 if i % 2 else -10), textcoords="offset points")
        legend = "\n".join(f"{i + 1} {r.name.split(':')[0].split('(')[0][:38]}" for i, r in enumerate(shown))
        ax.text(0.99, 0.02, legend, transform=ax.transAxes, fontsize=6, ha="right", va="bottom",
                bbox=dict(facecolor="white", alpha=0.8, lw=0))
        ax.axhline(noisy, color="k", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{target}; marker area ~ bytes; red = hwcompress" + (f"\nbelow noisy, not shown: {', '.join(off)}"
                                                                          if off else ""), fontsize=8)
        ax.set_xlabel("measured median ms per 10 ms hop (log)")
        ax.set_ylabel("PESQ-WB (dotted: noisy input)")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=60, help="test mixtures scored per artifact")
    p.add_argument("--runs", type=int, default=500, help="timed hops per artifact and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the fastest round's median is kept")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "peers")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--stop-after", choices=("build", "quality", "fit"), help="stop early (e.g. build on a busy host)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "peers.md")
    args = p.parse_args(argv)

    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.export.probe import artifact_bytes, runtime_version
    from hwcompress.models.io import load_model
    from hwcompress.targets import load_target

    started = time.time()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    wanted = args.targets.split(",")
    data = ensure_default_corpus()
    dense = load_model("default").eval()
    rows = [r for r in build_peers(dense, data, args.work, log) if r.target in wanted]
    for r in rows:
        r.bytes = artifact_bytes(r.path)
    if args.stop_after == "build":
        return 0
    for r in rows:
        log(f"quality {r.target}: {r.name}")
        r.quality = quality(r, data, args.items, args.work / "quality")
    if args.stop_after == "quality":
        return 0

    # pass 1: time the peers, to set hwcompress's budgets (cached: the budgets must not drift between reruns)
    budgets_file = args.work / "budgets.json"
    budgets = json.loads(budgets_file.read_text()) if budgets_file.exists() else {}
    for target in wanted:
        if target in budgets:
            continue
        cands = usable(rows, target)
        for r in cands:
            log(f"timing (pass 1) {target}: {r.name}")
            r.latency = measure(r, args.runs)
        budgets.setdefault("pass1_ms", {}).update({r.path: r.latency["median_ms"] for r in cands})
        fastest = min(cands, key=lambda r: r.latency["median_ms"])
        smallest = min(cands, key=lambda r: r.bytes)
        budgets[target] = {"budget_ms": fastest.latency["median_ms"], "latency_of": fastest.name,
                           "budget_bytes": smallest.bytes, "bytes_of": smallest.name}
        budgets_file.write_text(json.dumps(budgets, indent=1))

    for target in wanted:
        b = budgets[target]
        # matched: no slower and no larger than the best usable peer; and twice as fast, where no peer goes
        try:
            report_file = run_fit(target, [b["budget_ms"], b["budget_ms"] / 2], b["budget_bytes"], args.work, log)
        except subprocess.CalledProcessError:  # half the latency may be out of reach (fit says so): matched only
            report_file = run_fit(target, [b["budget_ms"]], b["budget_bytes"], args.work, log)
        report = json.loads(report_file.read_text())
        for res, label in zip(report["results"], ("matched", "2x faster")):
            row = Row(target, f"hwcompress fit, {label}: <= {res['budget_ms']:.3f} ms, <= {b['budget_bytes']} B",
                      "hwcompress", res["runtime_artifact"]["path"], FIT_WEIGHTS[target],
                      int(res["macs_per_frame"]["after"]),
                      "hwcompress", note=(f"latency budget from: {b['latency_of']}; " if label == "matched" else "")
                      + f"size budget from: {b['bytes_of']}; .hwc {res['size_bytes']} B")
            row.bytes = artifact_bytes(row.path)
            row.quality = quality(row, data, args.items, args.work / "quality")
            rows.append(row)
    if args.stop_after == "fit":
        return 0

    # pass 2: every artifact of a target timed back to back, --rounds times interleaved; the
    # round with the lowest median stands (a shared VM's neighbours only ever add time), the
    # spread of the round medians is kept to show how much the machine moved
    for target in wanted:
        sel = [r for r in rows if r.target == target]
        rounds: dict[str, list[dict]] = {r.path: [] for r in sel}
        for k in range(args.rounds):
            for r in sel:
                log(f"timing {target} (round {k + 1}/{args.rounds}): {r.name}")
                rounds[r.path].append(measure(r, args.runs))
        for r in sel:
            got = rounds[r.path]
            r.latency = dict(min(got, key=lambda m: m["median_ms"]))
            r.latency["round_medians_ms"] = [m["median_ms"] for m in got]
            apps = [m["benchmark_app_median_ms"] for m in got if "benchmark_app_median_ms" in m]
            if apps:
                r.latency["benchmark_app_median_ms"] = min(apps)
    peaks = host_ceilings()
    for r in rows:
        if r.kind in ("reference", "hwcompress") or r.name.startswith("quantize_dynamic int8 per-channel"):
            r.latency["roofline"] = roofline(r, load_target(r.target).threads, peaks)
    # runtime_version falls back to the distribution's metadata, so it serves the libraries too
    versions = {k: runtime_version(k) for k in ("onnxruntime", "openvino", "litert", "nncf", "ai-edge-quantizer",
                                                 "torch")}
    args.pass1 = budgets.get("pass1_ms", {})
    text = write_report(rows, peaks, args, versions, time.time() - started)
    write_keeping_reading(args.out, text)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "ceilings": peaks,
                                                         "budgets": budgets, "versions": versions}, indent=1,
                                                        default=float))
    plot(rows, args.out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
