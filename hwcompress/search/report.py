"""The fit report in three forms: report.json (machine-readable, schema in
docs/fit-report.md), report.md (tables) and report.html (search/html.py: rendered tables,
plots and a listening example, self-contained: PNGs and WAVs are embedded as data URIs so
the file can be mailed or attached to CI). The example WAVs are also written next to the
report, in example/."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on build machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from hwcompress.errors import HwcError  # noqa: E402
from hwcompress.export import CAPABILITIES  # noqa: E402
from hwcompress.search.html import DNSMOS_COLUMNS, Clip, Example, LayerTimes, dnsmos_note, render  # noqa: E402


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1000 else f"{x:.{digits}f}"
    return str(x)


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency and higher quality are better)."""
    keep = []
    for i, (lat, q) in enumerate(points):
        if not any((l2 <= lat and q2 >= q) and (l2 < lat or q2 > q) for j, (l2, q2) in enumerate(points) if j != i):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


DNSMOS_KEYS = DNSMOS_COLUMNS  # (report key, column label) of the DNSMOS quality columns


def _mos(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) or x != x else f"{x:.2f}"


def summary_rows(report: dict) -> list[dict]:
    rows = []
    for r in report["results"]:
        q = r["quality"]
        rows.append({
            "budget_ms": r["budget_ms"], "latency_ms": r["latency_ms"], "latency_source": r["latency_source"],
            "budget_met": r["budget_met"], "runtime_bytes": r["runtime_artifact_bytes"], "hwc_bytes": r["size_bytes"],
            "pesq_wb": q["compressed"]["pesq_wb"], "stoi": q["compressed"]["stoi"], "si_sdr": q["compressed"]["si_sdr"],
            **{k: q["compressed"].get(k) for k, _ in DNSMOS_KEYS},
        })
    return rows


