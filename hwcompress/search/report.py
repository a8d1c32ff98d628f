"""The fit report in three forms: report.json (machine-readable, schema in
docs/fit-report.md), report.md (tables) and report.html (tables + plots, self-contained:
the PNGs are embedded as data URIs so the file can be mailed or attached to CI)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on build machines
import matplotlib.pyplot as plt  # noqa: E402


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


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


def summary_rows(report: dict) -> list[dict]:
    rows = []
    for r in report["results"]:
        q = r["quality"]
        rows.append({
            "budget_ms": r["budget_ms"], "latency_ms": r["latency_ms"], "latency_source": r["latency_source"],
            "budget_met": r["budget_met"], "runtime_bytes": r["runtime_artifact_bytes"], "hwc_bytes": r["size_bytes"],
            "pesq_wb": q["compressed"]["pesq_wb"], "stoi": q["compressed"]["stoi"], "si_sdr": q["compressed"]["si_sdr"],
        })
    return rows


def markdown(report: dict) -> str:
    r0 = report["results"][0]
    q = r0["quality"]
    lines = [f"# hwcompress fit: {report['model']} on {report['target']}", "",
             f"Command: `{report.get('command') or 'hwcompress fit (library call)'}`", "",
             f"Target: {report['target_description']}. Runtime {r0['runtime']} {r0['runtime_version'] or ''}, "
             f"{r0['threads']} thread(s), device: {r0['device']}.", "",
             "| budget ms | latency ms | source | budget met | runtime artifact B | .hwc B | PESQ-WB | STOI | SI-SDR dB |",
             "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary_rows(report):
        lines.append(f"| {s['budget_ms']:g} | {s['latency_ms']:.3f} | {s['latency_source']} | {'yes' if s['budget_met'] else 'NO'} "
                     f"| {s['runtime_bytes']} | {s['hwc_bytes']} | {s['pesq_wb']:.3f} | {s['stoi']:.3f} | {s['si_sdr']:.2f} |")
    lines += ["", f"Quality on the real-speech test split ({q['n']} mixtures): noisy PESQ-WB {q['noisy']['pesq_wb']:.3f}, "
              f"STOI {q['noisy']['stoi']:.3f}, SI-SDR {q['noisy']['si_sdr']:.2f} dB; dense model PESQ-WB "
              f"{q['baseline']['pesq_wb']:.3f}, STOI {q['baseline']['stoi']:.3f}, SI-SDR {q['baseline']['si_sdr']:.2f} dB.", ""]
    for r in report["results"]:
        lines += [f"## Budget {r['budget_ms']:g} ms", "",
                  f"- latency: **{r['latency_ms']:.3f} ms per hop, {r['latency_source'].upper()}** ({r['latency_how']})",
                  f"- roofline prediction for this model: {r['predicted_ms']:.3f} ms",
                  f"- runtime artifact: {r['runtime_artifact_bytes']} B ({', '.join(Path(f).name for f in r['files']['runtime'])}), "
                  f"parity vs torch: max |diff| {r['parity_vs_torch']['max_abs_diff']:.2e}, SNR {r['parity_vs_torch']['snr_db']:.1f} dB",
                  f"- .hwc artifact: {r['size_bytes']} B ({r['dense_fp32_bytes'] / r['size_bytes']:.1f}x smaller than fp32)",
                  f"- peak memory: {r['peak_memory_bytes']} B, {r['peak_memory_source']} ({r['peak_memory_method']})",
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
    lines.append(f"Run time {report['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict) -> dict[str, str]:
    """Base64 PNGs: quality vs latency (size as marker area, Pareto front drawn) and
    per-layer structured sparsity and K."""
    res = report["results"]
    q0 = res[0]["quality"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cal = report["calibration"]
    dense_ms = cal["log"][0].get("measured_ms") if cal["log"] else None
    pts = [(r["latency_ms"], r["quality"]["compressed"]["pesq_wb"]) for r in res]
    sizes = [r["runtime_artifact_bytes"] for r in res]
    biggest = max(sizes + [res[0]["dense_fp32_bytes"]])
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[40 + 400 * s / biggest for s in sizes], alpha=0.7,
               label=f"fitted ({res[0]['latency_source']} latency)")
    for r, (x, y) in zip(res, pts):
        ax.annotate(f"{r['budget_ms']:g} ms budget", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.axvline(r["budget_ms"], color="grey", lw=0.6, ls=":")
    front = pareto(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="C0", lw=1, label="Pareto front")
    if dense_ms:
        ax.scatter([dense_ms], [q0["baseline"]["pesq_wb"]], marker="s", s=40 + 400 * cal["log"][0]["bytes"] / biggest,
                   color="C1", label=f"dense model: {report['settings'].get('weights', 'int8')} runtime latency "
                                     "(measured), fp32 quality")
    ax.axhline(q0["baseline"]["pesq_wb"], color="C1", lw=0.8, ls="--", label="dense model quality")
    ax.axhline(q0["noisy"]["pesq_wb"], color="C3", lw=0.8, ls="--", label="noisy input")
    ax.set_xlabel("latency per 10 ms hop (ms)")
    ax.set_ylabel(f"PESQ-WB, test split ({q0['n']} mixtures)")
    ax.set_title(f"{report['model']} on {report['target']}: quality vs latency (marker area = runtime bytes)")
    ax.legend(fontsize=7)
    out = {"pareto": _png(fig)}

    r = res[-1]  # the tightest budget shows the most structure
    names = [layer["name"] for layer in r["layers"]]
    fig, ax1 = plt.subplots(figsize=(7.5, 3.6))
    ax1.bar(range(len(names)), [layer["structured_sparsity"] for layer in r["layers"]], color="C0")
    ax1.set_ylabel("structured sparsity (units removed)")
    ax1.set_ylim(0, 1)
    ax1.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax2 = ax1.twinx()
    ax2.plot(range(len(names)), [layer["k"] or 0 for layer in r["layers"]], "o-", color="C2")
    ax2.set_yscale("log", base=2)
    ax2.set_ylabel("codebook size K", color="C2")
    ax1.set_title(f"per-layer settings, budget {r['budget_ms']:g} ms")
    out["layers"] = _png(fig)
    return out


def html_report(report: dict, md: str, images: dict[str, str]) -> str:
    body = [f"<h1>hwcompress fit: {html.escape(report['model'])} on {html.escape(report['target'])}</h1>"]
    for name, data in images.items():
        body.append(f'<p><img alt="{name}" src="data:image/png;base64,{data}"></p>')
    body.append("<pre>" + html.escape(md) + "</pre>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>hwcompress fit report</title>"
            "<style>body{font-family:sans-serif;max-width:980px;margin:auto}pre{white-space:pre-wrap}</style>"
            "</head><body>" + "\n".join(body) + "</body></html>\n")


def write_reports(report: dict, out: Path, model: Any = None) -> None:
    out = Path(out)
    md = markdown(report)
    _atomic_write(out / "report.json", json.dumps(report, indent=1, default=float))
    _atomic_write(out / "report.md", md)
    _atomic_write(out / "report.html", html_report(report, md, plots(report)))
    if report.get("command"):
        _atomic_write(out / "command.txt", report["command"] + "\n")