def markdown(report: dict) -> str:
    r0 = report["results"][0]
    q = r0["quality"]
    mos = dnsmos_note(report)
    mos_cols = DNSMOS_KEYS if mos else ()
    lines = [f"# hwcompress fit: {report['model']} on {report['target']}", "",
             f"Command: `{report.get('command') or 'hwcompress fit (library call)'}`", "",
             *([f"Model weights: {report['model_licence']}.", ""] if report.get("model_licence") else []),
             f"Target: {report['target_description']}. Runtime {r0['runtime']} {r0['runtime_version'] or ''}, "
             f"{r0['threads']} thread(s), {r0.get('activations') or 'f32'} activations, device: {r0['device']}.", "",
             "| budget ms | latency ms | source | budget met | runtime artifact B | .hwc B | PESQ-WB | STOI | SI-SDR dB |"
             + "".join(f" {label} |" for _, label in mos_cols),
             "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(mos_cols)]
    for s in summary_rows(report):
        lines.append(f"| {s['budget_ms']:g} | {s['latency_ms']:.3f} | {s['latency_source']} | {'yes' if s['budget_met'] else 'NO'} "
                     f"| {s['runtime_bytes']} | {s['hwc_bytes']} | {s['pesq_wb']:.3f} | {s['stoi']:.3f} | {s['si_sdr']:.2f} |"
                     + "".join(f" {_mos(s[k])} |" for k, _ in mos_cols))

    def mos_text(row: dict) -> str:
        return "".join(f", {label} {_mos(row.get(k))}" for k, label in mos_cols)

    lines += ["", f"Quality on the real-speech test split ({q['n']} mixtures): noisy PESQ-WB {q['noisy']['pesq_wb']:.3f}, "
              f"STOI {q['noisy']['stoi']:.3f}, SI-SDR {q['noisy']['si_sdr']:.2f} dB{mos_text(q['noisy'])}; dense model PESQ-WB "
              f"{q['baseline']['pesq_wb']:.3f}, STOI {q['baseline']['stoi']:.3f}, SI-SDR {q['baseline']['si_sdr']:.2f} dB"
              f"{mos_text(q['baseline'])}. Compressed rows: {q.get('scored', 'the compressed model in torch (f32)')}.", ""]
    if mos:
        lines += [f"DNSMOS columns: {mos}; non-intrusive (no clean reference), 1-5, higher is better. "
                  "DNSMOS models by Microsoft (MIT licence).", ""]
    for r in report["results"]:
        lines += [f"## Budget {r['budget_ms']:g} ms", "",
                  f"- latency: **{r['latency_ms']:.3f} ms per hop, {r['latency_source'].upper()}** ({r['latency_how']})",
                  *([f"- timed on pool host {r['measured_on']['host']} ({r['measured_on']['machine']}, "
                     f"{r['measured_on']['cpu']})" + (f"; note: {r['measured_on']['warning']}"
                                                     if r["measured_on"].get("warning") else "")]
                    if r.get("measured_on") else []),
                  f"- roofline prediction for this model: {r['predicted_ms']:.3f} ms",
                  f"- runtime artifact: {r['runtime_artifact_bytes']} B ({', '.join(Path(f).name for f in r['files']['runtime'])}), "
                  f"parity vs torch: max |diff| {r['parity_vs_torch']['max_abs_diff']:.2e}, SNR {r['parity_vs_torch']['snr_db']:.1f} dB",
                  f"- .hwc artifact: {r['size_bytes']} B ({r['dense_fp32_bytes'] / r['size_bytes']:.1f}x smaller than fp32)",
                  f"- peak memory: {r['peak_memory_bytes']} B, {r['peak_memory_source']} ({r['peak_memory_method']}); "
                  f"RAM budget {r.get('memory_budget_bytes')} B" + (
                      f", searched with RAM = {r['ram_model']['fixed_bytes']:.0f} B + {r['ram_model']['bytes_per_weight']:.2f} B "
                      f"per weight ({r['ram_model']['how']})" if r.get("ram_model") else ""),
                  f"- MACs per frame: {r['macs_per_frame']['before']} -> {r['macs_per_frame']['after']}"]
        emu = r.get("emulated_check")
        if emu:
            lines.append("- emulated functional check: " + (
                f"ran {emu['hops']} hops under {emu.get('emulator')}, max |diff| vs this host {emu['max_abs_diff_vs_host']:.2e} "
                f"(SNR {emu.get('snr_db_vs_host', float('nan')):.1f} dB); "
                f"emulator time {emu['emulated_median_ms']:.2f} ms/hop is NOT device latency" if emu.get("ran")
                else f"not run ({emu.get('reason')})"))
        lines += ["", "| layer | kind | params before | params | MACs/frame | structured | unstructured | K | .hwc B |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for layer in r["layers"]:
            lines.append(f"| {layer['name']} | {layer['kind']} | {layer['params_before']} | {layer['params']} | "
                         f"{layer['macs_per_frame']} | {layer['structured_sparsity']:.3f} | {layer['unstructured_sparsity']:.1f} | "
                         f"{layer['k'] or '-'} | {layer['hwc_bytes'] or '-'} |")
        lines.append("")
        if r.get("layer_widths"):
            lines += ["Runtime weight widths per layer (read back from the file): " + ", ".join(
                f"{layer} {w}" for layer, w in r["layer_widths"].items()) + ".", ""]
        if r.get("tflm_weights"):
            lines += tflm_lines(r)
        st = r.get("tflm_storage")
        if st:
            lines += [f"TFLite Micro weight storage: shipped **{st['shipped']}** ({st['why']}): LUT file {st['lut_bytes']} B, "
                      f"{st['lut_ms']:.3f} ms predicted (TFLM decodes LUT weights on every invoke); int8 file "
                      f"{st['int8_bytes']} B, {st['int8_ms']:.3f} ms predicted; budgets {st['budget_ms']:g} ms, "
                      f"{st['budget_bytes']} B.", ""]
        if r.get("per_op"):
            lines += per_op_lines(r["per_op"])

    ex = report.get("example")
    if ex:
        m = ex["mixture"]
        lines += [f"Listening example (test mixture {m['id']}, {m['noise_kind']} noise at {m['snr_db']} dB SNR, "
                  f"{ex['seconds']:g} s; SI-SDR vs clean): " + ", ".join(
                      f"{path}" + (f" ({ex['si_sdr_db'][key]:.2f} dB)" if key in ex["si_sdr_db"] else "")
                      for key, path in ex["files"].items()) + ". Players and spectrograms: report.html.", ""]
    lines += pool_lines(report.get("pool"))
    lines.append(f"Run time {report['seconds'] / 60:.1f} min"
                 + (f" (torch on {report['torch_device']}: fine-tuning, sensitivity, torch scoring)"
                    if report.get("torch_device") else "") + ".")
    return "\n".join(lines) + "\n"


def pool_lines(pool: dict | None) -> list[str]:
    """The device pool the latencies were timed on: each host, its status and what it reported."""
    if not pool:
        return []
    lines = ["## Device pool", "", f"Latencies timed over SSH on these hosts ({pool['how']}):", "",
             "| host | serves | status | measurements | machine | CPU | runtime | why down |",
             "| --- | --- | --- | ---: | --- | --- | --- | --- |"]
    for h in pool["hosts"]:
        cells = [h["host"], h["serves"], h["status"], h["measurements"], h.get("machine") or "-", h.get("cpu") or "-",
                 h.get("runtime") or "-", h.get("reason") or ""]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return lines + [""]


def tflm_lines(r: dict) -> list[str]:
    """The TFLite Micro file's weights per tensor: the search's K for its layer, how it is stored
    (LUT: ceil(log2 values)-bit indices into int8 value tables; or plain int8) and its bytes."""
    rows = r["tflm_weights"]
    lut = [w for w in rows if w["storage"] == "lut"]
    lines = [f"TFLite Micro weights (read back from {Path(r['runtime_artifact']['path']).name}): "
             f"{len(lut)} of {len(rows)} weight tensors LUT-encoded, {sum(w['bytes'] for w in rows)} B of "
             f"{r['runtime_artifact_bytes']} B in the file; tensor arena {r['peak_memory_bytes']} B "
             f"({r['peak_memory_source']}, budget {r['memory_budget_bytes']} B).", "",
             "| layer | op | shape | K | storage | index bits | bytes |", "| --- | --- | --- | ---: | --- | ---: | ---: |"]
    for w in rows:
        lines.append(f"| {w.get('layer') or '-'} | {w['op']} | {'x'.join(str(d) for d in w['shape'])} | "
                     f"{w.get('k') or '-'} | {w['storage']} | {w['index_bits']} | {w['bytes']} |")
    return lines + [""]


def per_op_lines(p: dict, top: int = 12) -> list[str]:
    """Predicted cycles of the exported file per cycle figure, and its costliest operators."""
    lines = [f"Per-op latency, PREDICTED (no device attached): {p['ops']} TFLite Micro operators, "
             f"{p['cycles'] / 1e6:.2f} M cycles = {p['cycles'] / p['clock_mhz'] / 1e3:.3f} ms at {p['clock_mhz']:g} MHz, "
             f"{p['macs']} MACs.", "",
             "| cycle figure | ops | M cycles | ms | share |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, f in p["by_figure"].items():
        lines.append(f"| {name} | {f['ops']} | {f['cycles'] / 1e6:.3f} | {f['ms']:.3f} | {f['share']:.1%} |")
    lines += ["", f"Costliest {min(top, len(p['layers']))} operators:", "",
              "| # | op | precision | MACs | elements | flash B | bound | ms |",
              "| ---: | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for row in sorted(p["layers"], key=lambda x: -x["cycles"])[:top]:
        lines.append(f"| {row['index']} | {row['op']} | {row['precision']} | {row['macs']} | {row['elements']} | "
                     f"{row['flash_bytes']} | {row['bound']} | {row['ms']:.3f} |")
    return lines + [""]


def _png(fig, fmt: str = "png") -> str:
    """Base64 of the figure as PNG, or JPEG (noise-like images: spectrograms are ~10x smaller)."""
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"quality": 85}} if fmt == "jpeg" else {}
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight", **extra)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict, widths: dict[float, dict[str, tuple]] | None = None,
          layer_times: dict[float, LayerTimes] | None = None) -> dict[str, str]:
    """Base64 PNGs: `tradeoff` (quality vs latency and vs bytes, with the noisy input, the
    dense model, the dense int8 baseline and every budget), `layers-<B>` (per-layer
    structured sparsity, K and runtime width kept) and `times-<B>` (measured per-node
    latency) for every budget B."""
    res = report["results"]
    q0 = res[0]["quality"]
    cal = report["calibration"]
    base = cal["log"][0] if cal.get("log") else {}
    weights = report["settings"].get("weights", "int8")
    dense_q = q0["baseline"]["pesq_wb"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.3), gridspec_kw={"width_ratios": [1.15, 1]})
    pts = [(r["latency_ms"], r["quality"]["compressed"]["pesq_wb"]) for r in res]
    sizes = [r["runtime_artifact_bytes"] for r in res]
    biggest = max(sizes + [base.get("bytes") or 0])
    area = lambda b: 30 + 300 * b / biggest  # noqa: E731
    src = res[0]["latency_source"]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[area(b) for b in sizes], color="C0", alpha=0.75,
               edgecolor="k", lw=0.5, zorder=3, label=f"fitted, per budget ({src} latency)")
    for r in res:
        ax.axvline(r["budget_ms"], color="grey", lw=0.7, ls=":", zorder=1)
    front = pareto(pts)
    if len(front) > 1:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="C0", lw=1, label="Pareto front")
    base_ms = base.get("measured_ms")
    base_how = "measured"
    if base_ms is None:
        base_ms, base_how = base.get("predicted_ms"), "predicted"
    if base_ms is not None and base.get("bytes"):
        ax.scatter([base_ms], [dense_q], marker="s", s=area(base["bytes"]), color="C1", edgecolor="k", lw=0.5,
                   zorder=3, label=f"dense {weights} baseline ({base_how} latency, fp32 quality)")
    ax.axhline(dense_q, color="C2", lw=0.9, ls="--", label="dense model quality (fp32)")
    ax.axhline(q0["noisy"]["pesq_wb"], color="C3", lw=0.9, ls="--", label="noisy input")
    ax.set_xlabel("latency per 10 ms hop (ms)")
    ax.set_ylabel(f"PESQ-WB, test split ({q0['n']} mixtures)")
    ax.set_xlim(left=0)
    ax.set_title("quality vs latency (marker area = runtime bytes)", fontsize=10)
    _legend_below(ax)
    ax.grid(alpha=0.25)

    kb = 1024
    bx.scatter([res[0]["dense_fp32_bytes"] / kb], [dense_q], marker="D", s=45, color="C2", edgecolor="k", lw=0.5,
               zorder=3, label="dense model, fp32 weights")
    if base.get("bytes"):
        bx.scatter([base["bytes"] / kb], [dense_q], marker="s", s=45, color="C1", edgecolor="k", lw=0.5, zorder=3,
                   label=f"dense {weights} runtime artifact (fp32 quality)")
    bx.scatter([b / kb for b in sizes], [p[1] for p in pts], s=45, color="C0", edgecolor="k", lw=0.5, zorder=3,
               label=f"fitted: {weights} runtime artifact")
    bx.scatter([r["size_bytes"] / kb for r in res], [p[1] for p in pts], s=45, marker="^", facecolor="none",
               edgecolor="C0", lw=1.2, zorder=3, label="fitted: .hwc file (codebooks)")
    shown = [res[0]["dense_fp32_bytes"], *sizes, *[r["size_bytes"] for r in res]]
    if res[0]["budget_bytes"] <= 10 * max(shown):
        bx.axvline(res[0]["budget_bytes"] / kb, color="grey", lw=0.7, ls=":", label="size budget")
    bx.axhline(q0["noisy"]["pesq_wb"], color="C3", lw=0.9, ls="--")
    bx.set_xscale("log")
    bx.margins(x=0.25)
    bx.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    bx.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    bx.xaxis.set_minor_formatter(ticker.NullFormatter())
    bx.set_xlabel("KiB (log scale)")
    bx.set_title("quality vs size", fontsize=10)
    _legend_below(bx)
    bx.grid(alpha=0.25, which="both")
    ys = [p[1] for p in pts] + [dense_q, q0["noisy"]["pesq_wb"]]
    pad = max(0.05, 0.08 * (max(ys) - min(ys)))
    for a in (ax, bx):
        a.set_ylim(min(ys) - pad, max(ys) + pad)
    fig.tight_layout()  # the limits and layout the labels are placed against
    for a, xs in ((ax, [p[0] for p in pts]), (bx, [b / kb for b in sizes])):
        for label, xy in _labels(a, res, xs, [p[1] for p in pts]):
            a.annotate(label, xy, textcoords="offset points", xytext=(8, 6), fontsize=8)
    fig.suptitle(f"{report['model']} on {report['target']}", fontsize=11)
    fig.tight_layout()
    out = {"tradeoff": _png(fig)}

    for r in res:
        b = f"{r['budget_ms']:g}"
        names = [layer["name"] for layer in r["layers"]]
        x = range(len(names))
        fig, ax1 = plt.subplots(figsize=(9, 3.4))
        ax1.bar(x, [layer["structured_sparsity"] for layer in r["layers"]], color="C0", alpha=0.8,
                label="structured sparsity (units removed)")
        w = (widths or {}).get(r["budget_ms"], {})
        kept = [w[n][1] / w[n][0] if n in w and w[n][0] else None for n in names]
        if any(k is not None for k in kept):
            ax1.plot([i for i, k in zip(x, kept) if k is not None], [k for k in kept if k is not None], "s",
                     color="C2", ms=6, label="runtime width kept (units after / before)")
        ax1.set_ylim(0, 1.05)
        ax1.set_ylabel("fraction")
        ax1.set_xticks(list(x), names, rotation=40, ha="right", fontsize=8)
        ax2 = ax1.twinx()
        ks = [layer["k"] for layer in r["layers"]]
        ax2.plot([i for i, k in zip(x, ks) if k], [k for k in ks if k], "o", color="C3", ms=6, label="codebook size K")
        ax2.set_yscale("log", base=2)
        ax2.set_ylim(1, 512)
        ax2.set_ylabel("K (.hwc codebook)")
        h1, l1 = ax1.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax1.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
                   frameon=False)
        fig.tight_layout()
        out[f"layers-{b}"] = _png(fig)

        t = (layer_times or {}).get(r["budget_ms"])
        if t is not None and t.rows:
            rows = t.rows[::-1]
            fig, ax = plt.subplots(figsize=(9, 0.6 + 0.28 * len(rows)))
            ax.barh(range(len(rows)), [row["ms"] * 1e3 for row in rows], color="C4")
            ax.set_yticks(range(len(rows)), [_short(row["name"]) for row in rows], fontsize=7.5)
            ax.set_xlabel("median time per hop (\u00b5s), measured with the runtime profiler")
            ax.set_title(f"per-node latency, budget {b} ms ({r['runtime']})", fontsize=10)
            ax.grid(alpha=0.25, axis="x")
            fig.tight_layout()
            out[f"times-{b}"] = _png(fig)
    return out


def _labels(ax, res: list[dict], xs: list[float], ys: list[float], px: float = 22) -> list[tuple[str, tuple]]:
    """One label per visually distinct point: budgets whose points are drawn within `px`
    pixels of each other (often the same model) share one label."""
    where = ax.transData.transform(np.column_stack([xs, ys]))
    groups: list[tuple[int, list[str]]] = []
    for i, r in enumerate(res):
        for first, budgets in groups:
            if np.hypot(*(where[first] - where[i])) < px:
                budgets.append(f"{r['budget_ms']:g}")
                break
        else:
            groups.append((i, [f"{r['budget_ms']:g}"]))
    return [(f"{', '.join(bs)} ms budget{'s' if len(bs) > 1 else ''}", (xs[i], ys[i])) for i, bs in groups]


def _legend_below(ax) -> None:
    leg = ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for h in leg.legend_handles:  # the plot's marker areas encode bytes; the legend's need not
        if hasattr(h, "set_sizes"):
            h.set_sizes([36])


def _short(name: str, n: int = 48) -> str:
    return name if len(name) <= n else "\u2026" + name[-(n - 1):]


# ------------------------------------------------------------ listening example

EXAMPLE_SECONDS = (4.0, 6.0)  # wanted length of the example clip
EXAMPLE_SNR_DB = 5.0  # noise clearly audible, speech still intelligible


def pick_mixture(data: Path) -> dict:
    """The test-split mixture for the listening example: 4-6 s long, at the SNR closest
    to 5 dB, then the length closest to 5 s; ties go to the first in the corpus' order,
    so reruns pick the same one."""
    from hwcompress.data.loader import check_corpus

    meta = Path(check_corpus(data)) / "mix" / "test.json"
    try:
        rows = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HwcError(f"{meta}: cannot read the test set ({exc})") from None
    if not rows:
        raise HwcError(f"{meta}: the test set is empty")
    lo, hi = EXAMPLE_SECONDS
    fits = [row for row in rows if lo <= float(row.get("seconds", 0)) <= hi]
    if not fits:  # a corpus of short prompts only: the longest one
        return max(rows, key=lambda row: float(row.get("seconds", 0)))
    return min(fits, key=lambda row: (abs(float(row.get("snr_db", 0)) - EXAMPLE_SNR_DB),
                                      abs(float(row["seconds"]) - (lo + hi) / 2)))


def _spectrograms(clips: list[Clip], audio: dict[str, np.ndarray], sr: int) -> str:
    from scipy.signal import spectrogram

    specs = {}
    for c in clips:
        f, t, sxx = spectrogram(audio[c.key], fs=sr, nperseg=512, noverlap=256, window="hann")
        specs[c.key] = 10 * np.log10(sxx + 1e-12)
    top = max(float(s.max()) for s in specs.values())
    fig, axes = plt.subplots(len(clips), 1, figsize=(9, 1.6 * len(clips) + 0.5), sharex=True, squeeze=False,
                             layout="constrained")
    for ax, c in zip(axes[:, 0], clips):
        im = ax.imshow(specs[c.key], origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                       extent=(0, t[-1] if len(t) else 0, 0, f[-1] / 1000))
        ax.set_ylabel("kHz", fontsize=8)
        ax.set_title(c.label + (f"  (SI-SDR {c.si_sdr_db:.2f} dB)" if c.si_sdr_db is not None else ""),
                     fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("time (s)", fontsize=8)
    fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.9, pad=0.01, label="dB")
    return _png(fig, "jpeg")


def example(report: dict, out: Path, dense: Any, data: Path | None) -> tuple[Example | None, str]:
    """Enhance one noisy test mixture with the dense model and every budget's fitted
    model (torch, the .hwc file as loaded), write the WAVs to out/example/ and return them
    for the page. Without a corpus, None and why."""
    from hwcompress.audio import load_audio, save_audio
    from hwcompress.enhance import enhance
    from hwcompress.metrics import si_sdr
    from hwcompress.models.io import load_model

    if data is None and report["settings"].get("data"):
        data = Path(report["settings"]["data"])
    if data is None:
        report.pop("example", None)
        return None, "no listening example: the fit was given no corpus to draw a test mixture from"
    sr = 16000
    row = pick_mixture(Path(data))
    mix_dir = Path(data) / "mix" / "test"
    noisy = load_audio(mix_dir / f"{row['id']}_noisy.wav", sr)[: int(EXAMPLE_SECONDS[1] * sr)]
    clean = load_audio(mix_dir / f"{row['id']}_clean.wav", sr)[: noisy.size]
    dense = dense if dense is not None else load_model(report["model"])
    audio = {"noisy": noisy, "dense": enhance(dense.eval(), noisy)}
    labels = {"noisy": "noisy input", "dense": "dense model"}
    for r in report["results"]:
        key = f"fitted-{r['budget_ms']:g}ms"
        audio[key] = enhance(load_model(r["files"]["hwc"], template=dense).eval(), noisy)
        labels[key] = f"fitted, {r['budget_ms']:g} ms budget"
    audio["clean"], labels["clean"] = clean, "clean reference"
    clips = []
    ex_dir = Path(out) / "example"
    for key, x in audio.items():
        path = ex_dir / f"{key}.wav"
        save_audio(path, x, sr)  # atomic; 16-bit PCM
        clips.append(Clip(key=key, label=labels[key], wav=path.read_bytes(), file=f"example/{key}.wav",
                          seconds=x.size / sr, si_sdr_db=None if key == "clean" else si_sdr(clean, x)))
    how = ("Enhanced whole-utterance in torch by the dense model and by each budget's compressed model as loaded "
           "from its model.hwc (pruned, shrunk, codebook weights); the runtime artifact's int8 rounding is not "
           "heard here. SI-SDR of each clip against the clean reference; levels are not normalised.")
    ex = Example(mixture={k: row.get(k) for k in ("id", "snr_db", "noise_kind", "speaker", "seconds")},
                 clips=clips, how=how)
    ex.spectrogram_jpeg = _spectrograms(clips, audio, sr)
    report["example"] = {"set": "test", "mixture": ex.mixture, "seconds": round(noisy.size / sr, 3),
                         "files": {c.key: c.file for c in clips},
                         "si_sdr_db": {c.key: c.si_sdr_db for c in clips if c.si_sdr_db is not None}, "how": how}
    return ex, ""


# ------------------------------------------------------------ per layer: width, roofline, measured times

#: runtimes whose per-node profiler measure_artifact reads (Capabilities.layer_profiler)
PROFILED_RUNTIMES = tuple(n for n, c in CAPABILITIES.items() if c.layer_profiler)
LAYER_TIME_RUNS = 100
LAYER_TIME_TOP = 12


def layer_details(report: dict, dense: Any, target: Any = None) -> tuple[dict, dict, dict]:
    """Per budget: {layer: (units before, after)}, {layer: roofline ms} and the measured
    per-node times of its runtime artifact (a fresh profiled run, where the target is this
    machine and its runtime has a profiler). Also stored in the report (docs/fit-report.md)."""
    from hwcompress.export import WEIGHT_BITS
    from hwcompress.models.cost import layer_costs
    from hwcompress.models.io import load_model
    from hwcompress.profile.latency_model import predict_latency
    from hwcompress.profile.measure import measure_artifact
    from hwcompress.targets import load_target

    dense = dense if dense is not None else load_model(report["model"])
    before = {row["name"]: row["out_shape"][0] for row in layer_costs(dense)}
    # the fit's own Target when given: a target given as a TOML path is not in the registry
    target = target if target is not None else load_target(report["target"])
    bits = WEIGHT_BITS[report["settings"].get("weights", "int8")]
    widths, roofline, times = {}, {}, {}
    for r in report["results"]:
        net = load_model(r["files"]["hwc"], template=dense).eval()
        after = {row["name"]: row["out_shape"][0] for row in layer_costs(net)}
        widths[r["budget_ms"]] = {n: (before[n], after.get(n, before[n])) for n in before}
        pred = predict_latency(net, target, bits, use_table=False)
        roofline[r["budget_ms"]] = {row["name"]: row["ms"] for row in pred.layers}
        for layer in r["layers"]:
            w = widths[r["budget_ms"]].get(layer["name"])
            layer["width_before"], layer["width"] = (w if w else (None, None))
            layer["predicted_ms"] = roofline[r["budget_ms"]].get(layer["name"])
        path = Path(r["runtime_artifact"]["path"])
        if r["latency_source"] != "measured":
            t = LayerTimes(source="the target is not this machine; the per-layer figures in the table are the roofline's")
        elif r["runtime"] not in PROFILED_RUNTIMES:
            t = LayerTimes(source=f"{r['runtime']} exposes no per-op profiler here")
        elif not path.is_file():
            t = LayerTimes(source=f"runtime artifact {path} is gone")
        else:
            try:
                m = measure_artifact(r["runtime"], path, r["threads"], runs=LAYER_TIME_RUNS, warmup=10, top=LAYER_TIME_TOP)
                t = LayerTimes(rows=m.layers, source=m.layers_source, total_ms=m.layers_total_ms,
                               count=m.layers_count or len(m.layers))
            except HwcError as exc:
                t = LayerTimes(source=f"profiled run failed: {exc}")
        times[r["budget_ms"]] = t
        r["layer_latency"] = {"latency_source": "measured" if t.rows else None, "source": t.source,
                              "nodes": t.rows, "nodes_total_ms": t.total_ms, "node_count": t.count}
    if len(report["results"]) == 1 and "budget_ms" in report:  # one budget: its fields are also at the top level
        report["layer_latency"] = report["results"][0]["layer_latency"]
    return widths, roofline, times


def write_reports(report: dict, out: Path, model: Any = None, data: Path | None = None, target: Any = None) -> None:
    """report.json, report.md, report.html (+ example/*.wav, command.txt) in `out`.
    `model`: the dense model (loaded from report["model"] when None; a zoo preset name
    then gives a fresh initialisation, so pass the model); `data`: the corpus the listening
    example's test mixture comes from (settings' data when None; no example without one).
    `target`: the fit's Target (loaded by report["target"], a registry name, when None).
    The report stage adds `example`, `layer_latency` and per-layer widths to `report`."""
    out = Path(out)
    widths, roofline, times = layer_details(report, model, target)
    ex, reason = example(report, out, model, data)
    page = render(report, plots(report, widths, times), ex, reason, times, widths, roofline)
    md = markdown(report)
    _atomic_write(out / "report.json", json.dumps(report, indent=1, default=float))
    _atomic_write(out / "report.md", md)
    _atomic_write(out / "report.html", page)
    if report.get("command"):
        _atomic_write(out / "command.txt", report["command"] + "\n")
